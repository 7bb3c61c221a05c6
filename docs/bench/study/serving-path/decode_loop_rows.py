"""The Generator's decoding thread in-process (no Ray): its CPU per loop iteration against the rows
decoded together, R sessions in a closed loop of 32-token and of 4-token answers (the demo model,
compiled as served, one thread), each answer followed at once by the next.

    PYTHONPATH=<checkout> python docs/bench/study/serving-path/decode_loop_rows.py
"""
import asyncio

import torch

from rxt_dist.inference import SamplingParams, compiled_or_eager
from rxt_dist.model import load_model_dir
from rxt_dist.serving.decode_loop import DecodeLoop

QUERY = [1] + list(range(40, 70))


async def main() -> None:
    torch.set_num_threads(1)
    model = load_model_dir("runs/tiny/models/smat", "cpu").eval()
    compiled = compiled_or_eager(model)
    loop = DecodeLoop(model, 32, compiled, 0.05, 200.0)
    stm = model.initial_stm(1)[:, 0]

    async def session(n, params):
        for _ in range(n):
            async for _ in loop.stream(QUERY, stm, params):
                pass

    for tokens in (32, 4):
        params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
        for r in (1, 2, 4, 8, 16, 32):
            await asyncio.gather(*(session(2, params) for _ in range(r)))  # warm-up of this size
            s0 = dict(vars(loop.stats))
            await asyncio.gather(*(session(8, params) for _ in range(r)))
            s1 = vars(loop.stats)
            d = {k: s1[k] - s0[k] for k in s0 if isinstance(s0[k], (int, float))}
            it = d["iterations"]
            print(f"{tokens}-token answers, R={r:2d}: rows/iter {d['rows'] / it:5.2f}  "
                  f"tick cpu {1e3 * d['tick_cpu_s'] / it:6.3f} ms  tick wall {1e3 * d['tick_s'] / it:6.3f} ms  "
                  f"admitted/iter {d['admitted'] / it:.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
