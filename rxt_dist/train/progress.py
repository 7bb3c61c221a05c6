"""A running stage's progress on the driver: a tqdm bar on a terminal, log lines elsewhere.

``trainer.fit()`` blocks the driver until the stage ends, and Ray Train hands back reported
metrics only then. So the rank-0 worker also puts each metric window (and a few notes: the
start, a time budget's step count, the export) on a Ray queue the driver created — an actor, so
it works when the workers run on other nodes — and a thread on the driver takes them off while
``fit()`` runs.

Items are plain dicts: ``{"kind": "note", "text": ..., "step": ...}`` and
``{"kind": "metrics", "step": ..., "total": ..., "metrics": {...}}``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any

from rxt_dist.train.metrics import progress_line

log = logging.getLogger("rxt_dist.train")

POLL_S = 0.5
"""How long one wait on the queue lasts before the thread checks whether the stage is over."""


class ProgressSender:
    """Worker side (rank 0): puts items on the driver's queue. A queue that stopped answering
    (the driver went away) turns sending off: progress is not worth failing a stage over."""

    def __init__(self, queue: Any | None) -> None:
        self.queue = queue

    def send(self, item: dict[str, Any]) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(item)
        except Exception:  # noqa: BLE001 — any failure of the queue actor
            log.warning("progress queue unreachable: the driver shows no more progress for this stage")
            self.queue = None


class StageProgress:
    """Shows one stage's progress on the driver while its workers train (a context manager).

    ``bar``: draw a tqdm bar (steps, loss, tokens/s, ETA) — by default only when stderr is a
    terminal, as a bar redraws itself with carriage returns that a pipe or a log file keeps;
    without it every metric window becomes one log line.
    """

    def __init__(self, stage: str, total_steps: int, bar: bool | None = None) -> None:
        self.stage = stage
        self.total = total_steps
        self.draw_bar = sys.stderr.isatty() if bar is None else bar
        self.queue: Any = None
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> StageProgress:
        from ray.util.queue import Queue

        if self.draw_bar:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._exit.enter_context(logging_redirect_tqdm())  # log lines above the bar, not through it
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._thread = threading.Thread(target=self._poll, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._drain()
        if self._bar is not None:
            self._bar.close()
        with contextlib.suppress(Exception):
            self.queue.shutdown(force=True)  # nothing left in it to wait for
        self._exit.close()

    # -- taking items off the queue --------------------------------------------------------
    def _poll(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=POLL_S)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 — Ray shut down under us: nothing more will come
                return
            self.show(item)

    def _drain(self) -> None:
        """What the workers sent after the thread's last look (the final window, the export)."""
        with contextlib.suppress(Exception):
            for item in self.queue.get_nowait_batch(self.queue.qsize()):
                self.show(item)

    # -- showing them ------------------------------------------------------------------------
    def show(self, item: dict[str, Any]) -> None:
        if item.get("kind") == "metrics":
            self._show_metrics(item["step"], item["total"], item["metrics"])
        elif item.get("kind") == "note":
            self._show_note(item["text"], item.get("step"))

    def _show_note(self, text: str, start_step: int | None) -> None:
        log.info(text)
        if start_step is not None and self.draw_bar:
            self._new_bar(start_step)

    def _new_bar(self, step: int) -> None:
        """A bar from ``step`` (a restarted worker group starts a new one at its checkpoint), so
        tqdm's rate and ETA count only steps trained in this run."""
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=self.total, initial=step, desc=f"[{self.stage}]", unit="step",
                         dynamic_ncols=True, file=sys.stderr)

    def _show_metrics(self, step: int, total: int, m: dict[str, Any]) -> None:
        self.total = total  # a time budget fixes the step count after the first steps
        if not self.draw_bar:
            log.info(progress_line(self.stage, step, total, m, m.get("elapsed_s", 0.0)))
            return
        if self._bar is None:
            self._new_bar(0)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.set_postfix_str(f"loss {m['loss']:.3f}, {m['tokens_per_s'] / 1000:.1f}k tok/s", refresh=False)
        self._bar.update(step - self._bar.n)


__all__ = ["ProgressSender", "StageProgress"]
