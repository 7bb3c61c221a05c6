"""Measuring a running serving application for the capacity model (``jobs/capacity.py
profile`` / ``check``): its model timed in this process as its replicas run it
(:func:`model_costs`), the serving path's CPU per turn over three calibration workloads
(:func:`calibrate`), both made into a fitted :class:`CostProfile` (:func:`build_profile`),
and the serving benchmark played one level at a time with the readings the check compares
(:func:`play_levels`). docs/scaling.md explains what each reading is for."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rxt_dist.eval.app_readings import (
    cpu_per_turn,
    decode_loop_counters,
    fixed_share,
    idle_rates,
    read_share,
    session_poll_costs,
    store_call_costs,
    store_counters,
    store_shards,
    store_waits,
    update_batches,
)
from rxt_dist.eval.capacity import APP_BATCHING, CostProfile, ServingPath, speed_trace
from rxt_dist.eval.profile_fit import AUTO, fit_sharing, fit_spread, level_a_workload, short_calibration
from rxt_dist.eval.report import load_average, machine_info
from rxt_dist.eval.serving_client import MAX_SESSIONS, MAX_TURNS

log = logging.getLogger(__name__)

WARM_UP_SESSIONS = 8
WARM_UP_TURNS = 128
"""``warm_up_turns``' default: five checks interleaved with five without it, 57 against 51
figures of 60 within (the S = 1 update lag +8% against +25% on average)."""


@dataclass(frozen=True)
class CalibrationConfig:
    """How the calibration plays the application (level A's settings are replayed before each
    level of a check, so they belong to both)."""

    model_dir: str = "runs/tiny/models/smat"
    """The application's model, timed in this process as its replicas run it."""
    turns: int = 32
    """Turns of calibration level A (one session, two of them a warm-up)."""
    think_time_s: float = 0.05
    """Level A's think time between turns (no queueing: the latencies the profile is fitted to;
    longer than the update lag, so no turn waits for its predecessor's update). Short, so that
    the processes' background work (their idle rate, subtracted) is a small part of what the
    level reads: with 0.3 s, until 2026-12-07, it was 20–28% of each serving process's CPU over
    the level, and six checks of the demo model gave 53 of 72 figures within; with 0.05 s
    4–8%, and eight checks 89 of 96 (docs/BENCHMARKS.md)."""
    warm_up_turns: int = WARM_UP_TURNS
    """Turns of :data:`WARM_UP_SESSIONS` sessions played in a freshly started application before
    anything is measured (0: none)."""
    query_words: int = 24
    """Words per query, every level."""
    max_tokens: int = 32
    """Answer cap, every level but the short one (``SHORT_MAX_TOKENS``)."""
    wake_weight: float | str | None = AUTO
    """The CPU weight of the serving processes' pieces against the model's work: a number > 0,
    None to fit it to this run's busy level, or :data:`~rxt_dist.eval.profile_fit.AUTO`."""
    wake_wait_s: float | None = None
    """A woken thread's wait for a core per thread beyond the cores (``ServingPath.wake_wait_s``),
    seconds ≥ 0; None to fit it to this run's busy level."""
    speed_trace: bool = False
    """Keep the speed probe's trace in the profile: the simulation then follows it."""

    def __post_init__(self) -> None:
        if not isinstance(self.turns, int) or not 4 <= self.turns <= MAX_TURNS:
            raise ValueError(f"calibration turns={self.turns!r}: must be an integer between 4 and {MAX_TURNS} "
                             "(two of them warm up, the rest are timed)")
        if not self.think_time_s >= 0:
            raise ValueError(f"calibration think_time_s={self.think_time_s!r}: must be ≥ 0 seconds")
        if not isinstance(self.warm_up_turns, int) or self.warm_up_turns < 0:
            raise ValueError(f"warm_up_turns={self.warm_up_turns!r}: must be a whole number ≥ 0 (0: no warm-up)")
        for name, high in (("query_words", 512), ("max_tokens", 4096)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"{name}={value!r}: must be an integer between 1 and {high}")
        w = self.wake_weight
        if not (w is None or w == AUTO or (isinstance(w, (int, float)) and w > 0)):
            raise ValueError(f"wake_weight={w!r}: give {AUTO!r}, None (fit) or a number > 0 (1: equal sharing)")
        q = self.wake_wait_s
        if not (q is None or (isinstance(q, (int, float)) and q >= 0)):
            raise ValueError(f"wake_wait_s={q!r}: give None (fit) or seconds ≥ 0 (0: no wait for a core)")


@dataclass(frozen=True)
class CheckLevels:
    """The serving benchmark's levels as the check plays them."""

    sessions: Sequence[int] = (1, 8, 32)
    """Concurrent sessions, one level each."""
    turns: int = 8
    """Turns per session in a round."""
    rounds: int = 2
    """Rounds per level at least."""
    min_level_turns: int = 256
    """More rounds for a level with fewer turns than this (a p99 of 16 turns is their maximum)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sessions", tuple(self.sessions))
        if not self.sessions or any(not isinstance(s, int) or not 1 <= s <= MAX_SESSIONS for s in self.sessions):
            raise ValueError(f"sessions={list(self.sessions)}: give one or more levels, each between 1 and "
                             f"{MAX_SESSIONS}")
        for name, high in (("turns", MAX_TURNS), ("rounds", 100)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"{name}={value!r}: must be an integer between 1 and {high}")
        if not isinstance(self.min_level_turns, int) or self.min_level_turns < 0:
            raise ValueError(f"min_level_turns={self.min_level_turns!r}: must be a whole number ≥ 0")

    def rounds_for(self, sessions: int) -> int:
        """Rounds of the level of ``sessions``: :attr:`rounds`, or enough for :attr:`min_level_turns`."""
        return max(self.rounds, math.ceil(self.min_level_turns / (sessions * self.turns)))


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


def replay_config(url: str, cal: CalibrationConfig, warmup: int = 0, max_tokens: int | None = None):
    """Calibration level A (one session, think time, seeded queries): the calibration plays it,
    and the check replays it right before each level to read the serving path's speed."""
    from rxt_dist.eval.serving import ServingConfig

    return ServingConfig(url=url, sessions=(1,), turns=cal.turns, think_time_s=cal.think_time_s,
                         query_words=cal.query_words, max_tokens=max_tokens or cal.max_tokens,
                         warmup_turns=warmup, seed=7)


def warm_up(url: str, cal: CalibrationConfig) -> None:
    """``cal.warm_up_turns`` turns of :data:`WARM_UP_SESSIONS` concurrent sessions before anything
    is measured in a freshly started application (the calibration's, the check's): a new
    application's serving processes spend more CPU on a turn than they do minutes later."""
    from rxt_dist.eval.serving import ServingConfig, run_serving

    if cal.warm_up_turns <= 0:
        return
    turns = math.ceil(cal.warm_up_turns / WARM_UP_SESSIONS)
    run_serving(ServingConfig(url=url, sessions=(WARM_UP_SESSIONS,), turns=turns, query_words=cal.query_words,
                              max_tokens=cal.max_tokens, seed=11))
    log.info("warmed up: %d turns of %d sessions", turns * WARM_UP_SESSIONS, WARM_UP_SESSIONS)


def calibrate(url: str, cal: CalibrationConfig, app_name: str,
              idle_s: float = 4.0) -> tuple[dict, dict[str, Any], int]:
    """Play the calibration workloads and measure the serving processes' CPU per turn: level A,
    one session with think time (no queueing: the latencies the profile is fitted to), and
    level B, 16 sessions with ``MANY_THINK_S`` think time (several turns in each process at once: how much
    of a turn's work is shared with the others, ``ServingPath.fixed_share``), and level C, level
    A with answers capped at ``SHORT_MAX_TOKENS`` (what of a turn's work is per streamed chunk,
    ``ServingPath.chunk_s``). Ray's processes work in the background too (health checks,
    metrics, long polls): their CPU rate over ``idle_s`` seconds without requests is
    subtracted. ``app_name``: the Serve application at ``url``."""
    import ray
    from ray import serve

    from rxt_dist.eval.profile import SpeedProbe, serving_processes
    from rxt_dist.eval.serving import ServingConfig, run_serving

    def config(sessions: int, turns: int, think: float, warmup: int, max_tokens: int = cal.max_tokens) -> ServingConfig:
        return ServingConfig(url=url, sessions=(sessions,), turns=turns, think_time_s=think,
                             query_words=cal.query_words, max_tokens=max_tokens, warmup_turns=warmup, seed=7)

    run_serving(config(1, 2, 0.0, 0))  # every process exists now
    warm_up(url, cal)
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    pids = serving_processes(raylet)
    updater = serve.get_deployment_handle("MemoryUpdater", app_name)
    generator = serve.get_deployment_handle("Generator", app_name)
    held0 = updater.stats.remote().result().get("stm", {})
    # read after the handles' first calls: from then on their routers work in this process in the
    # background (≈ 2–4 ms of CPU a second on the AMD VM), which the client's CPU must not count
    rate = idle_rates(pids, idle_s)
    poll = session_poll_costs(url, pids, rate)  # the levels' polls for their last commits, taken out of their turns
    with SpeedProbe() as probe:  # the machine's speed while the path's costs are measured
        loops = [generator.stats.remote().result()]  # the decoding loop's counters around levels A and C
        level, per_turn, shares = cpu_per_turn(pids, replay_config(url, cal, warmup=2), rate, poll["cpu_s"])
        loops.append(generator.stats.remote().result())
        held1 = updater.stats.remote().result().get("stm", {})
        short, short_per_turn, _ = cpu_per_turn(pids, replay_config(url, cal, max_tokens=SHORT_MAX_TOKENS), rate,
                                                poll["cpu_s"])
        loops.append(generator.stats.remote().result())
        short_tokens = [int(x) for per_turn in short["samples"]["completion_tokens"] for x in per_turn]
        counters0, loop0 = updater.stats.remote().result(), generator.stats.remote().result()
        many, many_per_turn, many_shares = cpu_per_turn(pids, config(16, MANY_TURNS, MANY_THINK_S, 0), rate,
                                                        poll["cpu_s"])
        counters1, loop1 = updater.stats.remote().result(), generator.stats.remote().result()
    store_calls, store_cycle = store_call_costs(url, pids)
    in_flight = many["requests"] / many["wall_s"] * many["answer"]["p50_s"]
    fixed = {role: fixed_share(per_turn[role], many_per_turn[role], in_flight) for role in per_turn}
    turns = level["requests"] + 2
    return level, {"per_turn": per_turn, "idle_rate": rate, "speed_probe_s": probe.median_s,
                   "speed_probe_pieces_s": probe.rounded_pieces(),
                   "decode_loop": decode_loop_counters(loops[0], loops[1]),
                   "store_cycle_cpu_s": store_cycle,
                   "serial_share": shares, "fixed_share": fixed, "store_calls": store_calls, "session_poll": poll,
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


MANY_TURNS = 6
MANY_THINK_S = 0.0
"""Think time of the second calibration level: none, so that several turns are in each process
at once and the per-wake-up sharing (``fit_fixed_shares``) shows, as under the benchmark's busy
levels (0.2 s until 2026-12-04)."""


def build_profile(cal: CalibrationConfig, url: str, app_name: str,
                  app_args: dict | None = None) -> tuple[CostProfile, dict]:
    """The cost profile of the Serve application ``app_name`` at ``url`` and its calibration
    level A's report, its model timed as the app's replicas run it (compiled where ``app_args``
    set ``compile_decode`` / ``compile_update``)."""
    from rxt_dist.eval.calibrate import fit_serving_path, fit_to_calibration, with_consolidating_thread
    from rxt_dist.eval.profile import measure_environment, slowdown

    load_before = load_average()
    env_before = measure_environment()
    level, cpu, turns = calibrate(url, cal, app_name)
    per_turn = cpu["per_turn"]
    tokens = [int(x) for per_turn in level["samples"]["completion_tokens"] for x in per_turn]
    answer_mean = sum(tokens) / len(tokens)
    query_tokens = round(level["tokens"]["prompt_per_turn_mean"]) - 3  # [BOS][Q] … [A]
    app_args = app_args or {}
    costs, sizes, storage, described = model_costs(cal.model_dir, query_tokens, round(answer_mean),
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
    path = fit_serving_path(costs, per_turn, level, answer_mean + 1, k, machine_info()["logical_cpus"],
                            short=short, many=cpu["many"], store_calls=cpu["store_calls"],
                            read_share=cpu["updater_read_share"], decode_loop=cpu["decode_loop"],
                            poll=cpu["session_poll"])
    for name in APP_BATCHING:  # the batching the app ran with
        if name in app_args:
            path[name] = app_args[name]
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
        stalls=stalls, speed_trace=speed_trace(cpu["speed_probe_pieces_s"]) if cal.speed_trace else [],
        extra={"load_average_before": load_before, "load_average_after": load_average(), "slowdown": k,
               # the reference load: the one measured right after the model timings, which make up
               # most of the profile's times (a burst before the calibration must not set it)
               "environment": {"slowdown": env_after["slowdown"], "before": env_before, "after": env_after,
                               "speed_probe_s": cpu["speed_probe_s"],
                               "speed_probe_pieces_s": cpu["speed_probe_pieces_s"],
                               "store_cycle_cpu_s": cpu["store_cycle_cpu_s"]},
               "model_cpu_s": costs["cpu_s"], "calibration": {
                   "sessions": 1, "turns": turns, "think_time_s": cal.think_time_s,
                   "warm_up_turns": cal.warm_up_turns,
                   "cpu_s_per_turn": per_turn, "cpu_idle_rate": cpu["idle_rate"],
                   "serial_share": cpu["serial_share"], "fixed_share": cpu["fixed_share"], "many": cpu["many"],
                   "store_call_cpu_s": cpu["store_calls"], "decode_loop": cpu["decode_loop"],
                   "session_poll": cpu["session_poll"],
                   "short": cpu["short"], "answer_tokens": tokens,
                   "ttft_p50_s": level["ttft"]["p50_s"], "answer_p50_s": level["answer"]["p50_s"],
                   "ttft_s": [float(x) for per_turn in level["samples"]["ttft_s"] for x in per_turn if x is not None],
                   "ttft_excluding_wait_p50_s": level["ttft"]["excluding_wait"]["p50_s"],
                   "update_lag_p50_s": level["update_lag"]["p50_s"]}})
    calibration = level_a_workload(first)
    measured = first.path
    first = dataclasses.replace(first, path=with_consolidating_thread(first.path, costs["cpu_s"], cpu["many"]))
    profile = fit_to_calibration(first, calibration, level["ttft"]["excluding_wait"]["p50_s"],
                                 level["answer"]["p50_s"], level["update_lag"]["p50_s"], tokens,
                                 short_calibration(calibration, short))
    profile.extra["path_before_fit"] = dataclasses.asdict(measured)
    return fit_sharing(fit_spread(profile), cal.wake_weight, cal.wake_wait_s), level


def play_levels(url: str, cal: CalibrationConfig, levels: CheckLevels, app_name: str, *, server: dict,
                command: str, describe_server: Callable[[], dict] | None = None,
                poll_cpu_s: dict[str, float] | None = None) -> dict[str, Any]:
    """The serving benchmark's report of ``levels`` played one at a time on the Serve
    application ``app_name`` at ``url``, each right after a measurement of the machine's other
    load, a reading of the store's CPU per call cycle and a replay of calibration level A
    (``environment`` in the level's report), the application warmed up first (:func:`warm_up`).
    ``server`` and ``describe_server`` go into the report as in the serving benchmark's.
    ``poll_cpu_s``: the profile's CPU per session poll (its calibration's ``session_poll``), taken
    out of each replay's turns as the calibration took it out of its own (None: nothing taken)."""
    import httpx
    import ray
    from ray import serve

    from rxt_dist.eval.profile import (
        SpeedProbe,
        busiest_threads,
        machine_cores,
        machine_cpu,
        measure_environment,
        process_cpu,
        serving_processes,
        thread_sched,
    )
    from rxt_dist.eval.serving import ServingConfig, judge_targets, run_serving
    from rxt_dist.eval.simcheck import replay_cpu_s
    from rxt_dist.serving.protocol import SESSION_HEADER

    # a session opened and closed, not a turn: the store's shard has a process to read from now
    opened = httpx.post(f"{url}/v1/sessions", timeout=30.0)
    opened.raise_for_status()
    httpx.delete(f"{url}/v1/sessions/{opened.headers[SESSION_HEADER]}", timeout=30.0)
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    updater = serve.get_deployment_handle("MemoryUpdater", app_name)
    generator = serve.get_deployment_handle("Generator", app_name)
    updater.stats.remote().result()  # the handles' routers run from here on, as at the calibration's
    generator.stats.remote().result()  # idle readings (:func:`calibrate`): every replay subtracts them
    warm_up(url, cal)
    shards = store_shards()
    report = None
    for i, sessions in enumerate(levels.sessions):
        env = measure_environment()
        _, store_cycle = store_call_costs(url, pids)  # the machine's speed on the store's work, as at calibration
        # the serving path's speed: calibration level A replayed, its CPU per turn against the calibration's
        # (the background rate read right before it: a level's aftermath keeps Ray's processes busier)
        rate = idle_rates(pids)
        with SpeedProbe() as replay_probe:  # the machine's speed during the replay, to set against the level's
            replayed, replay_cpu, _ = cpu_per_turn(pids, replay_config(url, cal, warmup=2 if i == 0 else 0), rate,
                                                   poll_cpu_s)
        replay = {"cpu_s_per_turn": replay_cpu, "chunks_per_turn": replayed["tokens"]["chunks_per_turn_mean"],
                  "turns": replayed["requests"], "ttft_p50_s": replayed["ttft"]["p50_s"], "idle_rate": rate,
                  "ttft_s": replayed["samples"]["ttft_s"],  # each turn's, for a reading of the machine's tails
                  "speed_probe_s": replay_probe.median_s, "speed_probe_pieces_s": replay_probe.rounded_pieces()}
        log.info("S=%d: the calibration replayed: serving CPU %.1f ms per turn (%.2f chunks per answer)", sessions,
                 replay_cpu_s(replay_cpu) * 1e3, replay["chunks_per_turn"])
        cpu0, client0, machine0 = process_cpu(pids), time.process_time(), machine_cpu()
        threads0, stored0 = thread_sched(pids), store_counters(shards)
        batches0, loop0 = updater.stats.remote().result(), generator.stats.remote().result()
        cfg = ServingConfig(url=url, sessions=(sessions,), turns=levels.turns, rounds=levels.rounds_for(sessions),
                            query_words=cal.query_words, max_tokens=cal.max_tokens)
        with SpeedProbe() as probe:
            one = run_serving(cfg, progress=True, command=command, server=server, describe_server=describe_server)
        cpu1, client1, machine1 = process_cpu(pids), time.process_time(), machine_cpu()
        threads1, stored1 = thread_sched(pids), store_counters(shards)
        batches1, loop1 = updater.stats.remote().result(), generator.stats.remote().result()
        level = one["levels"][0]
        level["update_batches"] = update_batches(batches0, batches1)
        level["store_waits"] = store_waits(stored0, stored1)
        level["decode_steps"] = loop1["steps"] - loop0["steps"]  # one Generator replica (the check's app runs one)
        level["decode_loop"] = decode_loop_counters(loop0, loop1)
        level["environment"] = {**env, "speed_probe_s": probe.median_s, "speed_probe_pieces_s": probe.rounded_pieces(),
                                "store_cycle_cpu_s": store_cycle, "replay": replay,
                                # the whole machine while the level played: what else ran, what the hypervisor took
                                "machine_cores": machine_cores(machine0, machine1, sum(cpu1[r] - cpu0[r] for r in cpu1)
                                                              + client1 - client0)}
        turns = max(1, level["requests"] + cfg.warmup_turns)  # the warm-up's CPU is in the window too
        level["cpu_s_per_turn"] = {role: (cpu1[role] - cpu0[role]) / turns for role in cpu1}
        level["cpu_s_per_turn"]["client"] = (client1 - client0) / turns
        # each serving process's busiest thread (its event loop): per turn, its CPU and its wait for a core
        level["event_loop_s_per_turn"] = {role: {k: v / turns for k, v in thread.items()}
                                          for role, thread in busiest_threads(threads0, threads1).items()}
        if report is None:
            report = one
        else:
            report["levels"] += one["levels"]
    report["config"]["sessions"] = list(levels.sessions)
    report["config"]["warm_up_turns"] = cal.warm_up_turns
    report["targets"] = judge_targets(report["levels"])
    return report
