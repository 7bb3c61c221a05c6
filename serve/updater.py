"""The MemoryUpdater deployment: encoder + memory attention, off the response path.

An update names a session and the memory version it applies to; the replica reads that
version's STM and the recorded interaction from the session store, consolidates all the
updates of a batch in one forward pass, and commits each result with a compare-and-set on
the version. Re-running an update that already committed (a retry after a replica died)
changes nothing. Items of a batch are independent (:mod:`rxt_dist.serving.updates`): one that
can never apply is recorded as failed on its session and the others commit.
"""

import asyncio
import logging

import torch
from ray import serve

from rxt_dist.inference import consolidate, system_prompt_stm
from rxt_dist.model import load_model_dir, stm_to_bytes
from rxt_dist.serving.protocol import StoreStatus, status
from rxt_dist.serving.updates import UpdateBatcher, apply_updates
from serve.args import AppArgs
from serve.logs import route_library_logs
from serve.metrics import UpdaterMetrics
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5},
                  health_check_period_s=5)
class MemoryUpdater:
    """Applies ``STM_t = consolidate(STM_{t-1}, query, answer)`` for many sessions at once."""

    def __init__(self, args: AppArgs) -> None:
        route_library_logs()
        self.model = load_model_dir(args.model_dir, args.device).eval()
        self.stm_shape = self.model.cfg.stm_shape
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self.delay_s = args.update_delay_s
        self.seed = args.initial_stm_seed
        self.batcher = UpdateBatcher(self.apply, args.update_batch_size, args.update_batch_wait_s)
        self.counters = {"batches": 0, "applied": 0, "max_batch": 0}
        self.metrics = UpdaterMetrics()
        if self.delay_s:
            logger.warning("MemoryUpdater: update_delay_s=%.2f — every update is slowed on purpose "
                           "(a test knob)", self.delay_s)

    async def update(self, session_id: str, base_version: int) -> dict:
        """Apply the pending update of ``session_id`` on top of ``base_version``. Returns the
        store's answer: ``applied`` (new version), ``already_applied``, ``not_found``, …"""
        return await self.batcher.submit((session_id, base_version))

    async def apply(self, items: list[tuple[str, int]]) -> list[dict]:
        """One batch: consolidated in one forward pass, each item committed on its own."""
        results = await apply_updates(self.model, items, self._store_call, self.delay_s)
        applied = sum(status(r) == StoreStatus.APPLIED for r in results)
        self.metrics.batch.observe(len(items))
        for r in results:
            self.metrics.updates.inc(tags={"status": str(r["status"])})
        self.counters["batches"] += 1
        self.counters["applied"] += applied
        self.counters["max_batch"] = max(self.counters["max_batch"], len(items))
        return results

    def _store_call(self, sid: str):
        shard = self.stores.for_session(sid)
        return lambda method, *args: getattr(shard, method).remote(*args)

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
        return dict(self.counters)
