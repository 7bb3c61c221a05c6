"""Capacity model: measure a cost profile, check the simulation against a real run, plan.

    python jobs/capacity.py profile --model-dir runs/tiny/models/smat --out docs/bench/capacity-profile-cpu.json
    python jobs/capacity.py check --model-dir runs/tiny/models/smat          # profile + benchmark + simulation
    python jobs/capacity.py compare      # simulate again from the stored profile and benchmark
    python jobs/capacity.py simulate --profile docs/bench/capacity-profile-cpu.json --sessions 1 8 32
    python jobs/capacity.py wake-weight --profiles docs/bench/study/capacity-profile-*.json
    python jobs/capacity.py repeat --benchmarks docs/bench/study/capacity-serving-am{27..41}.json
    python jobs/capacity.py plan --profile configs/capacity/l4-nano.json --daily-users 100000
    python jobs/capacity.py bf16-recall --rxt runs/tiny/models/smat --data runs/data --max-conversations 300

``profile`` times the model in this process, the session-storage tiers, and the serving path
(the application of serve/config.yaml started on a private local Ray with one streamed chunk
per token, three calibration workloads, CPU time of each process). ``check`` does that and
then, on the application as configured, the serving benchmark (S = 1, 8, 32), simulates each
level with the profile and prints predicted vs measured. docs/scaling.md explains the model.
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

from rxt_dist.eval.app_calibration import (
    WARM_UP_SESSIONS,
    CalibrationConfig,
    CheckLevels,
    build_profile,
    play_levels,
)
from rxt_dist.eval.calibrate import MACHINE_WAKE_WEIGHT, pooled_wake_weight
from rxt_dist.eval.capacity import CostProfile, Workload
from rxt_dist.eval.profile_fit import AUTO, refit
from rxt_dist.eval.report import load_average, machine_info, write_json_atomic
from rxt_dist.eval.simcheck import (
    REPLAY_EXPONENT,
    SPEED_READINGS,
    TOLERANCE,
    check_details,
    check_table,
    compare,
    misread_levels,
    repeatability,
    repeatability_table,
)
from rxt_dist.eval.simulate import Replicas, simulate

log = logging.getLogger("capacity")


def wake_weight_arg(text: str) -> float | str | None:
    """``--wake-weight``: ``auto`` (:data:`AUTO`), ``fit`` (None: fitted to this run's busy
    calibration level) or a number > 0."""
    if text == AUTO:
        return AUTO
    if text == "fit":
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not weight > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'fit' or a number > 0 (1: equal sharing)")
    return weight


def wake_wait_arg(text: str) -> float | None:
    """``--wake-wait``: ``fit`` (None: fitted to this run's busy calibration level) or seconds ≥ 0."""
    if text == "fit":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'fit' or seconds ≥ 0 (0: no wait for a core)")
    return seconds


def turns_arg(text: str) -> int:
    """``--warm-up-turns``: a whole number ≥ 0."""
    try:
        turns = int(text)
    except ValueError:
        turns = -1
    if turns < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of turns ≥ 0 (0: no warm-up)")
    return turns


def exponent_arg(text: str) -> float:
    """``--replay-exponent``: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number from 0 (unscaled) to 1 (the replay's whole ratio)")
    return value


SPEED_FROM_HELP = ("scale the profile by a reading of the machine's speed at each level against the same reading at "
                   "the calibration: 'replay' (default), the serving processes' CPU per turn in a replay of "
                   "calibration level A right before the level (more figures within over the stored checks than "
                   "unscaled: docs/BENCHMARKS.md, 'Capacity model'); 'probe', the speed "
                   "probe's (a Python process timing a fixed piece of work); 'store', the store's CPU per cycle of "
                   "claim, record, read, commit; 'none': the profile as calibrated")
REPLAY_EXPONENT_HELP = (f"with --speed-from replay: scale by the replay's ratio to this power (default "
                        f"{REPLAY_EXPONENT:g}, the share of it the check's levels follow over the stored checks: "
                        "docs/BENCHMARKS.md; 1: the whole ratio)")
SPEED_FROM_CHOICES = (*sorted(SPEED_READINGS), "none")
DEFAULT_SPEED_FROM = "replay"

WAKE_WEIGHT_HELP = (f"the CPU weight of the serving processes' pieces against the model's work: a number > 0 "
                    f"(below 1 the model's threads go ahead), "
                    f"'fit' to fit it to this run's busy calibration level (its decoding thread's slowdown where "
                    f"recorded, else its update lag, which is noisy), or 'auto' (default): fitted where the "
                    f"decoding slowdown was recorded (profiles since 2026-12-05, afternoon), else "
                    f"{MACHINE_WAKE_WEIGHT:g}, this project's benchmark machine's, pooled over many runs "
                    f"(the wake-weight command fits another machine's)")


WAKE_WAIT_HELP = ("the wait for a core of a thread woken while every core is taken, in seconds per thread beyond "
                  "the cores (0: processor sharing alone), or 'fit' (default): fitted to the busy calibration "
                  "level's hops between the Generator's event loop and its decoding thread where recorded "
                  "(profiles since 2026-12-07), else 0")


SPEED_TRACE_CHOICES = ("none", "levels", "all")
SPEED_TRACE_HELP = ("simulate the machine at the speed the speed probe read from moment to moment (its slow and fast "
                    "stretches, which every process shares): 'levels' (default), each checked level on the trace "
                    "read while it played, the profile fitted on a steady machine; 'all' (also the bare flag), the "
                    "fit too, on the calibration's trace; 'none', a steady machine throughout. Over 36 stored "
                    "checks, four seeds each, 'levels' kept the most figures within ±25%% and moved the TTFT p99s' "
                    "mean error at S = 1 and 8 from -12%% and -10%% to +3%% and -4%% (docs/BENCHMARKS.md, "
                    "'The machine's speed from moment to moment, by default')")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    cal, levels = CalibrationConfig(), CheckLevels()
    for name in ("profile", "check"):
        s = sub.add_parser(name)
        s.add_argument("--model-dir", default=cal.model_dir)
        s.add_argument("--config", default="serve/config.yaml")
        s.add_argument("--calibration-turns", type=int, default=cal.turns)
        s.add_argument("--calibration-think-s", type=float, default=cal.think_time_s)
        s.add_argument("--warm-up-turns", type=turns_arg, default=cal.warm_up_turns,
                       help=f"turns of {WARM_UP_SESSIONS} sessions played before anything is measured in each "
                            "freshly started application (0: none)")
        s.add_argument("--query-words", type=int, default=cal.query_words)
        s.add_argument("--max-tokens", type=int, default=cal.max_tokens)
        s.add_argument("--out", default="docs/bench/capacity-profile-cpu.json")
        s.add_argument("--wake-weight", type=wake_weight_arg, default=AUTO, help=WAKE_WEIGHT_HELP)
        s.add_argument("--wake-wait", type=wake_wait_arg, default=None, help=WAKE_WAIT_HELP)
        s.add_argument("--speed-trace", nargs="?", choices=SPEED_TRACE_CHOICES, const="all", default="levels",
                       help=SPEED_TRACE_HELP)
    check = sub.choices["check"]
    check.add_argument("--sessions", type=int, nargs="+", default=list(levels.sessions))
    check.add_argument("--turns", type=int, default=levels.turns)
    check.add_argument("--rounds", type=int, default=levels.rounds)
    check.add_argument("--min-level-turns", type=int, default=levels.min_level_turns,
                       help="more rounds for a level with fewer turns than this (a p99 of 16 turns is their maximum)")
    check.add_argument("--bench-out", default="docs/bench/capacity-serving.json")
    check.add_argument("--check-out", default="docs/bench/capacity-check.json")
    check.add_argument("--speed-from", choices=SPEED_FROM_CHOICES, default=DEFAULT_SPEED_FROM, help=SPEED_FROM_HELP)
    check.add_argument("--replay-exponent", type=exponent_arg, default=REPLAY_EXPONENT, help=REPLAY_EXPONENT_HELP)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--profile", default="docs/bench/capacity-profile-cpu.json")
    cmp_.add_argument("--benchmark", default="docs/bench/capacity-serving.json")
    cmp_.add_argument("--check-out", default="docs/bench/capacity-check.json")
    cmp_.add_argument("--refit", action="store_true",
                      help="fit the serving path to the profile's calibration again (after changing the simulation); "
                           "the refitted profile replaces the file --profile names (compare a copy to keep it)")
    cmp_.add_argument("--wake-weight", type=wake_weight_arg, default=AUTO,
                      help=f"with --refit: {WAKE_WEIGHT_HELP}")
    cmp_.add_argument("--wake-wait", type=wake_wait_arg, default=None, help=f"with --refit: {WAKE_WAIT_HELP}")
    cmp_.add_argument("--speed-from", choices=SPEED_FROM_CHOICES, default=DEFAULT_SPEED_FROM, help=SPEED_FROM_HELP)
    cmp_.add_argument("--replay-exponent", type=exponent_arg, default=REPLAY_EXPONENT, help=REPLAY_EXPONENT_HELP)
    cmp_.add_argument("--speed-trace", nargs="?", choices=SPEED_TRACE_CHOICES, const="all", default="levels",
                      help=SPEED_TRACE_HELP + " (the fit: with --refit)")
    ww = sub.add_parser("wake-weight", help="the wake weight that fits many stored profiles' busy calibration level")
    ww.add_argument("--profiles", nargs="+", required=True,
                    help="profile JSON files written by profile or check on the machine to fit")
    rep = sub.add_parser("repeat", help="the serving benchmark against itself: how well one stored run of the "
                                        "check's levels predicts another (the floor the check's target has)")
    rep.add_argument("--benchmarks", nargs="+", required=True,
                     help="serving-benchmark JSON files of the same levels (check's --bench-out), "
                          "in the order they ran")
    rep.add_argument("--out", default=None, help="also write the result as JSON here")
    sim = sub.add_parser("simulate")
    sim.add_argument("--profile", required=True)
    sim.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    sim.add_argument("--turns", type=int, default=8)
    sim.add_argument("--think-time-s", type=float, default=0.0)
    sim.add_argument("--generators", type=int, default=1)
    sim.add_argument("--updaters", type=int, default=1)
    pl = sub.add_parser("plan")
    pl.add_argument("--profile", nargs="+", default=["assumed:nano", "assumed:micro"],
                    help="profile JSON files, or assumed:<preset> for the assumed L4 profile of a preset")
    pl.add_argument("--daily-users", type=int, nargs="+", default=[1_000, 100_000, 10_000_000])
    pl.add_argument("--slo-ttft-p99-s", type=float, default=0.5)
    pl.add_argument("--turns-stateless", type=int, nargs="+", default=[8, 64, 256])
    pl.add_argument("--out", default="docs/bench/capacity-plan.json")
    bf = sub.add_parser("bf16-recall")
    bf.add_argument("--rxt", required=True)
    bf.add_argument("--data", required=True)
    bf.add_argument("--max-conversations", type=int, default=300)
    bf.add_argument("--threads", type=int, default=1)
    bf.add_argument("--out", default="docs/bench/capacity-bf16-recall.json")
    return p.parse_args(argv)


def calibration_config(args: argparse.Namespace) -> CalibrationConfig:
    return CalibrationConfig(model_dir=args.model_dir, turns=args.calibration_turns,
                             think_time_s=args.calibration_think_s, warm_up_turns=args.warm_up_turns,
                             query_words=args.query_words, max_tokens=args.max_tokens, wake_weight=args.wake_weight,
                             wake_wait_s=args.wake_wait, speed_trace=args.speed_trace == "all")


def run_profile_and_check(args: argparse.Namespace, check: bool) -> None:
    from bench_serving import APP_NAME, local_app, replica_counts

    command = shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]])
    try:  # bad settings fail here, before Ray starts
        cal = calibration_config(args)
        levels = CheckLevels(args.sessions, args.turns, args.rounds, args.min_level_turns) if check else None
    except ValueError as e:
        raise SystemExit(f"capacity.py {args.command}: {e}") from None
    # calibrated with one chunk per token, so that answer lengths tell per-chunk from per-turn work
    # one replica of each deployment, as the check simulates: autoscaling must not add one mid-level
    with local_app(args.config, args.model_dir, {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0},
                   replicas=1) as (url, server):
        profile, _ = build_profile(cal, url, APP_NAME, server["app_args"])
    write_json_atomic(args.out, {"command": command, **profile.to_dict()})
    log.info("wrote %s", args.out)
    if levels is None:
        return
    with local_app(args.config, args.model_dir, replicas=1) as (url, server):  # as configured, one replica each
        report = play_levels(url, cal, levels, APP_NAME, server=server, command=command,
                             describe_server=replica_counts,
                             poll_cpu_s=profile.extra["calibration"].get("session_poll", {}).get("cpu_s"))
    write_json_atomic(args.bench_out, report)
    write_check(profile, report, args, command)


def write_check(profile: CostProfile, report: dict, args: argparse.Namespace, command: str) -> None:
    # the benchmark's own streaming interval (reports from before it was recorded ran with 0)
    server = report.get("server", {})
    rows = compare(profile, report["levels"], server.get("stream_interval_s", 0.0),
                   server.get("stream_chunks_per_s", 0.0),  # absent from reports before the budget: none
                   report.get("config", {}).get("poll_interval_s", 0.0),  # each round's last commit, polled
                   speed_from=None if args.speed_from == "none" else args.speed_from, traced=args.speed_trace != "none",
                   replay_exponent=args.replay_exponent)
    write_json_atomic(args.check_out, {"command": command, "tolerance": TOLERANCE, "profile": args.out,
                                       "benchmark": args.bench_out, "machine": machine_info(), "levels": rows,
                                       "all_within_tolerance": all(r["within_tolerance"] for r in rows)})
    print(check_table(rows))
    for line in misread_levels(rows):
        print(line)
    print(check_details(rows))
    print(f"wrote {args.check_out}")


def run_compare(args: argparse.Namespace) -> None:
    """Simulate again from a stored profile and benchmark (no measuring)."""
    profile = CostProfile.from_file(args.profile)
    if args.refit:
        with open(args.profile, encoding="utf-8") as f:
            measured_by = json.load(f).get("command")
        profile = refit(profile, args.wake_weight, traced=args.speed_trace == "all", wake_wait_s=args.wake_wait)
        write_json_atomic(args.profile, {"command": measured_by, **profile.to_dict()})
    with open(args.benchmark, encoding="utf-8") as f:
        report = json.load(f)
    args.out, args.bench_out = args.profile, args.benchmark
    write_check(profile, report, args, shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]]))


def run_wake_weight(args: argparse.Namespace) -> None:
    """Pool the busy calibration level of stored profiles: print each weight's error over them
    and the weight that fits them best (``--wake-weight`` for this machine's checks)."""
    runs, skipped = [], []
    for i, name in enumerate(args.profiles, 1):
        profile = CostProfile.from_file(name)
        many = profile.extra.get("calibration", {}).get("many") or {}
        if not many.get("update_lag_p50_s") or not many.get("tokens"):
            skipped.append(Path(name).name)
            continue
        if "wake_weight_lags_s" not in profile.extra:  # measured before the weight existed: refit here
            log.info("[%d/%d] %s: simulating its level B with each weight", i, len(args.profiles), name)
            profile = refit(profile, None)
        runs.append((many["update_lag_p50_s"], {float(k): v for k, v in profile.extra["wake_weight_lags_s"].items()}))
    if skipped:
        print(f"skipped {len(skipped)} profile(s) whose busy calibration level recorded no update lag "
              f"or answers (measured before it did): {', '.join(skipped)}")
    if not runs:
        raise SystemExit("none of the profiles recorded a busy calibration level: nothing to pool")
    best, errors = pooled_wake_weight(runs)
    print(f"{'weight':>7} {'rms log(simulated / measured)':>30} {'mean':>7}")
    for weight, error in errors.items():
        bias = sum(math.log(lags[weight] / measured) for measured, lags in runs) / len(runs)
        print(f"{weight:>7g} {error:>30.3f} {bias:>+7.3f}" + ("   <- best" if weight == best else ""))
    print(f"wake weight pooled over {len(runs)} calibration(s): {best:g} (--wake-weight {best:g})")


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


def run_plan(args: argparse.Namespace) -> None:
    """Size a deployment for each profile × number of daily users (docs/scaling.md)."""
    from rxt_dist.eval.plan import (
        ASSUMED_OBJECT_STORE,
        GPU_NODE,
        Usage,
        assumed_gpu_profile,
        daily_users_workload,
        plan,
        plan_table,
        stateless_kv,
    )

    usage = Usage()
    out: dict[str, Any] = {"command": shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]]),
                           "usage": dataclasses.asdict(usage), "slo_ttft_p99_s": args.slo_ttft_p99_s,
                           "gpu_node": GPU_NODE, "plans": []}
    for name in args.profile:
        preset = name.split(":", 1)[1] if name.startswith("assumed:") else None
        profile = assumed_gpu_profile(preset) if preset else CostProfile.from_file(name)
        tokens_per_turn = usage.query_tokens + usage.answer_tokens + 4
        stateless = ({t: stateless_kv(preset, t, tokens_per_turn) for t in args.turns_stateless} if preset else {})
        for users in args.daily_users:
            w = daily_users_workload(users, usage)
            started = time.perf_counter()
            r = plan(profile, w, args.slo_ttft_p99_s)
            r.update(profile=name, assumed=profile.assumed, source=profile.source, daily_users=users,
                     stm_bytes=profile.stm_bytes, stateless=stateless, plan_seconds=time.perf_counter() - started)
            out["plans"].append(r)
            log.info("%s, %s daily users: %s concurrent sessions → %s Generator, %s MemoryUpdater replicas, "
                     "%s path cores; TTFT p99 %.0f ms", name, f"{users:,}", f"{w.sessions:,}", r.get("generators"),
                     r.get("updaters"), r.get("path_cpu_cores"), 1e3 * (r.get("ttft_p99_s") or math.nan))
    from rxt_dist.eval.profile import profile_storage

    sizes = {f"{p['profile'].split(':')[-1]} {dtype}": n for p in out["plans"] for dtype, n in p["stm_bytes"].items()}
    out["storage_tiers_measured_here"] = profile_storage(sizes)
    out["storage_tiers_assumed"] = ASSUMED_OBJECT_STORE
    write_json_atomic(args.out, out)
    print(plan_table(out["plans"]))
    print(f"wrote {args.out}")


def run_bf16_recall(args: argparse.Namespace) -> None:
    from rxt_dist.eval.stm_dtype import recall_by_stm_dtype

    command = shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]])
    load = load_average()
    result = recall_by_stm_dtype(args.data, args.rxt, args.max_conversations, args.threads)
    write_json_atomic(args.out, {"command": command, "machine": machine_info(), "load_average_before": load,
                                 "load_average_after": load_average(), **result})
    for name, arm in result["arms"].items():
        print(f"STM {name:9}: recall new values {arm['recall_new_values']:.1%} (of {arm['recall_new_count']}), "
              f"seen {arm['recall_seen_values']:.1%} (of {arm['recall_seen_count']}), answer PPL "
              f"{arm['answer_perplexity']:.3f}, token accuracy {arm['token_accuracy']:.1%}")
    print(f"wrote {args.out}")


def run_repeat(args: argparse.Namespace) -> None:
    reports = {}  # by the path as given: two runs' files may share a name in different folders
    for name in args.benchmarks:
        try:
            with open(name, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"capacity.py repeat: {name}: {e}") from None
        if not isinstance(report, dict) or "levels" not in report:
            raise SystemExit(f"capacity.py repeat: {name}: not a serving-benchmark report (no 'levels')")
        reports[name] = report
    try:
        result = repeatability(reports)
    except ValueError as e:
        raise SystemExit(f"capacity.py repeat: {e}") from None
    except (KeyError, TypeError) as e:  # a level without a figure the check compares
        raise SystemExit(f"capacity.py repeat: a level lacks a figure the check compares ({e!r})") from None
    print(repeatability_table(result))
    if args.out:
        write_json_atomic(args.out, {"command": shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]]), **result})
        print(f"wrote {args.out}")


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
        run_plan(args)
    elif args.command == "wake-weight":
        run_wake_weight(args)
    elif args.command == "repeat":
        run_repeat(args)
    else:
        run_bf16_recall(args)


if __name__ == "__main__":
    main()
