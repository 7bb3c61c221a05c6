"""``make bench``: reproduce every figure of docs/BENCHMARKS.md, one benchmark after another.

    python jobs/bench_all.py                 # latency, decode, training throughput, quality, serving
    python jobs/bench_all.py --only latency serving
    python jobs/bench_all.py --with-statex   # also the StateX capacity study (long)

Each benchmark runs in its own process (its own local Ray where it needs one) so none disturbs
the next; they write their JSON and PNG files under docs/bench/. Quality and StateX need the
models trained by ``make demo`` (runs/tiny/models/…), StateX the base model of docs/statex.md
(runs/statex-base/models/smat); serving times the trained model when it exists, else the random
demo model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PY = sys.executable
MODELS = "runs/tiny/models"
DATA = "runs/data"
STATEX_BASE = "runs/statex-base/models"
STATEX_DATA = "runs/statex/data"

BENCHMARKS = {
    "latency": [PY, "jobs/bench_latency.py", "--preset", "tiny", "--repeats", "2", "--max-repeats", "6"],
    "decode": [PY, "jobs/bench_decode.py"],
    "throughput": [PY, "jobs/bench_train.py", "--config", "configs/cpu-tiny.yaml", "--stage", "smat",
                   "--settings", "1x0", "2x0", "2x2", "2x3", "--set", "stages.smat.batch_size=32"],
    "quality": [PY, "jobs/evaluate.py", "--data", DATA, "--rxt", f"{MODELS}/smat",
                "--baseline", f"{MODELS}/baseline", "--threads", "2", "--out", "docs/bench/quality.json"],
    "serving": [PY, "jobs/bench_serving.py", "--start", "--rounds", "2", "--cooldown-s", "90",
                "--scaling-plot", "docs/bench/serving-scaling.png"],
    # the base model must be trained on the capacity corpus (docs/statex.md, steps 1–2)
    "statex": [PY, "jobs/statex.py", "--config", "configs/cpu-tiny.yaml", "--model", f"{STATEX_BASE}/smat",
               "--data", STATEX_DATA, "--factor", "2", "--steps", "150", "--lr", "1e-3",
               "--set", "data.max_turns=16"],
}


def needs_models(name: str) -> bool:
    return name == "quality"


def command(name: str) -> list[str]:
    cmd = list(BENCHMARKS[name])
    if name == "serving" and os.path.exists(f"{MODELS}/smat/config.json"):
        cmd += ["--model-dir", f"{MODELS}/smat"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    p.add_argument("--with-statex", action="store_true", help="also run the StateX capacity study")
    args = p.parse_args(argv)
    names = args.only or [n for n in BENCHMARKS if n != "statex" or args.with_statex]
    if any(needs_models(n) for n in names) and not os.path.exists(f"{MODELS}/smat/config.json"):
        print(f"error: {', '.join(n for n in names if needs_models(n))} need the models of `make demo` "
              f"({MODELS}/smat, {MODELS}/baseline); run it first", file=sys.stderr)
        return 2
    if "statex" in names and not os.path.exists(f"{STATEX_BASE}/smat/config.json"):
        print(f"error: statex needs a base model trained on the capacity corpus ({STATEX_BASE}/smat); "
              "run steps 1–2 of docs/statex.md first", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        cmd = command(name)
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - started:.0f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nResults are in docs/bench/; docs/BENCHMARKS.md explains them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
