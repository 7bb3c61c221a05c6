"""The capacity model's check: the simulation of each serving-benchmark level against what the
benchmark measured (``jobs/capacity.py check`` / ``compare``; docs/BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rxt_dist.eval.capacity import CostProfile, Workload, speed_trace
from rxt_dist.eval.simulate import Replicas, simulate

TOLERANCE = 0.25
"""Simulated figures must be within ±25% of measured ones."""
CHECKED = (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("tokens_per_s", "tokens/s"),
           ("update_lag_p50_s", "update lag p50"))


def simulate_level(profile: CostProfile, level: dict, think_time_s: float = 0.0,
                   settle_poll_s: float = 0.0) -> dict[str, Any]:
    """The simulation of one benchmark level: same sessions, turns, rounds, query length, and the
    same answer lengths (greedy answers to seeded queries: what was asked and answered, the
    workload itself); lengths it lacks are drawn from the calibration run's. Each round ends
    when every session's last update is seen committed, polled every ``settle_poll_s`` (the
    benchmark's ``poll_interval_s``; 0: when the last answer ends)."""
    w = Workload(sessions=level["sessions"], think_time_s=think_time_s, query_tokens=profile.query_tokens,
                 answer_tokens=profile.answer_tokens, turns=level["turns_played"])
    answers = profile.extra.get("calibration", {}).get("answer_tokens")
    plan = level.get("samples", {}).get("completion_tokens")  # what the model answered, turn by turn
    return simulate(profile, w, Replicas(), answer_tokens=answers, rounds=level["rounds"], answer_plan=plan,
                    settle_poll_s=settle_poll_s)


def measured_figures(level: dict) -> dict[str, float | None]:
    return {"ttft_p50_s": level["ttft"]["p50_s"], "ttft_p99_s": level["ttft"]["p99_s"],
            "tokens_per_s": level["throughput"]["aggregate_tokens_per_s"],
            "update_lag_p50_s": level["update_lag"]["p50_s"], "update_lag_p99_s": level["update_lag"]["p99_s"],
            "answer_p50_s": level["answer"]["p50_s"], "waited_share": level["waited"]["share"],
            "update_batch_mean": (level.get("update_batches") or {}).get("mean"),
            **{f"update_{k[:-len('_mean_s')]}_s": v for k, v in (level.get("update_batches") or {}).items()
               if k.endswith("_mean_s")},
            **{f"update_{k[:-len('_per_update_s')]}_s": v for k, v in (level.get("update_batches") or {}).items()
               if k.endswith("_per_update_s")},
            "decode_steps": level.get("decode_steps"), "cpu_s_per_turn": level.get("cpu_s_per_turn"),
            "session_polls": level.get("session_polls"),
            "event_loop_s_per_turn": level.get("event_loop_s_per_turn"), "store_waits": level.get("store_waits"),
            "between_turns": level.get("between_turns"),
            **{f"decode_{k.removesuffix('_mean_s')}_s" if k.endswith("_mean_s") else f"decode_{k}": v
               for k, v in (level.get("decode_loop") or {}).items()}}


SPEED_READINGS = {"probe": "speed_probe_s", "store": "store_cycle_cpu_s", "replay": "replay"}
"""``compare``'s ``speed_from``: the key of each reading in a level's ``environment`` (and, for
the probe and the store, in the profile's)."""
REPLAY_EXPONENT = 0.7
"""How much of the replay reading's ratio a level's work follows: the profile is scaled by
``ratio ** REPLAY_EXPONENT``. Level A's replay (one session at rest between turns) moves more
with the VM's minute than the check's levels do: regressed over the stored checks, the simulated
over the measured serving CPU per turn of a level scaled by the whole ratio still rises with the
ratio, log-slope 0.32 over the 51 levels of am27–am43 and 0.41 over the 39 of am6–am20 (0.1–0.2
at S = 1, 0.4–0.5 at S = 8 and 32), so the ratio over-reads by about a third (docs/BENCHMARKS.md,
"The replay's reading, damped"). 1: the whole ratio, as before."""
SERVING_ROLES = ("proxy", "ingress", "generator", "updater", "store")
"""The serving graph's processes whose CPU per turn the replay reading sums (not the client's)."""


def replay_cpu_s(cpu_s_per_turn: dict[str, float]) -> float:
    """The serving processes' CPU seconds per turn, summed over :data:`SERVING_ROLES`."""
    return sum(cpu_s_per_turn.get(role, 0.0) for role in SERVING_ROLES)


def speed_ratio(profile: CostProfile, env: dict[str, Any] | None, speed_from: str | None) -> float | None:
    """How much longer the same work takes at a level than when ``profile`` was measured, by
    the reading ``speed_from`` names (None: not read, or not recorded on both sides):
    ``"probe"`` and ``"store"``, the level's reading over the profile's; ``"replay"``, the
    serving processes' CPU per turn in a replay of calibration level A right before the level
    (``env["replay"]``) over the calibration's own, the calibration's moved to the replay's
    chunks per turn by the profile's per-chunk work (the replay's application may slice its
    stream)."""
    if speed_from is None or not env:
        return None
    if speed_from == "replay":
        replay, calibration = env.get("replay"), profile.extra.get("calibration", {})
        if not replay or "cpu_s_per_turn" not in calibration:
            return None
        roles = [r for r in SERVING_ROLES if r in replay["cpu_s_per_turn"]]  # a role absent then is absent from both
        then = replay_cpu_s({r: calibration["cpu_s_per_turn"].get(r, 0.0) for r in roles})
        chunks_then = calibration.get("short", {}).get("long_chunks")
        if chunks_then is not None:
            then -= sum(profile.path.chunk(r) for r in ("generator", "ingress", "proxy")) * (
                chunks_then - replay["chunks_per_turn"])
        now = replay_cpu_s(replay["cpu_s_per_turn"])
        return now / then if then > 0 and now > 0 else None
    key = SPEED_READINGS[speed_from]
    now, then = env.get(key), profile.extra.get("environment", {}).get(key)
    return now / then if now and then else None


def compare(profile: CostProfile, levels: list[dict], stream_interval_s: float | None = None,
            stream_chunks_per_s: float | None = None, settle_poll_s: float = 0.0,
            speed_from: str | None = None, traced: bool = False,
            replay_exponent: float = REPLAY_EXPONENT) -> list[dict[str, Any]]:
    """Per level: the simulation with the profile moved to the load measured right before the
    level (``CostProfile.in_environment``; with ``speed_from`` also scaled by the ratio of a
    reading of the machine's speed at the level to the same reading at the calibration:
    ``"probe"``, the speed probe's during each; ``"store"``, the store's CPU per call cycle
    right before each; ``"replay"``, the serving path's CPU per turn in a replay of the
    calibration right before each — :func:`speed_ratio`, raised to ``replay_exponent``),
    streaming as the measured application did (``stream_interval_s``,
    ``stream_chunks_per_s``; None: the profile's), its rounds ending as
    the benchmark's do (``settle_poll_s``, :func:`simulate_level`), with ``traced`` the
    machine's speed from moment to moment as the speed probe read it during the level (the
    profile's own trace for a level without one; without ``traced`` a steady machine, whatever
    the profile holds), against what the benchmark measured."""
    if speed_from is not None and speed_from not in SPEED_READINGS:
        raise ValueError(f"speed_from={speed_from!r}: one of {sorted(SPEED_READINGS)}, or None")
    if not 0 <= replay_exponent <= 1:
        raise ValueError(f"replay_exponent={replay_exponent!r}: must be between 0 (unscaled) and 1 (the whole ratio)")
    rows = []
    base = profile.extra.get("environment", {}).get("slowdown", 1.0)
    streaming = {k: v for k, v in (("stream_interval_s", stream_interval_s),
                                   ("stream_chunks_per_s", stream_chunks_per_s)) if v is not None}
    if streaming:
        profile = dataclasses.replace(profile, path=dataclasses.replace(profile.path, **streaming))
    for level in levels:
        env = level.get("environment")
        reading = speed_ratio(profile, env, speed_from)
        ratio = reading ** replay_exponent if reading and speed_from == "replay" else reading
        trace = speed_trace((env or {}).get("speed_probe_pieces_s") or []) if traced else []
        here = profile if env is None else profile.in_environment(env["slowdown"], env["stalls"], ratio, trace or None)
        if not traced:
            here = dataclasses.replace(here, speed_trace=[])
        sim, real = simulate_level(here, level, settle_poll_s=settle_poll_s), measured_figures(level)
        errors = {key: (sim[key] / real[key] - 1) if real[key] else None for key, _ in CHECKED}
        rows.append({"sessions": level["sessions"], "measured": real,
                     "simulated": {**{k: sim[k] for k in (*real, "busy") if k in sim},
                                   **{k: v for k, v in sim["busy"].items() if k.startswith(("update_", "decode_"))},
                                   "decode_iterations": sim["busy"]["decode_iterations"]},
                     "relative_error": errors,
                     "within_tolerance": all(e is not None and abs(e) <= TOLERANCE for e in errors.values()),
                     "load_average": [level["load_average_before"], level["load_average_after"]],
                     "environment": {"slowdown": env["slowdown"] if env else None, "profiled_at": base,
                                     "speed_from": speed_from, "speed_ratio": ratio, "speed_reading": reading,
                                     "replay_exponent": replay_exponent if speed_from == "replay" else None,
                                     "speed_trace_values": len(here.speed_trace),
                                     "replay_cpu_s": replay_cpu_s(env["replay"]["cpu_s_per_turn"])
                                     if env and env.get("replay") else None,
                                     "profiled_replay_cpu_s": replay_cpu_s(profile.extra.get("calibration", {}).get(
                                         "cpu_s_per_turn", {})),
                                     "replay_speed_probe_s": (env.get("replay") or {}).get("speed_probe_s")
                                     if env else None,
                                     "store_cycle_cpu_s": env.get("store_cycle_cpu_s") if env else None,
                                     "machine_cores": env.get("machine_cores") if env else None,
                                     "profiled_store_cycle_cpu_s": profile.extra.get("environment", {}).get(
                                         "store_cycle_cpu_s"),
                                     "speed_probe_s": env.get("speed_probe_s") if env else None,
                                     "profiled_speed_probe_s": profile.extra.get("environment", {}).get(
                                         "speed_probe_s"),
                                     "stall_rate_per_s": env["stalls"]["rate_per_s"] if env else None,
                                     "stalled_share": env["stalls"]["stalled_share"] if env else None}})
    return rows


def repeatability(reports: dict[str, dict]) -> dict[str, Any]:
    """The serving benchmark against itself: each stored run of the same levels (``reports``, by
    name, in the order they ran) taken as the prediction of each other run, its checked figures
    judged as the simulation's are (within :data:`TOLERANCE` of the other run's). What the check's
    target asks of the simulation is at best what one run of the benchmark does for another on
    the same machine: the floor its own spread sets. Also each figure's coefficient of variation
    over the runs, and the same counts for consecutive runs only (minutes apart)."""
    if len(reports) < 2:
        raise ValueError(f"{len(reports)} benchmark run(s): need at least two to compare")
    shapes = {name: [(lv["sessions"], lv["turns_played"], lv["rounds"]) for lv in r["levels"]]
              for name, r in reports.items()}
    first, shape = next(iter(shapes.items()))
    for name, other in shapes.items():
        if other != shape:
            raise ValueError(f"{name}: levels (sessions, turns, rounds) {other} differ from {first}'s {shape}: "
                             "only runs of the same levels can be compared")
    figures = {name: [measured_figures(lv) for lv in r["levels"]] for name, r in reports.items()}

    def tally(pairs: list[tuple[str, str]]) -> dict[str, Any]:
        within = all_within = 0
        for a, b in pairs:
            ok = [abs(x[k] / y[k] - 1) <= TOLERANCE for x, y in zip(figures[a], figures[b]) for k, _ in CHECKED]
            within += sum(ok)
            all_within += all(ok)
        return {"pairs": len(pairs), "figures_within": within, "figures": len(pairs) * len(shape) * len(CHECKED),
                "pairs_all_within": all_within}

    names = list(reports)
    per_figure = {}
    for i, (sessions, _, _) in enumerate(shape):
        for key, label in CHECKED:
            values = np.array([figures[n][i][key] for n in names])
            per_figure[f"S={sessions} {label}"] = {"mean": float(values.mean()),
                                                   "cv": float(values.std(ddof=1) / values.mean()),
                                                   "min_over_mean": float(values.min() / values.mean()),
                                                   "max_over_mean": float(values.max() / values.mean())}
    return {"runs": names, "tolerance": TOLERANCE,
            "every_pair": tally([(a, b) for a in names for b in names if a != b]),
            "consecutive": tally([p for a, b in zip(names, names[1:]) for p in ((a, b), (b, a))]),
            "per_figure": per_figure}


def repeatability_table(result: dict[str, Any]) -> str:
    lines = [f"{len(result['runs'])} runs; one run's figures taken as the prediction of another's:"]
    for key, label in (("every_pair", "every ordered pair"), ("consecutive", "consecutive runs, both ways")):
        t = result[key]
        lines.append(f"  {label}: {t['figures_within']} of {t['figures']} figures within "
                     f"±{result['tolerance']:.0%} ({t['figures_within'] / t['figures']:.1%}); every figure in "
                     f"{t['pairs_all_within']} of {t['pairs']} pairs ({t['pairs_all_within'] / t['pairs']:.0%})")
    lines.append(f"  {'figure':<22}{'mean':>10}{'cv':>8}{'min/mean':>10}{'max/mean':>10}")
    for name, f in result["per_figure"].items():
        lines.append(f"  {name:<22}{f['mean']:>10.4g}{f['cv']:>8.1%}"
                     f"{f['min_over_mean']:>10.2f}{f['max_over_mean']:>10.2f}")
    return "\n".join(lines)


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


MISREAD_CPU_RATIO = 1.15
"""A level whose serving processes used more than this times the simulated CPU per turn (or
less than its inverse) ran at a speed its scaling did not read: over the 53 stored checks
am49–am101 such levels missed ±25% somewhere in 15 of 27, the others in 28 of 132
(docs/BENCHMARKS.md, "A level the scaling misread")."""


def misread_levels(rows: list[dict]) -> list[str]:
    """Under the check's table: each level whose measured serving CPU per turn (summed over
    :data:`SERVING_ROLES`) is off the simulated by more than :data:`MISREAD_CPU_RATIO`, with the
    way the machine moved, so that a reader can tell a miss of the machine's minute from one of
    the model."""
    out = []
    for r in rows:
        measured, simulated = r["measured"].get("cpu_s_per_turn"), r["simulated"].get("cpu_s_per_turn")
        if not measured or not simulated or replay_cpu_s(simulated) <= 0:
            continue
        ratio = replay_cpu_s(measured) / replay_cpu_s(simulated)
        if not 1 / MISREAD_CPU_RATIO <= ratio <= MISREAD_CPU_RATIO:
            out.append(f"S={r['sessions']}: the serving processes used {ratio:.2f}× the simulated CPU per turn: the "
                       f"machine ran {'slower' if ratio > 1 else 'faster'} during the level than its speed scaling "
                       "read, and its figures measure that as much as the model")
    return out


def check_details(rows: list[dict]) -> str:
    """Under the check's table, per level: the readings of the machine's speed, the update
    batch's phases, an update's way to its batch, the decoding loop's iterations and each
    process's CPU per turn, simulated against measured."""
    lines: list[str] = []
    for r in rows:
        m, sim = r["measured"], r["simulated"]
        batch = m.get("update_batch_mean")
        # loop iterations on both sides: the app's ``steps`` leave out those that only admitted
        lines.append(f"S={r['sessions']}: {_speed_readings(r['environment'])}; update batch mean sim "
                     f"{sim['update_batch_mean']:.1f} / measured {f'{batch:.1f}' if batch else '—'}; decode loop "
                     f"iterations sim {sim['decode_iterations']} / measured {m.get('decode_iterations') or '—'}")
        phases = [f"{phase} {sim[key] * 1e3:.1f}/{m[key] * 1e3:.1f}"
                  for phase in ("batch", "read", "consolidate", "consolidate_run", "commit")
                  if (key := f"update_{phase}_s") in m and key in sim]
        if phases:
            thread = (f" (the consolidation's thread CPU {m['update_consolidate_cpu_s'] * 1e3:.1f})"
                      if "update_consolidate_cpu_s" in m else "")
            gap = (f"; after a batch that left items waiting, to the next's start "
                   f"{sim['update_gap_s'] * 1e3:.1f}/{m['update_gap_s'] * 1e3:.1f}"
                   if "update_gap_s" in m and "update_gap_s" in sim else "")
            lines.append(f"      update batch ms sim/measured: {', '.join(phases)}{thread}{gap}")
            cpu = [f"{phase} {m[f'update_{phase}_loop_cpu_s'] * 1e3:.1f}/{m[f'update_{phase}_proc_cpu_s'] * 1e3:.1f}"
                   for phase in ("read", "consolidate", "commit") if f"update_{phase}_loop_cpu_s" in m]
            if cpu:
                lines.append(f"      update batch CPU ms measured, event loop/process: {', '.join(cpu)}")
        if "update_transit_s" in m:
            # the simulation starts the call as the end of the answer leaves the Ingress
            handover = ("from the answer's end to the call's start on the Ingress "
                        f"—/{m['update_handover_s'] * 1e3:.1f}, " if "update_handover_s" in m else "")
            lines.append(f"      per update ms sim/measured: {handover}from the Ingress to the MemoryUpdater "
                         f"{sim['update_transit_s'] * 1e3:.1f}/{m['update_transit_s'] * 1e3:.1f}, then to its "
                         f"batch's start {sim['update_queued_s'] * 1e3:.1f}/{m['update_queued_s'] * 1e3:.1f}")
        if "decode_tick_s" in m:
            lines.append(f"      decode iteration sim/measured: rows {sim['decode_rows_mean']:.1f}/"
                         f"{m['decode_rows_mean']:.1f}, model work {sim['decode_tick_s'] * 1e3:.2f}/"
                         f"{m['decode_tick_s'] * 1e3:.2f} ms (thread CPU {m['decode_tick_cpu_s'] * 1e3:.2f}, "
                         f"awaited {m['decode_iteration_s'] * 1e3:.2f}), hops to and from the thread "
                         f"{(sim['decode_iteration_s'] - sim['decode_tick_s']) * 1e3:.2f}/"
                         f"{(m['decode_iteration_s'] - m['decode_tick_s']) * 1e3:.2f} ms")
        cpu = m.get("cpu_s_per_turn")
        if cpu:
            lines.append("      CPU ms per turn sim/measured: " + ", ".join(
                f"{role} {sim['cpu_s_per_turn'][role] * 1e3:.1f}/{cpu[role] * 1e3:.1f}"
                for role in sim["cpu_s_per_turn"] if role in cpu))
        waits, simulated_waits = m.get("store_waits"), sim.get("store_waits") or {}
        if waits and waits.get("claim_pending_age_s") and simulated_waits.get("claim_pending_age_s"):
            lines.append(f"      at the store ms sim/measured: a waiting turn's arrival after the turn before was "
                         f"recorded {simulated_waits['claim_pending_age_s'] * 1e3:.1f}/"
                         f"{waits['claim_pending_age_s'] * 1e3:.1f}, an update's commit time to its release "
                         f"{simulated_waits['commit_write_s'] * 1e3:.1f}/{waits['commit_write_s'] * 1e3:.1f}"
                         + (f" (measured: the write on its thread {waits['commit_persist_s'] * 1e3:.1f}, its CPU "
                            f"{waits['commit_persist_cpu_s'] * 1e3:.1f})" if waits.get("commit_persist_s") else ""))
        between, simulated_between = m.get("between_turns") or {}, sim.get("between_turns") or {}
        ways = [(what, simulated_between.get(key) or {}, between.get(key) or {})
                for what, key in (("a turn recorded to its end at the client", "way_out"),
                                  ("a request sent to its claim at the store", "way_in"))]
        if any(m_way.get("mean_s") is not None and s_way.get("mean_s") is not None for _, s_way, m_way in ways):
            lines.append("      between turns ms mean (p50) sim/measured: " + ", ".join(
                f"{what} {s_way['mean_s'] * 1e3:.1f} ({s_way['p50_s'] * 1e3:.1f})/{m_way['mean_s'] * 1e3:.1f} "
                f"({m_way['p50_s'] * 1e3:.1f})" for what, s_way, m_way in ways
                if m_way.get("mean_s") is not None and s_way.get("mean_s") is not None))
        loops, simulated_loops = m.get("event_loop_s_per_turn"), sim.get("event_loop_s_per_turn") or {}
        if loops:
            lines.append("      event loop ms per turn sim/measured, its work + its wait for a core: " + ", ".join(
                f"{role} {s['cpu_s'] * 1e3:.1f}+{s['wait_s'] * 1e3:.1f}/{loops[role]['cpu_s'] * 1e3:.1f}+"
                f"{loops[role]['wait_s'] * 1e3:.1f}" for role, s in simulated_loops.items() if role in loops))
    return "\n".join(lines)


def _speed_readings(env: dict[str, Any]) -> str:
    """A level's readings of the machine's speed against the profile's, and the scaling applied."""
    out = f"slowdown {env['slowdown']:.2f} (profile {env['profiled_at']:.2f})"
    probe, probed = env.get("speed_probe_s"), env.get("profiled_speed_probe_s")
    out += f", speed probe {probe * 1e3:.2f} ms (profile {probed * 1e3:.2f})" if probe and probed else ""
    cycle, cycled = env.get("store_cycle_cpu_s"), env.get("profiled_store_cycle_cpu_s")
    out += f", store cycle {cycle * 1e3:.2f} ms (profile {cycled * 1e3:.2f})" if cycle and cycled else ""
    replayed, calibrated = env.get("replay_cpu_s"), env.get("profiled_replay_cpu_s")
    out += (f", replay's serving CPU {replayed * 1e3:.1f} ms per turn (calibration {calibrated * 1e3:.1f})"
            if replayed and calibrated else "")
    out += f", speed probe during the replay {env['replay_speed_probe_s'] * 1e3:.2f} ms" if env.get(
        "replay_speed_probe_s") else ""
    damped = (f": ×{env['speed_reading']:.2f} read, to the power {env['replay_exponent']:g}"
              if env.get("replay_exponent") not in (None, 1) and env.get("speed_reading") else "")
    out += (f", scaled by the {env['speed_from']} reading (×{env['speed_ratio']:.2f}{damped})" if env.get("speed_ratio")
            else f", the {env['speed_from']} reading missing: no speed scaling" if env.get("speed_from")
            else ", no speed scaling")
    traced = env.get("speed_trace_values")
    out += f", on a speed trace of {traced} values" if traced else ", on a steady machine"
    out += f", stalls {env['stall_rate_per_s']:.2f}/s, {env['stalled_share']:.1%} of the time"
    cores = env.get("machine_cores")
    return out + (f"; while it played the machine ran {cores['busy']:.2f} cores ({cores['ours']:.2f} the serving "
                  f"processes' and the client's, {cores['other']:.2f} other), {cores['steal']:.2f} stolen"
                  if cores else "")
