"""Applying a batch of memory updates, Ray-free, each item on its own.

The MemoryUpdater deployment (``serve/updater.py``) calls :func:`apply_updates` for a batch of
``(session, base_version)`` items. One item's trouble — its store shard unreachable, its
memory of another shape, its interaction failing the model — never fails the others: the
batch is consolidated in one forward pass, and if that raises, item by item to find the one
at fault. An update that can never apply is recorded on its session (``fail_update``), so the
session's next turn gets a clear error and a way out instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from rxt_dist.inference import CompiledMemoryUpdate, consolidate
from rxt_dist.model import RxTModel, split_stm, stack_stm, stm_from_bytes, stm_to_bytes
from rxt_dist.serving.protocol import StoreStatus, log_id, status

logger = logging.getLogger(__name__)

StoreOf = Callable[[str], Callable[..., Awaitable[Any]]]
"""``store_of(sid)(method, *args)``: one call to the shard that owns ``sid``. Sessions of one
shard get equal callables: a batch's commits go to each shard in one ``commit_updates`` call."""
KnownStm = Callable[[str, int, str], bytes | None]
"""``known(sid, version, digest)``: the bytes of that STM if the caller holds them, else None."""


def _consolidate(model: RxTModel, memories: list[torch.Tensor], inputs: list[dict],
                 compiled: CompiledMemoryUpdate | None = None) -> list[bytes]:
    stm = stack_stm(memories)  # (L, B, S, D)
    new = consolidate(model, stm, [r["query_ids"] for r in inputs], [r["answer_ids"] for r in inputs], compiled)
    return [stm_to_bytes(s) for s in split_stm(new.cpu())]


def consolidate_each(model: RxTModel, memories: list[torch.Tensor], inputs: list[dict],
                     compiled: CompiledMemoryUpdate | None = None) -> list[bytes | Exception]:
    """The new STM bytes of every item, batched (through ``compiled`` where given); when the
    batch fails, item by item so only the items at fault carry their exception."""
    try:
        return _consolidate(model, memories, inputs, compiled)
    except Exception:
        if len(inputs) == 1:
            raise
    results: list[bytes | Exception] = []
    for memory, item in zip(memories, inputs):
        try:
            results.extend(_consolidate(model, [memory], [item], compiled))
        except Exception as exc:
            results.append(exc)
    return results


async def apply_updates(model: RxTModel, items: list[tuple], store_of: StoreOf,
                        delay_s: float = 0.0, before_commit: Callable[[str, int, bytes], None] | None = None,
                        timings: dict[str, float] | None = None, known: KnownStm | None = None,
                        compiled: CompiledMemoryUpdate | None = None) -> list[dict]:
    """Apply the pending update of each ``(session, base_version)``; one result per item:
    the store's answer to the commit (``applied``, ``already_applied``, …), ``failed`` (with
    ``error``) when the update can never apply, or ``unavailable`` when a store call failed
    (the dispatcher retries those). ``delay_s`` (a test knob) waits between consolidating
    and committing. ``before_commit(session, new_version, stm)`` is called for each new STM
    just before its commit is sent (the commit may still lose to another computation of the
    same version). ``timings``, if given, accumulates the seconds (wall) of the batch's three
    phases: ``read_s`` (the gathered input reads), ``consolidate_s``, ``commit_s`` (the gathered
    commits), and of the consolidation on its thread (``consolidate_run_s``, ``consolidate_cpu_s``);
    and the CPU seconds of each phase on the calling thread, the event loop's (``read_loop_cpu_s``,
    …; other coroutines' work interleaved there counts too), and in the whole process
    (``read_proc_cpu_s``, …: every thread's, the consolidation's and Ray's own included).
    ``compiled``: consolidate through this compiled memory update.

    An item may carry a third element, the turn as its dispatcher recorded it (:func:`recorded_turn`:
    its tokens, the lease it was recorded under, the digest of the STM it was answered from).
    When ``known`` holds that STM, the item is not read from the store, and its commit applies
    only while the pending update is still the one recorded under that lease."""
    stm_shape = model.cfg.stm_shape
    clock = _clocks()
    given = [_known_input(item, known) for item in items]
    inputs = await asyncio.gather(*(_input(item, local, store_of) for item, local in zip(items, given)),
                                  return_exceptions=True)
    results: list[dict] = [{} for _ in items]
    todo, memories, broken = [], [], []
    for i, r in enumerate(inputs):
        if isinstance(r, Exception):
            results[i] = _unavailable(r)
        elif status(r) != StoreStatus.OK:
            results[i] = {"status": r["status"], "version": r.get("version")}
        else:
            try:
                memories.append(stm_from_bytes(r["stm"], stm_shape))  # (L, S, D)
                todo.append(i)
            except ValueError as exc:  # a session written by a model with another memory size
                results[i] = {"status": StoreStatus.INCOMPATIBLE, "error": str(exc)}
                broken.append(i)
    clock = _lap(timings, "read", clock)
    new_stms: dict[int, bytes] = {}
    if todo:
        stms = await asyncio.to_thread(_timed_consolidate, timings, model, memories, [inputs[i] for i in todo],
                                       compiled)
        for i, stm in zip(todo, stms):
            if isinstance(stm, Exception):
                results[i] = {"status": StoreStatus.FAILED, "error": f"{type(stm).__name__}: {stm}"}
                broken.append(i)
            else:
                new_stms[i] = stm
    commits = sorted(new_stms)
    clock = _lap(timings, "consolidate", clock)
    if delay_s and commits:
        await asyncio.sleep(delay_s)
    if before_commit is not None:
        for i in commits:
            before_commit(items[i][0], items[i][1] + 1, new_stms[i])
    outcomes = await _commit(store_of, [(items[i][0], items[i][1], new_stms[i],
                                         None if given[i] is None else given[i]["lease"]) for i in commits])
    for i, outcome in zip(commits, outcomes):
        results[i] = outcome
    _lap(timings, "commit", clock)
    await asyncio.gather(*(store_of(items[i][0])("fail_update", items[i][0], items[i][1], results[i]["error"])
                           for i in broken), return_exceptions=True)
    for i in broken:
        logger.warning("session %s: the update of version %d cannot apply: %s", log_id(items[i][0]), items[i][1],
                       results[i]["error"])
    return results


async def _commit(store_of: StoreOf, commits: list[tuple]) -> list[dict]:
    """The store's answer to each ``(sid, base_version, stm, lease)`` commit, sent as one
    ``commit_updates`` call per shard, the shards' calls gathered; every commit of a call
    that failed answers ``unavailable``."""
    shards: dict[Callable, list[int]] = {}
    for k, commit in enumerate(commits):
        shards.setdefault(store_of(commit[0]), []).append(k)
    answers = await asyncio.gather(*(_commit_shard(call, [commits[k] for k in ks]) for call, ks in shards.items()),
                                   return_exceptions=True)
    outcomes: list[dict] = [{} for _ in commits]
    for ks, answer in zip(shards.values(), answers):
        for j, k in enumerate(ks):
            outcomes[k] = _unavailable(answer) if isinstance(answer, Exception) else answer[j]
    return outcomes


async def _commit_shard(call: Callable[..., Awaitable[Any]], commits: list[tuple]) -> list[dict]:
    try:
        return await call("commit_updates", commits)
    except AttributeError:
        # A shard started by an older version, without ``commit_updates``: the shards are
        # detached actors and outlive a redeploy (``serve/store.py``). One call per commit.
        answers = await asyncio.gather(*(call("commit_update", *commit) for commit in commits), return_exceptions=True)
        return [_unavailable(a) if isinstance(a, Exception) else a for a in answers]


def _unavailable(exc: Exception) -> dict:
    return {"status": StoreStatus.UNAVAILABLE, "error": repr(exc)}


def recorded_turn(query_ids: list[int], answer_ids: list[int], lease: str, stm_digest: str) -> dict:
    """What a dispatcher knows of the turn it recorded, sent along with its update."""
    return {"query_ids": list(query_ids), "answer_ids": list(answer_ids), "lease": lease, "stm_digest": stm_digest}


def _known_input(item: tuple, known: KnownStm | None) -> dict | None:
    """The update's input without reading the store: the recorded turn sent with it and the
    STM it was answered from, if ``known`` holds exactly that STM (version and digest)."""
    turn = item[2] if len(item) > 2 else None
    if turn is None or known is None:
        return None
    stm = known(item[0], item[1], turn["stm_digest"])
    return None if stm is None else {"status": StoreStatus.OK, "stm": stm, **turn}


async def _input(item: tuple, local: dict | None, store_of: StoreOf) -> dict:
    return local if local is not None else await store_of(item[0])("update_input", item[0], item[1])


def _timed_consolidate(timings: dict[str, float] | None, *args) -> list[bytes | Exception]:
    """:func:`consolidate_each` on the worker thread, adding to ``timings`` the seconds it ran
    there (``consolidate_run_s``, wall) and the thread's CPU seconds (``consolidate_cpu_s``):
    against ``consolidate_s`` they tell the hop to the thread and the wait for a core apart."""
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        return consolidate_each(*args)
    finally:
        if timings is not None:
            timings["consolidate_run_s"] = timings.get("consolidate_run_s", 0.0) + time.perf_counter() - wall
            timings["consolidate_cpu_s"] = timings.get("consolidate_cpu_s", 0.0) + time.thread_time() - cpu


Clocks = tuple[float, float, float]
"""Wall time, a thread's CPU time, the process's CPU time (:func:`_clocks`)."""


def _clocks() -> Clocks:
    """Wall time, this thread's CPU time and the process's CPU time, now."""
    return time.perf_counter(), time.thread_time(), time.process_time()


def _lap(timings: dict[str, float] | None, phase: str, since: Clocks) -> Clocks:
    """Add the seconds since ``since`` (:func:`_clocks`) to ``timings``: the wall's to
    ``{phase}_s``, the CPU of the calling thread (the event loop's) to ``{phase}_loop_cpu_s``
    and the process's to ``{phase}_proc_cpu_s``; the clocks now."""
    now = _clocks()
    if timings is not None:
        for suffix, start, end in zip(("_s", "_loop_cpu_s", "_proc_cpu_s"), since, now):
            timings[phase + suffix] = timings.get(phase + suffix, 0.0) + end - start
    return now


class UpdateBatcher:
    """Runs ``apply(items)`` on batches of submitted items, one batch at a time: items submitted
    while a batch runs wait and go together in the next one (up to ``max_size``); a batch starts
    ``wait_s`` after its first item, to let a few more arrive. Each caller gets its item's result.

    Ray Serve's ``@serve.batch`` (2.60) forms a batch from what arrives within its wait and then
    queues that batch behind the running one, so updates arriving during a batch went one per
    batch; this batcher forms the next batch only when the previous one has finished.
    """

    def __init__(self, apply: Callable[[list[Any]], Awaitable[Sequence[Any]]], max_size: int,
                 wait_s: float) -> None:
        if max_size < 1:
            raise ValueError(f"max_size={max_size}: must be ≥ 1")
        self.apply, self.max_size, self.wait_s = apply, max_size, wait_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.stats = {"gaps": 0, "gap_s": 0.0}
        """Of the batches whose items were already waiting when the batch before ended
        (``gaps``), the seconds from that end to their start (``gap_s``: the wait for company,
        the event loop's delay in waking the batcher)."""

    async def submit(self, item: Any) -> Any:
        """``item``'s result, once a batch holding it has run."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._work.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        clock = asyncio.get_running_loop().time
        carried_since: float | None = None  # the end of a batch that left items waiting
        while True:
            await self._work.wait()
            if self.wait_s > 0 and len(self._pending) < self.max_size:
                await asyncio.sleep(self.wait_s)
            batch, self._pending = self._pending[:self.max_size], self._pending[self.max_size:]
            if not self._pending:
                self._work.clear()
            batch = [(item, f) for item, f in batch if not f.done()]  # callers that went away
            if not batch:
                continue
            if carried_since is not None:
                self.stats["gaps"] += 1
                self.stats["gap_s"] += clock() - carried_since
            await self._apply(batch)
            carried_since = clock() if self._pending else None

    async def _apply(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await self.apply([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc)
            return
        for (_, f), result in zip(batch, results):
            if not f.done():
                f.set_result(result)
