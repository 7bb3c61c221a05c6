"""Training configuration: one dataclass per component, loaded from YAML and validated.

A training YAML file has the sections ``run``, ``data``, ``model``, ``baseline``,
``scaling``, ``deepspeed``, ``optimizer``, ``checkpoint``, ``failure`` and ``stages``
(one entry per curriculum stage). Every error names the file, the section and field, the
value and what to change.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

STAGES = ("joint_lm", "sft", "memory_attention", "smat", "baseline")
"""Curriculum stages in order (the stateless baseline is trained last)."""
STAGE_ALIASES = {"1": "joint_lm", "2": "sft", "3": "memory_attention", "4": "smat"}
RXT_STAGES = STAGES[:4]
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def stage_name(stage: str | int) -> str:
    """Canonical stage name for a name or a number 1–4."""
    name = STAGE_ALIASES.get(str(stage), str(stage))
    _require(name in STAGES, f"stage={stage!r}: unknown; choose one of {list(STAGES)} or 1–4")
    return name


@dataclass
class RunSection:
    """Where a run keeps its checkpoints, exported models and logs."""

    name: str = "rxt"
    """Run name; the same name and storage resume the same run."""
    storage: str = "runs"
    """Base URL (local path, s3://, gs://, …) for checkpoints and exported models."""
    log_dir: str | None = None
    """Local directory for TensorBoard events and metrics.jsonl (default: under storage when
    it is local, else ./runs/<name>/logs)."""
    seed: int = 0
    """Seed of initialisation, masking, noise and data order."""

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name,
                 f"run.name={self.name!r}: must be a non-empty name without '/'")


@dataclass
class DataSection:
    """The dialogue shards written by ``jobs/prepare_data.py``."""

    url: str = "runs/data"
    """Dataset folder URL (holds manifest.json, tokenizer.json and the split folders)."""
    max_turns: int = 16
    """Conversations longer than this are cut to their first ``max_turns`` turns."""
    max_interaction_tokens: int = 128
    """Interactions longer than this are cut (query kept, answer shortened)."""
    max_text_tokens: int = 256
    """Stage-1 text rows are cut to this many tokens."""
    shuffle_buffer: int = 256
    """Rows in each worker's local shuffle buffer (0: no shuffling)."""

    def __post_init__(self) -> None:
        _require(self.max_turns >= 1, f"data.max_turns={self.max_turns}: must be ≥ 1")
        _require(self.max_interaction_tokens >= 8,
                 f"data.max_interaction_tokens={self.max_interaction_tokens}: must be ≥ 8")
        _require(self.max_text_tokens >= 8, f"data.max_text_tokens={self.max_text_tokens}: must be ≥ 8")
        _require(self.shuffle_buffer >= 0, f"data.shuffle_buffer={self.shuffle_buffer}: must be ≥ 0")


@dataclass
class ModelSection:
    """A model preset plus overrides; the vocabulary size comes from the data manifest."""

    preset: str = "tiny"
    """Name from ``python -m rxt_dist.model --summary all``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Nested config fields to change, e.g. ``{stm: {num_slots: 64}}``."""


@dataclass
class ScalingSection:
    """How many Ray Train workers and what each holds."""

    num_workers: int = 2
    """Data-parallel workers."""
    cpus_per_worker: float = 0.5
    """CPUs reserved per worker. Leave CPU free for Ray Data's read tasks: on a 2-CPU
    machine, 2 workers × 1 CPU starve them and the run hangs."""
    use_gpu: bool = False
    """One GPU per worker; the backend becomes NCCL."""
    torch_threads: int = 1
    """Intra-op threads per worker on CPU."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, f"scaling.num_workers={self.num_workers}: must be ≥ 1")
        _require(self.cpus_per_worker > 0, f"scaling.cpus_per_worker={self.cpus_per_worker}: must be > 0")
        _require(self.torch_threads >= 1, f"scaling.torch_threads={self.torch_threads}: must be ≥ 1")


@dataclass
class DeepSpeedSection:
    """DeepSpeed engine settings."""

    zero_stage: int = 2
    """ZeRO stage 0 (plain data parallel), 1, 2 or 3."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer state to CPU memory (GPU runs, stage ≥ 1)."""

    def __post_init__(self) -> None:
        _require(self.zero_stage in (0, 1, 2, 3),
                 f"deepspeed.zero_stage={self.zero_stage}: must be 0, 1, 2 or 3")
        _require(self.precision in PRECISIONS,
                 f"deepspeed.precision={self.precision!r}: must be one of {PRECISIONS}")
        _require(self.gradient_clipping >= 0,
                 f"deepspeed.gradient_clipping={self.gradient_clipping}: must be ≥ 0")


@dataclass
class OptimizerSection:
    """AdamW and its learning-rate schedule (per-stage ``lr`` overrides ``lr``)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    """Linear warm-up steps at the start of every stage."""
    schedule: str = "cosine"
    """Decay after warm-up: cosine, linear or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _require(self.lr > 0, f"optimizer.lr={self.lr}: must be > 0")
        _require(self.weight_decay >= 0, f"optimizer.weight_decay={self.weight_decay}: must be ≥ 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"optimizer.betas={list(self.betas)}: must be two numbers in [0, 1)")
        _require(self.warmup_steps >= 0, f"optimizer.warmup_steps={self.warmup_steps}: must be ≥ 0")
        _require(self.schedule in SCHEDULES,
                 f"optimizer.schedule={self.schedule!r}: must be one of {SCHEDULES}")
        _require(0 <= self.min_lr_ratio <= 1, f"optimizer.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")


@dataclass
class CheckpointSection:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 100
    """Checkpoint (and report to Ray Train) every this many optimizer steps."""
    keep: int = 2
    """Most recent checkpoints kept per stage."""
    report_every_steps: int = 20
    """Metrics go to Ray Train every this many steps (each report is a barrier)."""
    log_every_steps: int = 10
    """Progress line, TensorBoard and metrics.jsonl every this many steps."""

    def __post_init__(self) -> None:
        for name in ("every_steps", "keep", "report_every_steps", "log_every_steps"):
            value = getattr(self, name)
            _require(value >= 1, f"checkpoint.{name}={value}: must be ≥ 1")


@dataclass
class FailureSection:
    """Worker-failure tolerance."""

    max_failures: int = 2
    """Times a stage restarts its workers from the latest checkpoint before giving up."""
    fail_once_at_step: int | None = None
    """Testing aid: one worker exits abruptly at this step in a run that started without a
    checkpoint, to exercise recovery."""


@dataclass
class StageSection:
    """Settings shared by every stage."""

    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 32
    """Global batch per optimizer step, in rows (conversations, or text rows in stage 1)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each worker."""
    lr: float | None = None
    """Peak learning rate (None: optimizer.lr)."""
    warmup_steps: int | None = None
    """Warm-up steps (None: optimizer.warmup_steps)."""

    def __post_init__(self) -> None:
        _require(self.steps >= 1, f"steps={self.steps}: must be ≥ 1")
        _require(self.batch_size >= 1, f"batch_size={self.batch_size}: must be ≥ 1")
        _require(self.grad_accum >= 1, f"grad_accum={self.grad_accum}: must be ≥ 1")
        _require(self.lr is None or self.lr > 0, f"lr={self.lr}: must be > 0")


@dataclass
class JointLMStage(StageSection):
    """Stage 1: encoder MLM + decoder AR reading the encoder's detached states as memory."""

    alpha: float = 1.0
    """Weight of the decoder's autoregressive loss."""
    beta: float = 1.0
    """Weight of the encoder's masked-LM loss."""
    mask_prob: float = 0.15
    """Share of tokens the encoder sees masked."""
    noise_std: float = 0.1
    """Gaussian noise added to the encoder states the decoder reads (relative to their RMS)."""
    slot_dropout: float = 0.1
    """Share of encoder states hidden from the decoder."""
    use_text: bool = True
    """Read the plain-text view (stage 1) instead of single interactions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 < self.mask_prob < 1, f"mask_prob={self.mask_prob}: must be in (0, 1)")
        _require(0 <= self.slot_dropout < 1, f"slot_dropout={self.slot_dropout}: must be in [0, 1)")
        _require(self.noise_std >= 0, f"noise_std={self.noise_std}: must be ≥ 0")
        _require(self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta > 0,
                 f"alpha={self.alpha}, beta={self.beta}: must be ≥ 0 and not both 0")


@dataclass
class SFTStage(JointLMStage):
    """Stage 2: the joint objective on single ``[Q]…[A]…`` interactions."""

    use_text: bool = False
    loss_on_query: bool = False
    """Also train the decoder on the query tokens (by default only answers count)."""


@dataclass
class MemoryAttentionStage(StageSection):
    """Stage 3: self-supervised memory attention against a weighted-mean pseudo-target."""

    first_weight: float = 0.9
    """Weight of the new interaction in the first step's target."""
    later_weight_start: float = 0.5
    """Weight of the new interaction at the second step; it falls by ``weight_decay_per_turn``."""
    later_weight_end: float = 0.05
    """Floor of the new-interaction weight."""
    weight_decay_per_turn: float = 0.05
    """How much the new-interaction weight falls per turn after the second."""
    jitter: float = 0.05
    """Uniform random jitter added to the weight."""
    noise_std: float = 0.05
    """Gaussian noise on the previous STM and on the target (relative to their RMS)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("first_weight", "later_weight_start", "later_weight_end"):
            value = getattr(self, name)
            _require(0 <= value <= 1, f"{name}={value}: must be in [0, 1]")
        _require(self.later_weight_end <= self.later_weight_start,
                 f"later_weight_end={self.later_weight_end}: must be ≤ later_weight_start="
                 f"{self.later_weight_start}")
        _require(self.jitter >= 0 and self.noise_std >= 0 and self.weight_decay_per_turn >= 0,
                 "jitter, noise_std and weight_decay_per_turn must be ≥ 0")


@dataclass
class SMATStage(StageSection):
    """Stage 4: supervised memory-aware training over whole conversations."""

    unfreeze_memory_attention_at: int = 0
    """Step from which memory attention trains (the decoder trains from step 0)."""
    unfreeze_encoder_at: int = 0
    """Step from which the encoder trains."""
    bptt_turns: int = 0
    """Backpropagate through at most this many turns of memory (0: the whole conversation)."""
    recall_pair_steps: int = 0
    """Warm-up: for this many first steps each conversation is cut to a turn that states a fact
    and the turn that first recalls it (see ``rxt_dist.train.batches.recall_pairs``); the memory
    path learns one fact over one update far sooner than over whole conversations. Needs the
    ``recall_*`` columns that synthetic data carries (0: whole conversations throughout)."""
    init_model_url: str | None = None
    """Start from this model directory instead of stage memory_attention's export (post-training
    of any model, e.g. a StateX-expanded one; see docs/statex.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.init_model_url is None or bool(self.init_model_url),
                 "init_model_url='': give a model directory URL, or leave it unset")
        _require(self.bptt_turns >= 0, f"bptt_turns={self.bptt_turns}: must be ≥ 0")
        _require(0 <= self.recall_pair_steps < self.steps,
                 f"recall_pair_steps={self.recall_pair_steps}: must be in [0, steps={self.steps}) so the "
                 "stage ends on whole conversations")
        _require(self.unfreeze_memory_attention_at >= 0 and self.unfreeze_encoder_at >= 0,
                 "unfreeze_*_at must be ≥ 0")


@dataclass
class BaselineStage(StageSection):
    """The stateless baseline: whole conversations as one causal sequence, loss on answers."""

    max_tokens: int = 1024
    """Conversations longer than this many tokens are cut to their first turns that fit."""


_STAGE_CLASSES = {
    "joint_lm": JointLMStage,
    "sft": SFTStage,
    "memory_attention": MemoryAttentionStage,
    "smat": SMATStage,
    "baseline": BaselineStage,
}


@dataclass
class StagesSection:
    joint_lm: JointLMStage = field(default_factory=JointLMStage)
    sft: SFTStage = field(default_factory=SFTStage)
    memory_attention: MemoryAttentionStage = field(default_factory=MemoryAttentionStage)
    smat: SMATStage = field(default_factory=SMATStage)
    baseline: BaselineStage = field(default_factory=BaselineStage)


@dataclass
class TrainConfig:
    """A whole training configuration (one YAML file)."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    baseline: ModelSection = field(default_factory=lambda: ModelSection(preset="baseline-tiny"))
    scaling: ScalingSection = field(default_factory=ScalingSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    failure: FailureSection = field(default_factory=FailureSection)
    stages: StagesSection = field(default_factory=StagesSection)
    source: str = "<dict>"
    """Where the config came from (for error messages)."""

    def __post_init__(self) -> None:
        _require(self.deepspeed.precision != "fp16" or self.scaling.use_gpu,
                 "deepspeed.precision='fp16' needs scaling.use_gpu=true; use fp32 or bf16 on CPU")
        for name in STAGES:
            self.check_batch(name)

    def stage(self, name: str) -> StageSection:
        return getattr(self.stages, stage_name(name))

    def check_batch(self, name: str) -> None:
        st = self.stage(name)
        per_step = self.scaling.num_workers * st.grad_accum
        _require(st.batch_size % per_step == 0,
                 f"stages.{name}.batch_size={st.batch_size}: must be divisible by "
                 f"scaling.num_workers × grad_accum = {self.scaling.num_workers} × {st.grad_accum} "
                 f"= {per_step}; try {max(per_step, st.batch_size // per_step * per_step)}")

    def micro_batch(self, name: str) -> int:
        """Rows per worker per micro-batch."""
        st = self.stage(name)
        return st.batch_size // (self.scaling.num_workers * st.grad_accum)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "TrainConfig":
        """Build and validate; errors are prefixed with ``source``."""
        try:
            return _build(cls, dict(data), "", source)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str, overrides: list[str] | None = None) -> "TrainConfig":
        """Load a YAML file; ``overrides`` are ``section.field=value`` strings (YAML values)."""
        if not os.path.exists(path):
            raise ValueError(f"config file {path} does not exist")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data, source=path)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in a nested dict."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


_SECTIONS = {
    "TrainConfig": {
        "run": RunSection, "data": DataSection, "model": ModelSection, "baseline": ModelSection,
        "scaling": ScalingSection, "deepspeed": DeepSpeedSection, "optimizer": OptimizerSection,
        "checkpoint": CheckpointSection, "failure": FailureSection, "stages": StagesSection,
    },
    "StagesSection": _STAGE_CLASSES,
}


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_type(cls, name: str, value: Any, where: str) -> Any:
    """Reject a YAML value of the wrong scalar type with a message naming the field."""
    hint = typing.get_type_hints(cls)[name]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    if float in allowed and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    for kind, words in _SCALARS.items():
        if kind in allowed:
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if ok:
                return value
            raise ValueError(f"{where}={value!r}: must be {words}")
    return value


def _build(cls, data: dict[str, Any], path: str, source: str):
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path or 'config'}: unknown field(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _SECTIONS.get(cls.__name__, {}).get(name)
        where = f"{path}.{name}" if path else name
        if sub is not None:
            try:
                kwargs[name] = _build(sub, value if value is not None else {}, where, source)
            except ValueError as exc:
                message = str(exc)
                raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None
        else:
            kwargs[name] = _check_type(cls, name, value, where)
    if cls is TrainConfig:
        kwargs["source"] = source
    return cls(**kwargs)
