"""The Generator deployment: decoder replicas that stream answers from (query, STM)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

from ray import serve

from rxt_dist.inference import CompiledDecoder, SamplingParams
from rxt_dist.model import load_model_dir, stm_from_bytes
from rxt_dist.serving.decode_loop import DecodeLoop
from serve.args import AppArgs
from serve.logs import route_library_logs
from serve.metrics import GeneratorMetrics, sample_forever

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5},
                  health_check_period_s=5)
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
            compiled = CompiledDecoder(self.model)
            compiled.warm_up((1, 2))
            logger.info("Generator: compiled the decoding step in %.1fs", time.perf_counter() - started)
        self.loop = DecodeLoop(self.model, args.max_batch_size, compiled, args.stream_interval_s)
        self.metrics = GeneratorMetrics()
        self._sampler: asyncio.Task | None = None
        logger.info("Generator: loaded %s (%s), up to %d sequences per batch",
                    args.model_dir, args.device, args.max_batch_size)

    async def generate(self, query_ids: list[int], stm: bytes, sampling: dict
                       ) -> AsyncIterator[tuple[list[int], str | None]]:
        """Stream ``(new_tokens, finish_reason)`` for one query answered from ``stm`` (the
        bytes of one conversation's STM); call with ``handle.options(stream=True)``."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(
                sample_forever(lambda: self.metrics.batch.set(len(self.loop.batch))))
        memory = stm_from_bytes(stm, self.model.cfg.stm_shape)  # (L, S, D)
        async for item in self.loop.stream(query_ids, memory, SamplingParams(**sampling)):
            if item[0]:  # Ray's counters refuse an increment of 0 (the last item may carry none)
                self.metrics.tokens.inc(len(item[0]))
            yield item

    async def stats(self) -> dict:
        """Batching counters of this replica (steps, admitted, most rows in one step)."""
        return asdict(self.loop.stats)

    def check_health(self) -> None:
        if not self.loop.healthy:
            raise RuntimeError("the decoding loop stopped")
