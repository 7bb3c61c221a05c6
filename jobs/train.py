"""Train one curriculum stage (or the stateless baseline) on Ray Train with DeepSpeed.

    python jobs/train.py --config configs/cpu-tiny.yaml --stage smat
    python jobs/train.py --config configs/cpu-tiny.yaml --stage 1 --set stages.joint_lm.steps=50

Runs with no cluster (starts a local Ray) or as
``ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train.py ...``.
Launching the same run again resumes from its latest checkpoint. The terminal shows the stage's
progress (a bar on a terminal, log lines in a pipe or file); Ray's own output goes to
``<log dir>/ray.log`` unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import sys

from _ray import ray_session, report_failure, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (see configs/)")
    p.add_argument("--stage", required=True,
                   help="joint_lm | sft | memory_attention | smat | baseline (or 1–4)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. stages.smat.steps=200 (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own output (workers' logs, warnings) on the terminal instead of the run's ray.log")
    args = p.parse_args(argv)
    setup_logging()
    from rxt_dist.train import StageFailed, TrainConfig, prepare_job, run_stage, stage_name
    from rxt_dist.train.launcher import log_dir

    try:
        cfg = TrainConfig.from_file(args.config, args.set)
        stage = stage_name(args.stage)
        prepare_job(cfg, stage)  # data, previous stage and model are checked before Ray starts
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ray_session(log_dir(cfg), args.verbose) as ray_log:
        try:
            result = run_stage(cfg, stage, progress=not args.verbose)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except StageFailed as exc:
            return report_failure(exc, ray_log)
    print(json.dumps({"stage": result.stage, "model": result.export_url,
                      "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
