"""One stage trained in a single process, without Ray or DeepSpeed: the reference loop.

It runs the *same* stage objective, batch collation, optimizer, parameter groups, learning-rate
schedule and gradient clipping as the Ray Train worker (:mod:`rxt_dist.train.loop`), on the
shards read whole into memory. Two uses: the throughput benchmark measures the distributed
worker against it (what Ray Train + DeepSpeed cost per core), and in-process studies of the
training recipe (``jobs/memory_study.py``) train with it for a wall-clock budget.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.parquet as pq
import torch

from rxt_dist.train.config import TrainConfig, stage_name
from rxt_dist.train.metrics import WindowMetrics
from rxt_dist.train.objectives import StageObjective, combine, local_counts
from rxt_dist.train.optim import build_optimizer, frozen_at, freeze_for_stage, make_scheduler


def read_rows(url: str, split: str, columns: list[str] | None = None) -> dict[str, list]:
    """A conversation split as columns of Python lists (the form the collate functions take)."""
    from rxt_dist.data import read_manifest
    from rxt_dist.data.storage import resolve

    manifest = read_manifest(url)
    fs, _ = resolve(manifest.url)
    tables = []
    for path in manifest.files(split):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    out: dict[str, list] = {}
    for table in tables:
        for name in table.column_names:
            out.setdefault(name, []).extend(table[name].to_pylist())
    return out


def text_view(rows: dict[str, list]) -> dict[str, list]:
    """Stage 1's plain-text view of conversation rows: each conversation's query and answer ids
    in order, one row each (as :func:`rxt_dist.data.training_rows` with ``text=True`` gives the workers)."""
    return {"ids": [[tok for q, a in zip(qs, as_) for tok in (*q, *a)]
                    for qs, as_ in zip(rows["query_ids"], rows["answer_ids"])]}


class PlainLoop:
    """Train ``model`` on ``stage`` of ``cfg`` in this process (one worker's view of the run:
    the global batch, no gradient accumulation split across workers).

    ``workers``: None shuffles the rows whole every epoch; N reads them in the order N Ray Train
    workers do (:mod:`rxt_dist.data.epochs`; each step's batch is worker 0's micro-batch, then
    worker 1's, …), so that a study can replay the data order of a distributed run in one
    process. ``rows`` must then be the whole ``train`` split as :func:`read_rows` gives it."""

    def __init__(self, cfg: TrainConfig, stage: str, model: torch.nn.Module, rows: dict[str, list],
                 workers: int | None = None) -> None:
        from rxt_dist.model import compile_for_training
        from rxt_dist.train.batches import smat_metadata_columns
        from rxt_dist.train.loop import collate_rows

        self.cfg, self.stage = cfg, stage_name(stage)
        if self.stage == "smat":
            smat_metadata_columns(cfg, set(rows))  # an option whose columns the data lacks is an error
        self.stage_cfg = cfg.stage(self.stage)
        self.rows = text_view(rows) if self.stage == "joint_lm" and self.stage_cfg.use_text else rows
        self.collate = lambda batch: collate_rows(cfg, self.stage, batch, self.step, world=1)
        freeze_for_stage(model, self.stage)
        if cfg.scaling.compile:
            compile_for_training(model)
        self.objective = StageObjective(model, self.stage, self.stage_cfg, cfg.run.seed)
        opt = cfg.optimizer
        self.optimizer = build_optimizer(model, opt, self.stage_cfg.lr or opt.lr)
        self.scheduler = make_scheduler(self.optimizer, opt, self.stage_cfg)
        self.step = 0
        self.tokens = 0
        if workers is not None and (workers < 1 or self.stage_cfg.grad_accum != 1):
            raise ValueError(f"workers={workers}: needs workers >= 1 and stages.{self.stage}.grad_accum=1")
        self._batches = self._iterate() if workers is None else self._worker_order(workers)

    @property
    def model(self) -> torch.nn.Module:
        return self.objective.model

    def _iterate(self) -> Iterator[dict[str, list]]:
        n = len(self.rows["conversation_id"] if "conversation_id" in self.rows else next(iter(self.rows.values())))
        size = self.stage_cfg.batch_size // self.stage_cfg.grad_accum
        epoch = 0
        while True:
            order = list(range(n))
            random.Random(self.cfg.run.seed + epoch).shuffle(order)
            for start in range(0, n - size + 1, size):
                picked = order[start:start + size]
                yield {k: [v[i] for i in picked] for k, v in self.rows.items()}
            epoch += 1

    def _worker_order(self, workers: int) -> Iterator[dict[str, list]]:
        from rxt_dist.data import read_manifest
        from rxt_dist.data.epochs import TrainingRows, TrainingShard, worker_rows

        files = read_manifest(self.cfg.data.url).split("train").files
        shards = TrainingRows(self.cfg.data.url, tuple(TrainingShard(f.path, f.rows) for f in files), ())
        n = len(next(iter(self.rows.values())))
        if shards.num_rows != n:
            raise ValueError(f"workers={workers}: the rows given ({n}) are not the train split of "
                             f"{self.cfg.data.url} ({shards.num_rows} rows)")
        micro = self.stage_cfg.batch_size // workers
        if micro < 1 or micro * workers != self.stage_cfg.batch_size:
            raise ValueError(f"workers={workers}: stages.{self.stage}.batch_size={self.stage_cfg.batch_size} "
                             "must be a multiple of it")

        def replay() -> Iterator[dict[str, list]]:
            epoch = 0
            while True:
                ids = [worker_rows(shards, self.cfg.run.seed, epoch, r, workers, self.cfg.data.shuffle_buffer)
                       for r in range(workers)]
                for start in range(0, len(ids[0]) - micro + 1, micro):
                    picked = [int(i) for share in ids for i in share[start:start + micro]]
                    yield {k: [v[i] for i in picked] for k, v in self.rows.items()}
                epoch += 1

        return replay()

    def train_step(self, window: WindowMetrics) -> None:
        """One optimizer step (``grad_accum`` micro-batches)."""
        self.objective.frozen = frozen_at(self.stage_cfg, self.step)
        self.objective.step = self.step
        self.objective.train()
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(self.stage_cfg.grad_accum):
            batch = self.collate(next(self._batches))
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.cfg.run.seed}:0:{self.step}:{micro}".encode()))
            out = self.objective(batch, gen)
            combine(out, local_counts(out), 1).div(self.stage_cfg.grad_accum).backward()
            window.add(out, batch.num_tokens)
            self.tokens += batch.num_tokens
        if self.cfg.deepspeed.gradient_clipping:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.deepspeed.gradient_clipping)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def run(self, steps: int | None = None, seconds: float | None = None, every: int = 20,
            on_window: Callable[[int, dict[str, Any]], bool | None] | None = None) -> None:
        """Train until ``steps`` steps (default: the stage's) or ``seconds`` of training time.
        Every ``every`` steps ``on_window(step, metrics)`` gets the window's metrics; time it
        spends (an evaluation) is not counted in ``seconds``; returning True stops training."""
        steps = steps if steps is not None else self.stage_cfg.steps
        window = WindowMetrics()
        spent = 0.0
        while self.step < steps and (seconds is None or spent < seconds):
            started = time.perf_counter()
            self.train_step(window)
            spent += time.perf_counter() - started
            if on_window is not None and (self.step % every == 0 or self.step == steps):
                metrics = window.reduce(1)
                metrics.update(step=self.step, train_s=spent, tokens=self.tokens,
                               lr=max(g["lr"] for g in self.optimizer.param_groups))
                stop = on_window(self.step, metrics)
                window.reset()
                if stop:
                    break
        self.train_seconds = spent
