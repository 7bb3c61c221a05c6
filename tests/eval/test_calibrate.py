"""Fitting a profile to its calibration, rxt_dist/eval/calibrate.py and profile_fit.py (no Ray, synthetic profiles)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rxt_dist.eval.calibrate import (
    fit_fixed_shares,
    fit_serving_path,
    fit_timing_cv,
    fit_to_calibration,
    replayed,
    split_per_chunk,
    with_consolidating_thread,
)
from rxt_dist.eval.capacity import ServingPath, Workload
from rxt_dist.eval.simulate import Replicas, simulate
from tests.eval.capacity_profiles import measured_like, profile


def test_fitted_path_reproduces_its_calibration_run():
    """The serving path fitted from a calibration level (S = 1, think time) gives back that
    level's median TTFT and answer time when the calibration workload is simulated."""
    p = measured_like()
    model = {"decode_step_s": p.decode_step_s, "prefill_s": p.prefill_s, "consolidate_s": p.consolidate_s,
             "cpu_s": {"prefill": {1: 0.004}, "decode_step": {1: 0.001}, "consolidate": {1: 0.002}}}
    cpu = {"client": 0.008, "proxy": 0.014, "ingress": 0.027, "store": 0.010, "generator": 0.021, "updater": 0.011}
    level = {"ttft": {"excluding_wait": {"p50_s": 0.040}}, "answer": {"p50_s": 0.060},
             "update_lag": {"p50_s": 0.030}}
    first = ServingPath(**fit_serving_path(model, cpu, level, answer_steps=7, k=1.2, cores=2))
    assert first.other_load == pytest.approx(1.2 - 1)
    w = Workload(sessions=1, think_time_s=0.3, answer_tokens=6, turns=6)
    q = fit_to_calibration(dataclasses.replace(p, path=first), w, 0.040, 0.060, 0.030)
    r = simulate(q, w)
    assert r["ttft_p50_s"] == pytest.approx(0.040, rel=0.02)
    assert r["answer_p50_s"] == pytest.approx(0.060, rel=0.02)
    assert r["update_lag_p50_s"] == pytest.approx(0.030, rel=0.02)


def test_a_session_polls_work_is_its_cpu_at_the_slowdown_and_its_latency_what_the_wall_time_leaves():
    """A poll's measured CPU per role becomes its work (× the slowdown k, as every other cost);
    its median wall time less that work is its fixed latency, never negative; without a poll
    measured the path has none (the simulation's polls are then free)."""
    model = {"decode_step_s": {1: 0.001}, "prefill_s": {1: 0.004}, "consolidate_s": {1: 0.002},
             "cpu_s": {"prefill": {1: 0.004}, "decode_step": {1: 0.001}, "consolidate": {1: 0.002}}}
    cpu = {"client": 0.002, "proxy": 0.001, "ingress": 0.007, "store": 0.005, "generator": 0.009, "updater": 0.006}
    level = {"ttft": {"excluding_wait": {"p50_s": 0.020}}, "answer": {"p50_s": 0.030},
             "update_lag": {"p50_s": 0.010}}
    poll = {"polls": 200, "cpu_s": {"client": 0.0008, "proxy": 0.0003, "ingress": 0.0012, "store": 0.0004,
                                    "generator": 0.0}, "wall_p50_s": 0.004}
    path = ServingPath(**fit_serving_path(model, cpu, level, answer_steps=3, k=1.25, cores=2, poll=poll))
    assert path.poll_s == pytest.approx({"client": 0.001, "proxy": 0.000375, "ingress": 0.0015, "store": 0.0005})
    assert path.poll_latency_s == pytest.approx(0.004 - 0.003375)
    quick = ServingPath(**fit_serving_path(model, cpu, level, answer_steps=3, k=1.25, cores=2,
                                           poll={**poll, "wall_p50_s": 0.002}))
    assert quick.poll_latency_s == 0.0
    assert ServingPath(**fit_serving_path(model, cpu, level, answer_steps=3, k=1.25, cores=2)).poll_s == {}


def test_a_calibration_level_is_replayed_with_its_answer_lengths_in_order():
    """A one-session calibration level is simulated with its measured answer lengths, one per
    timed turn in their order, whatever the random stream: a level whose answers fall in two
    groups (as the earlier demo model answered level A: 15 short, 17 long) keeps its median in
    the long group with every seed and jitter — drawn at random, the mix and so the median moved
    with any change to the stream."""
    tokens = [2] * 15 + [24] * 17
    w = Workload(sessions=1, think_time_s=0.3, answer_tokens=8, turns=32)
    assert replayed(w, tokens)["answer_plan"] == [[t] for t in tokens]
    assert replayed(w, tokens, rounds=3)["answer_plan"][0] == [2, 2, 2]
    assert "answer_plan" not in replayed(w, tokens[:10])  # not one per timed turn: drawn from them
    assert "answer_plan" not in replayed(dataclasses.replace(w, sessions=2, turns=16), tokens)
    long_only = simulate(profile(cv=0.1), dataclasses.replace(w, turns=17), answer_tokens=[24], seed=0)
    short_only = simulate(profile(cv=0.1), dataclasses.replace(w, turns=15), answer_tokens=[2], seed=0)
    for seed in range(4):
        median = simulate(profile(cv=0.1), w, seed=seed, **replayed(w, tokens))["answer_p50_s"]
        assert median > (long_only["answer_p50_s"] + short_only["answer_p50_s"]) / 2, seed


def test_two_answer_lengths_tell_per_chunk_from_per_turn_work():
    per_turn = {"client": 0.004, "proxy": 0.008, "ingress": 0.015, "generator": 0.010, "store": 0.012}
    per_chunk = {"client": 0.0004, "proxy": 0.0009, "ingress": 0.0015, "generator": 0.002}
    long = {r: v + 28 * per_chunk.get(r, 0.0) for r, v in per_turn.items()}
    short = {r: v + 2 * per_chunk.get(r, 0.0) for r, v in per_turn.items()}
    turn, chunk = split_per_chunk(long, short, 28, 2)
    assert chunk == pytest.approx(per_chunk)
    assert turn == pytest.approx(per_turn)  # the store is off the stream: its figure stays whole
    with pytest.raises(ValueError, match="chunks"):
        split_per_chunk(long, short, 2.5, 2)


def test_fitted_path_gives_back_both_calibration_lengths():
    """With a short-answer level the fit reproduces the long level's TTFT, answer time and lag
    and the short level's answer time; the Generator's per-chunk work excludes the model's step."""
    p = measured_like()
    step_cpu = 0.001
    model = {"decode_step_s": p.decode_step_s, "prefill_s": p.prefill_s, "consolidate_s": p.consolidate_s,
             "cpu_s": {"prefill": {1: 0.004}, "decode_step": {1: step_cpu}, "consolidate": {1: 0.002}}}
    model_turn = {tokens: 0.004 + (tokens + 1) * step_cpu for tokens in (24, 2)}
    cpu_long = {"client": 0.012, "proxy": 0.030, "ingress": 0.060, "store": 0.010, "updater": 0.011,
                "generator": 0.010 + 24 * 0.002 + model_turn[24]}
    cpu_short = {"client": 0.006, "proxy": 0.012, "ingress": 0.024, "store": 0.010, "updater": 0.011,
                 "generator": 0.010 + 2 * 0.002 + model_turn[2]}
    level = {"ttft": {"excluding_wait": {"p50_s": 0.040}}, "answer": {"p50_s": 0.200},
             "update_lag": {"p50_s": 0.030}, "tokens": {"chunks_per_turn_mean": 24}}
    short = {"cpu_per_turn": cpu_short, "chunks": 2, "answer_steps": 3}
    first = ServingPath(**fit_serving_path(model, cpu_long, level, answer_steps=25, k=1.0, cores=2, short=short))
    assert first.chunk_s["generator"] == pytest.approx(0.002)
    assert first.chunk_s["ingress"] == pytest.approx(0.036 / 22)
    assert first.generator_io_s == pytest.approx(0.010)
    w = Workload(sessions=1, think_time_s=0.3, answer_tokens=24, turns=6)
    w_short = dataclasses.replace(w, answer_tokens=2)
    q = fit_to_calibration(dataclasses.replace(p, path=first), w, 0.040, 0.200, 0.030, short=(w_short, 0.070, [2]))
    long_run, short_run = simulate(q, w), simulate(q, w_short)
    assert long_run["ttft_p50_s"] == pytest.approx(0.040, rel=0.02)
    assert long_run["answer_p50_s"] == pytest.approx(0.200, rel=0.02)
    assert long_run["update_lag_p50_s"] == pytest.approx(0.030, rel=0.02)
    assert short_run["answer_p50_s"] == pytest.approx(0.070, rel=0.05)
    assert q.path.chunk_latency_s > 0


def test_the_fitted_wake_weight_gives_back_the_busy_levels_update_lag():
    """``fit_wake_weight`` finds the weight with which the busy calibration level simulates to
    its measured update lag: the lag a profile simulated with weight 16 came back at is fitted
    to 16, and that lag is longer than equal sharing's (the update's pieces go ahead of the
    decoding thread)."""
    from rxt_dist.eval.calibrate import fit_wake_weight

    base = measured_like()
    many = Workload(sessions=12, think_time_s=0.0, answer_tokens=6, turns=4)
    answers = [4, 6, 8]
    favoured = dataclasses.replace(base, path=dataclasses.replace(base.path, wake_weight=16.0))
    measured = simulate(favoured, many, answer_tokens=answers, rounds=2)["update_lag_p50_s"]
    weight, lags = fit_wake_weight(base, many, answers, measured, rounds=2)
    assert weight == 16.0, lags
    assert lags[1.0] < measured, lags
    with pytest.raises(ValueError, match="wake_weight=0"):
        ServingPath(wake_weight=0.0)


def test_the_wake_weight_fitted_to_the_decoding_slowdown_gives_it_back():
    """``fit_wake_weight_to_decoding`` picks the weight whose simulated busy level slows the
    decoding thread (its iterations' wall over their work alone) as much as measured: a larger
    weight gives the serving processes' pieces more of the cores and the decoding thread less,
    one below 1 the decoding thread more than equal sharing does (the slowdowns measured on
    this project's VMs sit below equal sharing's)."""
    from rxt_dist.eval.calibrate import fit_wake_weight_to_decoding

    base = measured_like()
    many = Workload(sessions=12, think_time_s=0.0, answer_tokens=6, turns=4)

    def slowdown(weight: float) -> float:
        p = dataclasses.replace(base, path=dataclasses.replace(base.path, wake_weight=weight))
        busy = simulate(p, many, answer_tokens=[4, 6, 8], rounds=2)["busy"]
        return busy["decode_tick_s"] / busy["decode_tick_alone_s"]

    assert 1.0 < slowdown(0.25) < slowdown(1.0) < slowdown(16.0)
    weight, simulated = fit_wake_weight_to_decoding(base, many, [4, 6, 8], slowdown(16.0), rounds=2)
    assert weight == 16.0, simulated
    weight, simulated = fit_wake_weight_to_decoding(base, many, [4, 6, 8], slowdown(0.25), rounds=2)
    assert weight == 0.25, simulated
    with pytest.raises(ValueError, match="slowdown"):
        fit_wake_weight_to_decoding(base, many, [4, 6, 8], 0.0, rounds=2)


def test_the_wake_wait_fitted_to_the_decoding_hops_gives_them_back():
    """``fit_wake_wait`` picks the wait for a core whose simulated busy level makes the
    Generator's hops between its event loop and its decoding thread (an iteration's wall less
    its model work's) as long as measured: processor sharing alone makes them short, a wait
    lengthens them, and the wait a profile simulated with is given back."""
    from rxt_dist.eval.calibrate import WAKE_WAITS_S, fit_wake_wait

    base = measured_like()
    many = Workload(sessions=12, think_time_s=0.0, answer_tokens=6, turns=4)

    def hops(wait: float) -> float:
        p = dataclasses.replace(base, path=dataclasses.replace(base.path, wake_wait_s=wait))
        busy = simulate(p, many, answer_tokens=[4, 6, 8], rounds=2)["busy"]
        return busy["decode_iteration_s"] - busy["decode_tick_s"]

    assert 0.002 in WAKE_WAITS_S and 0.0 in WAKE_WAITS_S
    assert hops(0.0) < hops(0.002) / 3
    wait, simulated = fit_wake_wait(base, many, [4, 6, 8], hops(0.002), rounds=2)
    assert wait == 0.002, simulated
    wait, simulated = fit_wake_wait(base, many, [4, 6, 8], hops(0.0), rounds=2)
    assert wait == 0.0, simulated
    with pytest.raises(ValueError, match="hops"):
        fit_wake_wait(base, many, [4, 6, 8], 0.0, rounds=2)


def test_the_decoding_threads_own_work_splits_into_per_iteration_and_per_admission():
    """``decoding_thread_work`` reads the loop's counters of a long-answer and a short-answer
    level: what the thread spent beyond its prefills and steps is iterations × tick + admitted ×
    admit; two levels give both back; one level (or a split that comes out negative) puts it all
    per iteration; no counters, nothing."""
    from rxt_dist.eval.calibrate import decoding_thread_work

    cpu = {"prefill": {1: 0.0013}, "decode_step": {1: 0.0005}}
    tick, admit = 0.0003, 0.0012

    def level(turns: int, steps_per_turn: int) -> dict:
        iterations, steps = turns * (steps_per_turn + 1), turns * steps_per_turn
        used = turns * (0.0013 + admit) + steps * 0.0005 + iterations * tick
        return {"iterations": iterations, "steps": steps, "admitted": turns, "tick_cpu_mean_s": used / iterations}

    long, short = level(34, 25), level(34, 2)
    assert decoding_thread_work(cpu, long, short) == pytest.approx((tick, admit))
    alone = decoding_thread_work(cpu, long, None)
    assert alone[1] == 0 and alone[0] == pytest.approx(tick + admit / 26)
    assert decoding_thread_work(cpu, None, short) == (0.0, 0.0)
    cheap_short = {**short, "tick_cpu_mean_s": 0.0001}  # less than its own model work: no split
    assert decoding_thread_work(cpu, long, cheap_short) == alone


def test_the_pooled_wake_weight_fits_many_runs_where_each_run_alone_follows_its_noise():
    """``pooled_wake_weight`` keeps the weight whose simulated lags are nearest the measured
    ones over all runs (root mean square of the log ratio), where a run read low or high alone
    picks a weight at the end of the grid; bad input is refused by name."""
    from rxt_dist.eval.calibrate import pooled_wake_weight

    simulated = {1.0: 0.060, 4.0: 0.090, 16.0: 0.100}  # the lag each weight simulates
    runs = [(measured, simulated) for measured in (0.062, 0.093, 0.088, 0.104, 0.091)]
    best, errors = pooled_wake_weight(runs)
    assert best == 4.0, errors
    assert list(errors) == [1.0, 4.0, 16.0]
    assert errors[4.0] == pytest.approx(math.sqrt(sum(math.log(0.090 / m) ** 2 for m, _ in runs) / len(runs)))
    alone = [pooled_wake_weight([run])[0] for run in runs]
    assert alone == [1.0, 4.0, 4.0, 16.0, 4.0]
    assert pooled_wake_weight([runs[0]])[1][1.0] == pytest.approx(abs(math.log(0.060 / 0.062)))
    with pytest.raises(ValueError, match="no calibration runs"):
        pooled_wake_weight([])
    with pytest.raises(ValueError, match="share no weight"):
        pooled_wake_weight([(0.09, {1.0: 0.06}), (0.09, {4.0: 0.09})])
    with pytest.raises(ValueError, match="must be > 0"):
        pooled_wake_weight([(0.0, simulated)])


def test_the_wake_weight_command_pools_stored_profiles_and_names_what_it_skipped(tmp_path, capsys):
    """``jobs/capacity.py wake-weight`` reads each profile's busy-level lags per weight, pools
    them and prints the weight; a profile without a busy level is skipped by name; a weight
    of 0 or below given to ``check`` is refused before anything runs."""
    from jobs.capacity import main
    from rxt_dist.eval.report import write_json_atomic

    names = []
    for i, measured in enumerate((0.062, 0.093, 0.088, 0.104)):
        extra = {"calibration": {"many": {"update_lag_p50_s": measured, "tokens": [8, 8]}},
                 "wake_weight_lags_s": {"1": 0.060, "4": 0.090, "16": 0.100}}
        names.append(str(tmp_path / f"p{i}.json"))
        write_json_atomic(names[-1], dataclasses.replace(profile(), extra=extra).to_dict())
    write_json_atomic(tmp_path / "old.json", profile().to_dict())
    main(["wake-weight", "--profiles", *names, str(tmp_path / "old.json")])
    out = capsys.readouterr().out
    assert "skipped 1 profile(s)" in out and "old.json" in out
    assert "pooled over 4 calibration(s): 4 (--wake-weight 4)" in out
    with pytest.raises(SystemExit):
        main(["check", "--wake-weight", "0"])
    assert "--wake-weight: '0': give 'fit' or a number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--refit", "--wake-wait", "-0.001"])
    assert "--wake-wait: '-0.001': give 'fit' or seconds ≥ 0" in capsys.readouterr().err
    for bad in ("-8", "many"):
        with pytest.raises(SystemExit):
            main(["profile", "--warm-up-turns", bad])
        assert f"--warm-up-turns: '{bad}': give a whole number of turns ≥ 0" in capsys.readouterr().err


def test_fitted_sharing_gives_back_the_cpu_per_turn_of_the_busy_calibration_level():
    """``fit_fixed_shares`` finds the shares with which the busy calibration level (many sessions
    at once) simulates to its measured CPU per turn: the shares a profile was simulated with
    come back, and a process measured at its one-at-a-time cost shares nothing."""
    true = {"client": 0.6, "proxy": 0.4, "ingress": 0.3, "store": 0.8, "generator": 0.5, "updater": 0.7}
    base = measured_like()
    p = dataclasses.replace(base, path=dataclasses.replace(base.path, fixed_share=true))
    # 6 turns a session: with 4 the turns that overlap are too few to tell the proxy's share
    # (0.55 for 0.4) once an idle updater starts its batch at once
    many = Workload(sessions=8, think_time_s=0.05, answer_tokens=6, turns=6)
    answers = [4, 6, 8]
    measured = simulate(p, many, answer_tokens=answers)["cpu_s_per_turn"]
    fitted = fit_fixed_shares(base, many, answers, measured, rounds=1)
    assert set(fitted) == set(true)
    for role, share in true.items():
        assert fitted[role] == pytest.approx(share, abs=0.12), role  # a few turns overlap: loosely identified
    again = dataclasses.replace(base, path=dataclasses.replace(base.path, fixed_share=fitted))
    got = simulate(again, many, answer_tokens=answers)["cpu_s_per_turn"]
    for role in true:
        assert got[role] == pytest.approx(measured[role], rel=0.05), role
    alone = simulate(dataclasses.replace(base, path=dataclasses.replace(base.path, fixed_share={r: 1.0 for r in true})),
                     many, answer_tokens=answers)["cpu_s_per_turn"]
    assert fit_fixed_shares(base, many, answers, alone, rounds=1)["ingress"] == pytest.approx(1.0, abs=0.01)


def test_the_jitter_fitted_to_a_quiet_level_gives_back_its_spread_of_first_tokens():
    """``fit_timing_cv`` finds the jitter with which one session's turns spread as measured:
    a profile simulated with a jitter of 0.5 yields TTFTs from which about 0.5 is fitted, and
    identical TTFTs fit no jitter at all."""
    from rxt_dist.eval.simulate import Graph

    p = measured_like()
    w = Workload(sessions=1, think_time_s=0.3, answer_tokens=6, turns=32)
    samples = []
    for seed in range(4):
        g = Graph(dataclasses.replace(p, timing_cv=0.5), w, Replicas(), seed=seed)
        g.run()
        samples += [r.ttft_s for r in g.records]
    assert fit_timing_cv(p, w, [6], samples) == pytest.approx(0.5, abs=0.15)
    assert fit_timing_cv(p, w, [6], [0.05] * 32) == pytest.approx(0.0, abs=0.01)


def test_the_short_calibration_level_is_left_out_where_it_cannot_tell_chunks_from_turns():
    """The profile command and ``compare --refit`` fit the same: the capped-answer level
    enters the fit only when its answers came in at least one chunk fewer than the long ones
    (and only when it was recorded)."""
    from rxt_dist.eval.profile_fit import short_calibration

    long = Workload(sessions=1, think_time_s=0.3, answer_tokens=30, turns=30)
    short = {"tokens": [2, 2, 1], "answer_tokens": 1.7, "answer_p50_s": 0.02, "chunks": 2.0, "long_chunks": 20.0}
    w, answer_s, tokens = short_calibration(long, short)
    assert (w.answer_tokens, w.turns, answer_s, tokens) == (2, 30, 0.02, [2, 2, 1])
    assert short_calibration(long, {**short, "long_chunks": 2.5}) is None
    assert short_calibration(long, None) is None
    assert short_calibration(long, {k: v for k, v in short.items() if k != "long_chunks"}) is not None


def test_the_consolidating_threads_own_work_moves_from_the_updaters_loop_into_the_consolidation():
    """Level B's consolidating thread spent 1.5× the profile's consolidation: that CPU leaves the
    updater's work outside the model (per update and per batch, as level A and B had it) and
    joins the consolidation, the CPU per update at both levels unchanged."""
    cpu = {"consolidate": {"1": 0.002, "2": 0.003, "4": 0.005}}
    many = {"update_batches": {"mean": 2.0, "consolidate_cpu_mean_s": 0.0045}}
    path = ServingPath(updater_item_s=0.004, updater_batch_s=0.002, other_load=1.0)  # × k = 2
    moved = with_consolidating_thread(path, cpu, many)
    assert moved.consolidate_thread_factor == pytest.approx(1.5)

    def per_update(p: ServingPath, b: float, model: float) -> float:  # one core's seconds, as fitted
        return (p.updater_item_s + p.updater_batch_s / b) / 2 + p.consolidate_thread_factor * model / b

    assert per_update(moved, 1, 0.002) == pytest.approx(per_update(path, 1, 0.002))  # level A
    assert per_update(moved, 2, 0.003) == pytest.approx(per_update(path, 2, 0.003))  # level B
    assert moved.updater_item_s < path.updater_item_s
    assert with_consolidating_thread(path, cpu, {}) == path  # no reading: as it was
    cheaper = {"update_batches": {"mean": 2.0, "consolidate_cpu_mean_s": 0.0025}}
    assert with_consolidating_thread(path, cpu, cheaper).consolidate_thread_factor == 1.0  # never below the profile


def test_the_update_calls_transit_is_fitted_from_the_answers_end_the_handover_included():
    """The simulated transit of an update call starts where the answer's end leaves the Ingress,
    so ``fit_sharing`` fits it to calibration level B's measured handover (the call's wait on the
    Ingress) and transit together: with 4 ms of handover and 16 of transit measured, simulating
    level B with the fitted profile gives 20 ms of transit back (16 when the handover is left out)."""
    from rxt_dist.eval.profile_fit import fit_sharing

    base = measured_like()
    many = Workload(sessions=8, think_time_s=0.05, answer_tokens=6, turns=4)
    answers = [4, 6, 8]
    played = simulate(base, many, answer_tokens=answers)
    level = {"sessions": many.sessions, "think_time_s": many.think_time_s, "turns": many.turns, "tokens": answers,
             "per_turn": played["cpu_s_per_turn"], "update_lag_p50_s": played["update_lag_p50_s"],
             "update_batches": {"transit_per_update_s": 0.016, "handover_per_update_s": 0.004}}
    fitted = fit_sharing(dataclasses.replace(base, extra={"calibration": {"many": level}}), wake_weight=1.0,
                         wake_wait_s=0.0)
    assert fitted.path.update_transit_per_turn_s > 0
    again = simulate(fitted, many, answer_tokens=answers, rounds=6, seed=0)["busy"]["update_transit_s"]
    assert again == pytest.approx(0.020, rel=0.08)
