"""Continuous batching for one decoder replica: concurrent requests decode together.

Shape legend: L layers, S memory slots, D model dim.

:class:`DecodeLoop` owns one :class:`~rxt_dist.inference.DecodeBatch` and a background
asyncio task. Each request joins a waiting list; between two decoding steps the loop
drops the sequences whose client went away, decodes one token for every live sequence and
admits the waiting ones (prefill + first token). The model runs in a worker thread, so the
event loop keeps streaming tokens and accepting requests while a step computes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from torch import Tensor

from rxt_dist.inference import CompiledDecoder, DecodeBatch, SamplingParams, TokenEvent
from rxt_dist.model import RxTModel, stack_stm
from rxt_dist.tokens import prompt_ids

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    key: int
    prompt: list[int]
    stm: Tensor  # (L, S, D)
    params: SamplingParams
    queue: asyncio.Queue


@dataclass
class LoopStats:
    """Counters a test or a dashboard reads to see batching happen."""

    steps: int = 0
    admitted: int = 0
    cancelled: int = 0
    max_rows: int = 0
    """Most sequences decoded in one step."""


class DecodeLoop:
    """Decode many answers of one RxT model together, admitting new ones between steps."""

    def __init__(self, model: RxTModel, max_batch_size: int = 32, compiled: CompiledDecoder | None = None,
                 stream_interval_s: float = 0.0, stream_chunks_per_s: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: must be ≥ 1")
        if stream_interval_s < 0:
            raise ValueError(f"stream_interval_s={stream_interval_s}: must be ≥ 0")
        if stream_chunks_per_s < 0:
            raise ValueError(f"stream_chunks_per_s={stream_chunks_per_s}: must be ≥ 0 (0: no budget)")
        self.model = model
        self.max_batch_size = max_batch_size
        self.compiled = compiled
        self.stream_interval_s = stream_interval_s
        self.stream_chunks_per_s = stream_chunks_per_s
        self.batch = DecodeBatch(model, compiled=compiled)
        self.waiting: deque[_Request] = deque()
        self.queues: dict[int, asyncio.Queue] = {}
        self.cancelled: set[int] = set()
        self.stats = LoopStats()
        self._keys = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def healthy(self) -> bool:
        """False once the background task has died (the replica should be replaced)."""
        return self._task is None or not self._task.done()

    def interval_s(self) -> float:
        """The least time between two chunks of an answer now: ``stream_interval_s``, stretched
        so that this loop's open streams together send at most ``stream_chunks_per_s`` chunks
        a second (every chunk costs the serving path the same whatever tokens it carries)."""
        if not self.stream_chunks_per_s:
            return self.stream_interval_s
        return max(self.stream_interval_s, len(self.queues) / self.stream_chunks_per_s)

    def _ensure_running(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run())

    async def stream(self, query_ids: list[int], stm: Tensor, params: SamplingParams
                     ) -> AsyncIterator[tuple[list[int], str | None]]:
        """Answer one query from its STM (L, S, D).

        Yields ``(new_tokens, finish_reason)``: the tokens decoded since the last yield and,
        on the last item only, ``"stop"`` or ``"length"``. The first item goes out as soon as
        the first token is decoded; later ones at most every :meth:`interval_s` (0: as soon as
        the consumer asks), the last one as soon as decoding ends. Closing the iterator early
        (the client went away) removes the sequence from the batch.
        """
        self._ensure_running()
        key = next(self._keys)
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[key] = queue
        self.waiting.append(_Request(key, prompt_ids(query_ids), stm, params, queue))
        self._wake.set()
        finished, tokens, reason = False, [], None
        clock = asyncio.get_running_loop().time
        sent_at: float | None = None  # the first item goes out at once
        try:
            while not finished:
                interval = self.interval_s()
                wait = None if sent_at is None or not tokens else sent_at + interval - clock()
                if wait is not None and wait <= 0:
                    events = []
                elif wait is None:
                    events = [await queue.get()]
                else:
                    try:
                        events = [await asyncio.wait_for(queue.get(), wait)]
                    except TimeoutError:
                        events = []
                while not queue.empty():
                    events.append(queue.get_nowait())
                for ev in events:
                    if isinstance(ev, BaseException):
                        raise ev
                    if ev.token is not None:
                        tokens.append(ev.token)
                    if ev.finished:
                        finished, reason = True, ev.finish_reason
                due = sent_at is None or finished or clock() >= sent_at + interval
                if due and (tokens or finished):
                    yield tokens, reason
                    tokens, sent_at = [], clock()
        finally:
            self.queues.pop(key, None)
            if not finished:
                self.cancelled.add(key)
                self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self.waiting and not len(self.batch) and not self.cancelled:
                self._wake.clear()
                await self._wake.wait()
                continue
            cancel, self.cancelled = self.cancelled, set()
            admit = self._take_waiting(cancel)
            try:
                events = await asyncio.to_thread(self._tick, admit, cancel)
            except Exception as exc:  # one bad step must not end the replica's decoding
                logger.exception("decoding step failed; failing the %d sequences in it",
                                 len(self.batch) + len(admit))
                self._fail_all(admit, exc)
                continue
            for ev in events:
                queue = self.queues.get(ev.key)
                if queue is not None:
                    queue.put_nowait(ev)

    def _take_waiting(self, cancel: set[int]) -> list[_Request]:
        """Drop every waiting request whose client went away (not only those that would be
        admitted now: a full batch must not keep them for later), then admit what fits."""
        if cancel:
            kept = deque(req for req in self.waiting if req.key not in cancel)
            self.stats.cancelled += len(self.waiting) - len(kept)
            self.waiting = kept
        admit = []
        while self.waiting and len(self.batch) + len(admit) < self.max_batch_size:
            admit.append(self.waiting.popleft())
        return admit

    def _tick(self, admit: list[_Request], cancel: set[int]) -> list[TokenEvent]:
        """One loop iteration (worker thread): drop, step, admit."""
        live = {row.key for row in self.batch.rows}
        if cancel & live:
            self.batch.remove(cancel & live)
            self.stats.cancelled += len(cancel & live)
        self.stats.max_rows = max(self.stats.max_rows, len(self.batch) + len(admit))
        events = self.batch.step() if len(self.batch) else []
        if len(events):
            self.stats.steps += 1
        if admit:
            stm = stack_stm([r.stm for r in admit])  # (L, B, S, D)
            events += self.batch.admit([r.key for r in admit], [r.prompt for r in admit],
                                       [r.params for r in admit], stm=stm)
            self.stats.admitted += len(admit)
        return events

    def _fail_all(self, admit: list[_Request], exc: Exception) -> None:
        keys = [row.key for row in self.batch.rows] + [r.key for r in admit]
        self.batch = DecodeBatch(self.model, compiled=self.compiled)
        for key in keys:
            queue = self.queues.get(key)
            if queue is not None:
                queue.put_nowait(RuntimeError(f"decoding failed: {exc}"))
