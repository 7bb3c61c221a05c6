"""Training throughput: tokens/s of one stage for several (workers, ZeRO stage) settings.

Each setting is a short real run of the stage on Ray Train with DeepSpeed (the same code
path as training); throughput is the mean of the logging windows after the first, which
holds start-up and the first steps' allocation. :func:`measure_plain` runs the same stage,
model and per-worker batch in one plain PyTorch process (:mod:`rxt_dist.train.plain`), the
reference for what Ray Train + DeepSpeed cost per core.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from rxt_dist.train.config import TrainConfig, stage_name
from rxt_dist.train.launcher import PREVIOUS, export_url, log_dir, run_stage

log = logging.getLogger("rxt_dist.train")


@dataclass(frozen=True)
class Setting:
    """One measured configuration."""

    workers: int
    zero_stage: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be ≥ 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}: must be 0, 1, 2 or 3")

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``"2x3"`` → 2 workers, ZeRO-3."""
        try:
            workers, zero = text.lower().split("x")
            return cls(int(workers), int(zero))
        except ValueError as exc:
            raise ValueError(f"setting {text!r}: expected WORKERSxZERO, e.g. 2x2 ({exc})") from None


def _setting_config(base: TrainConfig, stage: str, setting: Setting, steps: int, window: int) -> TrainConfig:
    cfg = copy.deepcopy(base)
    cfg.run.name = f"{base.run.name}-throughput-{setting.workers}x{setting.zero_stage}"
    cfg.scaling.num_workers = setting.workers
    cfg.scaling.cpus_per_worker = min(base.scaling.cpus_per_worker, 2.0 / setting.workers)
    cfg.deepspeed.zero_stage = setting.zero_stage
    st = cfg.stage(stage)
    st.steps = steps
    if stage == "smat":
        _whole_conversations(st)
    cfg.checkpoint.every_steps = steps
    cfg.checkpoint.report_every_steps = steps
    cfg.checkpoint.log_every_steps = window
    cfg.check_batch(stage)
    return cfg


def _whole_conversations(st) -> None:
    """Throughput of whole conversations, not of the warm-up's pairs or the curriculum's cuts."""
    st.recall_pair_steps = 0
    st.curriculum_turns = 0
    st.curriculum_steps = 0


def _windows(cfg: TrainConfig, stage: str) -> list[float]:
    path = os.path.join(log_dir(cfg), stage, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line)["tokens_per_s"] for line in f]


def measure(base: TrainConfig, stage: str, settings: list[Setting], steps: int = 60, window: int = 15,
            start_model: Any = None) -> list[dict[str, Any]]:
    """Run ``stage`` for ``steps`` steps under each setting; return one row per setting with
    the steady-state tokens/s. Stages after the first start from ``start_model`` (a model
    written to the previous stage's export location of each throwaway run)."""
    from rxt_dist.model import save_model_dir

    stage = stage_name(stage)
    rows = []
    for setting in settings:
        cfg = _setting_config(base, stage, setting, steps, window)
        if stage in PREVIOUS:
            save_model_dir(start_model, export_url(cfg, PREVIOUS[stage]))
        started = time.perf_counter()
        result = run_stage(cfg, stage)
        wall = time.perf_counter() - started
        steady = _windows(cfg, stage)[1:] or _windows(cfg, stage)
        rows.append({
            "workers": setting.workers, "zero_stage": setting.zero_stage,
            "tokens_per_s": sum(steady) / len(steady), "windows_tokens_per_s": steady,
            "steps": steps, "global_batch": cfg.stage(stage).batch_size,
            "wall_s": wall, "loss": result.metrics.get("loss"),
        })
        log.info("%d worker(s), ZeRO-%d: %.0f tokens/s (wall %.0fs)", setting.workers,
                 setting.zero_stage, rows[-1]["tokens_per_s"], wall)
    return rows


def measure_plain(base: TrainConfig, stage: str, steps: int = 60, window: int = 15, start_model: Any = None,
                  batch_size: int | None = None, processes: int = 1) -> dict[str, Any]:
    """Tokens/s of ``stage`` in plain single-process loops on one thread each, at ``batch_size``
    rows per step (default: one worker's share of the global batch under ``base.scaling``),
    steady-state windows as in :func:`measure`. With ``processes`` > 1 that many loops run side
    by side (each on its own core, as the workers do) and their rates add up — the per-core
    reference for a multi-worker run, which also pays for both cores being busy."""
    import multiprocessing

    stage = stage_name(stage)
    cfg = copy.deepcopy(base)
    st = cfg.stage(stage)
    st.batch_size = batch_size or base.micro_batch(stage) * st.grad_accum
    st.steps = steps
    if stage == "smat":
        _whole_conversations(st)
    args = (cfg.to_dict(), stage, steps, window, start_model)
    started = time.perf_counter()
    if processes == 1:
        rates = [_plain_rate(*args)]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            rates = pool.starmap(_plain_rate, [args] * processes)
    wall = time.perf_counter() - started
    row = {"workers": f"plain×{processes}" if processes > 1 else "plain", "zero_stage": None, "processes": processes,
           "tokens_per_s": sum(sum(r[1:] or r) / len(r[1:] or r) for r in rates),
           "windows_tokens_per_s": rates, "steps": steps, "global_batch": st.batch_size * processes, "wall_s": wall}
    log.info("plain loop ×%d (1 thread, batch %d each): %.0f tokens/s", processes, st.batch_size, row["tokens_per_s"])
    return row


def _plain_rate(cfg_dict: dict[str, Any], stage: str, steps: int, window: int, start_model: Any) -> list[float]:
    """One plain loop on one thread: the tokens/s of each logging window."""
    import torch

    from rxt_dist.train.plain import PlainLoop, read_rows

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(cfg_dict)
    windows: list[float] = []
    loop = PlainLoop(cfg, stage, copy.deepcopy(start_model), read_rows(cfg.data.url, "train"))
    loop.run(steps=steps, every=window, on_window=lambda step, m: windows.append(m["tokens_per_s"]))
    return windows
