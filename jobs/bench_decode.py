"""Decode benchmark: ms per generated token and tokens/s at batch 1/8/32, eager and compiled,
against a Hugging Face Llama of the decoder's dimensions measured in the same run.

    python jobs/bench_decode.py                      # tiny and nano, eager and compiled (~10 min)
    python jobs/bench_decode.py --quick              # tiny, eager, batch 1 and 8: under a minute
    python jobs/bench_decode.py --presets nano --modes compiled --batches 1 32

Writes docs/bench/decode.json by default (see docs/BENCHMARKS.md, "Decoding"). Compilation
(``torch.compile``, inductor) happens before the timed rounds and is reported apart.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from rxt_dist.eval.decode import MODES, DecodeConfig, run_decode
from rxt_dist.eval.report import machine_info, write_json_atomic
from rxt_dist.model.presets import preset_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, choices=[n for n in preset_names() if not n.startswith("baseline")])
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--modes", nargs="+", default=None, choices=MODES)
    p.add_argument("--tokens", type=int, default=None, help="timed decoding steps per round")
    p.add_argument("--repeats", type=int, default=None, help="rounds (medians are reported)")
    p.add_argument("--no-peer", action="store_true", help="skip the Hugging Face peer")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny, eager, batch 1 and 8, few tokens: a smoke run")
    p.add_argument("--out", default="docs/bench/decode.json")
    return p.parse_args(argv)


def config(args: argparse.Namespace) -> DecodeConfig:
    quick = args.quick
    return DecodeConfig(
        presets=args.presets or (["tiny"] if quick else ["tiny", "nano"]),
        batches=args.batches or ([1, 8] if quick else [1, 8, 32]),
        modes=args.modes or (["eager"] if quick else list(MODES)),
        tokens=args.tokens or (24 if quick else 64),
        repeats=args.repeats or (2 if quick else 5),
        peer=not args.no_peer,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_info()
    doc = run_decode(cfg, say=lambda line: print(line, flush=True))
    doc = {"benchmark": doc.pop("benchmark"), "command": "python jobs/bench_decode.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "machine": machine, **doc, "elapsed_s": time.perf_counter() - started}
    write_json_atomic(args.out, doc)
    for preset, r in doc["ratios"].items():
        print(f"{preset}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(f"wrote {args.out} in {doc['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
