"""Capacity model: measure a cost profile, check the simulation against a real run, plan.

    python jobs/capacity.py profile --model-dir runs/tiny/models/smat --out docs/bench/capacity-profile-cpu.json
    python jobs/capacity.py check --model-dir runs/tiny/models/smat          # profile + benchmark + simulation
    python jobs/capacity.py compare      # simulate again from the stored profile and benchmark
    python jobs/capacity.py simulate --profile docs/bench/capacity-profile-cpu.json --sessions 1 8 32
    python jobs/capacity.py plan --profile configs/capacity/l4-nano.json --daily-users 100000
    python jobs/capacity.py bf16-recall --rxt runs/tiny/models/smat --data runs/data --max-conversations 300

``profile`` times the model in this process, the session-storage tiers, and the serving path
(the application of serve/config.yaml started on a private local Ray, a calibration workload
of one session with think time, CPU time of each process). ``check`` does that and, in the same
application right after, the serving benchmark (S = 1, 8, 32), then simulates each level with
the profile and prints predicted vs measured. docs/scaling.md explains the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serving, next to this file

from rxt_dist.eval.capacity import CostProfile, ServingPath, Workload  # noqa: E402
from rxt_dist.eval.report import load_average, machine_info, write_json_atomic  # noqa: E402
from rxt_dist.eval.simulate import Replicas, fit_to_calibration, simulate  # noqa: E402

log = logging.getLogger("capacity")
TOLERANCE = 0.25
"""Simulated figures must be within ±25% of measured ones (issue 16)."""
CHECKED = (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("tokens_per_s", "tokens/s"),
           ("update_lag_p50_s", "update lag p50"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("profile", "check"):
        s = sub.add_parser(name)
        s.add_argument("--model-dir", default="runs/tiny/models/smat")
        s.add_argument("--config", default="serve/config.yaml")
        s.add_argument("--calibration-turns", type=int, default=16)
        s.add_argument("--calibration-think-s", type=float, default=0.3)
        s.add_argument("--query-words", type=int, default=24)
        s.add_argument("--max-tokens", type=int, default=32)
        s.add_argument("--out", default="docs/bench/capacity-profile-cpu.json")
    check = sub.choices["check"]
    check.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    check.add_argument("--turns", type=int, default=8)
    check.add_argument("--rounds", type=int, default=2)
    check.add_argument("--bench-out", default="docs/bench/capacity-serving.json")
    check.add_argument("--check-out", default="docs/bench/capacity-check.json")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--profile", default="docs/bench/capacity-profile-cpu.json")
    cmp_.add_argument("--benchmark", default="docs/bench/capacity-serving.json")
    cmp_.add_argument("--check-out", default="docs/bench/capacity-check.json")
    sim = sub.add_parser("simulate")
    sim.add_argument("--profile", required=True)
    sim.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    sim.add_argument("--turns", type=int, default=8)
    sim.add_argument("--think-time-s", type=float, default=0.0)
    sim.add_argument("--generators", type=int, default=1)
    sim.add_argument("--updaters", type=int, default=1)
    pl = sub.add_parser("plan")
    pl.add_argument("--profile", required=True)
    pl.add_argument("--daily-users", type=int, nargs="+", default=[1_000, 100_000, 10_000_000])
    pl.add_argument("--slo-ttft-p99-s", type=float, default=0.5)
    pl.add_argument("--out", default=None)
    bf = sub.add_parser("bf16-recall")
    bf.add_argument("--rxt", required=True)
    bf.add_argument("--data", required=True)
    bf.add_argument("--max-conversations", type=int, default=300)
    bf.add_argument("--threads", type=int, default=1)
    bf.add_argument("--out", default="docs/bench/capacity-bf16-recall.json")
    return p.parse_args(argv)


# -- profile -------------------------------------------------------------------------------------

def model_costs(model_dir: str, query_tokens: int, answer_tokens: int) -> tuple[dict, dict, dict, dict]:
    """(model profile, STM bytes, storage tiers, model description) measured in this process
    with one torch thread (a replica of 0.5 CPU runs one)."""
    import torch

    from rxt_dist.eval.profile import profile_model, profile_storage, stm_bytes
    from rxt_dist.model import count_parameters, load_model_dir

    torch.set_num_threads(1)
    model = load_model_dir(model_dir).eval()
    costs = profile_model(model, query_tokens=query_tokens, answer_tokens=max(1, answer_tokens))
    sizes = stm_bytes(model)
    cfg = model.cfg
    described = {"model_dir": model_dir, "dim": cfg.dim, "layers": cfg.num_layers, "stm_shape": list(cfg.stm_shape),
                 "parameters": count_parameters(model)}
    return costs, sizes, profile_storage(sizes), described


def calibrate(url: str, args: argparse.Namespace, idle_s: float = 4.0) -> tuple[dict, dict[str, float], int]:
    """Play the calibration workload (one session, think time) and return its level report,
    CPU seconds per turn of each serving process (and of this client), and the turns played.
    Ray's processes work in the background too (health checks, metrics, long polls): their
    CPU rate over ``idle_s`` seconds without requests is subtracted."""
    import ray

    from rxt_dist.eval.profile import process_cpu, serving_processes
    from rxt_dist.eval.serving import ServingConfig, run_serving

    cfg = ServingConfig(url=url, sessions=(1,), turns=args.calibration_turns, think_time_s=args.calibration_think_s,
                        query_words=args.query_words, max_tokens=args.max_tokens, warmup_turns=2)
    run_serving(ServingConfig(url=url, sessions=(1,), turns=2, query_words=args.query_words,
                              max_tokens=args.max_tokens, warmup_turns=0))  # every process exists now
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = serving_processes(raylet)
    idle0, client_idle0, t0 = process_cpu(pids), time.process_time(), time.perf_counter()
    time.sleep(idle_s)
    idle1, client_idle1, t1 = process_cpu(pids), time.process_time(), time.perf_counter()
    rate = {role: (idle1[role] - idle0[role]) / (t1 - t0) for role in idle1}
    rate["client"] = (client_idle1 - client_idle0) / (t1 - t0)
    before, client0, w0 = process_cpu(pids), time.process_time(), time.perf_counter()
    report = run_serving(cfg)
    after, client1, w1 = process_cpu(pids), time.process_time(), time.perf_counter()
    after["client"], before["client"] = client1, client0
    level = report["levels"][0]
    turns = level["requests"] + cfg.warmup_turns
    per_turn = {role: max(0.0, after[role] - before[role] - rate[role] * (w1 - w0)) / turns for role in after}
    return level, {"per_turn": per_turn, "idle_rate": rate, "seconds": w1 - w0}, turns


def build_profile(args: argparse.Namespace, url: str) -> tuple[CostProfile, dict]:
    from rxt_dist.eval.profile import StallProbe, fit_serving_path, slowdown

    load_before = load_average()
    with StallProbe() as probe:
        level, cpu, turns = calibrate(url, args)
        cpu_per_turn = cpu["per_turn"]
        tokens = [int(x) for per_turn in level["samples"]["completion_tokens"] for x in per_turn]
        answer_mean = sum(tokens) / len(tokens)
        query_tokens = round(level["tokens"]["prompt_per_turn_mean"]) - 3  # [BOS][Q] … [A]
        costs, sizes, storage, described = model_costs(args.model_dir, query_tokens, round(answer_mean))
    k = slowdown(costs)
    # +1: the end-of-answer step
    path = fit_serving_path(costs, cpu_per_turn, level, answer_mean + 1, k, machine_info()["logical_cpus"])
    first = CostProfile(
        source=f"measured on this machine ({machine_info()['cpu']}, {machine_info()['logical_cpus']} CPUs, "
               f"load average {load_before}) by jobs/capacity.py profile",
        model=described, query_tokens=query_tokens, answer_tokens=round(answer_mean),
        decode_step_s=costs["decode_step_s"], prefill_s=costs["prefill_s"],
        prefill_length_s=costs["prefill_length_s"], consolidate_s=costs["consolidate_s"],
        stm_bytes=sizes, storage=storage, path=ServingPath(**path), timing_cv=costs["timing_cv"],
        stalls=probe.summary(),
        extra={"load_average_before": load_before, "load_average_after": load_average(), "slowdown": k,
               "model_cpu_s": costs["cpu_s"], "calibration": {
                   "sessions": 1, "turns": turns, "think_time_s": args.calibration_think_s,
                   "cpu_s_per_turn": cpu_per_turn, "cpu_idle_rate": cpu["idle_rate"], "seconds": cpu["seconds"], "answer_tokens": tokens,
                   "ttft_p50_s": level["ttft"]["p50_s"], "answer_p50_s": level["answer"]["p50_s"],
                   "update_lag_p50_s": level["update_lag"]["p50_s"]}})
    calibration = Workload(sessions=1, think_time_s=args.calibration_think_s, query_tokens=query_tokens,
                           answer_tokens=round(answer_mean), turns=args.calibration_turns)
    profile = fit_to_calibration(first, calibration, level["ttft"]["excluding_wait"]["p50_s"],
                                 level["answer"]["p50_s"], level["update_lag"]["p50_s"], tokens)
    profile.extra["path_before_fit"] = dataclasses.asdict(first.path)
    return profile, level


# -- check: simulation vs the serving benchmark --------------------------------------------------

def simulate_level(profile: CostProfile, level: dict, think_time_s: float = 0.0) -> dict[str, Any]:
    """The simulation of one benchmark level: same sessions, turns, rounds, query length; answer
    lengths drawn from the calibration run's (the model decides them, not the benchmark)."""
    w = Workload(sessions=level["sessions"], think_time_s=think_time_s, query_tokens=profile.query_tokens,
                 answer_tokens=profile.answer_tokens, turns=level["turns_played"])
    answers = profile.extra.get("calibration", {}).get("answer_tokens")
    return simulate(profile, w, Replicas(), answer_tokens=answers, rounds=level["rounds"])


def measured_figures(level: dict) -> dict[str, float | None]:
    return {"ttft_p50_s": level["ttft"]["p50_s"], "ttft_p99_s": level["ttft"]["p99_s"],
            "tokens_per_s": level["throughput"]["aggregate_tokens_per_s"],
            "update_lag_p50_s": level["update_lag"]["p50_s"], "update_lag_p99_s": level["update_lag"]["p99_s"],
            "answer_p50_s": level["answer"]["p50_s"], "waited_share": level["waited"]["share"]}


def compare(profile: CostProfile, levels: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        sim, real = simulate_level(profile, level), measured_figures(level)
        errors = {key: (sim[key] / real[key] - 1) if real[key] else None for key, _ in CHECKED}
        rows.append({"sessions": level["sessions"], "measured": real,
                     "simulated": {k: sim[k] for k in (*real, "busy") if k in sim},
                     "relative_error": errors,
                     "within_tolerance": all(e is not None and abs(e) <= TOLERANCE for e in errors.values()),
                     "load_average": [level["load_average_before"], level["load_average_after"]]})
    return rows


def check_table(rows: list[dict]) -> str:
    head = f"{'S':>3} " + " ".join(f"{label + ' sim/meas':>27}" for _, label in CHECKED) + "  within ±25%"
    lines = [head]
    for r in rows:
        cells = []
        for key, _ in CHECKED:
            sim, real, err = r["simulated"][key], r["measured"][key], r["relative_error"][key]
            scale, unit = (1, "") if key == "tokens_per_s" else (1e3, "ms")
            cells.append(f"{sim * scale:.0f}/{real * scale:.0f}{unit} ({err:+.0%})" if err is not None else "—")
        lines.append(f"{r['sessions']:>3} " + " ".join(f"{c:>27}" for c in cells)
                     + f"  {'yes' if r['within_tolerance'] else 'NO'}")
    return "\n".join(lines)


def run_profile_and_check(args: argparse.Namespace, check: bool) -> None:
    from bench_serving import local_app, replica_counts

    from rxt_dist.eval.profile import StallProbe
    from rxt_dist.eval.serving import ServingConfig, run_serving

    command = shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]])
    with local_app(args.config, args.model_dir) as (url, server):
        profile, _ = build_profile(args, url)
        write_json_atomic(args.out, {"command": command, **profile.to_dict()})
        log.info("wrote %s", args.out)
        if not check:
            return
        cfg = ServingConfig(url=url, sessions=tuple(args.sessions), turns=args.turns, rounds=args.rounds,
                            query_words=args.query_words, max_tokens=args.max_tokens)
        with StallProbe() as probe:
            report = run_serving(cfg, progress=True, command=command, server=server,
                                 describe_server=replica_counts)
    report["stalls"] = probe.summary()
    write_json_atomic(args.bench_out, report)
    write_check(profile, report, args, command)


def write_check(profile: CostProfile, report: dict, args: argparse.Namespace, command: str) -> None:
    rows = compare(profile, report["levels"])
    stalls = {"profile": {k: v for k, v in profile.stalls.items() if k != "durations_s"},
              "benchmark": {k: v for k, v in report.get("stalls", {}).items() if k != "durations_s"}}
    write_json_atomic(args.check_out, {"command": command, "tolerance": TOLERANCE, "profile": args.out,
                                       "benchmark": args.bench_out, "machine": machine_info(), "stalls": stalls,
                                       "levels": rows,
                                       "all_within_tolerance": all(r["within_tolerance"] for r in rows)})
    print(check_table(rows))
    print(f"stalls (machine gave no core ≥ 30 ms): profile {stalls['profile']}, benchmark {stalls['benchmark']}")
    print(f"wrote {args.check_out}")


def run_compare(args: argparse.Namespace) -> None:
    """Simulate again from a stored profile and benchmark (no measuring)."""
    profile = CostProfile.from_file(args.profile)
    with open(args.benchmark, encoding="utf-8") as f:
        report = json.load(f)
    args.out, args.bench_out = args.profile, args.benchmark
    write_check(profile, report, args, shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]]))


# -- simulate, plan ------------------------------------------------------------------------------

def run_simulate(args: argparse.Namespace) -> None:
    profile = CostProfile.from_file(args.profile)
    answers = profile.extra.get("calibration", {}).get("answer_tokens")
    print(f"{'S':>5} {'TTFT p50':>9} {'TTFT p99':>9} {'answer':>8} {'lag p50':>8} {'lag p99':>8} {'tok/s':>8}")
    for s in args.sessions:
        w = Workload(sessions=s, think_time_s=args.think_time_s, query_tokens=profile.query_tokens,
                     answer_tokens=profile.answer_tokens, turns=args.turns)
        r = simulate(profile, w, Replicas(args.generators, args.updaters), answer_tokens=answers)
        print(f"{s:>5} {r['ttft_p50_s'] * 1e3:8.1f}ms {r['ttft_p99_s'] * 1e3:8.1f}ms {r['answer_p50_s'] * 1e3:7.1f}ms "
              f"{r['update_lag_p50_s'] * 1e3:7.1f}ms {r['update_lag_p99_s'] * 1e3:7.1f}ms {r['tokens_per_s']:8.1f}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.command in ("profile", "check"):
        run_profile_and_check(args, check=args.command == "check")
    elif args.command == "compare":
        run_compare(args)
    elif args.command == "simulate":
        run_simulate(args)
    elif args.command == "plan":
        from capacity_plan import run_plan  # noqa: PLC0415  (the scenarios of docs/scaling.md)

        run_plan(args)
    else:
        from capacity_plan import run_bf16_recall  # noqa: PLC0415

        run_bf16_recall(args)


if __name__ == "__main__":
    main()
