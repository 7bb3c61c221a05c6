"""Training metrics: accumulate over a logging window, reduce across workers, write out.

Rank 0 writes each reduced window as a progress line (``logging``), a TensorBoard scalar
set and a line of ``metrics.jsonl`` in the stage's log directory, and sends it to the driver's
progress display (:mod:`rxt_dist.train.progress`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from rxt_dist.train.objectives import StageOutput

log = logging.getLogger("rxt_dist.train")


class WindowMetrics:
    """Sums of loss terms and metrics since the last reset (this worker only)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, list[float]] = {}
        self.weights: dict[str, float] = {}
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, out: StageOutput, tokens: int) -> None:
        for name, term in out.terms.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(term.total.detach())
            acc[1] += float(term.count)
            self.weights[name] = term.weight
        for name, (value, count) in out.metrics.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += value
            acc[1] += count
        self.tokens += tokens

    def reduce(self, world: int) -> dict[str, Any]:
        """Means over all workers: every term, their weighted sum ``loss``, ``ppl`` (of the
        autoregressive term), metrics, and ``tokens_per_s`` over the window."""
        names = sorted(self.sums)
        flat = torch.tensor([v for n in names for v in self.sums[n]] + [float(self.tokens)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(flat)
        means = {n: flat[2 * i].item() / max(flat[2 * i + 1].item(), 1.0) for i, n in enumerate(names)}
        tokens = flat[-1].item()
        out: dict[str, Any] = {f"{n}": v for n, v in means.items()}
        out["loss"] = sum(self.weights[n] * means[n] for n in self.weights)
        if "ar" in means:
            out["ppl"] = math.exp(min(means["ar"], 50.0))
        out["tokens_per_s"] = tokens / max(time.perf_counter() - self.started, 1e-9)
        out["_tokens"] = tokens
        return out


class MetricWriter:
    """Progress lines, TensorBoard events and metrics.jsonl (rank 0); each window and note also
    goes to ``sender`` (a :class:`~rxt_dist.train.progress.ProgressSender`), for the driver."""

    def __init__(self, log_dir: str, stage: str, sender: Any = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.stage = stage
        self.sender = sender
        self.dir = os.path.join(log_dir, stage)
        os.makedirs(self.dir, exist_ok=True)
        self.tb = SummaryWriter(self.dir)
        self.jsonl = open(os.path.join(self.dir, "metrics.jsonl"), "a")
        self.started = time.perf_counter()

    def write(self, step: int, total: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key not in ("step",):
                self.tb.add_scalar(f"{self.stage}/{key}", value, step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        log.info(progress_line(self.stage, step, total, metrics, time.perf_counter() - self.started))
        if self.sender is not None:
            self.sender.send({"kind": "metrics", "step": step, "total": total, "metrics": metrics})

    def note(self, text: str, start_step: int | None = None) -> None:
        """A line about the stage (its start — then ``start_step`` — a time budget, the export)."""
        log.info(text)
        if self.sender is not None:
            self.sender.send({"kind": "note", "text": text, "step": start_step})

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()


def progress_line(stage: str, step: int, total: int, m: dict[str, Any], elapsed: float) -> str:
    """``[smat] step 120/600 (20%) | loss 2.310 | ar 2.300 | ppl 9.97 | acc 45.2% | 8.2k tok/s |
    lr 1.9e-03 | eta 3m10s``."""
    parts = [f"[{stage}] step {step}/{total} ({100 * step // total}%)", f"loss {m['loss']:.3f}"]
    for key in ("ar", "mlm", "cosine", "aux"):
        if key in m and (key != "aux" or m[key]):
            parts.append(f"{key} {m[key]:.3f}")
    if "ppl" in m:
        parts.append(f"ppl {m['ppl']:.2f}")
    if "acc" in m:
        parts.append(f"acc {100 * m['acc']:.1f}%")
    if "value_acc" in m:
        parts.append(f"value acc {100 * m['value_acc']:.1f}%")
    if "echo_acc" in m:
        parts.append(f"echo acc {100 * m['echo_acc']:.1f}%")
    if "cos_sim" in m:
        parts.append(f"cos {m['cos_sim']:.3f}")
    layers = sorted(k for k in m if k.startswith("mem_cos_l"))
    if layers:
        parts.append("slot cos " + "/".join(f"{m[k]:.2f}" for k in layers))
    parts.append(f"{m['tokens_per_s'] / 1000:.1f}k tok/s")
    parts.append(f"lr {m['lr']:.1e}")
    done = max(step - max(m.get("resumed_from_step", -1), 0), 1)
    eta = elapsed / done * (total - step)
    parts.append(f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
    return " | ".join(parts)
