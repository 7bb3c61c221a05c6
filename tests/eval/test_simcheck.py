"""The check's speed readings and its comparison with measured levels, rxt_dist/eval/simcheck.py (no Ray)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rxt_dist.eval.capacity import CostProfile, Workload
from rxt_dist.eval.simulate import simulate
from tests.eval.capacity_profiles import measured_like


def test_a_slower_machine_read_by_a_speed_reading_scales_every_work_time():
    """The check moves the profile to each level's measured speed: a probe piece that took 1.5×
    the CPU time it took at profiling scales every work time by 1.5, the other load stays the
    spin loop's; without a reading on either side nothing moves."""
    from rxt_dist.eval.simcheck import speed_ratio

    p = dataclasses.replace(measured_like(), extra={"environment": {"slowdown": 1.0, "speed_probe_s": 0.002,
                                                                    "store_cycle_cpu_s": 0.004}})
    p = dataclasses.replace(p, path=dataclasses.replace(p.path, chunk_s={"proxy": 0.001}))
    assert speed_ratio(p, {"speed_probe_s": 0.003}, "probe") == pytest.approx(1.5)
    assert speed_ratio(p, {"store_cycle_cpu_s": 0.006}, "store") == pytest.approx(1.5)
    assert speed_ratio(p, {"speed_probe_s": 0.003}, None) is None
    assert speed_ratio(p, {}, "probe") is None
    unprobed = dataclasses.replace(p, extra={"environment": {"slowdown": 1.0}})
    assert speed_ratio(unprobed, {"speed_probe_s": 0.003}, "probe") is None
    slower = p.in_environment(1.0, speed_ratio=1.5)
    assert slower.decode_step(1) == pytest.approx(1.5 * p.decode_step(1))
    assert slower.consolidate(4) == pytest.approx(1.5 * p.consolidate(4))
    assert slower.path.ingress_s == pytest.approx(1.5 * p.path.ingress_s)
    assert slower.path.chunk("proxy") == pytest.approx(1.5 * p.path.chunk("proxy"))
    assert slower.path.other_load == 0.0
    assert p.in_environment(1.0).decode_step(1) == pytest.approx(p.decode_step(1))
    w = Workload(sessions=4, answer_tokens=6, turns=3)
    assert simulate(slower, w)["ttft_p50_s"] > simulate(p, w)["ttft_p50_s"]


def test_the_replay_reading_is_the_serving_cpu_per_turn_against_the_calibrations_at_the_replays_chunks():
    """``speed_from="replay"``: the serving processes' CPU per turn in the replay of calibration
    level A over the calibration's (the client's left out), the calibration's first moved to
    the replay's chunks per answer by the profile's per-chunk work of the Generator, the Ingress
    and the proxy (a time-sliced stream sends fewer chunks than the calibration's one per token)."""
    from rxt_dist.eval.simcheck import speed_ratio

    cal = {"proxy": 0.002, "ingress": 0.010, "generator": 0.012, "updater": 0.008, "store": 0.006, "client": 0.5}
    chunks = {"ingress": 0.0010, "proxy": 0.0005, "generator": 0.0020, "client": 0.0004}
    p = dataclasses.replace(measured_like(), path=dataclasses.replace(measured_like().path, chunk_s=chunks),
                            extra={"calibration": {"cpu_s_per_turn": cal, "short": {"long_chunks": 5.0}}})
    per_chunk = 0.0035  # the client's left out here too
    then = 0.038 - per_chunk * (5.0 - 2.0)
    replay = {"cpu_s_per_turn": {r: 1.2 * v for r, v in cal.items()}, "chunks_per_turn": 2.0}
    assert speed_ratio(p, {"replay": replay}, "replay") == pytest.approx(1.2 * 0.038 / then)
    # the same chunks: the plain ratio; no per-chunk work fitted: the plain ratio too
    same = {**replay, "chunks_per_turn": 5.0}
    assert speed_ratio(p, {"replay": same}, "replay") == pytest.approx(1.2)
    flat = dataclasses.replace(p, path=dataclasses.replace(p.path, chunk_s={}))
    assert speed_ratio(flat, {"replay": replay}, "replay") == pytest.approx(1.2)
    # a role the replay did not read (a store with no process yet) is left out on both sides
    no_store = {**same, "cpu_s_per_turn": {r: v for r, v in same["cpu_s_per_turn"].items() if r != "store"}}
    assert speed_ratio(p, {"replay": no_store}, "replay") == pytest.approx(1.2)
    # a level recorded before the replay existed: no reading
    assert speed_ratio(p, {"speed_probe_s": 0.001}, "replay") is None


def test_the_check_scales_by_a_speed_reading_only_when_asked():
    """``simcheck.compare`` leaves the machine's speed readings out unless ``speed_from`` names
    one (the probe's calibration reading misread the machine in stored runs): a stored check
    whose level probed faster than its calibration simulates faster with the probe's
    correction, and says which reading it used; an unknown reading is refused by name."""
    from pathlib import Path

    from rxt_dist.eval.simcheck import compare

    study = Path(__file__).resolve().parents[2] / "docs" / "bench" / "study"
    p = CostProfile.from_file(study / "capacity-profile-pw1.json")
    level = json.loads((study / "capacity-serving-pw1.json").read_text())["levels"][0]
    assert level["environment"]["speed_probe_s"] < 0.8 * p.extra["environment"]["speed_probe_s"]
    off, on = (compare(p, [level], speed_from=reading)[0] for reading in (None, "probe"))
    assert off["environment"]["speed_from"] is None and on["environment"]["speed_from"] == "probe"
    assert on["simulated"]["ttft_p50_s"] < 0.9 * off["simulated"]["ttft_p50_s"]
    assert off["measured"] == on["measured"]
    # a run stored before the store's cycle was read: nothing to scale by, the same simulation
    assert compare(p, [level], speed_from="store")[0]["simulated"] == off["simulated"]
    with pytest.raises(ValueError, match="speed_from='moon'"):
        compare(p, [level], speed_from="moon")


def test_the_check_simulates_a_level_at_its_own_traced_speed_only_when_asked():
    """With ``traced`` a level that recorded the speed probe's pieces is simulated on that trace
    (the check says how many values it had); by default the steady machine, whatever was read."""
    from pathlib import Path

    from rxt_dist.eval.simcheck import compare

    study = Path(__file__).resolve().parents[2] / "docs" / "bench" / "study"
    p = CostProfile.from_file(study / "capacity-profile-pw1.json")
    level = json.loads((study / "capacity-serving-pw1.json").read_text())["levels"][0]
    assert "speed_probe_pieces_s" not in level["environment"]  # stored before the pieces were
    before = compare(p, [level])[0]
    assert before["environment"]["speed_trace_values"] == 0
    traced = json.loads(json.dumps(level))
    traced["environment"]["speed_probe_pieces_s"] = [0.002, 0.002, 0.008, 0.008, 0.0005] * 10
    on, off = compare(p, [traced], traced=True)[0], compare(p, [traced])[0]
    assert on["environment"]["speed_trace_values"] == 50 and off["environment"]["speed_trace_values"] == 0
    assert off["simulated"] == before["simulated"]
    assert on["simulated"]["ttft_p99_s"] != off["simulated"]["ttft_p99_s"]


def test_the_replay_reading_scales_the_profile_to_its_power():
    """``replay_exponent``: a level is simulated on the profile scaled by the replay's ratio to
    that power — 0 is the profile as calibrated, 1 the whole ratio, in between in between; the
    check records the reading and what it applied; an exponent outside 0…1 is refused by name.
    On a stored check whose S = 1 replay read 1.58× its calibration (am38)."""
    from pathlib import Path

    from rxt_dist.eval.simcheck import REPLAY_EXPONENT, compare

    study = Path(__file__).resolve().parents[2] / "docs" / "bench" / "study"
    p = CostProfile.from_file(study / "capacity-profile-cpu-am38.json")
    level = json.loads((study / "capacity-serving-am38.json").read_text())["levels"][0]
    rows = {e: compare(p, [level], speed_from="replay", replay_exponent=e)[0] for e in (0.0, 0.5, 1.0)}
    reading = rows[1.0]["environment"]["speed_reading"]
    assert reading > 1.5 and rows[1.0]["environment"]["speed_ratio"] == reading
    assert rows[0.5]["environment"]["speed_ratio"] == pytest.approx(reading ** 0.5)
    assert rows[0.0]["simulated"] == compare(p, [level])[0]["simulated"]  # × 1.0: the profile as calibrated
    ttft = [rows[e]["simulated"]["ttft_p50_s"] for e in (0.0, 0.5, 1.0)]
    assert ttft[0] < ttft[1] < ttft[2]
    assert compare(p, [level], speed_from="replay")[0]["environment"]["replay_exponent"] == REPLAY_EXPONENT
    with pytest.raises(ValueError, match="replay_exponent=1.5"):
        compare(p, [level], speed_from="replay", replay_exponent=1.5)


def _report(scale: float = 1.0, tokens_scale: float = 1.0, sessions=(1, 8)) -> dict:
    def level(s: int) -> dict:
        return {"sessions": s, "turns_played": 8, "rounds": 2,
                "ttft": {"p50_s": 0.02 * s * scale, "p99_s": 0.03 * s * scale},
                "throughput": {"aggregate_tokens_per_s": 100.0 * s * scale * (tokens_scale if s == 8 else 1.0)},
                "update_lag": {"p50_s": 0.01 * scale, "p99_s": 0.02 * scale},
                "answer": {"p50_s": 0.05 * scale}, "waited": {"share": 0.9}}
    return {"levels": [level(s) for s in sessions]}


def test_the_benchmark_against_itself_counts_figures_as_the_check_does():
    """``repeatability``: each run's figures judged against every other run's with the check's
    tolerance (a run 10% off everywhere is within, one figure 50% off is out in both directions),
    consecutive runs apart; runs of other levels, or a lone run, are refused by name."""
    from rxt_dist.eval.simcheck import CHECKED, repeatability, repeatability_table

    reports = {"a": _report(), "b": _report(1.1), "c": _report(tokens_scale=1.5)}
    r = repeatability(reports)
    per_pair = 2 * len(CHECKED)
    # (a, c), (c, a), (b, c), (c, b) miss the S = 8 tokens/s; a and b agree everywhere
    assert r["every_pair"] == {"pairs": 6, "figures": 6 * per_pair, "figures_within": 6 * per_pair - 4,
                               "pairs_all_within": 2}
    assert r["consecutive"] == {"pairs": 4, "figures": 4 * per_pair, "figures_within": 4 * per_pair - 2,
                                "pairs_all_within": 2}
    assert r["per_figure"]["S=1 TTFT p50"]["max_over_mean"] == pytest.approx(1.1 / (3.1 / 3))
    assert r["per_figure"]["S=8 tokens/s"]["cv"] > r["per_figure"]["S=8 TTFT p50"]["cv"]
    assert "every figure in 2 of 6 pairs" in repeatability_table(r)
    with pytest.raises(ValueError, match="c: levels"):
        repeatability({"a": _report(), "c": _report(sessions=(1, 32))})
    with pytest.raises(ValueError, match="at least two"):
        repeatability({"a": _report()})


def test_capacity_repeat_reads_stored_runs_and_names_a_bad_file(tmp_path, capsys):
    """``capacity.py repeat`` on two stored check runs prints and writes the same counts the
    library gives; a file that is not a serving report stops it with the file's name."""
    from pathlib import Path

    from jobs.capacity import main
    from rxt_dist.eval.simcheck import repeatability

    files = [f"docs/bench/study/capacity-serving-am{n}.json" for n in (40, 41)]
    out = tmp_path / "repeat.json"
    main(["repeat", "--benchmarks", *files, "--out", str(out)])
    written = json.loads(out.read_text())
    expected = repeatability({Path(f).name: json.loads(Path(f).read_text()) for f in files})
    assert written["every_pair"] == expected["every_pair"]
    assert "2 runs" in capsys.readouterr().out
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"decode_step_s": {}}))
    with pytest.raises(SystemExit, match="profile.json: not a serving-benchmark report"):
        main(["repeat", "--benchmarks", files[0], str(bad)])
