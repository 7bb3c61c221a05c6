"""Latency benchmark: per-turn time of RxT vs stateless models over a growing conversation.

    python jobs/bench_latency.py --preset tiny --preset nano          # N=64, 32/32 tokens
    python jobs/bench_latency.py --preset debug --turns 3 --out /tmp/lat.json --plot /tmp/lat.png
    python jobs/bench_latency.py --rxt-model-dir runs/expanded --systems rxt   # a larger STM

Writes docs/bench/latency.json and docs/bench/latency.png by default (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from rxt_dist.eval.latency import SYSTEMS, LatencyConfig, latency_document, run_latency
from rxt_dist.eval.plots import plot_latency
from rxt_dist.eval.report import write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", dest="presets",
                   help="RxT preset (repeat for several runs; default nano). Each runs against "
                        "baseline-<preset> unless --baseline-preset is given")
    p.add_argument("--baseline-preset", default=None)
    p.add_argument("--rxt-model-dir", default=None, help="time this RxT model directory instead of a preset")
    p.add_argument("--stm-slots", type=int, default=None, help="override the preset's STM slot count")
    p.add_argument("--turns", type=int, default=64)
    p.add_argument("--query-tokens", type=int, default=32)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="fewest timed runs per turn (median and min reported)")
    p.add_argument("--max-repeats", type=int, default=10, help="most timed runs per turn")
    p.add_argument("--min-turn-time-s", type=float, default=0.5,
                   help="repeat a cheap turn until its runs took this long (up to --max-repeats)")
    p.add_argument("--warmup-turns", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every system")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/bench/latency.json")
    p.add_argument("--plot", default="docs/bench/latency.png", help="PNG path ('' for none)")
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[LatencyConfig]:
    presets = args.presets or ["nano"]
    return [
        LatencyConfig(
            rxt_preset=preset, baseline_preset=args.baseline_preset, rxt_model_dir=args.rxt_model_dir,
            stm_slots=args.stm_slots, turns=args.turns, query_tokens=args.query_tokens,
            answer_tokens=args.answer_tokens, repeats=args.repeats, max_repeats=args.max_repeats,
            min_turn_time_s=args.min_turn_time_s, warmup_turns=args.warmup_turns,
            threads=args.threads, systems=tuple(args.systems), seed=args.seed,
        )
        for preset in presets
    ]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", "jobs/bench_latency.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        cfgs = configs(args)
    except ValueError as exc:
        sys.exit(f"bench_latency: {exc}")
    reports = []
    for cfg in cfgs:
        reports.append(run_latency(cfg, progress=True, command=command))
        # Written after every run, so a long second preset never costs the first one's figures.
        document = latency_document(reports, command)
        write_json_atomic(args.out, document)
        if args.plot:
            plot_latency(document, args.plot)
        print(summary_lines(reports[-1]), flush=True)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def summary_lines(run: dict) -> str:
    """A table of one run: time to first token and full turn at turns 1 and N (median of the
    repeats), the ratio tN/t1 of the medians (of the minima; paired with turn-1 replays; paired, median of the last quarter), the factor
    over RxT at turn N, tokens processed, peak state."""
    n = run["config"]["turns"]
    lines = [f"== {run['models'].get('rxt', {}).get('source', run['config']['rxt_preset'])} "
             f"vs {run['config']['baseline_preset']} ({n} turns, {run['threads']} thread(s))",
             f"{'system':18} {'TTFT t1 ms':>10} {'TTFT tN ms':>10} {'tN/t1 (min; paired; tail)':>28} {'turn tN ms':>10} "
             f"{'tN/t1 (min; paired; tail)':>28} {'TTFT vs RxT':>11} {'tokens':>8} {'peak state MB':>13}"]
    for name, r in run["systems"].items():
        vs = run["vs_rxt_last_turn"].get(name, {}).get("prompt")
        lines.append(
            f"{name:18} {r['prompt_s'][0] * 1e3:10.2f} {r['prompt_s'][-1] * 1e3:10.2f} "
            f"{_ratio(r, 'prompt'):>28} {r['turn_s'][-1] * 1e3:10.1f} {_ratio(r, 'turn'):>28} "
            f"{(f'{vs:.2f}×' if vs else '—'):>11} {r['tokens_total']:8d} {r['peak_state_bytes'] / 2**20:13.2f}")
        if "consolidate_s" in r:
            lines.append(f"{'  consolidate':18} {r['consolidate_s'][0] * 1e3:10.2f} "
                         f"{r['consolidate_s'][-1] * 1e3:10.2f} {_ratio(r, 'consolidate'):>28}")
    return "\n".join(lines)


def _ratio(r: dict, name: str) -> str:
    return (f"{r[f'{name}_ratio_last_first']:.2f} ({r[f'{name}_ratio_last_first_min']:.2f}; "
            f"{r[f'{name}_ratio_paired']:.2f}; {r[f'{name}_ratio_paired_tail']:.2f})")


if __name__ == "__main__":
    main()
