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
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from torch import Tensor

from rxt_dist.inference import CompiledDecoder, DecodeBatch, SamplingParams, TokenEvent
from rxt_dist.model import RxTModel, stack_stm
from rxt_dist.tokens import prompt_ids

logger = logging.getLogger(__name__)


class _Inbox:
    """The events decoded for one answer, waiting for its stream to send them.

    The stream sleeps until the next chunk is due and is woken early only by what cannot
    wait: the first event after it has sent everything, or the answer's end (or failure).
    Tokens decoded meanwhile pile up here without waking it — at 32 open answers one wake-up
    per token cost the replica's event loop more than the chunks it sends.
    """

    def __init__(self) -> None:
        self.events: list[TokenEvent | BaseException] = []
        self._waiter: asyncio.Future | None = None
        self._wake_on_any = False

    def put(self, event: TokenEvent | BaseException) -> None:
        self.events.append(event)
        if self._waiter is not None and not self._waiter.done() and (self._wake_on_any or _ends(event)):
            self._waiter.set_result(None)

    def take(self) -> list[TokenEvent | BaseException]:
        events, self.events = self.events, []
        return events

    async def wait(self, timeout_s: float | None) -> None:
        """Until an event arrives (``timeout_s`` None) or, with a timeout, until the answer
        ends or ``timeout_s`` passes."""
        if self.events and (timeout_s is None or any(_ends(e) for e in self.events)):
            return
        if timeout_s is not None and timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._waiter, self._wake_on_any = loop.create_future(), timeout_s is None
        timer = None if timeout_s is None else loop.call_later(timeout_s, _resolve, self._waiter)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _ends(event: TokenEvent | BaseException) -> bool:
    return isinstance(event, BaseException) or event.finished


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class _Request:
    key: int
    prompt: list[int]
    stm: Tensor  # (L, S, D)
    params: SamplingParams
    inbox: _Inbox


@dataclass
class LoopStats:
    """Counters a test or a dashboard reads to see batching happen."""

    steps: int = 0
    admitted: int = 0
    cancelled: int = 0
    max_rows: int = 0
    """Most sequences decoded in one step."""
    iterations: int = 0
    rows: int = 0
    """Sequences stepped or admitted, summed over iterations (÷ ``iterations``: the mean batch)."""
    iteration_s: float = 0.0
    """Wall seconds of the iterations as the event loop awaits them (the hop to the worker thread included)."""
    tick_s: float = 0.0
    tick_cpu_s: float = 0.0
    """Wall and CPU seconds of the iterations on the worker thread (against wall: the wait for a core)."""
    dispatch_s: float = 0.0
    """Wall seconds from the event loop's handing each iteration to the worker thread to its start there."""
    resume_s: float = 0.0
    """Wall seconds from each iteration's end on the worker thread to the event loop's taking up its tokens."""


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
        self.inboxes: dict[int, _Inbox] = {}
        self.cancelled: set[int] = set()
        self.stats = LoopStats()
        self._keys = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._dispatched_at = self._ticked_at = 0.0

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
        return max(self.stream_interval_s, len(self.inboxes) / self.stream_chunks_per_s)

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
        inbox = self.inboxes[key] = _Inbox()
        self.waiting.append(_Request(key, prompt_ids(query_ids), stm, params, inbox))
        self._wake.set()
        finished, tokens, reason = False, [], None
        clock = asyncio.get_running_loop().time
        sent_at: float | None = None  # the first item goes out at once
        try:
            while not finished:
                for ev in inbox.take():
                    if isinstance(ev, BaseException):
                        raise ev
                    if ev.token is not None:
                        tokens.append(ev.token)
                    if ev.finished:
                        finished, reason = True, ev.finish_reason
                due = sent_at is None or finished or clock() >= sent_at + self.interval_s()
                if due and (tokens or finished):
                    yield tokens, reason
                    tokens, sent_at = [], clock()
                if not finished:  # nothing to send yet: the next token; tokens held: their chunk's time
                    await inbox.wait(None if not tokens else sent_at + self.interval_s() - clock())
        finally:
            self.inboxes.pop(key, None)
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
            started = self._dispatched_at = time.perf_counter()
            try:
                events = await asyncio.to_thread(self._tick, admit, cancel)
                self.stats.resume_s += time.perf_counter() - self._ticked_at
            except Exception as exc:  # one bad step must not end the replica's decoding
                logger.exception("decoding step failed; failing the %d sequences in it",
                                 len(self.batch) + len(admit))
                self._fail_all(admit, exc)
                continue
            self.stats.iteration_s += time.perf_counter() - started
            for ev in events:
                inbox = self.inboxes.get(ev.key)
                if inbox is not None:
                    inbox.put(ev)

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
        wall, cpu = time.perf_counter(), time.thread_time()
        self.stats.dispatch_s += wall - self._dispatched_at
        try:
            return self._drop_step_admit(admit, cancel)
        finally:
            self.stats.iterations += 1
            self._ticked_at = time.perf_counter()
            self.stats.tick_s += self._ticked_at - wall
            self.stats.tick_cpu_s += time.thread_time() - cpu

    def _drop_step_admit(self, admit: list[_Request], cancel: set[int]) -> list[TokenEvent]:
        live = {row.key for row in self.batch.rows}
        if cancel & live:
            self.batch.remove(cancel & live)
            self.stats.cancelled += len(cancel & live)
        self.stats.max_rows = max(self.stats.max_rows, len(self.batch) + len(admit))
        self.stats.rows += len(self.batch) + len(admit)
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
            inbox = self.inboxes.get(key)
            if inbox is not None:
                inbox.put(RuntimeError(f"decoding failed: {exc}"))
