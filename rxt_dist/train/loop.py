"""The per-worker training loop of one stage: DeepSpeed engine, its rows of the data, checkpoints.

:func:`train_loop_per_worker` is what ``TorchTrainer`` runs on every worker. It builds the
model (from the previous stage's export or a preset), wraps it with its stage objective in
a DeepSpeed engine, resumes from the latest Ray Train checkpoint if there is one, trains
to the stage's step count and exports the model directory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from rxt_dist.train.batches import (
    conversation_batch,
    first_turns,
    history_batch,
    interaction_batch,
    recall_pairs,
    text_batch,
)
from rxt_dist.train.config import TrainConfig
from rxt_dist.train.metrics import MetricWriter, WindowMetrics
from rxt_dist.train.objectives import StageObjective, StageOutput, combine, local_counts
from rxt_dist.train.optim import (
    BudgetClock,
    budget_steps,
    frozen_at,
    freeze_for_stage,
    make_scheduler,
    build_optimizer,
)
from rxt_dist.train.progress import ProgressSender

log = logging.getLogger("rxt_dist.train")

CHECKPOINT_TAG = "state"


@dataclass
class StageJob:
    """Everything a worker needs for one stage, as plain data Ray can ship."""

    stage: str
    train: dict[str, Any]
    """``TrainConfig.to_dict()``."""
    export_url: str
    """Where the finished stage's model directory goes."""
    log_dir: str
    """Local directory for TensorBoard events and metrics.jsonl."""
    tokenizer_json: str | None = None
    """Written into the exported model directory."""
    init_model_url: str | None = None
    """Previous stage's export to start from (None: a fresh model)."""
    model_config: dict[str, Any] | None = None
    """Config of a fresh model (stage 1 and the baseline)."""
    rows: dict[str, Any] = field(default_factory=dict)
    """``TrainingRows.to_dict()``: the shards and columns the stage reads."""
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Any = None
    """The driver's progress queue (``ray.util.queue.Queue``) rank 0 sends its metric windows
    and notes to (None: the driver shows none; see :mod:`rxt_dist.train.progress`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Position:
    """Where training stands: optimizer steps done and the data position."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed on each worker (with the epoch, the
    exact row to resume at: the order is a function of seed and epoch)."""
    tokens: int = 0
    """Tokens processed so far, all workers."""
    total_steps: int | None = None
    """Step count fixed by a time budget (None: the stage's ``steps``)."""
    train_s: float = 0.0
    """Training time so far (start-up excluded), summed over restarts."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    _configure_worker_logging()
    StageLoop(StageJob(**config)).run()


def _configure_worker_logging() -> None:
    """Progress lines reach the driver through the worker's stderr; Ray's and DeepSpeed's
    per-report chatter is turned down."""
    import warnings

    root = logging.getLogger("rxt_dist")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    for noisy in ("ray.train", "ray.data", "DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce (``deepspeed_shm_comm``,
    ~30 s of C++ on a fresh machine) when it joins a CPU process group: only its
    ``inference_all_reduce`` (tensor-parallel inference) uses the op, and without it that falls
    back to torch.distributed; training's collectives go through Ray Train's gloo group anyway."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def collate_rows(cfg: TrainConfig, stage: str, rows, step: int, world: int):
    """A micro-batch of shard rows → the batch ``stage``'s objective takes at ``step``."""
    d, stage_cfg = cfg.data, cfg.stage(stage)
    if stage == "joint_lm" and stage_cfg.use_text:
        return text_batch(rows, d.max_text_tokens)
    if stage in ("joint_lm", "sft"):
        return interaction_batch(rows, d.max_turns, d.max_interaction_tokens,
                                 getattr(stage_cfg, "loss_on_query", False))
    if stage == "baseline":
        return history_batch(rows, d.max_turns, stage_cfg.max_tokens, d.max_interaction_tokens)
    turns = d.max_turns
    if stage == "smat" and step < stage_cfg.recall_pair_steps:
        rows = recall_pairs(rows)
    elif stage == "smat":
        turns = stage_cfg.turns_at(step, d.max_turns)
        if turns < d.max_turns:
            rows = first_turns(rows, turns)
    return conversation_batch(rows, turns, d.max_interaction_tokens,
                              pad_turns=cfg.deepspeed.zero_stage == 3 and world > 1,
                              weight_per_fact=stage_cfg.recall_weight_per_fact if stage == "smat" else 0.0)


class StageLoop:
    """Short methods, one job each: set up, resume, iterate data, step, report, export."""

    def __init__(self, job: StageJob) -> None:
        import ray.train

        self.job = job
        self.cfg = TrainConfig.from_dict(job.train)
        self.stage_cfg = self.cfg.stage(job.stage)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.position = Position()
        self.resumed_from: int | None = None
        self._budget_clock = BudgetClock()

    # -- setup ----------------------------------------------------------------------------
    def run(self) -> None:
        self._setup_runtime()
        model = self._build_model()
        sizes = _sizes(model)
        self.engine = self._build_engine(model)
        self._resume()
        self.writer = (MetricWriter(self.job.log_dir, self.job.stage, ProgressSender(self.job.progress))
                       if self.rank == 0 else None)
        self._log_start(*sizes)
        try:
            self._train()
            self._export()
        finally:
            if self.writer is not None:
                self.writer.close()

    def _setup_runtime(self) -> None:
        use_gpu = self.cfg.scaling.use_gpu
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
        os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                              os.path.expanduser("~/.cache/rxt_dist/torch_extensions"))
        if not use_gpu:
            torch.set_num_threads(self.cfg.scaling.torch_threads)
            _skip_shm_comm_op()
        import ray.train.torch

        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        torch.manual_seed(self.cfg.run.seed)

    def _build_model(self) -> torch.nn.Module:
        from rxt_dist.model import build_model, compile_for_training, config_from_dict, load_model_dir

        if self.job.init_model_url:
            model = load_model_dir(self.job.init_model_url)
        else:
            model = build_model(config_from_dict(self.job.model_config))
        freeze_for_stage(model, self.job.stage)
        if self.cfg.scaling.compile:
            compile_for_training(model)
        return model

    def _ds_config(self) -> dict[str, Any]:
        ds = self.cfg.deepspeed
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": self.cfg.micro_batch(self.job.stage),
            "gradient_accumulation_steps": self.stage_cfg.grad_accum,
            "train_batch_size": self.stage_cfg.batch_size,
            "gradient_clipping": ds.gradient_clipping,
            "zero_optimization": {**ds.zero_options, "stage": ds.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if ds.precision == "bf16":
            config["bf16"] = {"enabled": True}
        elif ds.precision == "fp16":
            config["fp16"] = {"enabled": True, "initial_scale_power": 12}
        if ds.offload_optimizer:
            config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            # DeepSpeed refuses a client optimizer with offload unless told: it wants its C++
            # DeepSpeedCPUAdam (a JIT build). torch's AdamW steps the CPU partitions correctly.
            config["zero_force_ds_cpu_optimizer"] = False
        return config

    def _build_engine(self, model: torch.nn.Module):
        import deepspeed

        opt = self.cfg.optimizer
        lr = self.stage_cfg.lr or opt.lr
        objective = StageObjective(model, self.job.stage, self.stage_cfg, self.cfg.run.seed)
        # A torch optimizer: DeepSpeed's own AdamW would JIT-compile a C++ op on first use.
        optimizer = build_optimizer(model, opt, lr)
        scheduler = make_scheduler(optimizer, opt, self.stage_cfg, lambda: self.total_steps)
        engine, _, _, _ = deepspeed.initialize(
            model=objective, optimizer=optimizer, lr_scheduler=scheduler, config=self._ds_config()
        )
        return engine

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module.model

    @property
    def total_steps(self) -> int:
        return self.position.total_steps or self.stage_cfg.steps

    # -- checkpoints --------------------------------------------------------------------
    def _resume(self) -> None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as path:
            _, client = self.engine.load_checkpoint(path, tag=CHECKPOINT_TAG)
        self.position = Position(**client["position"])
        self.resumed_from = self.position.step
        if self.rank == 0:
            log.info("[%s] resumed from checkpoint at step %d (epoch %d, batch %d)", self.job.stage,
                     self.position.step, self.position.epoch, self.position.batch_in_epoch)

    def _report(self, metrics: dict[str, Any], with_checkpoint: bool) -> None:
        import ray.train

        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state={"position": asdict(self.position)})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    # -- data -----------------------------------------------------------------------------
    def _collate(self, rows):
        return collate_rows(self.cfg, self.job.stage, rows, self.position.step, self.world)

    def _batches(self) -> Iterator:
        """Micro-batches forever, epoch after epoch, from where a resumed run stopped: each
        epoch's rows and their order are a function of (seed, epoch, rank, world)."""
        from rxt_dist.data import TrainingRows, read_batches, worker_rows

        rows = TrainingRows.from_dict(self.job.rows)
        micro = self.cfg.micro_batch(self.job.stage)
        while True:
            ids = worker_rows(rows, self.cfg.run.seed, self.position.epoch, self.rank, self.world,
                              self.cfg.data.shuffle_buffer)
            if len(ids) < micro:
                raise RuntimeError(f"[{self.job.stage}] worker {self.rank} of {self.world} gets {len(ids)} of the "
                                   f"{rows.num_rows} training rows per epoch, less than a micro-batch of {micro}")
            for batch in read_batches(rows, ids[self.position.batch_in_epoch * micro:], micro):
                self.position.batch_in_epoch += 1
                yield self._collate(batch).to(self.device)
            self.position.epoch += 1
            self.position.batch_in_epoch = 0

    # -- training -----------------------------------------------------------------------
    def _generator(self, micro: int) -> torch.Generator:
        key = f"{self.cfg.run.seed}:{self.rank}:{self.position.step}:{micro}"
        return torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def _loss(self, out: StageOutput) -> torch.Tensor:
        counts = local_counts(out)
        if self.world > 1:
            dist.all_reduce(counts)
        return combine(out, counts, self.world)

    def _micro_step(self, batch, micro: int, window: WindowMetrics) -> None:
        out = self.engine(batch, self._generator(micro))
        loss = self._loss(out)
        self.engine.backward(loss)
        self.engine.step()
        window.add(out, batch.num_tokens)

    def _train(self) -> None:
        if self.position.step >= self.total_steps:
            return
        window = WindowMetrics()
        batches = self._batches()
        started = time.perf_counter() - self.position.train_s
        while self.position.step < self.total_steps:
            self.engine.module.frozen = frozen_at(self.stage_cfg, self.position.step)
            self.engine.module.step = self.position.step
            self.engine.train()
            for micro in range(self.stage_cfg.grad_accum):
                self._micro_step(next(batches), micro, window)
            self.position.step += 1
            self.position.train_s = time.perf_counter() - started
            self._maybe_fail()
            self._maybe_fix_budget()
            self._after_step(window, started)

    def _maybe_fix_budget(self) -> None:
        """With ``time_budget_s``: fix the step count when the budget clock says (after the
        calibration steps, then again after the refining ones; see :class:`BudgetClock`), the
        same on every rank: the slowest rank's times decide."""
        budget = self.stage_cfg.time_budget_s
        if budget is None:
            return
        pos = self.position
        start = self._budget_clock.observe(pos.step, pos.train_s, fixed=pos.total_steps is not None,
                                           total=pos.total_steps)
        if start is None:
            return
        times = torch.tensor([pos.train_s, pos.train_s - start[1]], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
        per_step = float(times[1]) / max(pos.step - start[0], 1)
        again = "again " if pos.total_steps is not None else ""
        pos.total_steps = budget_steps(budget, float(times[0]), pos.step, per_step, self.stage_cfg.steps)
        if self.writer is not None:
            self.writer.note(f"[{self.job.stage}] time budget {budget:.0f}s: {again}{pos.total_steps} steps "
                             f"({per_step:.3f}s per step over steps {start[0]}–{pos.step})")

    def _after_step(self, window: WindowMetrics, started: float) -> None:
        step, ck = self.position.step, self.cfg.checkpoint
        last = step == self.total_steps
        log_now = step % ck.log_every_steps == 0 or last
        report_now = step % ck.report_every_steps == 0 or step % ck.every_steps == 0 or last
        if not (log_now or report_now):
            return
        metrics = window.reduce(self.world)
        self.position.tokens += int(metrics.pop("_tokens", 0))
        metrics.update(self._position_metrics(started))
        if log_now and self.writer is not None:
            self.writer.write(step, self.total_steps, metrics)
        if report_now:
            self._report(metrics, with_checkpoint=step % ck.every_steps == 0 or last)
        window.reset()

    def _position_metrics(self, started: float) -> dict[str, Any]:
        lrs = [g["lr"] for g in self.engine.optimizer.param_groups]
        return {
            "stage": self.job.stage,
            "step": self.position.step,
            "epoch": self.position.epoch,
            "tokens": self.position.tokens,
            "lr": max(lrs),
            "resumed_from_step": -1 if self.resumed_from is None else self.resumed_from,
            "elapsed_s": time.perf_counter() - started,
            "total_steps": self.total_steps,
        }

    # -- failure injection (tests) -----------------------------------------------------
    def _maybe_fail(self) -> None:
        fail_at = self.cfg.failure.fail_once_at_step
        if (fail_at is not None and self.resumed_from is None and self.position.step == fail_at
                and self.rank == self.world - 1):
            log.warning("[%s] testing: worker %d exits abruptly at step %d", self.job.stage, self.rank, fail_at)
            # Ray Train's controller collects reports by polling the workers (every
            # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): a worker that dies within a poll of
            # its last checkpoint report takes that checkpoint with it, and the restart begins from
            # none. The aid is for testing resume from a checkpoint, so let one poll pass first.
            time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
            os._exit(1)

    # -- export -------------------------------------------------------------------------
    def _export(self) -> None:
        from rxt_dist.model import save_model_dir

        from rxt_dist.train.launcher import stage_settings

        metadata = {"stage": self.job.stage, "steps": str(self.position.step),
                    "train_s": f"{self.position.train_s:.1f}",
                    "settings": json.dumps(stage_settings(self.cfg, self.job.stage), sort_keys=True)}
        with self._gathered():
            if self.rank == 0:
                save_model_dir(self.model, self.job.export_url, self.job.tokenizer_json, metadata)
                self.writer.note(f"[{self.job.stage}] exported model to {self.job.export_url}")
        if self.world > 1:
            dist.barrier()

    def _gathered(self):
        """Full parameters on every rank (ZeRO-3 partitions them)."""
        import contextlib

        if self.cfg.deepspeed.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def _log_start(self, total: int, trainable: int) -> None:
        if self.writer is None:
            return
        ds = self.cfg.deepspeed
        resuming = "" if self.resumed_from is None else f", resuming at step {self.resumed_from}"
        micro, accum = self.cfg.micro_batch(self.job.stage), self.stage_cfg.grad_accum
        self.writer.note(f"[{self.job.stage}] {self.world} workers, ZeRO-{ds.zero_stage}, {ds.precision}, "
                         f"micro-batch {micro} × accum {accum}, {total:,} params ({trainable:,} trainable), "
                         f"{self.total_steps} steps{resuming}", start_step=self.position.step)


def _sizes(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters, counted before ZeRO-3 partitions them."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
