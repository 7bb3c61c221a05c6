"""The Generator deployment: decoder replicas that stream answers from (query, STM).

A replica keeps the STMs of the sessions routed to it (``serve/routing.py``), keyed by
(session, memory version, digest of the bytes): the MemoryUpdater sends each new STM here as
it commits it, so the session's next turn usually finds it; otherwise it is read from the
session store."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

import torch
from ray import serve

from rxt_dist.inference import SamplingParams, compiled_or_eager
from rxt_dist.model import load_model_dir, stm_from_bytes
from rxt_dist.serving.decode_loop import DecodeLoop
from rxt_dist.serving.locality import StmCache
from rxt_dist.serving.protocol import StoreStatus, log_id, status
from serve.args import AppArgs
from serve.logs import INTERNAL_LOGGING, route_library_logs
from serve.metrics import GeneratorMetrics, sample_forever
from serve.routing import SESSION_AFFINITY
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5},
                  health_check_period_s=5, request_router_config=SESSION_AFFINITY,
                  logging_config=INTERNAL_LOGGING)
class Generator:
    """Loads the model once and decodes every request it holds in one continuous batch
    (:class:`~rxt_dist.serving.decode_loop.DecodeLoop`): a request arriving while others
    are being answered joins them at the next step."""

    def __init__(self, args: AppArgs) -> None:
        route_library_logs()
        self.model = load_model_dir(args.model_dir, args.device).eval()
        compiled = None
        if args.compile_decode:
            started = time.perf_counter()
            compiled = compiled_or_eager(self.model)
            if compiled is not None:
                logger.info("Generator: compiled the decoding step in %.1fs", time.perf_counter() - started)
        self.loop = DecodeLoop(self.model, args.max_batch_size, compiled, args.stream_interval_s,
                               args.stream_chunks_per_s)
        self.stms: StmCache[torch.Tensor] = StmCache(args.stm_cache_sessions)
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self.metrics = GeneratorMetrics()
        self._sampler: asyncio.Task | None = None
        logger.info("Generator: loaded %s (%s), up to %d sequences per batch",
                    args.model_dir, args.device, args.max_batch_size)

    async def generate(self, query_ids: list[int], sampling: dict, *, session: str, version: int, digest: str
                       ) -> AsyncIterator[tuple[list[int], str | None]]:
        """Stream ``(new_tokens, finish_reason)`` for one query answered from memory version
        ``version`` of ``session``, whose STM bytes have ``digest`` (claimed by the caller, so
        that version stands while the answer is decoded); call with
        ``handle.options(stream=True)``."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(
                sample_forever(lambda: self.metrics.sample(len(self.loop.batch))))
        memory = await self._memory(session, version, digest)  # (L, S, D)
        async for item in self.loop.stream(query_ids, memory, SamplingParams(**sampling)):
            self.metrics.generated(len(item[0]))
            yield item

    async def _memory(self, session: str, version: int, digest: str) -> torch.Tensor:
        memory = self.stms.get(session, version, digest)
        if memory is not None:
            return memory
        read = await self.stores.for_session(session).read_stm.remote(session, version)
        if status(read) != StoreStatus.OK:
            # The caller's claim holds the version; this means the session moved under it.
            raise RuntimeError(f"session {log_id(session)}: memory version {version} is not in the store "
                               f"({read['status']}, version {read.get('version')})")
        memory = stm_from_bytes(read["stm"], self.model.cfg.stm_shape)
        self.stms.stats.fetched_bytes += len(read["stm"])
        self.stms.put(session, version, read["stm_digest"], memory)
        return memory

    async def remember(self, *, session: str, version: int, digest: str, stm: bytes) -> None:
        """Keep ``stm`` (bytes with ``digest``) as ``session``'s memory version ``version``:
        sent by the MemoryUpdater as it commits one, to the replica the session's next turn
        is routed to."""
        self.stms.stats.pushes += 1
        self.stms.stats.pushed_bytes += len(stm)
        self.stms.put(session, version, digest, stm_from_bytes(stm, self.model.cfg.stm_shape))

    async def stats(self, session: str | None = None) -> dict:
        """Batching counters of this replica (steps, admitted, most rows in one step) and
        what its STM cache did (``stm``: hits, misses, bytes read from the store and received).
        With ``session`` (routed to that session's replica): ``stm_version``, the version of
        its STM held here (None: none)."""
        out = {**asdict(self.loop.stats), "stm": {**asdict(self.stms.stats), "sessions": len(self.stms)}}
        if session is not None:
            out["stm_version"] = self.stms.version(session)
        return out

    def check_health(self) -> None:
        if not self.loop.healthy:
            raise RuntimeError("the decoding loop stopped")
