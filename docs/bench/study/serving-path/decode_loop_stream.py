"""CPU per answer of the Generator's decoding loop and its streams, in-process (no Ray): 32
answers of 32 tokens at a time from the random ``debug`` model (eager, one thread), streamed
with the serving defaults (``stream_interval_s`` 0.05, ``stream_chunks_per_s`` 200).

    PYTHONPATH=<checkout> python docs/bench/study/serving-path/decode_loop_stream.py
"""

import asyncio
import dataclasses
import time

import torch

from rxt_dist.inference import SamplingParams
from rxt_dist.model import RxTModel, from_name
from rxt_dist.serving import decode_loop
from rxt_dist.serving.decode_loop import DecodeLoop

SESSIONS, ROUNDS, QUERY = 32, 6, list(range(5, 37))


async def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RxTModel(dataclasses.replace(from_name("debug"), init_std=0.5)).eval()
    loop = DecodeLoop(model, 32, None, 0.05, 200.0)
    stm = model.initial_stm(1)[:, 0]  # (L, S, D)
    params = SamplingParams(max_new_tokens=32)
    seen = {"chunks": 0, "tokens": 0}

    async def answer() -> None:
        async for tokens, _ in loop.stream(QUERY, stm, params):
            seen["chunks"] += 1
            seen["tokens"] += len(tokens)

    await asyncio.gather(*(answer() for _ in range(SESSIONS)))  # warm-up
    seen.update(chunks=0, tokens=0)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(ROUNDS):
        await asyncio.gather(*(answer() for _ in range(SESSIONS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = SESSIONS * ROUNDS
    print(f"{decode_loop.__file__}: {1000 * cpu / n:.2f} ms CPU per answer, {1000 * wall / n:.2f} ms wall, "
          f"{seen['tokens'] / n:.1f} tokens and {seen['chunks'] / n:.1f} chunks per answer")


if __name__ == "__main__":
    asyncio.run(main())
