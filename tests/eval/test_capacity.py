"""The capacity model and the serving-graph simulation (no Ray, no model: synthetic profiles)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time

import pytest

from rxt_dist.eval.calibrate import (
    fit_fixed_shares,
    fit_serving_path,
    fit_timing_cv,
    fit_to_calibration,
    split_per_batch,
    split_per_chunk,
    store_call_weights,
)
from rxt_dist.eval.capacity import (
    CostProfile,
    ServingPath,
    Workload,
    bounds,
    monotone,
    storage_traffic,
)
from rxt_dist.eval.plan import Usage, daily_users_workload, plan, simulate_share
from rxt_dist.eval.simulate import Replicas, simulate

STEP, PREFILL, CONSOLIDATE = 0.004, 0.010, 0.020


def profile(path: ServingPath | None = None, cv: float = 0.0, **tables) -> CostProfile:
    """A deterministic profile: flat costs unless a table is given."""
    return CostProfile(
        source="test", model={}, query_tokens=48, answer_tokens=8,
        decode_step_s=tables.get("decode_step_s", {1: STEP, 64: STEP}),
        prefill_s=tables.get("prefill_s", {1: PREFILL, 64: PREFILL}),
        prefill_length_s={16: 0.005, 48: 0.010, 256: 0.040},
        consolidate_s=tables.get("consolidate_s", {1: CONSOLIDATE, 64: CONSOLIDATE}),
        stm_bytes={"float32": 786_536, "bfloat16": 393_320},
        path=path or ServingPath(update_batch_wait_s=0.0, cores=1e9), timing_cv=cv)


def test_one_session_without_contention_ttft_is_prefill_plus_overhead():
    path = ServingPath(request_latency_s=0.003, store_op_s=0.001, update_batch_wait_s=0.0, cores=1e9)
    r = simulate(profile(path), Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=4), stops_early=False)
    assert r["ttft_p50_s"] == pytest.approx(0.003 + 0.001 + PREFILL, rel=1e-9)
    assert r["ttft_p99_s"] == pytest.approx(r["ttft_p50_s"], rel=1e-9)
    # 7 more tokens, one step each, then the turn is recorded (one store call)
    assert r["answer_p50_s"] == pytest.approx(r["ttft_p50_s"] + 7 * STEP + 0.001, rel=1e-9)
    assert r["waited_share"] == 0
    # each process's work per turn, as the check compares it with the real processes' CPU time:
    # the store's four calls, the Generator's prefill and steps, the updater's consolidation
    cpu = r["cpu_s_per_turn"]
    assert cpu["store"] == pytest.approx(4 * 0.001, rel=1e-9)
    assert cpu["generator"] == pytest.approx(PREFILL + 7 * STEP, rel=1e-9)
    assert cpu["updater"] == pytest.approx(CONSOLIDATE, rel=1e-9)


def test_each_store_call_costs_its_measured_weight():
    """A claim on the way to the first token, a record before the end, a read and a commit in
    the update: each at ``store_op_s`` × its weight (from their CPU timed alone, mean 1)."""
    weights = store_call_weights({"claim": 0.001, "record": 0.003, "read": 0.001, "commit": 0.003})
    assert weights == pytest.approx({"claim": 0.5, "record": 1.5, "read": 0.5, "commit": 1.5})
    assert store_call_weights({"claim": 0.001}) == {}  # incomplete: equal costs

    def run(weight: dict[str, float]) -> dict:
        path = ServingPath(store_op_s=0.004, store_call_weight=weight, update_batch_wait_s=0.0, cores=1e9)
        return simulate(profile(path), Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=4),
                        stops_early=False)

    even, weighted = run({}), run(weights)
    assert weighted["ttft_p50_s"] == pytest.approx(even["ttft_p50_s"] - 0.002, rel=1e-9)
    assert weighted["answer_p50_s"] == pytest.approx(even["answer_p50_s"], rel=1e-9)  # −0.002 + 0.002
    assert weighted["update_lag_p50_s"] == pytest.approx(even["update_lag_p50_s"], rel=1e-9)


def test_next_turn_waits_for_the_previous_update():
    """No think time: turn t+1 arrives as turn t's update starts and waits all of it."""
    r = simulate(profile(), Workload(sessions=1, think_time_s=0.0, answer_tokens=4, turns=5), stops_early=False)
    assert r["update_lag_p50_s"] == pytest.approx(CONSOLIDATE, rel=1e-9)
    assert r["waited_share"] == pytest.approx(4 / 5)  # every turn but the first
    assert r["ttft_p99_s"] == pytest.approx(CONSOLIDATE + PREFILL, rel=1e-9)


def test_throughput_saturates_at_the_batch_cost_limit():
    """Far more sessions than batch rows: tokens/s → max_batch_size / step time."""
    path = ServingPath(update_batch_wait_s=0.0, cores=1e9, max_batch_size=16)
    p = profile(path, prefill_s={1: 1e-6, 64: 1e-6}, consolidate_s={1: 1e-6, 64: 1e-6})
    r = simulate(p, Workload(sessions=64, think_time_s=0.0, answer_tokens=32, turns=4), stops_early=False)
    assert r["tokens_per_s"] == pytest.approx(16 / STEP, rel=0.03)


def test_an_update_batch_gathers_its_store_calls():
    """An update's work outside the model is its three Ray calls (receipt, read, commit); the
    batch issues its reads together and its commits together, so the part of each call's work
    off the replica's event loop overlaps the others' and only the part on it queues."""
    def lag(sessions: int, serial: float) -> float:
        path = ServingPath(updater_item_s=0.030, update_batch_wait_s=0.0, cores=1e9, serial_share={"updater": serial})
        w = Workload(sessions=sessions, think_time_s=1.0, answer_tokens=4, turns=3)
        return simulate(profile(path), w, stops_early=False)["update_lag_p50_s"]

    assert lag(1, 1.0) == pytest.approx(0.030 + CONSOLIDATE, rel=1e-9)
    # 8 and 16 sessions make batches of 4 and 8 updates (their answers end a step apart):
    # with nothing on the event loop a batch of 8 takes as long as a batch of 4 ...
    assert lag(16, 0.0) == pytest.approx(lag(8, 0.0), rel=1e-9)
    # ... with everything on it, the calls of a batch queue one after another
    assert lag(16, 1.0) > lag(8, 1.0) + 4 * 2 * 0.010


def test_an_updater_that_keeps_its_stms_reads_each_session_once():
    """With ``updater_read_share`` below 1 (the calibration saw the updater hold most STMs), a
    simulated updater reads the store only for a session it does not hold: its first update.
    ``updater_item_s`` is then split over 2 + that share calls, and a held update skips one."""
    def run(share: float) -> dict:
        path = ServingPath(store_op_s=0.001, updater_item_s=0.030, updater_read_share=share, update_batch_wait_s=0.0,
                           cores=1e9)
        return simulate(profile(path), Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=4),
                        stops_early=False)

    reads_all, keeps = run(1.0), run(0.25)
    assert reads_all["cpu_s_per_turn"]["store"] == pytest.approx(4 * 0.001, rel=1e-9)
    assert keeps["cpu_s_per_turn"]["store"] == pytest.approx((4 * 3 + 1) * 0.001 / 4, rel=1e-9)
    assert reads_all["update_lag_p50_s"] == pytest.approx(0.030 + 2 * 0.001 + CONSOLIDATE, rel=1e-9)
    assert keeps["update_lag_p50_s"] == pytest.approx(2 * 0.030 / 2.25 + 0.001 + CONSOLIDATE, rel=1e-9)
    with pytest.raises(ValueError, match="updater_read_share"):
        ServingPath(updater_read_share=1.5)


def measured_like() -> CostProfile:
    """Shaped like this machine's profile: costs that grow with the batch, a serving path that
    costs more than the model, two shared cores."""
    path = ServingPath(client_s=0.009, proxy_s=0.017, ingress_s=0.032, store_op_s=0.003, generator_io_s=0.013,
                       updater_item_s=0.011, in_share=0.35, out_share=0.1, cores=2, other_load=0.5,
                       serial_share={"client": 0.5, "proxy": 0.5, "ingress": 0.6, "store": 0.9, "generator": 0.5,
                                     "updater": 0.6})
    return profile(path, decode_step_s={1: 0.0013, 8: 0.0024, 32: 0.0047, 64: 0.0074},
                   prefill_s={1: 0.006, 8: 0.034, 32: 0.13}, consolidate_s={1: 0.003, 16: 0.08})


def test_more_sessions_wait_longer_for_their_first_token():
    p = measured_like()
    ttft = [simulate(p, Workload(sessions=s, answer_tokens=6, turns=6))["ttft_p50_s"] for s in (1, 8, 32)]
    assert ttft[0] < ttft[1] < ttft[2]


def test_jitter_is_seeded_and_widens_the_tail():
    w = Workload(sessions=4, think_time_s=0.05, answer_tokens=6, turns=10)
    a, b = simulate(profile(cv=0.5), w, seed=1), simulate(profile(cv=0.5), w, seed=1)
    assert a == b
    assert a["ttft_p99_s"] > simulate(profile(cv=0.0), w)["ttft_p99_s"]


def test_more_replicas_lower_the_ttft_of_a_busy_deployment():
    p = dataclasses.replace(measured_like(), path=dataclasses.replace(measured_like().path, cores=1e9))
    w = Workload(sessions=96, think_time_s=0.0, answer_tokens=6, turns=4)
    one = simulate(p, w, Replicas(generators=1))
    three = simulate(p, w, Replicas(generators=3, updaters=3, ingress=3, store_shards=3))
    assert three["ttft_p50_s"] < one["ttft_p50_s"]


def test_plan_meets_the_slo_in_simulation_with_the_fewest_generators():
    p = measured_like()
    w = Workload(sessions=400, think_time_s=2.0, answer_tokens=16, turns=3)
    out = plan(p, w, slo_ttft_p99_s=0.25)
    assert out["feasible"]
    assert out["ttft_p99_s"] <= 0.25
    assert simulate_share(p, w, out["generators"])["ttft_p99_s"] <= 0.25
    if out["generators"] > 1:
        fewer = simulate_share(p, w, out["generators"] - 1)
        assert fewer["ttft_p99_s"] > 0.25 or max(fewer["busy"]["generator_occupancy"]) > 0.7


def test_plan_refuses_an_slo_below_one_unloaded_query():
    out = plan(measured_like(), Workload(sessions=10, think_time_s=1.0), slo_ttft_p99_s=0.001)
    assert not out["feasible"] and "alone" in out["reason"]


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


def test_an_answer_streams_one_chunk_at_a_time():
    """Chunks whose way out (Ingress, proxy, client) costs more than a decoding step set the
    answer's pace: each waits for the one before it, the first is the TTFT."""
    front = {"ingress": 0.005, "proxy": 0.003, "client": 0.002}
    path = ServingPath(update_batch_wait_s=0.0, cores=1e9, chunk_s={"generator": 0.001, **front})
    r = simulate(profile(path), Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=3), stops_early=False)
    assert r["ttft_p50_s"] == pytest.approx(PREFILL + 0.001 + 0.010, rel=1e-9)
    assert r["answer_p50_s"] == pytest.approx(r["ttft_p50_s"] + 7 * 0.010, rel=1e-9)
    slow = dataclasses.replace(path, chunk_latency_s=0.002)
    r2 = simulate(profile(slow), Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=3), stops_early=False)
    # each chunk, and the end behind the last, waits the latency after the one before it
    assert r2["answer_p50_s"] == pytest.approx(r["answer_p50_s"] + 8 * 0.002, rel=1e-9)


def test_a_time_sliced_stream_sends_fewer_chunks_and_the_first_at_once():
    """``stream_interval_s``: the first token goes at once (same TTFT), the tokens decoded in
    each interval go together, so an answer whose chunks cost more than its steps ends sooner."""
    front = {"ingress": 0.005, "proxy": 0.003, "client": 0.002}
    path = ServingPath(update_batch_wait_s=0.0, cores=1e9, chunk_s={"generator": 0.001, **front})
    w = Workload(sessions=1, think_time_s=5.0, answer_tokens=8, turns=3)
    per_token = simulate(profile(path), w, stops_early=False)
    sliced = simulate(profile(dataclasses.replace(path, stream_interval_s=0.012)), w, stops_early=False)
    assert sliced["ttft_p50_s"] == pytest.approx(per_token["ttft_p50_s"], rel=1e-9)
    # the first token at 10 ms (prefill) leaves at once: read at 21 (1 ms Generator, 10 ms out);
    # steps end every 4 ms; chunks of 3, 3 and 1 tokens leave at 22 and 34 (the interval) and 38
    # (the last step), reach the Ingress at 23, 35, 39 (1 ms a chunk in the Generator, however
    # many tokens it holds) and go out once the one before is read: read at 33, 45, 55 ms
    assert sliced["ttft_p50_s"] == pytest.approx(0.021, rel=1e-9)
    assert sliced["answer_p50_s"] == pytest.approx(0.055, rel=1e-9)
    assert per_token["answer_p50_s"] == pytest.approx(0.021 + 7 * 0.010, rel=1e-9)
    assert sliced["answer_p50_s"] < per_token["answer_p50_s"]
    # a chunk budget of 1 / 0.012 a second, one answer open: the same 0.012 s interval; two
    # answers sharing it: 0.024 s each, fewer chunks, the first token still at once
    budget = dataclasses.replace(path, stream_chunks_per_s=1 / 0.012)
    alone = simulate(profile(budget), w, stops_early=False)
    assert alone["answer_p50_s"] == pytest.approx(sliced["answer_p50_s"], rel=1e-9)
    assert budget.stream_interval(2) == pytest.approx(0.024) and budget.stream_interval(0) == 0.0


def test_an_update_batch_pays_its_own_work_once():
    """``updater_batch_s`` is paid once per batch — half before the commits (in the update lag),
    half after them (the batch lasts it all, the lag does not) — ``updater_item_s`` once per
    update on receipt; two batch sizes tell them apart."""
    path = ServingPath(update_batch_wait_s=0.0, cores=1e9, updater_item_s=0.002, updater_batch_s=0.006)
    r = simulate(profile(path), Workload(sessions=1, think_time_s=0.5, answer_tokens=4, turns=3), stops_early=False)
    assert r["update_lag_p50_s"] == pytest.approx(0.002 + 0.003 + CONSOLIDATE, rel=1e-9)
    assert r["busy"]["update_batch_s"] == pytest.approx(0.006 + CONSOLIDATE, rel=1e-9)
    assert r["busy"]["update_read_s"] == pytest.approx(0.0, abs=1e-12)  # none of it before the reads
    item, batch = split_per_batch(0.008, 0.002 + 0.006 / 4, 4)
    assert (item, batch) == (pytest.approx(0.002), pytest.approx(0.006))
    assert split_per_batch(0.008, 0.0079, 1.05) == (0.008, 0.0)  # batches of one: all per update


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


def test_tables_are_made_monotone_and_checked():
    assert monotone({1: 5.0, 2: 9.0, 4: 3.0, 8: 4.0}) == {1: 3.0, 2: 3.0, 4: 3.0, 8: 4.0}
    p = profile()
    assert p.decode_step(0) == 0 and p.decode_step(100) == pytest.approx(STEP)
    assert p.prefill(1, 16) == pytest.approx(PREFILL * 0.5)
    with pytest.raises(ValueError, match="decode_step_s"):
        profile(decode_step_s={})
    with pytest.raises(ValueError, match="in_share"):
        ServingPath(in_share=0.8, out_share=0.5)
    assert CostProfile.from_dict(json_roundtrip(p.to_dict())) == p


def json_roundtrip(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def test_storage_traffic_counts_writes_and_ray_bytes():
    t = storage_traffic(profile(), turns_per_s=100.0, stored_sessions=1000)
    assert t["write_ops_per_s"] == 300 and t["delete_ops_per_s"] == 100
    assert t["ray_object_store_bytes_per_turn"] == 4 * 786_536  # above Ray's inline limit
    small = dataclasses.replace(profile(), stm_bytes={"float32": 32_888})
    assert storage_traffic(small, 1.0, 1)["ray_object_store_bytes_per_turn"] == 0


def test_daily_users_become_concurrent_sessions_by_littles_law():
    w = daily_users_workload(86_400, Usage(conversations_per_user=1, turns=10, think_time_s=9.0, peak_to_mean=1.0),
                             answer_s=1.0)
    assert w.sessions == 100  # 86,400 conversations/day × 100 s each / 86,400 s
    assert bounds(profile(), w)["turns_per_s"] == pytest.approx(w.sessions / (9.0 + bounds(profile(), w)["answer_unloaded_s"]))
    assert math.isfinite(bounds(profile(), w)["max_tokens_per_s_per_generator"])


def test_a_process_runs_its_serial_share_one_job_after_another_and_shares_the_cpu():
    from rxt_dist.eval.des import Server, Sim

    sim = Sim(seed=0, cv=0.0)
    done: dict[str, float] = {}
    serial, alongside, shared = Server(sim, serial=1.0), Server(sim, serial=0.0), Server(sim, serial=1.0, fixed=0.5)
    for name, server in (("s1", serial), ("s2", serial), ("a1", alongside), ("a2", alongside),
                         ("f1", shared), ("f2", shared)):
        server.do(0.010, lambda n=name: done.setdefault(n, sim.now))
    sim.run()
    assert done["s1"] == pytest.approx(0.010) and done["s2"] == pytest.approx(0.020)
    assert done["a1"] == pytest.approx(0.010) and done["a2"] == pytest.approx(0.010)
    # the second job arrives while the first is in the process: half its work is shared
    assert done["f2"] == pytest.approx(0.010 + 0.010 * (0.5 + 0.5 / 2))

    one_core = Sim(seed=0, cv=0.0, speed=ServingPath(cores=1, other_load=0.0).speed)
    ends: list[float] = []
    for _ in range(2):
        Server(one_core, serial=0.0).do(0.010, lambda: ends.append(one_core.now))
    one_core.run()
    assert ends == pytest.approx([0.020, 0.020])  # two busy jobs on one core: each at half speed


def test_the_cpu_favours_short_pieces_over_the_models_work_by_their_weight():
    """With ``wake_weight`` W a piece of a serving process shares a core W : 1 with a hog (the
    decoding thread), never faster than alone; equal weights share equally; two cores give each
    of two jobs one."""
    from rxt_dist.eval.des import Sim

    def ends(weight: float, cores: float, hogs: int, pieces: int) -> tuple[list[float], list[float]]:
        sim = Sim(seed=0, cv=0.0, speed=ServingPath(cores=cores, other_load=0.0).speed, wake_weight=weight)
        hog_ends: list[float] = []
        piece_ends: list[float] = []
        for _ in range(hogs):
            sim.cpu.run(0.010, lambda: hog_ends.append(sim.now), hog=True)
        for _ in range(pieces):
            sim.cpu.run(0.010, lambda: piece_ends.append(sim.now))
        sim.run()
        return hog_ends, piece_ends

    hog, piece = ends(3.0, cores=1, hogs=1, pieces=1)
    assert piece == pytest.approx([0.010 / 0.75]) and hog == pytest.approx([0.020])  # 3 : 1, then alone
    hog, piece = ends(1.0, cores=1, hogs=1, pieces=1)
    assert piece == pytest.approx([0.020]) and hog == pytest.approx([0.020])
    hog, piece = ends(1000.0, cores=2, hogs=1, pieces=1)
    assert piece == pytest.approx([0.010]) and hog == pytest.approx([0.010])  # a core each: no one waits
    hog, piece = ends(1000.0, cores=2, hogs=2, pieces=2)
    assert piece == pytest.approx([0.010, 0.010], rel=1e-2) and hog == pytest.approx([0.020, 0.020], rel=1e-2)


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
    with pytest.raises(ValueError, match="wake_weight"):
        ServingPath(wake_weight=0.5)


def test_the_update_calls_transit_grows_with_the_turns_in_flight_and_is_fitted_back():
    """``update_transit_per_turn_s`` delays each update call by that much per other turn in
    flight when it leaves: nothing for a lone session, about (S − 1) × it for S sessions that
    never think; the update lag grows with it; ``fit_update_transit`` gives back the value a
    level's transit was simulated with."""
    from rxt_dist.eval.calibrate import fit_update_transit

    base = measured_like()

    def with_transit(per_turn: float) -> CostProfile:
        return dataclasses.replace(base, path=dataclasses.replace(base.path, update_transit_per_turn_s=per_turn))

    alone = Workload(sessions=1, think_time_s=0.0, answer_tokens=6, turns=6)
    assert (simulate(with_transit(0.002), alone)["busy"]["update_transit_s"]
            == pytest.approx(simulate(base, alone)["busy"]["update_transit_s"]))
    many = Workload(sessions=8, think_time_s=0.0, answer_tokens=6, turns=6)
    plain, slow = simulate(base, many), simulate(with_transit(0.002), many)
    added = slow["busy"]["update_transit_s"] - plain["busy"]["update_transit_s"]
    assert 0.002 * 3 < added <= 0.002 * 7 + 1e-9, added  # turns in flight at the hand-over: at most the 7 others
    assert slow["update_lag_p50_s"] > plain["update_lag_p50_s"]
    fitted = fit_update_transit(base, many, [6], slow["busy"]["update_transit_s"], rounds=1)
    assert fitted == pytest.approx(0.002, rel=0.1)


def test_the_wake_weight_fitted_to_the_decoding_slowdown_gives_it_back():
    """``fit_wake_weight_to_decoding`` picks the weight whose simulated busy level slows the
    decoding thread (its iterations' wall over their work alone) as much as measured: a larger
    weight gives the serving processes' pieces more of the cores and the decoding thread less."""
    from rxt_dist.eval.calibrate import fit_wake_weight_to_decoding

    base = measured_like()
    many = Workload(sessions=12, think_time_s=0.0, answer_tokens=6, turns=4)

    def slowdown(weight: float) -> float:
        p = dataclasses.replace(base, path=dataclasses.replace(base.path, wake_weight=weight))
        busy = simulate(p, many, answer_tokens=[4, 6, 8], rounds=2)["busy"]
        return busy["decode_tick_s"] / busy["decode_tick_alone_s"]

    assert 1.0 < slowdown(1.0) < slowdown(16.0)
    weight, simulated = fit_wake_weight_to_decoding(base, many, [4, 6, 8], slowdown(16.0), rounds=2)
    assert weight == 16.0, simulated
    with pytest.raises(ValueError, match="slowdown"):
        fit_wake_weight_to_decoding(base, many, [4, 6, 8], 0.0, rounds=2)


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
    below 1 given to ``check`` is refused before anything runs."""
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
        main(["check", "--wake-weight", "0.5"])
    assert "--wake-weight: '0.5': give 'fit' or a number ≥ 1" in capsys.readouterr().err
    for bad in ("-8", "many"):
        with pytest.raises(SystemExit):
            main(["profile", "--warm-up-turns", bad])
        assert f"--warm-up-turns: '{bad}': give a whole number of turns ≥ 0" in capsys.readouterr().err


def test_jobs_of_one_turn_share_no_wake_up_and_jobs_of_two_turns_do():
    """``fixed_share`` is a sharing between turns: a stream's chunks (jobs of one turn in the
    process at once) each cost their whole work; a second turn's job shares the wake-up."""
    from rxt_dist.eval.des import Server, Sim

    done: dict[str, float] = {}
    for name, owners in (("one turn", ("t", "t")), ("two turns", ("t", "u"))):
        sim = Sim(seed=0, cv=0.0)
        server = Server(sim, serial=1.0, fixed=0.5)
        for owner in owners:
            server.do(0.010, lambda n=name: done.__setitem__(n, sim.now), owner)
        sim.run()
    assert done["one turn"] == pytest.approx(0.020)
    assert done["two turns"] == pytest.approx(0.010 + 0.010 * (0.5 + 0.5 / 2))


def test_fitted_sharing_gives_back_the_cpu_per_turn_of_the_busy_calibration_level():
    """``fit_fixed_shares`` finds the shares with which the busy calibration level (many sessions
    at once) simulates to its measured CPU per turn: the shares a profile was simulated with
    come back, and a process measured at its one-at-a-time cost shares nothing."""
    true = {"client": 0.6, "proxy": 0.4, "ingress": 0.3, "store": 0.8, "generator": 0.5, "updater": 0.7}
    base = measured_like()
    p = dataclasses.replace(base, path=dataclasses.replace(base.path, fixed_share=true))
    many = Workload(sessions=8, think_time_s=0.05, answer_tokens=6, turns=4)
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


def test_a_round_ends_when_its_last_update_is_seen_committed():
    """The serving benchmark's client polls each session after its last turn until the update
    commits (at once, then every poll interval): a simulated round ends at that poll, one
    interval after the last answer when the update was still pending then."""
    p = measured_like()
    w = Workload(sessions=1, answer_tokens=6, turns=3)
    plain, polled = simulate(p, w), simulate(p, w, settle_poll_s=0.05)
    assert 0 < plain["update_lag_p50_s"] < 0.05
    assert polled["wall_s"] == pytest.approx(plain["wall_s"] + 0.05)
    assert polled["tokens_per_s"] < plain["tokens_per_s"]
    assert polled["ttft_p50_s"] == plain["ttft_p50_s"]


def test_every_serving_process_has_a_role():
    """The profile reads each role's CPU from the Ray workers' process titles (``ray::<class>``)."""
    from rxt_dist.eval.profile import PROCESS_ROLES
    from serve.store import StoreShard

    for cls in ("Ingress", "Generator", "MemoryUpdater", StoreShard.__name__):
        assert any(needle in f"ray::{cls}.method" for needle in PROCESS_ROLES), cls


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


def test_the_speed_probe_times_its_pieces_while_the_block_runs_and_then_stops():
    from rxt_dist.eval.profile import SpeedProbe

    with SpeedProbe(period_s=0.02) as probe:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # some work of this process meanwhile
            sum(i * i for i in range(1000))
    assert len(probe.pieces) >= 5
    assert all(0 < piece < 1.0 for piece in probe.pieces)
    assert min(probe.pieces) <= probe.median_s <= max(probe.pieces)
    assert probe._proc.poll() is not None  # the probe process has ended


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"),
                    reason="the scheduler's per-thread account (Linux /proc) is not available")
def test_thread_cpu_reads_the_schedulers_nanoseconds_not_clock_ticks():
    """A few milliseconds of one thread's work show up in ``thread_cpu`` as what the thread's
    own CPU clock says (clock ticks would read 0 or 10 ms), under its (pid, thread id)."""
    from rxt_dist.eval.profile import process_cpu, thread_cpu

    key, pids = (os.getpid(), threading.get_native_id()), {"here": [os.getpid()]}
    thread_cpu(pids)  # its imports done once
    reads = []
    for _ in range(5):
        outer0 = time.thread_time()
        before = thread_cpu(pids)["here"][key]
        inner0 = time.thread_time()
        while time.thread_time() < inner0 + 0.003:
            pass
        inner = time.thread_time() - inner0
        read = thread_cpu(pids)["here"][key] - before
        outer = time.thread_time() - outer0
        # at least the spin, at most the spin and the two readings' own work
        assert inner - 1e-4 <= read <= outer + 1e-4, (inner, read, outer)
        reads.append(read)
    assert any(abs(r / 0.01 - round(r / 0.01)) > 0.05 for r in reads), reads  # not whole ticks
    assert process_cpu(pids)["here"] >= thread_cpu(pids)["here"][key]


def test_the_update_lag_ends_at_the_commit_stamp_and_the_next_turn_waits_for_the_write():
    """The store stamps a commit's time before it writes the version (STM, then the meta that
    names it): the benchmark's update lag ends at the stamp, the session's next turn at the
    write's end."""
    path = ServingPath(store_op_s=0.004, update_batch_wait_s=0.0, cores=1e9)
    w = Workload(sessions=1, think_time_s=0.0, answer_tokens=4, turns=5)
    unmeasured = profile(path)
    measured = dataclasses.replace(unmeasured, storage={"float32": {"local_disk": {"write_s": 0.001}}})
    assert unmeasured.persist_s() == 0.0 and measured.persist_s() == pytest.approx(0.002)
    before, after = simulate(unmeasured, w, stops_early=False), simulate(measured, w, stops_early=False)
    assert after["update_lag_p50_s"] == pytest.approx(before["update_lag_p50_s"] - 0.002, rel=1e-9)
    assert after["ttft_p99_s"] == pytest.approx(before["ttft_p99_s"], rel=1e-9)  # waits for the whole commit
    assert after["waited_share"] == pytest.approx(4 / 5)


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


def test_the_speed_trace_is_the_probes_pieces_against_their_typical_time():
    """A piece that took twice the typical time is the machine at half speed; slow and fast
    stretches balance in log terms; too few pieces say nothing."""
    from rxt_dist.eval.capacity import MIN_TRACE_PIECES, speed_trace

    pieces = [0.002] * 20 + [0.004, 0.001]  # geometric mean 0.002
    trace = speed_trace(pieces)
    assert trace[:20] == [1.0] * 20 and trace[20] == 0.5 and trace[21] == 2.0
    assert math.isclose(sum(math.log(x) for x in trace), 0.0, abs_tol=1e-3)
    assert speed_trace([0.002] * (MIN_TRACE_PIECES - 1)) == []
    assert speed_trace([0.0, None] * 20) == []  # nothing measured


def test_the_machines_speed_slows_every_job_alike_from_the_moment_it_changes():
    from rxt_dist.eval.des import Sim

    sim = Sim(seed=0, cv=0.0)
    done: dict[str, float] = {}
    sim.cpu.run(0.010, lambda: done.__setitem__("a", sim.now))
    sim.after(0.004, lambda: sim.cpu.set_machine_speed(0.5))  # 4 ms at full speed, then half
    sim.run()
    assert done["a"] == pytest.approx(0.004 + 0.006 / 0.5)
    with pytest.raises(ValueError, match="machine speed 0"):
        sim.cpu.set_machine_speed(0)


def test_a_traced_machine_widens_the_tail_and_a_steady_trace_changes_nothing():
    """Slow stretches every process shares stretch the turns that fall in them together: the
    simulated TTFT tail grows with a trace that alternates slow and fast, and a trace of ones
    simulates what no trace does (the same seed)."""
    w = Workload(sessions=4, think_time_s=0.05, answer_tokens=6, turns=10)
    steady = simulate(profile(), w, seed=3)
    ones = simulate(dataclasses.replace(profile(), speed_trace=[1.0] * 30), w, seed=3)
    assert {k: ones[k] for k in ("ttft_p50_s", "ttft_p99_s", "tokens_per_s")} == pytest.approx(
        {k: steady[k] for k in ("ttft_p50_s", "ttft_p99_s", "tokens_per_s")})
    wavy = simulate(dataclasses.replace(profile(), speed_trace=([0.5] * 5 + [2.0] * 5) * 3), w, seed=3)
    assert wavy["ttft_p99_s"] > 1.2 * steady["ttft_p99_s"]


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
