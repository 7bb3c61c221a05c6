"""Quality evaluation: RxT vs the stateless baseline (full history, and no history) on held-out
conversations.

    python jobs/evaluate.py --data data/dialogue --rxt runs/rxt/export --baseline runs/baseline/export
    python jobs/evaluate.py --data data/dialogue --rxt runs/rxt/export --max-conversations 200 --out q.json

Prints a table; writes the JSON report to --out (default docs/bench/quality.json). Metrics and the
exact-match definition: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from rxt_dist.eval.quality import QUALITY_SYSTEMS, QualityConfig, evaluate_models


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder URL (written by jobs/prepare_data.py)")
    p.add_argument("--rxt", default=None, help="RxT model directory")
    p.add_argument("--baseline", default=None, help="stateless baseline model directory")
    p.add_argument("--split", default="test")
    p.add_argument("--max-conversations", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--systems", nargs="+", default=list(QUALITY_SYSTEMS), choices=QUALITY_SYSTEMS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, of all --workers together (default: torch's)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that share the conversations (2 on 2 cores: the demo's evaluation 72 s → 49 s against "
                        "2 threads for the tiny model); the results are those of one process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/bench/quality.json", help="JSON report path ('' for none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        cfg = QualityConfig(split=args.split, max_conversations=args.max_conversations,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            systems=tuple(args.systems), threads=args.threads, workers=args.workers,
                            seed=args.seed)
        report = evaluate_models(args.data, args.rxt, args.baseline, cfg, progress=True,
                                 command=shlex.join(["python", "jobs/evaluate.py", *argv]))
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"evaluate: {exc}")
    print(report.summary_table())
    if args.out:
        report.write_json(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
