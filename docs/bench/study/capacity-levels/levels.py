"""Each serving process's CPU per turn over calibration level B and the check's levels, played
in turn in one application (the demo model, one replica each), several rounds alternated:
whether a level costs the same per turn within one application minutes apart.

    PYTHONPATH=. python docs/bench/study/capacity-levels/levels.py token|configured OUT.json [reps] [LEVEL ...]

``token``: one chunk per token, as the calibration's application streams; ``configured``: the
streaming of serve/config.yaml, as the check's levels run. Levels: B (16 sessions × 6 turns,
no think time, seed 7: calibration level B), B3 (the same, 3 rounds), B8 (16 × 8, seed 0),
B24 (16 × 24, seed 7), S8 and S32 (the check's levels: 8 turns, 4 and 2 rounds)."""

import json
import sys

import ray

sys.path.insert(0, "jobs")
from bench_serving import local_app  # noqa: E402
from rxt_dist.eval.app_calibration import CalibrationConfig, warm_up  # noqa: E402
from rxt_dist.eval.app_readings import cpu_per_turn, idle_rates  # noqa: E402
from rxt_dist.eval.profile import serving_processes  # noqa: E402
from rxt_dist.eval.serving import ServingConfig  # noqa: E402

LEVELS = {"B": dict(sessions=(16,), turns=6, seed=7), "B3": dict(sessions=(16,), turns=6, rounds=3, seed=7),
          "B8": dict(sessions=(16,), turns=8, seed=0), "B24": dict(sessions=(16,), turns=24, seed=7),
          "S8": dict(sessions=(8,), turns=8, rounds=4), "S32": dict(sessions=(32,), turns=8, rounds=2)}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    names = sys.argv[4:] or ["B", "B8", "S8", "S32"]
    overrides = {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0} if mode == "token" else None
    rows = []
    with local_app("serve/config.yaml", "runs/tiny/models/smat", overrides, replicas=1) as (url, _):
        warm_up(url, CalibrationConfig())
        pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
        for rep in range(reps):
            for name in names:
                cfg = ServingConfig(url=url, think_time_s=0.0, query_words=24, max_tokens=32, **LEVELS[name])
                level, per_turn, _ = cpu_per_turn(pids, cfg, idle_rates(pids, 2.0))
                row = {"level": name, "rep": rep, "turns": level["requests"],
                       "in_flight": round(level["requests"] / level["wall_s"] * level["answer"]["p50_s"], 1),
                       "tokens": round(level["tokens"]["completion_per_turn_mean"], 2),
                       "chunks": round(level["tokens"]["chunks_per_turn_mean"], 2),
                       "tokens_per_s": round(level["throughput"]["aggregate_tokens_per_s"]),
                       "cpu_ms_per_turn": {k: round(v * 1e3, 2) for k, v in per_turn.items()}}
                rows.append(row)
                print(row, flush=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
