"""Train the whole RxT curriculum — stages 1 → 4 — and the stateless baseline, in order.

    python jobs/curriculum.py --config configs/cpu-tiny.yaml

Stages already complete (their exported model exists) are skipped; an interrupted stage
resumes from its latest checkpoint. Runs with no cluster (starts a local Ray) or as
``ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/curriculum.py ...``.
The terminal shows each stage's progress (a bar on a terminal, log lines in a pipe or file);
Ray's own output goes to ``<log dir>/ray.log`` unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import sys

from _ray import ray_session, report_failure, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (see configs/)")
    p.add_argument("--stages", nargs="+", default=None,
                   help="run only these stages (default: joint_lm sft memory_attention smat baseline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. stages.smat.steps=200 (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own output (workers' logs, warnings) on the terminal instead of the run's ray.log")
    args = p.parse_args(argv)
    setup_logging()
    from rxt_dist.data import read_manifest
    from rxt_dist.train import StageFailed, TrainConfig, run_curriculum, stage_name
    from rxt_dist.train.launcher import log_dir

    try:
        cfg = TrainConfig.from_file(args.config, args.set)
        for s in args.stages or []:
            stage_name(s)
        read_manifest(cfg.data.url)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ray_session(log_dir(cfg), args.verbose) as ray_log:
        try:
            results = run_curriculum(cfg, args.stages, progress=not args.verbose)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except StageFailed as exc:
            return report_failure(exc, ray_log)
    summary = {r.stage: {"model": r.export_url, "skipped": r.skipped,
                         "loss": r.metrics.get("loss"), "ppl": r.metrics.get("ppl"), "acc": r.metrics.get("acc")}
               for r in results}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
