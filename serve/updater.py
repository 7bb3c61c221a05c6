"""The MemoryUpdater deployment: encoder + memory attention, off the response path.

An update names a session and the memory version it applies to; the replica reads that
version's STM and the recorded interaction from the session store, consolidates all the
updates of a batch in one forward pass, and commits each result with a compare-and-set on
the version. Re-running an update that already committed (a retry after a replica died)
changes nothing.
"""

import asyncio
import logging

import torch
from ray import serve

from rxt_dist.inference import consolidate, system_prompt_stm
from rxt_dist.model import load_model_dir, split_stm, stack_stm, stm_from_bytes, stm_to_bytes
from serve.args import AppArgs
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5},
                  health_check_period_s=5)
class MemoryUpdater:
    """Applies ``STM_t = consolidate(STM_{t-1}, query, answer)`` for many sessions at once."""

    def __init__(self, args: AppArgs) -> None:
        self.model = load_model_dir(args.model_dir, args.device).eval()
        self.stm_shape = self.model.cfg.stm_shape
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self.delay_s = args.update_delay_s
        self.seed = args.initial_stm_seed
        self.apply.set_max_batch_size(args.update_batch_size)
        self.apply.set_batch_wait_timeout_s(args.update_batch_wait_s)
        self.counters = {"batches": 0, "applied": 0, "max_batch": 0}
        if self.delay_s:
            logger.warning("MemoryUpdater: update_delay_s=%.2f — every update is slowed on purpose "
                           "(a test knob)", self.delay_s)

    async def update(self, session_id: str, base_version: int) -> dict:
        """Apply the pending update of ``session_id`` on top of ``base_version``. Returns the
        store's answer: ``applied`` (new version), ``already_applied``, ``not_found``, …"""
        return await self.apply((session_id, base_version))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def apply(self, items: list[tuple[str, int]]) -> list[dict]:
        inputs = await asyncio.gather(*(self.stores.for_session(sid).update_input.remote(sid, version)
                                        for sid, version in items))
        results = [{"status": r["status"], "version": r.get("version")} for r in inputs]
        todo, memories = [], []
        for i, r in enumerate(inputs):
            if r["status"] != "ok":
                continue
            try:
                memories.append(stm_from_bytes(r["stm"], self.stm_shape))  # (L, S, D)
                todo.append(i)
            except ValueError as exc:  # a session written by a model with another memory size
                results[i] = {"status": "incompatible", "message": str(exc)}
        if not todo:
            return results
        stms = await asyncio.to_thread(self._consolidate, memories, [inputs[i] for i in todo])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        commits = await asyncio.gather(*(
            self.stores.for_session(items[i][0]).commit_update.remote(items[i][0], items[i][1], stm)
            for i, stm in zip(todo, stms)))
        for i, commit in zip(todo, commits):
            results[i] = commit
        self.counters["batches"] += 1
        self.counters["applied"] += sum(c["status"] == "applied" for c in commits)
        self.counters["max_batch"] = max(self.counters["max_batch"], len(todo))
        return results

    def _consolidate(self, memories: list[torch.Tensor], inputs: list[dict]) -> list[bytes]:
        stm = stack_stm(memories)  # (L, B, S, D)
        new = consolidate(self.model, stm, [r["query_ids"] for r in inputs],
                          [r["answer_ids"] for r in inputs])  # (L, B, S, D)
        return [stm_to_bytes(s) for s in split_stm(new.cpu())]

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
