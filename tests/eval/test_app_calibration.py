"""The capacity check's readings of a running application: its counters between two reads, the
configs it validates before starting Ray, and the report it prints (the live measurement itself
runs in ``jobs/capacity.py check``, minutes long: docs/BENCHMARKS.md)."""

import json

import pytest

from rxt_dist.eval.app_calibration import CalibrationConfig, CheckLevels
from rxt_dist.eval.app_readings import decode_loop_counters, fixed_share, read_share, update_batches
from rxt_dist.eval.simcheck import check_details


def test_the_updaters_counters_give_its_batches_and_their_phases_between_two_reads():
    before = {"batches": 10, "applied": 20, "batch_s": 1.0, "read_s": 0.1, "timed": 20, "transit_s": 0.2,
              "queued_s": 0.4, "handed": 18, "handover_s": 0.05}
    after = {"batches": 14, "applied": 32, "batch_s": 1.2, "read_s": 0.14, "timed": 32, "transit_s": 0.44,
             "queued_s": 0.52, "handed": 28, "handover_s": 0.07}
    out = update_batches(before, after)
    assert out["batches"] == 4 and out["applied"] == 12 and out["mean"] == 3
    assert out["batch_mean_s"] == pytest.approx(0.05) and out["read_mean_s"] == pytest.approx(0.01)
    assert "commit_mean_s" not in out  # a counter the replica did not keep is not made up
    assert out["transit_per_update_s"] == pytest.approx(0.02) and out["queued_per_update_s"] == pytest.approx(0.01)
    assert out["handover_per_update_s"] == pytest.approx(0.002)  # per update handed over after its answer
    older = [{k: v for k, v in counters.items() if k not in ("handed", "handover_s")} for counters in (before, after)]
    assert "handover_per_update_s" not in update_batches(*older)  # a replica from before it counted them
    assert update_batches(before, before)["mean"] is None
    gapped = update_batches({**before, "gaps": 3, "gap_s": 0.02}, {**after, "gaps": 7, "gap_s": 0.044})
    assert gapped["gap_mean_s"] == pytest.approx(0.006)  # per batch that started after items waited behind one
    assert "gap_mean_s" not in out  # a replica from before it counted them


def test_the_decoding_loops_counters_give_an_iterations_mean_batch_and_times():
    before = {"iterations": 100, "rows": 150, "steps": 90, "admitted": 40, "iteration_s": 1.0, "tick_s": 0.5,
              "tick_cpu_s": 0.4}
    after = {"iterations": 110, "rows": 190, "steps": 99, "admitted": 44, "iteration_s": 1.1, "tick_s": 0.56,
             "tick_cpu_s": 0.45}
    out = decode_loop_counters(before, after)
    assert out["iterations"] == 10 and out["rows_mean"] == 4 and out["steps"] == 9 and out["admitted"] == 4
    assert out["tick_mean_s"] == pytest.approx(0.006) and out["tick_cpu_mean_s"] == pytest.approx(0.005)
    assert decode_loop_counters({}, {}) == {}  # a replica from before it counted


def test_the_read_share_counts_the_updates_whose_stm_came_from_the_store():
    assert read_share({"hits": 5, "misses": 5, "sessions": 3}, {"hits": 11, "misses": 7, "sessions": 3}) == 0.25
    assert read_share({}, {"hits": 0, "misses": 0, "sessions": 0}) == 1.0  # nothing counted: every update reads
    assert read_share({}, {"hits": 4, "misses": 0}) == 1.0  # an updater that keeps no STMs


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_fixed_share_gives_back_the_share_that_made_the_busy_levels_cpu(share):
    alone, in_flight = 0.010, 4.0
    together = alone * (share + (1 - share) / in_flight)
    assert fixed_share(alone, together, in_flight) == pytest.approx(share)
    assert fixed_share(alone, together, 1.0) == 1.0  # one turn at a time shares nothing


@pytest.mark.parametrize("kwargs, message", [
    ({"turns": 2}, "calibration turns=2"),
    ({"think_time_s": -1.0}, "think_time_s=-1.0"),
    ({"warm_up_turns": -8}, "warm_up_turns=-8"),
    ({"max_tokens": 0}, "max_tokens=0"),
    ({"wake_weight": 0.0}, "wake_weight=0.0"),
    ({"wake_wait_s": -0.001}, "wake_wait_s=-0.001"),
])
def test_a_bad_calibration_setting_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**kwargs)


def test_the_checks_levels_are_validated_and_get_enough_rounds_for_a_tail():
    with pytest.raises(ValueError, match=r"sessions=\[1, 0\]"):
        CheckLevels(sessions=(1, 0))
    with pytest.raises(ValueError, match="rounds=0"):
        CheckLevels(rounds=0)
    levels = CheckLevels(sessions=[1, 8, 32], turns=8, rounds=2, min_level_turns=256)
    assert [levels.rounds_for(s) for s in levels.sessions] == [32, 4, 2]


def test_a_bad_setting_stops_the_check_before_ray_starts(capsys):
    from jobs.capacity import main

    with pytest.raises(SystemExit, match="capacity.py check: calibration turns=1"):
        main(["check", "--calibration-turns", "1"])


def test_the_checks_details_name_each_levels_parts_simulated_against_measured():
    env = {"slowdown": 1.0, "profiled_at": 1.0, "stall_rate_per_s": 0.0, "stalled_share": 0.0,
           "replay_cpu_s": 0.0363, "profiled_replay_cpu_s": 0.0481}
    sim = {"update_batch_mean": 2.3, "decode_iterations": 718, "update_batch_s": 0.0259,
           "cpu_s_per_turn": {"generator": 0.0078, "store": 0.0057}}
    measured = {"update_batch_mean": 2.1, "decode_iterations": 670, "update_batch_s": 0.0185,
                "cpu_s_per_turn": {"generator": 0.0064, "store": 0.0048}}
    text = check_details([{"sessions": 8, "environment": env, "simulated": sim, "measured": measured}])
    assert text.splitlines()[0].startswith("S=8: slowdown 1.00 (profile 1.00), replay's serving CPU 36.3 ms per turn "
                                           "(calibration 48.1), no speed scaling, on a steady machine, stalls 0.00/s")
    traced = check_details([{"sessions": 8, "environment": {**env, "speed_trace_values": 40}, "simulated": sim,
                             "measured": measured}])
    assert "no speed scaling, on a speed trace of 40 values, stalls" in traced
    probed = check_details([{"sessions": 8, "environment": {**env, "replay_speed_probe_s": 0.00184}, "simulated": sim,
                             "measured": measured}])
    assert "(calibration 48.1), speed probe during the replay 1.84 ms, no speed scaling" in probed
    cores = {"wall_s": 4.0, "busy": 1.83, "ours": 1.41, "other": 0.42, "steal": 0.05}
    busy = check_details([{"sessions": 8, "environment": {**env, "machine_cores": cores}, "simulated": sim,
                           "measured": measured}])
    assert ("stalls 0.00/s, 0.0% of the time; while it played the machine ran 1.83 cores (1.41 the serving processes' "
            "and the client's, 0.42 other), 0.05 stolen") in busy
    assert "update batch mean sim 2.3 / measured 2.1; decode loop iterations sim 718 / measured 670" in text
    assert "update batch ms sim/measured: batch 25.9/18.5" in text
    assert "to the next's start" not in text  # no gap read
    gapped = {"sessions": 8, "environment": env, "simulated": {**sim, "update_gap_s": 0.0091},
              "measured": {**measured, "update_gap_s": 0.0072}}
    assert ("batch 25.9/18.5; after a batch that left items waiting, to the next's start 9.1/7.2"
            in check_details([gapped]))
    assert "CPU ms per turn sim/measured: generator 7.8/6.4, store 5.7/4.8" in text
    assert "per update" not in text  # a level whose updater timed no call
    parts = {"update_transit_s": 0.0147, "update_queued_s": 0.0108}
    row = {"sessions": 8, "environment": env, "simulated": {**sim, **parts},
           "measured": {**measured, "update_transit_s": 0.0104, "update_queued_s": 0.0104, "update_handover_s": 0.0013}}
    assert ("per update ms sim/measured: from the answer's end to the call's start on the Ingress —/1.3, from the "
            "Ingress to the MemoryUpdater 14.7/10.4, then to its batch's start 10.8/10.4") in check_details([row])


def _compared(tmp_path, check: str, *flags: str) -> list[dict]:
    """The levels ``jobs/capacity.py compare`` writes for a stored check run with ``flags``."""
    from jobs.capacity import main

    study = f"docs/bench/study/capacity-{{}}-{check}.json"
    out = tmp_path / f"check-{check}-{'-'.join(flags) or 'default'}.json"
    main(["compare", "--profile", study.format("profile-cpu"), "--benchmark", study.format("serving"),
          "--check-out", str(out), *flags])
    return json.loads(out.read_text())["levels"]


def test_compare_scales_each_level_by_its_replay_unless_told_not_to(tmp_path, capsys):
    """``jobs/capacity.py compare`` (and ``check``) scale the profile by each level's replay of
    calibration level A by default (its ratio to the power 0.7); ``--speed-from none`` simulates
    the profile as calibrated; an exponent outside 0…1 stops the command with its name.
    Run on a stored check whose calibration ran in a fast minute (am38: its replays read 1.58,
    1.08 and 1.21× the calibration's serving CPU per turn), so the two must differ."""
    from jobs.capacity import main

    got = {reading: _compared(tmp_path, "am38", *(["--speed-from", reading] if reading else []))
           for reading in (None, "none")}
    for scaled, plain in zip(got[None], got["none"]):
        env = scaled["environment"]
        assert env["speed_from"] == "replay" and env["speed_reading"] > 1.05
        assert env["speed_ratio"] == env["speed_reading"] ** env["replay_exponent"] and env["replay_exponent"] == 0.7
        assert plain["environment"]["speed_from"] is None and plain["environment"]["speed_ratio"] is None
        assert scaled["simulated"]["ttft_p50_s"] > plain["simulated"]["ttft_p50_s"]
    with pytest.raises(SystemExit):
        main(["compare", "--replay-exponent", "2"])
    assert "--replay-exponent: '2': give a number from 0" in capsys.readouterr().err


def test_compare_simulates_each_level_on_its_own_speed_trace_unless_told_a_steady_machine(tmp_path, capsys):
    """By default ``jobs/capacity.py compare`` (and ``check``) plays each level on the trace of
    the machine's speed the probe read while that level played (am90 recorded 97, 40 and 64
    pieces), which moves the tail away from a steady machine's (``--speed-trace none``); the bare
    flag also fits on the calibration's trace, and only with ``--refit`` (else no fit runs)."""
    from jobs.capacity import main, parse_args

    assert parse_args(["compare", "--speed-trace"]).speed_trace == "all"
    assert parse_args(["check", "--model-dir", "m"]).speed_trace == "levels"
    got = {mode: _compared(tmp_path, "am90", *(["--speed-trace", mode] if mode else [])) for mode in (None, "none")}
    assert [lv["environment"]["speed_trace_values"] for lv in got[None]] == [97, 40, 64]
    assert [lv["environment"]["speed_trace_values"] for lv in got["none"]] == [0, 0, 0]
    for traced, steady in zip(got[None], got["none"]):
        assert traced["simulated"]["ttft_p99_s"] != steady["simulated"]["ttft_p99_s"]
        assert traced["environment"]["speed_ratio"] == steady["environment"]["speed_ratio"]  # the mean speed: the same
    assert "on a speed trace of 97 values" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--speed-trace", "sometimes"])
    assert "--speed-trace: invalid choice: 'sometimes'" in capsys.readouterr().err


def test_the_check_names_a_level_whose_serving_cpu_strays_from_the_simulated():
    """A level whose serving processes used more than 1.15× (or less than 1/1.15 of) the
    simulated CPU per turn is named under the table, slower or faster; one within, or without
    the readings, is not."""
    from rxt_dist.eval.simcheck import misread_levels

    sim = {"cpu_s_per_turn": {"ingress": 0.010, "store": 0.008, "generator": 0.010, "updater": 0.008}}

    def row(sessions: int, scale: float) -> dict:
        return {"sessions": sessions, "simulated": sim,
                "measured": {"cpu_s_per_turn": {**{k: v * scale for k, v in sim["cpu_s_per_turn"].items()},
                                                "client": 0.5}}}  # the client's is not the serving path's

    lines = misread_levels([row(1, 1.05), row(8, 1.23), row(32, 0.8), {"sessions": 4, "simulated": sim,
                                                                         "measured": {}}])
    assert len(lines) == 2, lines
    assert lines[0].startswith("S=8: the serving processes used 1.23× the simulated CPU per turn: the machine ran "
                               "slower during the level")
    assert lines[1].startswith("S=32: the serving processes used 0.80× the simulated CPU per turn: the machine ran "
                               "faster")
