"""The idle serving processes' background CPU (Ray's health checks, metrics, long polls) as
bursts: each process's run time summed over its threads (``/proc/<pid>/task/*/schedstat``, in
nanoseconds) read every millisecond for 20 s, a burst ending after 3 ms without CPU. Whether
the background comes in pieces large enough to delay a turn (a source of TTFT p99).

    PYTHONPATH=. python docs/bench/study/capacity-levels/bursts.py OUT.json
"""

import json
import os
import sys
import time

import httpx
import ray

sys.path.insert(0, "jobs")
from bench_serving import local_app  # noqa: E402
from rxt_dist.eval.profile import serving_processes  # noqa: E402

GAP_S = 0.003


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that ended
            pass
    return total


def sample(pids: dict[str, list[int]], seconds: float) -> dict[str, list[tuple[float, int]]]:
    series: dict[str, list[tuple[float, int]]] = {role: [] for role in pids}
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        for role, ps in pids.items():
            series[role].append((now, sum(cpu_ns(p) for p in ps)))
        time.sleep(0.001)
    return series


def bursts(series: list[tuple[float, int]]) -> list[float]:
    """CPU milliseconds of each burst."""
    out, current, last_busy = [], 0, None
    for (t0, c0), (t1, c1) in zip(series, series[1:]):
        if c1 > c0:
            if last_busy is not None and t0 - last_busy > GAP_S and current:
                out.append(current)
                current = 0
            current += c1 - c0
            last_busy = t1
    if current:
        out.append(current)
    return sorted(b / 1e6 for b in out)


def summary(series: list[tuple[float, int]]) -> dict[str, float]:
    b = bursts(series)
    seconds = series[-1][0] - series[0][0]

    def q(x: float) -> float:
        return round(b[min(len(b) - 1, int(x * len(b)))], 2) if b else 0.0

    return {"cpu_ms_per_s": round((series[-1][1] - series[0][1]) / 1e6 / seconds, 2),
            "bursts_per_s": round(len(b) / seconds, 2), "p50_ms": q(0.5), "p90_ms": q(0.9),
            "max_ms": round(b[-1], 2) if b else 0.0,
            "over_2ms_per_s": round(sum(x > 2 for x in b) / seconds, 2),
            "over_5ms_per_s": round(sum(x > 5 for x in b) / seconds, 2)}


def main() -> None:
    with local_app("serve/config.yaml", "runs/tiny/models/smat", None, replicas=1) as (url, _):
        for _ in range(20):  # sessions in the store, as after a level
            httpx.post(f"{url}/v1/sessions", timeout=30).raise_for_status()
        pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
        pids = {role: p for role, p in pids.items() if role != "client"}
        time.sleep(3)
        result = {role: summary(series) for role, series in sample(pids, 20.0).items()}
    for role, row in result.items():
        print(role, row)
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump({"command": " ".join(sys.argv), "processes": result}, f, indent=1)


if __name__ == "__main__":
    main()
