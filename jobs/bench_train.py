"""Training throughput (tokens/s) of one stage for 1 vs 2 workers and ZeRO 0/2/3.

    python jobs/bench_train.py --config configs/cpu-tiny.yaml --stage smat --settings 1x0 2x0 2x2 2x3

Each setting trains the stage for --steps steps on a local Ray cluster (a throwaway run under
<storage>/<name>-throughput-*); throughput is the mean of the logging windows after the first.
First, the same stage, model and per-worker batch run in plain single-process loops (one thread,
no Ray, no DeepSpeed: rxt_dist.train.plain), alone and as many side by side as the largest
setting has workers: the per-core reference. Writes docs/bench/train_throughput.json (see
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
import time

from _ray import init_ray, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-tiny.yaml")
    p.add_argument("--stage", default="smat")
    p.add_argument("--settings", nargs="+", default=["1x0", "2x0", "2x2", "2x3"], help="WORKERSxZERO")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--window", type=int, default=15, help="steps per measured window")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-plain", action="store_true",
                   help="skip the plain single-process loop (same stage, model and per-worker batch)")
    p.add_argument("--out", default="docs/bench/train_throughput.json")
    args = p.parse_args(argv)
    setup_logging()
    from rxt_dist.data import read_manifest
    from rxt_dist.eval.report import machine_info, write_json_atomic
    from rxt_dist.train import TrainConfig, stage_name
    from rxt_dist.model import build_model
    from rxt_dist.train.launcher import _model_config
    from rxt_dist.model import config_from_dict
    from rxt_dist.train.throughput import Setting, measure, measure_plain

    try:
        cfg = TrainConfig.from_file(args.config, args.set)
        stage = stage_name(args.stage)
        settings = [Setting.parse(s) for s in args.settings]
        vocab = read_manifest(cfg.data.url).vocab_size
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_model = build_model(config_from_dict(_model_config(cfg, stage, vocab)))
    init_ray()
    started = time.perf_counter()
    rows = [] if args.no_plain else [measure_plain(cfg, stage, args.steps, args.window, start_model, processes=n)
                                     for n in sorted({1, max(s.workers for s in settings)})]
    rows += measure(cfg, stage, settings, args.steps, args.window, start_model)
    report = {
        "benchmark": "training throughput",
        "command": "python jobs/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stage": stage, "preset": cfg.model.preset, "machine": machine_info(),
        "elapsed_s": time.perf_counter() - started, "results": rows,
    }
    write_json_atomic(args.out, report)
    print(f"{'workers':>8} {'ZeRO':>5} {'tokens/s':>10} {'per core':>9} {'wall':>7}")
    for r in rows:
        cores = r.get("processes") or r["workers"]
        print(f"{r['workers']:>8} {str(r['zero_stage']):>5} {r['tokens_per_s']:>10.0f} "
              f"{r['tokens_per_s'] / cores:>9.0f} {r['wall_s']:>6.0f}s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
