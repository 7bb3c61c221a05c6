"""Training configuration: one pydantic model per component, loaded from YAML and validated.

A training YAML file has the sections ``run``, ``data``, ``model``, ``baseline``,
``scaling``, ``deepspeed``, ``optimizer``, ``checkpoint``, ``failure`` and ``stages``
(one entry per curriculum stage). Unknown fields are refused and types are strict (a string
is no integer). Every error is one line naming the file, the section and field, the value and
what to change, e.g. ``my.yaml: stages.smat.steps='abc': must be an integer``
(:mod:`rxt_dist.train.config_errors` words them).

A new field is one line plus its docstring: ``name: type = default`` or, with a range,
``name: int = Field(0, ge=0)`` (the message "must be ≥ 0" comes from the bounds). A check
across fields is a ``model_validator`` of its section that raises ``ValueError("field=value:
fix")``; the section's path is put in front.
"""

from __future__ import annotations

import os
import typing
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rxt_dist.train.config_errors import describe, is_section, union_members

STAGES = ("joint_lm", "sft", "memory_attention", "smat", "baseline")
"""Curriculum stages in order (the stateless baseline is trained last)."""
STAGE_ALIASES = {"1": "joint_lm", "2": "sft", "3": "memory_attention", "4": "smat"}
RXT_STAGES = STAGES[:4]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
PRECISIONS = typing.get_args(Precision)
SCHEDULES = typing.get_args(Schedule)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def stage_name(stage: str | int) -> str:
    """Canonical stage name for a name or a number 1–4."""
    name = STAGE_ALIASES.get(str(stage), str(stage))
    _require(name in STAGES, f"stage={stage!r}: unknown; choose one of {list(STAGES)} or 1–4")
    return name


class _Section(BaseModel):
    """What every section shares: unknown fields refused, strict types, YAML's quirks undone."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML 1.1 reads ``1e-3`` (no dot) as a string, a JSON round trip turns tuples into
        lists, and a section holding only comments is null."""
        kinds = union_members(cls.model_fields[info.field_name].annotation)
        if value is None and any(is_section(k) for k in kinds):
            return {}
        if isinstance(value, str) and float in kinds:
            try:
                return float(value)
            except ValueError:
                return value  # reported as "must be a number"
        if isinstance(value, list) and any(typing.get_origin(k) is tuple for k in kinds):
            return tuple(value)
        return value


class RunSection(_Section):
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

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        _require(bool(name) and "/" not in name, "must be a non-empty name without '/'")
        return name


class DataSection(_Section):
    """The dialogue shards written by ``jobs/prepare_data.py``."""

    url: str = "runs/data"
    """Dataset folder URL (holds manifest.json, tokenizer.json and the split folders)."""
    max_turns: int = Field(16, ge=1)
    """Conversations longer than this are cut to their first ``max_turns`` turns."""
    max_interaction_tokens: int = Field(128, ge=8)
    """Interactions longer than this are cut (query kept, answer shortened)."""
    max_text_tokens: int = Field(256, ge=8)
    """Stage-1 text rows are cut to this many tokens."""
    shuffle_buffer: int = Field(256, ge=0)
    """Shuffle: each epoch the shards come in an order drawn from (seed, epoch) and rows are
    shuffled within windows of this many rows (0: manifest order every epoch). See
    ``rxt_dist.data.epochs``."""


class ModelSection(_Section):
    """A model preset plus overrides; the vocabulary size comes from the data manifest."""

    preset: str = "tiny"
    """Name from ``python -m rxt_dist.model --summary all``."""
    overrides: dict[str, Any] = {}
    """Nested config fields to change, e.g. ``{stm: {num_slots: 64}}``."""


class ScalingSection(_Section):
    """How many Ray Train workers and what each holds."""

    num_workers: int = Field(2, ge=1)
    """Data-parallel workers."""
    cpus_per_worker: float = Field(0.5, gt=0)
    """CPUs reserved per worker (a fraction lets workers share a core). Workers read their own
    rows, so no CPU need be left for Ray Data read tasks."""
    use_gpu: bool = False
    """One GPU per worker; the backend becomes NCCL."""
    torch_threads: int = Field(1, ge=1)
    """Intra-op threads per worker on CPU."""
    compile: bool = False
    """Train the transformer layers through ``torch.compile`` (inductor; needs a C/C++ compiler on
    CPU): norms, rotary embedding, residuals and the gated FFN fuse around the matmuls. Each
    worker compiles during its first steps (seconds to tens of seconds); inference and exported
    models are unchanged (docs/training.md, "Compiled layers"). Needs deepspeed.zero_stage ≤ 2."""


class DeepSpeedSection(_Section):
    """DeepSpeed engine settings."""

    zero_stage: int = Field(2, ge=0, le=3)
    """ZeRO stage 0 (plain data parallel), 1, 2 or 3."""
    precision: Precision = "fp32"
    """fp32, bf16 or fp16 (fp16 needs a GPU)."""
    gradient_clipping: float = Field(1.0, ge=0)
    """Global gradient-norm clip (0 disables)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: optimizer state and step on the CPU (needs zero_stage ≥ 1). Saves GPU memory;
    a CPU-only run gains nothing from it (it works there, which the tests use)."""
    zero_options: dict[str, Any] = Field(default_factory=dict)
    """Further keys of DeepSpeed's ``zero_optimization`` section, passed through as given
    (e.g. ``{overlap_comm: true, reduce_bucket_size: 5.0e7}``); DeepSpeed validates them."""

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedSection:
        _require(not self.offload_optimizer or self.zero_stage >= 1,
                 f"offload_optimizer=true: needs zero_stage ≥ 1 (it is {self.zero_stage}); "
                 "raise zero_stage or set offload_optimizer=false")
        return self


class OptimizerSection(_Section):
    """The optimizer and its learning-rate schedule (per-stage ``lr`` overrides ``lr``)."""

    name: Literal["adamw", "muon"] = "adamw"
    """``adamw``; or ``muon``: Muon (momentum orthogonalised by Newton–Schulz) for the weight
    matrices of the layers' linear maps, AdamW for the rest (embedding and tied output head,
    norms, gates, slot parameters, the initial STM); Muon's step is scaled to AdamW's update
    size, so ``lr`` means the same for both. Needs ``deepspeed.zero_stage: 0`` (ZeRO's flat
    partitions are not matrices)."""
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    """Muon's momentum (Nesterov)."""
    muon_lr_scale: float = Field(1.0, gt=0)
    """Muon's learning rate as a multiple of the schedule's (AdamW's) rate."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate of every stage that sets none."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up steps at the start of every stage."""
    schedule: Schedule = "cosine"
    """Decay after warm-up: cosine, linear, constant, or wsd (warm-up, stable, decay: the peak
    held, then a linear decay over the last ``decay_fraction`` of the steps)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """``wsd`` only: the share of the steps after warm-up spent decaying."""

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, betas: Any) -> Any:
        _require(isinstance(betas, (list, tuple)) and len(betas) == 2
                 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
                 "must be two numbers in [0, 1)")
        return betas


class CheckpointSection(_Section):
    """When checkpoints are written and how many are kept."""

    every_steps: int = Field(100, ge=1)
    """Checkpoint (and report to Ray Train) every this many optimizer steps."""
    keep: int = Field(2, ge=1)
    """Most recent checkpoints kept per stage."""
    report_every_steps: int = Field(20, ge=1)
    """Metrics go to Ray Train every this many steps (each report is a barrier)."""
    log_every_steps: int = Field(10, ge=1)
    """Progress line, TensorBoard and metrics.jsonl every this many steps."""


class FailureSection(_Section):
    """Worker-failure tolerance."""

    max_failures: int = 2
    """Times a stage restarts its workers from the latest checkpoint before giving up."""
    fail_once_at_step: int | None = None
    """Testing aid: one worker exits abruptly at this step in a run that started without a
    checkpoint, to exercise recovery."""


class StageSection(_Section):
    """Settings shared by every stage."""

    steps: int = Field(100, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(32, ge=1)
    """Global batch per optimizer step, in rows (conversations, or text rows in stage 1)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each worker."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate (None: optimizer.lr)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Warm-up steps (None: optimizer.warmup_steps)."""
    time_budget_s: float | None = Field(None, gt=0)
    """Train for this many seconds (training time, start-up excluded) instead of ``steps``:
    after ``BUDGET_CALIBRATION_STEPS`` steps the step count is fixed from the measured step time,
    and fixed again at each of ``BUDGET_REFINE_STEPS`` from the steps since (``rxt_dist.train.optim``),
    so the learning-rate schedule still ends with the budget; ``steps`` stays an
    upper bound. (How the demo gives the baseline the RxT stages' training time.) Not with stage 4's
    length curriculum or recall-pair warm-up, whose first steps are shorter than the rest."""


class JointLMStage(StageSection):
    """Stage 1: encoder MLM + decoder AR reading the encoder's detached states as memory."""

    alpha: float = Field(1.0, ge=0)
    """Weight of the decoder's autoregressive loss."""
    beta: float = Field(1.0, ge=0)
    """Weight of the encoder's masked-LM loss."""
    mask_prob: float = Field(0.15, gt=0, lt=1)
    """Share of tokens the encoder sees masked."""
    noise_std: float = Field(0.1, ge=0)
    """Gaussian noise added to the encoder states the decoder reads (relative to their RMS)."""
    slot_dropout: float = Field(0.1, ge=0, lt=1)
    """Share of encoder states hidden from the decoder."""
    use_text: bool = True
    """Read the plain-text view (stage 1) instead of single interactions."""

    @model_validator(mode="after")
    def _some_loss_counts(self) -> JointLMStage:
        _require(self.alpha + self.beta > 0,
                 f"beta={self.beta}: must be > 0 when alpha={self.alpha} (one of the two losses must count)")
        return self


class SFTStage(JointLMStage):
    """Stage 2: the joint objective on single ``[Q]…[A]…`` interactions."""

    use_text: bool = False
    """Stage 2 reads single interactions."""
    loss_on_query: bool = False
    """Also train the decoder on the query tokens (by default only answers count)."""


class MemoryAttentionStage(StageSection):
    """Stage 3: self-supervised memory attention against a weighted-mean pseudo-target."""

    first_weight: float = Field(0.9, ge=0, le=1)
    """Weight of the new interaction in the first step's target."""
    later_weight_start: float = Field(0.5, ge=0, le=1)
    """Weight of the new interaction at the second step; it falls by ``weight_decay_per_turn``."""
    later_weight_end: float = Field(0.05, ge=0, le=1)
    """Floor of the new-interaction weight."""
    weight_decay_per_turn: float = Field(0.05, ge=0)
    """How much the new-interaction weight falls per turn after the second."""
    jitter: float = Field(0.05, ge=0)
    """Uniform random jitter added to the weight."""
    noise_std: float = Field(0.05, ge=0)
    """Gaussian noise on the previous STM and on the target (relative to their RMS)."""
    target: Literal["per_slot", "pooled"] = "per_slot"
    """``per_slot``: slot i is pulled towards the encoded interaction at its own position
    (slot i of S ↔ token ⌊i·T/S⌋ of T), so slots get distinct targets. ``pooled``: every slot
    towards the interaction's mean over tokens — one target for all slots, which teaches the
    slots to collapse onto one vector (kept for comparison)."""

    @model_validator(mode="after")
    def _weights_fall(self) -> MemoryAttentionStage:
        _require(self.later_weight_end <= self.later_weight_start,
                 f"later_weight_end={self.later_weight_end}: must be ≤ later_weight_start="
                 f"{self.later_weight_start}")
        return self


class SMATStage(StageSection):
    """Stage 4: supervised memory-aware training over whole conversations."""

    unfreeze_memory_attention_at: int = Field(0, ge=0)
    """Step from which memory attention trains (the decoder trains from step 0)."""
    unfreeze_encoder_at: int = Field(0, ge=0)
    """Step from which the encoder trains."""
    bptt_turns: int = Field(0, ge=0)
    """Backpropagate through at most this many turns of memory (0: the whole conversation)."""
    recall_pair_steps: int = Field(0, ge=0)
    """Warm-up: for this many first steps each conversation is cut to a turn that states a fact
    and the turn that first recalls it (see ``rxt_dist.train.batches.recall_pairs``); the memory
    path learns one fact over one update far sooner than over whole conversations. Needs the
    ``recall_*`` columns that synthetic data carries (0: whole conversations throughout)."""
    init_model_url: str | None = None
    """Start from this model directory instead of stage memory_attention's export (post-training
    of any model, e.g. a StateX-expanded one; see docs/statex.md)."""
    start: Literal["previous", "fresh"] = "previous"
    """``previous``: start from stage memory_attention's export (the four-stage curriculum).
    ``fresh``: start from a newly initialised ``model`` preset — stage 4 alone, end to end; at the
    scale of the CPU configs it learned recall far faster than after stages 1–3 (docs/memory.md)."""
    recall_loss_weight: float = Field(0.0, ge=0)
    """Extra loss on the tokens of recalled values (mean cross-entropy over those tokens, times
    this weight, added to the answer loss). Needs the ``recall_gold_*`` columns of synthetic data
    (0: no extra term; the value accuracy is still reported when the columns are there)."""
    recall_loss_end: bool = False
    """The value loss (``recall_loss_weight``) also scores the token after each recalled value,
    the one that ends it: a memory that kept ``424``'s digits but not where it ends answers
    ``4244``. Measured once on the demo from step 0: stage 4 then never left its plateau
    (docs/memory.md §25); hence ``recall_loss_end_from``."""
    recall_loss_end_from: int = Field(0, ge=0)
    """Step from which ``recall_loss_end`` applies (0: from the start): the end term joins the
    value loss once the memory path has left its plateau."""
    recall_weight_per_fact: float = Field(0.0, ge=0)
    """Shifts the value loss (``recall_loss_weight``) toward turns that hold many facts: a recall
    turn holding f facts weighs 1 + this × (f − 1) in that loss, which averages over these
    weights (so its overall scale stays ``recall_loss_weight``). Needs the ``recall_facts_held``
    column of synthetic data (0: every recalled value weighs the same)."""
    echo_loss_weight: float = Field(0.0, ge=0)
    """Extra loss on the tokens of a value the same turn states and its answer repeats ("my pet is
    called X" → "… your pet is called X"): the copy a model must get right before its own answers
    can carry X into memory. Needs the ``value_start``/``value_len`` columns (0: no extra term).
    From step 0 it slowed the memory path (docs/memory.md §8); hence ``echo_loss_from``."""
    echo_loss_from: int = Field(0, ge=0)
    """Step from which ``echo_loss_weight`` applies (0: from the start): the echo term joins once
    the memory path has left its plateau."""
    echo_noise: float = Field(0.0, ge=0, le=1)
    """Share of the turns that state a value whose answer's copy of it is garbled (two tokens
    swapped, or one replaced) in the interaction consolidated into memory — the answer itself
    is still trained on the gold. Serving consolidates the model's own answers, whose echo can
    err; this teaches the memory to keep what the user said. Needs the ``value_start``/
    ``value_len`` columns (0: memory consolidates the gold interactions only). Measured on the
    demo at 0.25: recall after a misquote 36% → 83%, but less recall overall (docs/memory.md §25)."""
    curriculum_turns: int = Field(0, ge=0)
    """Curriculum over conversation length: at step 0 conversations are cut to this many turns
    (fewer facts held, shorter distances), growing linearly to ``data.max_turns`` at step
    ``curriculum_steps`` (0: whole conversations from the start)."""
    curriculum_steps: int = Field(0, ge=0)
    """Steps over which the curriculum reaches whole conversations."""

    @field_validator("init_model_url")
    @classmethod
    def _url_given(cls, url: str | None) -> str | None:
        _require(url != "", "give a model directory URL, or leave it unset")
        return url

    @model_validator(mode="after")
    def _ends_on_conversations(self) -> SMATStage:
        _require(self.start == "previous" or self.init_model_url is None,
                 f"start={self.start!r}: init_model_url={self.init_model_url!r} names a model to start from; "
                 "use one or the other")
        _require(self.recall_pair_steps < self.steps,
                 f"recall_pair_steps={self.recall_pair_steps}: must be in [0, steps={self.steps}) so the "
                 "stage ends on whole conversations")
        _require(not self.curriculum_turns or 0 < self.curriculum_steps < self.steps,
                 f"curriculum_steps={self.curriculum_steps}: must be in [1, steps={self.steps}) when "
                 f"curriculum_turns={self.curriculum_turns} (the stage ends on whole conversations)")
        _require(not self.recall_weight_per_fact or self.recall_loss_weight,
                 f"recall_weight_per_fact={self.recall_weight_per_fact}: weighs the value loss, which "
                 "recall_loss_weight=0 leaves out; set recall_loss_weight too")
        shorter = ("curriculum_turns" if self.curriculum_turns
                   else "recall_pair_steps" if self.recall_pair_steps else None)
        _require(self.time_budget_s is None or shorter is None,
                 f"time_budget_s={self.time_budget_s}: cannot be combined with {shorter}="
                 f"{getattr(self, shorter or 'steps')} — the budget is timed on the first steps, which {shorter} "
                 "makes shorter than the rest; set steps instead")
        return self

    def turns_at(self, step: int, max_turns: int) -> int:
        """Turns per conversation at ``step`` under the length curriculum."""
        if not self.curriculum_turns or step >= self.curriculum_steps:
            return max_turns
        grown = self.curriculum_turns + (max_turns - self.curriculum_turns) * step / self.curriculum_steps
        return max(1, min(max_turns, int(grown)))


class BaselineStage(StageSection):
    """The stateless baseline: whole conversations as one causal sequence, loss on answers."""

    max_tokens: int = Field(1024, ge=1)
    """Conversations longer than this many tokens are cut to their first turns that fit."""


class StagesSection(_Section):
    """One entry per curriculum stage (see ``STAGES``)."""

    joint_lm: JointLMStage = Field(default_factory=JointLMStage)
    sft: SFTStage = Field(default_factory=SFTStage)
    memory_attention: MemoryAttentionStage = Field(default_factory=MemoryAttentionStage)
    smat: SMATStage = Field(default_factory=SMATStage)
    baseline: BaselineStage = Field(default_factory=BaselineStage)


class TrainConfig(_Section):
    """A whole training configuration (one YAML file)."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    baseline: ModelSection = Field(default_factory=lambda: ModelSection(preset="baseline-tiny"))
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    failure: FailureSection = Field(default_factory=FailureSection)
    stages: StagesSection = Field(default_factory=StagesSection)
    _source: str = PrivateAttr("<dict>")

    @property
    def source(self) -> str:
        """Where the config came from (for error messages)."""
        return self._source

    @model_validator(mode="after")
    def _fits_the_hardware(self) -> TrainConfig:
        _require(self.deepspeed.precision != "fp16" or self.scaling.use_gpu,
                 "deepspeed.precision='fp16' needs scaling.use_gpu=true; use fp32 or bf16 on CPU")
        _require(self.optimizer.name != "muon" or self.deepspeed.zero_stage == 0,
                 f"optimizer.name=muon: needs deepspeed.zero_stage: 0 (it is {self.deepspeed.zero_stage}: "
                 "ZeRO hands the optimizer flat partitions, and Muon works on whole matrices)")
        _require(not self.scaling.compile or self.deepspeed.zero_stage <= 2,
                 f"scaling.compile=true: needs deepspeed.zero_stage ≤ 2 (it is {self.deepspeed.zero_stage}: "
                 "ZeRO-3 gathers parameters in module hooks that compiled layers are not tested with); "
                 "set scaling.compile=false or a lower zero_stage")
        for name in STAGES:
            self.check_batch(name)
        return self

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
        """Plain JSON data (what Ray workers receive); ``from_dict`` reads it back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        """Build and validate; each error is one line prefixed with ``source``."""
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError("\n".join(f"{source}: {line}" for line in describe(exc, cls))) from None
        cfg._source = source
        return cfg

    @classmethod
    def from_file(cls, path: str, overrides: list[str] | None = None) -> TrainConfig:
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
