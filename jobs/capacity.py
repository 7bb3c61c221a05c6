"""Capacity model: measure a cost profile, check the simulation against a real run, plan.

    python jobs/capacity.py profile --model-dir runs/tiny/models/smat --out docs/bench/capacity-profile-cpu.json
    python jobs/capacity.py check --model-dir runs/tiny/models/smat          # profile + benchmark + simulation
    python jobs/capacity.py compare      # simulate again from the stored profile and benchmark
    python jobs/capacity.py simulate --profile docs/bench/capacity-profile-cpu.json --sessions 1 8 32
    python jobs/capacity.py wake-weight --profiles docs/bench/study/capacity-profile-*.json
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

from rxt_dist.eval import simcheck
from rxt_dist.eval.calibrate import (MACHINE_WAKE_WEIGHT, fit_fixed_shares, fit_timing_cv, fit_to_calibration,
                                     fit_update_transit, fit_wake_weight, fit_wake_weight_to_decoding,
                                     pooled_wake_weight)
from rxt_dist.eval.capacity import STORE_CALLS, CostProfile, ServingPath, Workload, speed_trace
from rxt_dist.eval.report import load_average, machine_info, write_json_atomic
from rxt_dist.eval.simcheck import SPEED_READINGS, check_table, compare
from rxt_dist.eval.simulate import Replicas, simulate

log = logging.getLogger("capacity")


AUTO = "auto"
"""``--wake-weight``'s default: fitted to the busy calibration level's decoding slowdown when the
profile recorded it, else :data:`MACHINE_WAKE_WEIGHT`."""


def wake_weight_arg(text: str) -> float | str | None:
    """``--wake-weight``: ``auto`` (:data:`AUTO`), ``fit`` (None: fitted to this run's busy
    calibration level) or a number ≥ 1."""
    if text == AUTO:
        return AUTO
    if text == "fit":
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not weight >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'fit' or a number ≥ 1 (1: equal sharing)")
    return weight


def turns_arg(text: str) -> int:
    """``--warm-up-turns``: a whole number ≥ 0."""
    try:
        turns = int(text)
    except ValueError:
        turns = -1
    if turns < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of turns ≥ 0 (0: no warm-up)")
    return turns


SPEED_FROM_HELP = ("scale the profile by a reading of the machine's speed at each level against the same reading at "
                   "the calibration: 'probe', the speed probe's (a Python process timing a fixed piece of work); "
                   "'store', the store's CPU per cycle of claim, record, read, commit; 'replay', the serving "
                   "processes' CPU per turn in a replay of calibration level A right before the level. Off by "
                   "default: the probe's correction lost 10 figures of 312 over 26 stored checks, its calibration "
                   "reading 40-57%% high in three runs whose calibration ran at normal speed")

WAKE_WEIGHT_HELP = (f"the CPU weight of the serving processes' pieces against the model's work: a number ≥ 1, "
                    f"'fit' to fit it to this run's busy calibration level (its decoding thread's slowdown where "
                    f"recorded, else its update lag, which is noisy), or 'auto' (default): fitted where the "
                    f"decoding slowdown was recorded (profiles since 2026-12-05, afternoon), else "
                    f"{MACHINE_WAKE_WEIGHT:g}, this project's benchmark machine's, pooled over many runs "
                    f"(the wake-weight command fits another machine's)")


WARM_UP_SESSIONS = 8
WARM_UP_TURNS = 128
"""``--warm-up-turns``' default: five checks interleaved with five without it, 57 against 51
figures of 60 within (the S = 1 update lag +8% against +25% on average)."""


SPEED_TRACE_HELP = ("simulate the machine at the speed the speed probe read from moment to moment: the "
                    "calibration's trace when fitting, each level's own when checking it (by default a steady "
                    "machine: over four checks it gained nothing measurable, docs/BENCHMARKS.md)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("profile", "check"):
        s = sub.add_parser(name)
        s.add_argument("--model-dir", default="runs/tiny/models/smat")
        s.add_argument("--config", default="serve/config.yaml")
        s.add_argument("--calibration-turns", type=int, default=32)
        s.add_argument("--calibration-think-s", type=float, default=0.3)
        s.add_argument("--warm-up-turns", type=turns_arg, default=WARM_UP_TURNS,
                       help="turns of 8 sessions played before anything is measured in each freshly started "
                            "application (0: none)")
        s.add_argument("--query-words", type=int, default=24)
        s.add_argument("--max-tokens", type=int, default=32)
        s.add_argument("--out", default="docs/bench/capacity-profile-cpu.json")
        s.add_argument("--wake-weight", type=wake_weight_arg, default=AUTO, help=WAKE_WEIGHT_HELP)
        s.add_argument("--speed-trace", action="store_true", help=SPEED_TRACE_HELP)
    check = sub.choices["check"]
    check.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    check.add_argument("--turns", type=int, default=8)
    check.add_argument("--rounds", type=int, default=2)
    check.add_argument("--min-level-turns", type=int, default=256,
                       help="more rounds for a level with fewer turns than this (a p99 of 16 turns is their maximum)")
    check.add_argument("--bench-out", default="docs/bench/capacity-serving.json")
    check.add_argument("--check-out", default="docs/bench/capacity-check.json")
    check.add_argument("--speed-from", choices=sorted(SPEED_READINGS), help=SPEED_FROM_HELP)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--profile", default="docs/bench/capacity-profile-cpu.json")
    cmp_.add_argument("--benchmark", default="docs/bench/capacity-serving.json")
    cmp_.add_argument("--check-out", default="docs/bench/capacity-check.json")
    cmp_.add_argument("--refit", action="store_true",
                      help="fit the serving path to the profile's calibration again (after changing the simulation)")
    cmp_.add_argument("--wake-weight", type=wake_weight_arg, default=AUTO,
                      help=f"with --refit: {WAKE_WEIGHT_HELP}")
    cmp_.add_argument("--speed-from", choices=sorted(SPEED_READINGS), help=SPEED_FROM_HELP)
    cmp_.add_argument("--speed-trace", action="store_true", help=SPEED_TRACE_HELP + " (with --refit: fitted so too)")
    ww = sub.add_parser("wake-weight", help="the wake weight that fits many stored profiles' busy calibration level")
    ww.add_argument("--profiles", nargs="+", required=True,
                    help="profile JSON files written by profile or check on the machine to fit")
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


# -- profile -------------------------------------------------------------------------------------

def model_costs(model_dir: str, query_tokens: int, answer_tokens: int,
                compile_decode: bool = False, compile_update: bool = False) -> tuple[dict, dict, dict, dict]:
    """(model profile, STM bytes, storage tiers, model description) measured in this process
    with one torch thread (a replica of 0.5 CPU runs one); the prefill and decoding compiled
    where the app's Generator compiles them (``compile_decode``), the memory update where its
    MemoryUpdater does (``compile_update``)."""
    import torch

    from rxt_dist.eval.profile import profile_model, profile_storage, stm_bytes
    from rxt_dist.inference import CompiledMemoryUpdate, compiled_or_eager
    from rxt_dist.model import count_parameters, load_model_dir

    torch.set_num_threads(1)
    model = load_model_dir(model_dir).eval()
    compiled = compiled_or_eager(model) if compile_decode else None
    compiled_update = compiled_or_eager(model, kind=CompiledMemoryUpdate) if compile_update else None
    costs = profile_model(model, query_tokens=query_tokens, answer_tokens=max(1, answer_tokens), compiled=compiled,
                          compiled_update=compiled_update)
    sizes = stm_bytes(model)
    cfg = model.cfg
    described = {"model_dir": model_dir, "dim": cfg.dim, "layers": cfg.num_layers, "stm_shape": list(cfg.stm_shape),
                 "parameters": count_parameters(model), "decode": "eager" if compiled is None else "compiled",
                 "update": "eager" if compiled_update is None else "compiled"}
    return costs, sizes, profile_storage(sizes), described


def _cpu_per_turn(pids, url: str, cfg, rate: dict[str, float]) -> tuple[dict, dict[str, float], dict[str, float]]:
    """Play ``cfg``; its level report, each role's CPU seconds per turn (idle rate subtracted)
    and the share of each role's CPU its busiest thread did."""
    from rxt_dist.eval.profile import process_cpu, serial_shares, thread_cpu
    from rxt_dist.eval.serving import run_serving

    threads0 = thread_cpu(pids)
    before, client0, w0 = process_cpu(pids), time.process_time(), time.perf_counter()
    report = run_serving(cfg)
    after, client1, w1 = process_cpu(pids), time.process_time(), time.perf_counter()
    shares = serial_shares(threads0, thread_cpu(pids))
    after["client"], before["client"] = client1, client0
    level = report["levels"][0]
    turns = level["requests"] + cfg.warmup_turns
    per_turn = {role: max(0.0, after[role] - before[role] - rate[role] * (w1 - w0)) / turns for role in after}
    return level, per_turn, shares


def idle_rates(pids: dict[str, list[int]], idle_s: float = 4.0) -> dict[str, float]:
    """Each role's CPU seconds per second while no request runs (Ray's background work: health
    checks, metrics, long polls), this process's as ``client``."""
    from rxt_dist.eval.profile import process_cpu

    idle0, client_idle0, t0 = process_cpu(pids), time.process_time(), time.perf_counter()
    time.sleep(idle_s)
    idle1, client_idle1, t1 = process_cpu(pids), time.process_time(), time.perf_counter()
    rate = {role: (idle1[role] - idle0[role]) / (t1 - t0) for role in idle1}
    rate["client"] = (client_idle1 - client_idle0) / (t1 - t0)
    return rate


def replay_config(url: str, args: argparse.Namespace, warmup: int = 0, max_tokens: int | None = None):
    """Calibration level A (one session, think time, seeded queries): the calibration plays it,
    and the check replays it right before each level to read the serving path's speed."""
    from rxt_dist.eval.serving import ServingConfig

    return ServingConfig(url=url, sessions=(1,), turns=args.calibration_turns, think_time_s=args.calibration_think_s,
                         query_words=args.query_words, max_tokens=max_tokens or args.max_tokens,
                         warmup_turns=warmup, seed=7)


def warm_up(url: str, args: argparse.Namespace) -> None:
    """``--warm-up-turns`` turns of :data:`WARM_UP_SESSIONS` concurrent sessions before anything
    is measured in a freshly started application (the calibration's, the check's): a new
    application's serving processes spend more CPU on a turn than they do minutes later."""
    from rxt_dist.eval.serving import ServingConfig, run_serving

    if args.warm_up_turns <= 0:
        return
    turns = math.ceil(args.warm_up_turns / WARM_UP_SESSIONS)
    run_serving(ServingConfig(url=url, sessions=(WARM_UP_SESSIONS,), turns=turns, query_words=args.query_words,
                              max_tokens=args.max_tokens, seed=11))
    log.info("warmed up: %d turns of %d sessions", turns * WARM_UP_SESSIONS, WARM_UP_SESSIONS)


def calibrate(url: str, args: argparse.Namespace, idle_s: float = 4.0) -> tuple[dict, dict[str, Any], int]:
    """Play the calibration workloads and measure the serving processes' CPU per turn: level A,
    one session with think time (no queueing: the latencies the profile is fitted to), and
    level B, 16 sessions with ``MANY_THINK_S`` think time (several turns in each process at once: how much
    of a turn's work is shared with the others, ``ServingPath.fixed_share``), and level C, level
    A with answers capped at ``SHORT_MAX_TOKENS`` (what of a turn's work is per streamed chunk,
    ``ServingPath.chunk_s``). Ray's processes
    work in the background too (health checks, metrics, long polls): their CPU rate over
    ``idle_s`` seconds without requests is subtracted."""
    import ray
    from bench_serving import APP_NAME
    from ray import serve

    from rxt_dist.eval.profile import SpeedProbe, serving_processes
    from rxt_dist.eval.serving import ServingConfig, run_serving

    def config(sessions: int, turns: int, think: float, warmup: int, max_tokens: int = args.max_tokens) -> ServingConfig:
        return ServingConfig(url=url, sessions=(sessions,), turns=turns, think_time_s=think,
                             query_words=args.query_words, max_tokens=max_tokens, warmup_turns=warmup, seed=7)

    run_serving(config(1, 2, 0.0, 0))  # every process exists now
    warm_up(url, args)
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = serving_processes(raylet)
    updater = serve.get_deployment_handle("MemoryUpdater", APP_NAME)
    generator = serve.get_deployment_handle("Generator", APP_NAME)
    held0 = updater.stats.remote().result().get("stm", {})
    # read after the handles' first calls: from then on their routers work in this process in the
    # background (≈ 2–4 ms of CPU a second on the AMD VM), which the client's CPU must not count
    rate = idle_rates(pids, idle_s)
    with SpeedProbe() as probe:  # the machine's speed while the path's costs are measured
        loops = [generator.stats.remote().result()]  # the decoding loop's counters around levels A and C
        level, per_turn, shares = _cpu_per_turn(pids, url, replay_config(url, args, warmup=2), rate)
        loops.append(generator.stats.remote().result())
        held1 = updater.stats.remote().result().get("stm", {})
        short, short_per_turn, _ = _cpu_per_turn(pids, url, replay_config(url, args, max_tokens=SHORT_MAX_TOKENS),
                                                 rate)
        loops.append(generator.stats.remote().result())
        short_tokens = [int(x) for per_turn in short["samples"]["completion_tokens"] for x in per_turn]
        counters0, loop0 = updater.stats.remote().result(), generator.stats.remote().result()
        many, many_per_turn, many_shares = _cpu_per_turn(pids, url, config(16, MANY_TURNS, MANY_THINK_S, 0), rate)
        counters1, loop1 = updater.stats.remote().result(), generator.stats.remote().result()
    store_calls, store_cycle = store_call_costs(url, pids)
    in_flight = many["requests"] / many["wall_s"] * many["answer"]["p50_s"]
    fixed = {role: _fixed_share(per_turn[role], many_per_turn[role], in_flight) for role in per_turn}
    turns = level["requests"] + 2
    return level, {"per_turn": per_turn, "idle_rate": rate, "speed_probe_s": probe.median_s,
                   "speed_probe_pieces_s": probe.rounded_pieces(),
                   "decode_loop": decode_loop_counters(loops[0], loops[1]),
                   "store_cycle_cpu_s": store_cycle,
                   "serial_share": shares, "fixed_share": fixed, "store_calls": store_calls,
                   "updater_read_share": read_share(held0, held1),
                   "many": {"sessions": 16, "turns": MANY_TURNS, "think_time_s": MANY_THINK_S,
                            "per_turn": many_per_turn, "serial_share": many_shares, "turns_in_flight": in_flight,
                            "update_lag_p50_s": many["update_lag"]["p50_s"],
                            "update_batch_mean": update_batches(counters0, counters1)["mean"],
                            "update_batches": update_batches(counters0, counters1),
                            "decode_loop": decode_loop_counters(loop0, loop1),
                            "tokens": [int(x) for per_turn in many["samples"]["completion_tokens"] for x in per_turn]},
                   "short": {"max_tokens": SHORT_MAX_TOKENS, "cpu_per_turn": short_per_turn,
                             "decode_loop": decode_loop_counters(loops[1], loops[2]),
                             "answer_tokens": sum(short_tokens) / len(short_tokens), "tokens": short_tokens,
                             "chunks": short["tokens"]["chunks_per_turn_mean"],
                             "long_chunks": level["tokens"]["chunks_per_turn_mean"],
                             "answer_steps": sum(t + (t < SHORT_MAX_TOKENS) for t in short_tokens) / len(short_tokens),
                             "ttft_p50_s": short["ttft"]["excluding_wait"]["p50_s"],
                             "answer_p50_s": short["answer"]["p50_s"]}}, turns


SHORT_MAX_TOKENS = 2
"""Answer cap of the third calibration level: with the first level's (uncapped) answers it
separates each process's work per streamed chunk from its work per turn."""


def store_call_costs(url: str, pids: dict[str, list[int]], cycles: int = 200) -> tuple[dict[str, float], float]:
    """The store shard's CPU seconds per call of each kind a turn makes, measured on a session of
    its own: ``cycles`` times claim (``begin_turn``), record (``finish_turn``, moving the
    session's transcript index entry as a turn does), read
    (``update_input``) and commit (``commit_update``), each call alone, the shard process's CPU
    read around it (clock-tick resolution: averaged over many calls); and the shard's CPU
    seconds per cycle read around the whole loop (a reading of the machine's speed: the same
    work each time, ~1% resolution)."""
    import httpx
    import ray

    from rxt_dist.eval.profile import process_cpu
    from rxt_dist.serving.protocol import SESSION_HEADER, transcript_start, transcript_step
    from rxt_dist.serving.sessions import shard_of
    from serve.store import STORE_NAMESPACE

    r = httpx.post(f"{url}/v1/sessions", timeout=30.0)
    r.raise_for_status()
    sid = r.headers[SESSION_HEADER]
    shards = {}  # index → actor name (rxt-session-store-<digest>-<i>-of-<n>): one store in this cluster
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == STORE_NAMESPACE and actor["name"].startswith("rxt-session-store-"):
            shards[int(actor["name"].rsplit("-", 3)[1])] = actor["name"]
    shard = ray.get_actor(shards[shard_of(sid, len(shards))], namespace=STORE_NAMESPACE)
    store = {"store": pids["store"]}
    spent = dict.fromkeys(STORE_CALLS, 0.0)
    transcript = transcript_start(None, None)  # the new session's, as the Ingress indexes it

    def timed(kind: str, call):
        before = process_cpu(store)["store"]
        out = ray.get(call)
        spent[kind] += process_cpu(store)["store"] - before
        return out

    start = process_cpu(store)["store"]
    for _ in range(cycles):
        lease = f"capacity-{time.monotonic_ns()}"
        claim = timed("claim", shard.begin_turn.remote(sid, lease, 5.0))
        version = claim["version"]
        transcript = transcript_step(transcript, "query", "answer")  # the index entry moves, as in a turn
        timed("record", shard.finish_turn.remote(sid, lease, version, [5] * 24, [6] * 6, None, "stop", transcript))
        data = timed("read", shard.update_input.remote(sid, version))
        timed("commit", shard.commit_update.remote(sid, version, data["stm"]))
    per_cycle = (process_cpu(store)["store"] - start) / cycles
    httpx.delete(f"{url}/v1/sessions/{sid}", timeout=30.0)
    return {kind: v / cycles for kind, v in spent.items()}, per_cycle


def read_share(before: dict, after: dict) -> float:
    """The share of updates between two reads of the MemoryUpdater's STM counters (``stats()["stm"]``)
    whose STM it read from the store; 1 when it counted none (an application whose updaters
    keep no STMs, or one from before they did)."""
    hits = after.get("hits", 0) - before.get("hits", 0)
    misses = after.get("misses", 0) - before.get("misses", 0)
    return misses / (hits + misses) if hits + misses and after.get("sessions") is not None else 1.0


def update_batches(before: dict, after: dict) -> dict[str, Any]:
    """The MemoryUpdater's batches and updates between two reads of its counters, the mean
    batch (None without a batch), and a batch's mean duration and phases (``batch_mean_s``,
    ``read_mean_s``, …)."""
    batches, applied = after["batches"] - before["batches"], after["applied"] - before["applied"]
    out = {"batches": batches, "applied": applied, "mean": applied / batches if batches else None}
    for key in ("batch_s", "read_s", "consolidate_s", "commit_s",  # absent before 2026-12-02
                "consolidate_run_s", "consolidate_cpu_s"):  # absent before 2026-12-05
        if key in after and batches:
            out[f"{key[:-2]}_mean_s"] = (after[key] - before.get(key, 0.0)) / batches
    timed = after.get("timed", 0) - before.get("timed", 0)
    if timed:  # per update, not per batch (absent before 2026-12-05)
        out["transit_per_update_s"] = (after["transit_s"] - before["transit_s"]) / timed
        out["queued_per_update_s"] = (after["queued_s"] - before["queued_s"]) / timed
    return out


def decode_loop_counters(before: dict, after: dict) -> dict[str, float]:
    """The Generator's decoding loop between two reads of its counters (``stats()``): its
    iterations, their mean batch, and an iteration's mean seconds as the event loop awaits it
    (``iteration_mean_s``), on the worker thread (``tick_mean_s``) and of that thread's CPU
    (``tick_cpu_mean_s``); empty for a replica from before it counted them."""
    n = after.get("iterations", 0) - before.get("iterations", 0)
    if not n:
        return {}
    return {"iterations": n, "rows_mean": (after["rows"] - before["rows"]) / n,
            "steps": after["steps"] - before["steps"], "admitted": after["admitted"] - before["admitted"],
            **{f"{key[:-2]}_mean_s": (after[key] - before[key]) / n for key in ("iteration_s", "tick_s", "tick_cpu_s")}}


MANY_TURNS = 6
MANY_THINK_S = 0.0
"""Think time of the second calibration level: none, so that several turns are in each process
at once and the per-wake-up sharing (``fit_fixed_shares``) shows, as under the benchmark's busy
levels (0.2 s until 2026-12-04)."""


def _fixed_share(alone: float, together: float, in_flight: float) -> float:
    """From CPU per turn one at a time and with ``in_flight`` turns at once: the share ``f`` with
    together = alone × (f + (1 − f) / in_flight), between 0 and 1."""
    if alone <= 0 or in_flight <= 1.2:
        return 1.0
    return min(1.0, max(0.0, (together / alone - 1 / in_flight) / (1 - 1 / in_flight)))


def build_profile(args: argparse.Namespace, url: str, app_args: dict | None = None) -> tuple[CostProfile, dict]:
    """The cost profile of the app at ``url``, its model timed as the app's replicas run it
    (compiled where ``app_args`` set ``compile_decode`` / ``compile_update``)."""
    from rxt_dist.eval.calibrate import fit_serving_path
    from rxt_dist.eval.profile import measure_environment, slowdown

    load_before = load_average()
    env_before = measure_environment()
    level, cpu, turns = calibrate(url, args)
    cpu_per_turn = cpu["per_turn"]
    tokens = [int(x) for per_turn in level["samples"]["completion_tokens"] for x in per_turn]
    answer_mean = sum(tokens) / len(tokens)
    query_tokens = round(level["tokens"]["prompt_per_turn_mean"]) - 3  # [BOS][Q] … [A]
    app_args = app_args or {}
    costs, sizes, storage, described = model_costs(args.model_dir, query_tokens, round(answer_mean),
                                                   bool(app_args.get("compile_decode", False)),
                                                   bool(app_args.get("compile_update", False)))
    env_after = measure_environment()
    stalls = {"rate_per_s": (env_before["stalls"]["rate_per_s"] + env_after["stalls"]["rate_per_s"]) / 2,
              "durations_s": env_before["stalls"]["durations_s"] + env_after["stalls"]["durations_s"]}
    k = slowdown(costs)
    # +1: the end-of-answer step
    short = cpu["short"]
    if level["tokens"]["chunks_per_turn_mean"] - short["chunks"] < 1:
        log.warning("the calibration's answers came in %.1f chunks, the capped ones in %.1f: too close to tell "
                    "per-chunk from per-turn work; all of it counts per turn", level["tokens"]["chunks_per_turn_mean"],
                    short["chunks"])
        short = None
    path = fit_serving_path(costs, cpu_per_turn, level, answer_mean + 1, k, machine_info()["logical_cpus"],
                            short=short, many=cpu["many"], store_calls=cpu["store_calls"],
                            read_share=cpu["updater_read_share"], decode_loop=cpu["decode_loop"])
    path["serial_share"] = cpu["serial_share"]
    path["fixed_share"] = cpu["fixed_share"]
    spin = env_after["slowdown"]  # the load as every later check measures it, right after the model timings
    path["other_load"] = max(0.0, spin - 1)
    first = CostProfile(
        source=f"measured on this machine ({machine_info()['cpu']}, {machine_info()['logical_cpus']} CPUs, "
               f"load average {load_before}) by jobs/capacity.py profile",
        model=described, query_tokens=query_tokens, answer_tokens=round(answer_mean),
        decode_step_s=costs["decode_step_s"], prefill_s=costs["prefill_s"],
        prefill_length_s=costs["prefill_length_s"], consolidate_s=costs["consolidate_s"],
        stm_bytes=sizes, storage=storage, path=ServingPath(**path), timing_cv=costs["timing_cv"],
        stalls=stalls, speed_trace=speed_trace(cpu["speed_probe_pieces_s"]) if args.speed_trace else [],
        extra={"load_average_before": load_before, "load_average_after": load_average(), "slowdown": k,
               # the reference load: the one measured right after the model timings, which make up
               # most of the profile's times (a burst before the calibration must not set it)
               "environment": {"slowdown": env_after["slowdown"], "before": env_before, "after": env_after,
                               "speed_probe_s": cpu["speed_probe_s"],
                               "speed_probe_pieces_s": cpu["speed_probe_pieces_s"],
                               "store_cycle_cpu_s": cpu["store_cycle_cpu_s"]},
               "model_cpu_s": costs["cpu_s"], "calibration": {
                   "sessions": 1, "turns": turns, "think_time_s": args.calibration_think_s,
                   "warm_up_turns": args.warm_up_turns,
                   "cpu_s_per_turn": cpu_per_turn, "cpu_idle_rate": cpu["idle_rate"],
                   "serial_share": cpu["serial_share"], "fixed_share": cpu["fixed_share"], "many": cpu["many"],
                   "store_call_cpu_s": cpu["store_calls"], "decode_loop": cpu["decode_loop"],
                   "short": cpu["short"], "answer_tokens": tokens,
                   "ttft_p50_s": level["ttft"]["p50_s"], "answer_p50_s": level["answer"]["p50_s"],
                   "ttft_s": [float(x) for per_turn in level["samples"]["ttft_s"] for x in per_turn if x is not None],
                   "ttft_excluding_wait_p50_s": level["ttft"]["excluding_wait"]["p50_s"],
                   "update_lag_p50_s": level["update_lag"]["p50_s"]}})
    calibration = level_a_workload(first)
    profile = fit_to_calibration(first, calibration, level["ttft"]["excluding_wait"]["p50_s"],
                                 level["answer"]["p50_s"], level["update_lag"]["p50_s"], tokens,
                                 short_calibration(calibration, short))
    profile.extra["path_before_fit"] = dataclasses.asdict(first.path)
    return fit_sharing(fit_spread(profile), args.wake_weight), level


def run_profile_and_check(args: argparse.Namespace, check: bool) -> None:
    from bench_serving import local_app

    command = shlex.join(["python", "jobs/capacity.py", *sys.argv[1:]])
    # calibrated with one chunk per token, so that answer lengths tell per-chunk from per-turn work
    # one replica of each deployment, as the check simulates: autoscaling must not add one mid-level
    with local_app(args.config, args.model_dir, {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0},
                   replicas=1) as (url, server):
        profile, _ = build_profile(args, url, server["app_args"])
    write_json_atomic(args.out, {"command": command, **profile.to_dict()})
    log.info("wrote %s", args.out)
    if not check:
        return
    with local_app(args.config, args.model_dir, replicas=1) as (url, server):  # as configured, one replica each
        report = play_levels(url, server, args, command)
    write_json_atomic(args.bench_out, report)
    write_check(profile, report, args, command)


def play_levels(url: str, server: dict, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The serving benchmark one level at a time, each right after a measurement of the
    machine's other load, a reading of the store's CPU per call cycle and a replay of
    calibration level A (``environment`` in the level's report), the application warmed up
    first (:func:`warm_up`)."""
    import httpx
    import ray
    from bench_serving import APP_NAME, replica_counts
    from ray import serve

    from rxt_dist.eval.profile import (
        SpeedProbe,
        measure_environment,
        process_cpu,
        serving_processes,
    )
    from rxt_dist.eval.serving import ServingConfig, judge_targets, run_serving
    from rxt_dist.serving.protocol import SESSION_HEADER

    # a session opened and closed, not a turn: the store's shard has a process to read from now
    opened = httpx.post(f"{url}/v1/sessions", timeout=30.0)
    opened.raise_for_status()
    httpx.delete(f"{url}/v1/sessions/{opened.headers[SESSION_HEADER]}", timeout=30.0)
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    updater = serve.get_deployment_handle("MemoryUpdater", APP_NAME)
    generator = serve.get_deployment_handle("Generator", APP_NAME)
    updater.stats.remote().result()  # the handles' routers run from here on, as at the calibration's
    generator.stats.remote().result()  # idle readings (:func:`calibrate`): every replay subtracts them
    warm_up(url, args)
    report = None
    for i, sessions in enumerate(args.sessions):
        env = measure_environment()
        _, store_cycle = store_call_costs(url, pids)  # the machine's speed on the store's work, as at calibration
        # the serving path's speed: calibration level A replayed, its CPU per turn against the calibration's
        # (the background rate read right before it: a level's aftermath keeps Ray's processes busier)
        rate = idle_rates(pids)
        replayed, replay_cpu, _ = _cpu_per_turn(pids, url, replay_config(url, args, warmup=2 if i == 0 else 0), rate)
        replay = {"cpu_s_per_turn": replay_cpu, "chunks_per_turn": replayed["tokens"]["chunks_per_turn_mean"],
                  "turns": replayed["requests"], "ttft_p50_s": replayed["ttft"]["p50_s"], "idle_rate": rate}
        log.info("S=%d: the calibration replayed: serving CPU %.1f ms per turn (%.2f chunks per answer)", sessions,
                 simcheck.replay_cpu_s(replay_cpu) * 1e3, replay["chunks_per_turn"])
        cpu0, client0 = process_cpu(pids), time.process_time()
        batches0, loop0 = updater.stats.remote().result(), generator.stats.remote().result()
        cfg = ServingConfig(url=url, sessions=(sessions,), turns=args.turns, rounds=level_rounds(args, sessions),
                            query_words=args.query_words, max_tokens=args.max_tokens)
        with SpeedProbe() as probe:
            one = run_serving(cfg, progress=True, command=command, server=server, describe_server=replica_counts)
        cpu1, client1 = process_cpu(pids), time.process_time()
        batches1, loop1 = updater.stats.remote().result(), generator.stats.remote().result()
        level = one["levels"][0]
        level["update_batches"] = update_batches(batches0, batches1)
        level["decode_steps"] = loop1["steps"] - loop0["steps"]  # one Generator replica (the check's app runs one)
        level["decode_loop"] = decode_loop_counters(loop0, loop1)
        level["environment"] = {**env, "speed_probe_s": probe.median_s, "speed_probe_pieces_s": probe.rounded_pieces(),
                                "store_cycle_cpu_s": store_cycle, "replay": replay}
        turns = max(1, level["requests"] + cfg.warmup_turns)  # the warm-up's CPU is in the window too
        level["cpu_s_per_turn"] = {role: (cpu1[role] - cpu0[role]) / turns for role in cpu1}
        level["cpu_s_per_turn"]["client"] = (client1 - client0) / turns
        if report is None:
            report = one
        else:
            report["levels"] += one["levels"]
    report["config"]["sessions"] = list(args.sessions)
    report["config"]["warm_up_turns"] = args.warm_up_turns
    report["targets"] = judge_targets(report["levels"])
    return report


def level_rounds(args: argparse.Namespace, sessions: int) -> int:
    """Rounds of a benchmark level: ``--rounds``, or enough for ``--min-level-turns`` turns."""
    return max(args.rounds, math.ceil(args.min_level_turns / (sessions * max(1, args.turns))))


def write_check(profile: CostProfile, report: dict, args: argparse.Namespace, command: str) -> None:
    # the benchmark's own streaming interval (reports from before it was recorded ran with 0)
    server = report.get("server", {})
    rows = compare(profile, report["levels"], server.get("stream_interval_s", 0.0),
                   server.get("stream_chunks_per_s", 0.0),  # absent from reports before the budget: none
                   report.get("config", {}).get("poll_interval_s", 0.0),  # each round's last commit, polled
                   speed_from=args.speed_from, traced=args.speed_trace)
    write_json_atomic(args.check_out, {"command": command, "tolerance": simcheck.TOLERANCE, "profile": args.out,
                                       "benchmark": args.bench_out, "machine": machine_info(), "levels": rows,
                                       "all_within_tolerance": all(r["within_tolerance"] for r in rows)})
    print(check_table(rows))
    for r in rows:
        env = r["environment"]
        batch = r["measured"].get("update_batch_mean")
        probe, probed = env.get("speed_probe_s"), env.get("profiled_speed_probe_s")
        speed = f", speed probe {probe * 1e3:.2f} ms (profile {probed * 1e3:.2f})" if probe and probed else ""
        cycle, cycled = env.get("store_cycle_cpu_s"), env.get("profiled_store_cycle_cpu_s")
        speed += f", store cycle {cycle * 1e3:.2f} ms (profile {cycled * 1e3:.2f})" if cycle and cycled else ""
        replayed, calibrated = env.get("replay_cpu_s"), env.get("profiled_replay_cpu_s")
        speed += (f", replay's serving CPU {replayed * 1e3:.1f} ms per turn (calibration {calibrated * 1e3:.1f})"
                  if replayed and calibrated else "")
        speed += (f", scaled by the {env['speed_from']} reading (×{env['speed_ratio']:.2f})" if env.get("speed_ratio")
                  else f", the {env['speed_from']} reading missing: no speed scaling" if env.get("speed_from")
                  else ", no speed scaling")
        print(f"S={r['sessions']}: slowdown {env['slowdown']:.2f} (profile {env['profiled_at']:.2f}){speed}, "
              f"stalls {env['stall_rate_per_s']:.2f}/s, {env['stalled_share']:.1%} of the time; "
              f"update batch mean sim {r['simulated']['update_batch_mean']:.1f} / measured "
              + (f"{batch:.1f}" if batch else "—")
              # loop iterations on both sides: the app's ``steps`` leave out those that only admitted
              + f"; decode loop iterations sim {r['simulated']['decode_iterations']} / measured "
              + f"{r['measured'].get('decode_iterations') or '—'}")
        phases = [f"{phase} {r['simulated'][key] * 1e3:.1f}/{r['measured'][key] * 1e3:.1f}"
                  for phase in ("batch", "read", "consolidate", "consolidate_run", "commit")
                  if (key := f"update_{phase}_s") in r["measured"] and key in r["simulated"]]
        if phases:
            print(f"      update batch ms sim/measured: {', '.join(phases)}"
                  + (f" (the consolidation's thread CPU {r['measured']['update_consolidate_cpu_s'] * 1e3:.1f})"
                     if "update_consolidate_cpu_s" in r["measured"] else ""))
        if "update_transit_s" in r["measured"]:
            m, sim = r["measured"], r["simulated"]
            print(f"      per update ms sim/measured: from the Ingress to the MemoryUpdater {sim['update_transit_s'] * 1e3:.1f}/"
                  f"{m['update_transit_s'] * 1e3:.1f}, then to its batch's start {sim['update_queued_s'] * 1e3:.1f}/"
                  f"{m['update_queued_s'] * 1e3:.1f}")
        if "decode_tick_s" in r["measured"]:
            m, sim = r["measured"], r["simulated"]
            print(f"      decode iteration sim/measured: rows {sim['decode_rows_mean']:.1f}/{m['decode_rows_mean']:.1f}, "
                  f"model work {sim['decode_tick_s'] * 1e3:.2f}/{m['decode_tick_s'] * 1e3:.2f} ms "
                  f"(thread CPU {m['decode_tick_cpu_s'] * 1e3:.2f}, awaited {m['decode_iteration_s'] * 1e3:.2f})")
        cpu = r["measured"].get("cpu_s_per_turn")
        if cpu:
            sim_cpu = r["simulated"]["cpu_s_per_turn"]
            print("      CPU ms per turn sim/measured: " + ", ".join(
                f"{role} {sim_cpu[role] * 1e3:.1f}/{cpu[role] * 1e3:.1f}" for role in sim_cpu if role in cpu))
    print(f"wrote {args.check_out}")


def short_calibration(long: Workload, short: dict | None) -> tuple[Workload, float, list[int]] | None:
    """The short-answer calibration level as :func:`fit_to_calibration` takes it (None for a
    profile measured before it existed, or whose capped answers came in too nearly as many
    chunks as the long ones to tell per-chunk from per-turn work)."""
    if not short or "tokens" not in short:
        return None
    if short.get("long_chunks") is not None and short["long_chunks"] - short["chunks"] < 1:
        return None
    w = dataclasses.replace(long, answer_tokens=max(1, round(short["answer_tokens"])))
    return w, short["answer_p50_s"], short["tokens"]


def level_a_workload(profile: CostProfile) -> Workload:
    """Calibration level A as the simulation plays it: one session, its think time, its timed
    turns (the two warm-up turns left out)."""
    c = profile.extra["calibration"]
    return Workload(sessions=1, think_time_s=c["think_time_s"], query_tokens=profile.query_tokens,
                    answer_tokens=profile.answer_tokens, turns=c["turns"] - 2)


def fit_spread(profile: CostProfile) -> CostProfile:
    """The profile with its jitter (``timing_cv``) fitted to the spread of calibration level A's
    times to first token (:func:`~rxt_dist.eval.calibrate.fit_timing_cv`); as it was for a
    profile measured before level A recorded them."""
    c = profile.extra.get("calibration", {})
    if not c.get("ttft_s"):
        return profile
    cv = fit_timing_cv(profile, level_a_workload(profile), c["answer_tokens"], c["ttft_s"])
    extra = {**profile.extra, "model_timing_cv": profile.extra.get("model_timing_cv", profile.timing_cv)}
    return dataclasses.replace(profile, timing_cv=cv, extra=extra)


def fit_sharing(profile: CostProfile, wake_weight: float | str | None) -> CostProfile:
    """The profile with each process's ``fixed_share`` fitted by simulating calibration level B
    (:func:`~rxt_dist.eval.calibrate.fit_fixed_shares`, its CPU per turn) with the CPU's
    ``wake_weight`` set to ``wake_weight`` (None: fitted to level B's decoding slowdown where
    recorded, :func:`~rxt_dist.eval.calibrate.fit_wake_weight_to_decoding`, else to its update lag,
    :func:`~rxt_dist.eval.calibrate.fit_wake_weight`; :data:`AUTO`: fitted where the slowdown was
    recorded, else :data:`MACHINE_WAKE_WEIGHT`; the shares fitted before and again after it), and
    then the update call's transit per turn in flight to level B's measured transit where
    recorded (:func:`~rxt_dist.eval.calibrate.fit_update_transit`). Level B's lag simulated with each weight is kept in ``extra["wake_weight_lags_s"]``
    (what the ``wake-weight`` command pools over runs). As it was for a profile measured before
    level B recorded its answers (and the weight as it was without level B's update lag)."""
    many = profile.extra.get("calibration", {}).get("many") or {}
    if not many.get("tokens") or not many.get("per_turn"):
        return profile
    w = Workload(sessions=many["sessions"], think_time_s=many["think_time_s"], query_tokens=profile.query_tokens,
                 answer_tokens=profile.answer_tokens, turns=many["turns"])
    slowdown = profile.extra.get("slowdown", 1.0)

    def with_shares(p: CostProfile) -> CostProfile:
        shares = fit_fixed_shares(p, w, many["tokens"], many["per_turn"], slowdown)
        return dataclasses.replace(p, path=dataclasses.replace(p.path, fixed_share=shares))

    profile = with_shares(profile)
    if not many.get("update_lag_p50_s"):
        return profile
    loop = many.get("decode_loop") or {}
    decoding = loop["tick_mean_s"] / loop["tick_cpu_mean_s"] if loop.get("tick_cpu_mean_s") else None
    if wake_weight == AUTO:
        wake_weight = None if decoding else MACHINE_WAKE_WEIGHT
    fitted, lags = fit_wake_weight(profile, w, many["tokens"], many["update_lag_p50_s"])
    extra = {**profile.extra, "wake_weight_lags_s": {f"{k:g}": v for k, v in lags.items()}}
    if decoding:
        fitted, slowdowns = fit_wake_weight_to_decoding(profile, w, many["tokens"], decoding)
        log.info("level B's decoding thread waited for a core: slowdown %.2f measured, simulated %s", decoding,
                 ", ".join(f"{k:g}: {v:.2f}" for k, v in slowdowns.items()))
        extra["wake_weight_decode_slowdowns"] = {f"{k:g}": v for k, v in slowdowns.items()}
    weight = fitted if wake_weight is None else wake_weight
    source = f"level B's {'decoding slowdown' if decoding else 'update lag'}"
    log.info("wake weight %g (%s): level B's update lag %.1f ms measured, simulated %s", weight,
             f"fitted to {source}" if wake_weight is None else f"given; {fitted:g} fits this run alone",
             many["update_lag_p50_s"] * 1e3, ", ".join(f"{k:g}: {v * 1e3:.1f}" for k, v in lags.items()))
    extra["wake_weight_source"] = f"fitted to this run's {source}" if wake_weight is None else "given"
    profile = dataclasses.replace(profile, path=dataclasses.replace(profile.path, wake_weight=weight), extra=extra)
    profile = with_shares(profile)
    transit = (many.get("update_batches") or {}).get("transit_per_update_s")
    if not transit:
        return profile
    per_turn = fit_update_transit(profile, w, many["tokens"], transit)
    log.info("the update call's transit: %.1f ms at level B, %.2f ms per turn in flight", transit * 1e3, per_turn * 1e3)
    return dataclasses.replace(profile, path=dataclasses.replace(profile.path, update_transit_per_turn_s=per_turn))


def refit(profile: CostProfile, wake_weight: float | str | None, traced: bool = False) -> CostProfile:
    """The profile's serving-path shares and latencies fitted again to its stored calibration
    figures with the current simulation (after a change to the simulation, without measuring),
    from where the profile command started: the path as measured (``extra.path_before_fit``)
    and the model's own jitter (``extra.model_timing_cv``), so that a refit with the code and
    weight of the profile gives back its fit. A profile stored before it kept the measured path
    is refitted from its fitted one. With ``traced``, on the speed trace of the calibration's
    speed probe where it recorded its pieces; else on a steady machine."""
    c = profile.extra["calibration"]
    pieces = profile.extra.get("environment", {}).get("speed_probe_pieces_s") or []
    profile = dataclasses.replace(profile, speed_trace=speed_trace(pieces) if traced else [])
    measured = profile.extra.get("path_before_fit")
    if measured:
        known = {f.name for f in dataclasses.fields(ServingPath)}
        profile = dataclasses.replace(profile, path=ServingPath(**{k: v for k, v in measured.items() if k in known}),
                                      timing_cv=profile.extra.get("model_timing_cv", profile.timing_cv))
    w = level_a_workload(profile)
    ttft = c.get("ttft_excluding_wait_p50_s", c["ttft_p50_s"])  # the same with think time: nothing waits
    return fit_sharing(fit_spread(fit_to_calibration(profile, w, ttft, c["answer_p50_s"], c["update_lag_p50_s"],
                                                     c["answer_tokens"], short_calibration(w, c.get("short")))),
                       wake_weight)


def run_compare(args: argparse.Namespace) -> None:
    """Simulate again from a stored profile and benchmark (no measuring)."""
    profile = CostProfile.from_file(args.profile)
    if args.refit:
        with open(args.profile, encoding="utf-8") as f:
            measured_by = json.load(f).get("command")
        profile = refit(profile, args.wake_weight, traced=args.speed_trace)
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
        GPU_NODE,
        Usage,
        assumed_gpu_profile,
        daily_users_workload,
        plan,
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


ASSUMED_OBJECT_STORE = {
    "source": "ASSUMED (not reachable from this machine): typical same-region S3/GCS latencies for objects "
              "under 2 MB; replace with a measurement (`profile_storage` with an s3:// directory)",
    "object_store": {"write_s": 0.030, "read_s": 0.015},
}


def plan_table(plans: list[dict]) -> str:
    """Markdown: one row per profile × daily users."""
    lines = [("| profile | daily users | concurrent sessions | Generator / MemoryUpdater replicas | path CPU cores "
              "| TTFT p50 / p99 | update lag p50 | tokens/s | turns/s | STMs of the sessions in use (fp32) "
              "| store writes/s | object store per turn |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in plans:
        if not r.get("feasible"):
            lines.append(f"| {r['profile']} | {r['daily_users']:,} | — | infeasible: {r.get('reason')} |")
            continue
        t = r["traffic"]
        lines.append(
            f"| {r['profile']} | {r['daily_users']:,} | {r['sessions']:,} | {r['generators']} / {r['updaters']} "
            f"| {r['path_cpu_cores']} | {r['ttft_p50_s'] * 1e3:.0f} / {r['ttft_p99_s'] * 1e3:.0f} ms "
            f"| {r['update_lag_p50_s'] * 1e3:.0f} ms | {r['tokens_per_s']:,.0f} | {r['turns_per_s']:,.1f} "
            f"| {t['stored_bytes'] / 1e9:,.2f} GB | {t['write_ops_per_s']:,.0f} "
            f"| {t['ray_object_store_bytes_per_turn'] / 1e6:.2f} MB |")
    return "\n".join(lines)


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
    else:
        run_bf16_recall(args)


if __name__ == "__main__":
    main()
