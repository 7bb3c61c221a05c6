"""The MemoryUpdater deployment: encoder + memory attention, off the response path.

An update names a session and the memory version it applies to; the replica reads that
version's STM and the recorded interaction from the session store, consolidates all the
updates of a batch in one forward pass, and commits each result with a compare-and-set on
the version. The replica keeps the STMs it computed, keyed by (session, version, digest): an
update sent with its recorded turn whose STM is kept here reads nothing from the store (a
session's updates are routed to one replica, ``serve/routing.py``). Re-running an update that
already committed (a retry after a replica died) changes nothing. Items of a batch are
independent (:mod:`rxt_dist.serving.updates`): one that can never apply is recorded as failed
on its session and the others commit.
"""

import asyncio
import contextvars
import logging
import time
from dataclasses import asdict

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from rxt_dist.inference import CompiledMemoryUpdate, compiled_or_eager, consolidate, system_prompt_stm
from rxt_dist.model import load_model_dir, stm_to_bytes
from rxt_dist.serving.locality import StmCache
from rxt_dist.serving.protocol import StoreStatus, log_id, status, stm_digest
from rxt_dist.serving.updates import UpdateBatcher, apply_updates
from serve.args import AppArgs
from serve.logs import INTERNAL_LOGGING, route_library_logs
from serve.metrics import UpdaterMetrics
from serve.ray_env import with_serve_transport
from serve.routing import SESSION_AFFINITY
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")

SEND_AHEAD_TIMEOUT_S = 10.0
"""A committed STM not handed to its Generator within this long is given up (that turn reads the store)."""


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5},
                  health_check_period_s=5, request_router_config=SESSION_AFFINITY,
                  logging_config=INTERNAL_LOGGING)
class MemoryUpdater:
    """Applies ``STM_t = consolidate(STM_{t-1}, query, answer)`` for many sessions at once."""

    def __init__(self, args: AppArgs, generator: DeploymentHandle | None = None) -> None:
        route_library_logs()
        self.model = load_model_dir(args.model_dir, args.device).eval()
        self.compiled = None
        if args.compile_update:
            started = time.perf_counter()
            self.compiled = compiled_or_eager(self.model, kind=CompiledMemoryUpdate)
            if self.compiled is not None:
                logger.info("MemoryUpdater: compiled the memory update in %.1fs", time.perf_counter() - started)
        self.stm_shape = self.model.cfg.stm_shape
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self._shard_calls = {shard: _caller(shard) for shard in self.stores.handles}
        self.delay_s = args.update_delay_s
        self.seed = args.initial_stm_seed
        self.batcher = UpdateBatcher(self.apply, args.update_batch_size, args.update_batch_wait_s)
        self.generator = with_serve_transport(generator) if generator and args.stm_cache_sessions else None
        self.known: StmCache[bytes] = StmCache(args.stm_cache_sessions)
        """The STMs this replica computed: the next update of their session starts from them."""
        self._sends: set[asyncio.Task] = set()
        self.counters = {"batches": 0, "applied": 0, "max_batch": 0, "batch_s": 0.0,
                         "read_s": 0.0, "consolidate_s": 0.0, "commit_s": 0.0,
                         "consolidate_run_s": 0.0, "consolidate_cpu_s": 0.0,
                         **{f"{phase}_{thread}_cpu_s": 0.0 for phase in ("read", "consolidate", "commit")
                            for thread in ("loop", "proc")},
                         "timed": 0, "transit_s": 0.0, "queued_s": 0.0, "handed": 0, "handover_s": 0.0}
        """Batches, updates applied, the largest batch, and the seconds (wall) spent in batches
        and in each of their phases (``apply_updates``), with the CPU seconds of each phase on the
        event loop's thread and in the whole process; of the updates whose dispatcher stamped
        the call (``timed``), the seconds from its dispatch to its receipt here (``transit_s``)
        and from its receipt to its batch's start (``queued_s``); of the first calls of updates
        whose answer had just ended (``handed``), the seconds from the end of the answer to the
        call's start on the Ingress (``handover_s``: the wait of the call's task there)."""
        self.metrics = UpdaterMetrics()
        if self.delay_s:
            logger.warning("MemoryUpdater: update_delay_s=%.2f — every update is slowed on purpose "
                           "(a test knob)", self.delay_s)

    async def update(self, session: str, base_version: int, turn: dict | None = None) -> dict:
        """Apply the pending update of ``session`` on top of ``base_version`` (``turn``: the
        turn as its dispatcher recorded it, :func:`~rxt_dist.serving.updates.recorded_turn`).
        Returns the store's answer: ``applied`` (new version), ``already_applied``, ``not_found``, …
        Called with ``session`` as a keyword, a session's updates go to one replica
        (``serve/routing.py``), the one that holds the STM its last update computed."""
        if turn is not None:
            received = time.time()
            if isinstance(turn.get("sent_at"), float):
                self.counters["transit_s"] += received - turn["sent_at"]
                self.counters["timed"] += 1
                if isinstance(turn.get("dispatched_at"), float):
                    self.counters["handover_s"] += turn["sent_at"] - turn["dispatched_at"]
                    self.counters["handed"] += 1
            turn = {**turn, "received_at": received}
        return await self.batcher.submit((session, base_version, turn))

    async def apply(self, items: list[tuple[str, int, dict | None]]) -> list[dict]:
        """One batch: consolidated in one forward pass, each item committed on its own."""
        started, now = time.perf_counter(), time.time()
        self.counters["queued_s"] += sum(now - item[2]["received_at"] for item in items
                                         if item[2] is not None and isinstance(item[2].get("sent_at"), float))
        results = await apply_updates(self.model, items, self._store_call, self.delay_s, self._before_commit,
                                      timings=self.counters, known=self._known, compiled=self.compiled)
        self.counters["batch_s"] += time.perf_counter() - started
        applied = sum(status(r) == StoreStatus.APPLIED for r in results)
        self.metrics.batch.observe(len(items))
        for r in results:
            self.metrics.updates.inc(tags={"status": str(r["status"])})
        self.counters["batches"] += 1
        self.counters["applied"] += applied
        self.counters["max_batch"] = max(self.counters["max_batch"], len(items))
        return results

    def _known(self, sid: str, version: int, digest: str) -> bytes | None:
        return self.known.get(sid, version, digest)

    def _before_commit(self, sid: str, version: int, stm: bytes) -> None:
        """Keep a new STM for the session's next update (under its digest: a computation
        whose commit loses is never the one a claim names) and send it ahead."""
        digest = stm_digest(stm)
        self.known.put(sid, version, digest, stm)
        self._send_ahead(sid, version, digest, stm)

    def _send_ahead(self, sid: str, version: int, digest: str, stm: bytes) -> None:
        """Send a new STM, as its commit goes out, to the Generator replica the session's next
        turn goes to (``serve/routing.py`` ranks the replicas the same way in every caller):
        sent after the commit, it would race the next turn, which the commit releases. Tagged
        with its digest, so a copy whose commit loses to another computation of the same
        version is never used. Best effort: a copy that does not arrive is a miss there,
        read from the store."""
        if self.generator is None:
            return
        # A fresh context: a call made inside an update request would carry that request's
        # id, and Serve's router matches a routed replica to its call by that id — the sends
        # of one batch would share it, and all but one of them would never be routed.
        task = contextvars.Context().run(asyncio.ensure_future, self._send(sid, version, digest, stm))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, sid: str, version: int, digest: str, stm: bytes) -> None:
        try:
            await asyncio.wait_for(self.generator.remember.remote(session=sid, version=version,
                                                                  digest=digest, stm=stm),
                                   SEND_AHEAD_TIMEOUT_S)
        except Exception as exc:  # a replica restarting or gone: its next turn reads the store
            logger.debug("session %s: STM version %d not sent ahead: %r", log_id(sid), version, exc)

    def _store_call(self, sid: str):
        """The caller of the shard that owns ``sid``: one per shard, so ``apply_updates`` sends
        a batch's commits to each shard together."""
        return self._shard_calls[self.stores.for_session(sid)]

    async def new_session_stm(self, system_ids: list[int] | None,
                              history: list[tuple[list[int], list[int]]]) -> bytes:
        """The STM a new session starts from: the seeded initial STM, the system prompt
        consolidated into it (if any), then each migrated (query, answer) turn in order."""
        return await asyncio.to_thread(self._new_stm, system_ids, history)

    @torch.no_grad()
    def _new_stm(self, system_ids, history) -> bytes:
        generator = torch.Generator().manual_seed(self.seed)
        if system_ids:
            stm = system_prompt_stm(self.model, [system_ids], generator)  # (L, 1, S, D)
        else:
            stm = self.model.initial_stm(1, generator)  # (L, 1, S, D)
        for query, answer in history:
            stm = consolidate(self.model, stm, [query], [answer])
        return stm_to_bytes(stm[:, 0].cpu())

    async def stats(self) -> dict:
        """Batch counters (the batcher's ``gaps`` and ``gap_s`` too), STMs being sent ahead, and
        ``stm``: how often an update found its STM here (``hits``) or read it from the store
        (``misses``)."""
        return {**self.counters, **self.batcher.stats, "sending": len(self._sends),
                "stm": {**asdict(self.known.stats), "sessions": len(self.known)}}


def _caller(shard):
    """``call(method, *args)``: a call to ``shard``, the actor's method by its name."""
    return lambda method, *args: getattr(shard, method).remote(*args)
