"""The serving-graph simulation, rxt_dist/eval/simulate.py (no Ray, no model: synthetic profiles)."""

from __future__ import annotations

import dataclasses

import pytest

from rxt_dist.eval.calibrate import split_per_batch, store_call_weights
from rxt_dist.eval.capacity import CostProfile, ServingPath, Workload
from rxt_dist.eval.simulate import Replicas, simulate
from tests.eval.capacity_profiles import CONSOLIDATE, PREFILL, STEP, measured_like, profile


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
    # the store's event loop (all of its work serial here) had work for its four calls a turn,
    # never waiting for a core: as the check reads a real process's busiest thread
    store = r["event_loop_s_per_turn"]["store"]
    assert store["cpu_s"] == pytest.approx(4 * 0.001, rel=1e-9)
    assert store["wait_s"] == pytest.approx(0.0, abs=1e-9)


def test_a_busy_machine_makes_the_event_loops_wait_for_a_core():
    """The same work per turn at 1 and 32 sessions on two cores: at 32 the Ingress's event loop
    has work all the time and waits for a core about as long as it works, at 1 a third of that."""
    p = measured_like()
    per_turn, shares = {}, {}
    for sessions in (1, 32):
        r = simulate(p, Workload(sessions=sessions, answer_tokens=6, turns=6))
        per_turn[sessions] = loop = r["event_loop_s_per_turn"]["ingress"]
        shares[sessions] = (loop["cpu_s"] + loop["wait_s"]) * r["turns"] / r["wall_s"]  # of the time: had work
    assert per_turn[32]["cpu_s"] == pytest.approx(per_turn[1]["cpu_s"], rel=1e-6)  # the same work
    assert per_turn[32]["wait_s"] > 2 * per_turn[1]["wait_s"]
    assert per_turn[32]["wait_s"] > 0.8 * per_turn[32]["cpu_s"]
    assert shares[1] < 0.6 and shares[32] == pytest.approx(1.0, abs=0.02)


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
    """``updater_batch_s`` is paid once per batch — half as the commits start (on the event loop
    ahead of the commit calls: in the update lag and the batch's commit phase; its share off the
    event loop alongside the commits), half after them (the replies, while the batcher waits for
    the next: in neither) — ``updater_item_s`` once per update, a third on each of its calls
    (the receipt, the read and the commit inside the batch); two batch sizes tell them apart."""
    path = ServingPath(update_batch_wait_s=0.0, cores=1e9, updater_item_s=0.002, updater_batch_s=0.006)
    w = Workload(sessions=1, think_time_s=0.5, answer_tokens=4, turns=3)
    r = simulate(profile(path), w, stops_early=False)
    assert r["update_lag_p50_s"] == pytest.approx(0.002 + 0.003 + CONSOLIDATE, rel=1e-9)
    assert r["busy"]["update_batch_s"] == pytest.approx(2 * 0.002 / 3 + 0.003 + CONSOLIDATE, rel=1e-9)
    assert r["busy"]["update_read_s"] == pytest.approx(0.002 / 3, rel=1e-9)  # the read call's share only
    assert r["busy"]["update_consolidate_s"] == pytest.approx(CONSOLIDATE, rel=1e-9)
    assert r["busy"]["update_commit_s"] == pytest.approx(0.002 / 3 + 0.003, rel=1e-9)
    # half of each piece on the event loop: the commit waits for the batch work's half there only
    halves = simulate(profile(dataclasses.replace(path, serial_share={"updater": 0.5})), w, stops_early=False)
    assert halves["update_lag_p50_s"] == pytest.approx(0.002 + 0.0015 + CONSOLIDATE, rel=1e-9)
    item, batch = split_per_batch(0.008, 0.002 + 0.006 / 4, 4)
    assert (item, batch) == (pytest.approx(0.002), pytest.approx(0.006))
    assert split_per_batch(0.008, 0.0079, 1.05) == (0.008, 0.0)  # batches of one: all per update


def test_after_a_batch_the_next_waits_for_company_while_the_replies_go_out():
    """After a batch whose commits are answered with updates waiting, ``UpdateBatcher`` waits
    ``update_batch_wait_s`` for company while the replica's event loop sends the batch's replies
    (the half of its own work after its commits); the next batch starts when both are done (its
    ``gap_s``), at once when a full batch waits."""
    def gap(sessions: int, batch_s: float, wait_s: float = 0.005) -> float:  # one turn each: 4, then the rest
        path = ServingPath(update_batch_wait_s=wait_s, update_batch_size=4, cores=1e9, updater_batch_s=batch_s,
                           serial_share={"updater": 1.0})
        w = Workload(sessions=sessions, think_time_s=0.0, answer_tokens=4, turns=1)
        return simulate(profile(path), w, stops_early=False)["busy"]["update_gap_s"]

    assert gap(6, 0.006) == pytest.approx(0.005, rel=1e-9)  # the replies (3 ms) within the wait
    assert gap(6, 0.016) == pytest.approx(0.008, rel=1e-9)  # the wait's end queues behind the replies
    assert gap(8, 0.006) == pytest.approx(0.0, abs=1e-12)  # a full batch waiting does not wait
    # no wait for company (the application's default): the batcher takes the next batch without
    # yielding to its event loop, ahead of the replies
    assert gap(6, 0.016, wait_s=0.0) == pytest.approx(0.0, abs=1e-12)


def test_the_consolidating_threads_own_work_lengthens_the_consolidation():
    def lag(factor: float) -> float:
        path = ServingPath(update_batch_wait_s=0.0, cores=1e9, consolidate_thread_factor=factor)
        w = Workload(sessions=1, think_time_s=0.5, answer_tokens=4, turns=3)
        return simulate(profile(path), w, stops_early=False)["update_lag_p50_s"]

    assert lag(1.5) - lag(1.0) == pytest.approx(0.5 * CONSOLIDATE, rel=1e-9)


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


def test_a_poll_that_costs_its_measured_work_reaches_the_store_and_may_find_the_update_pending():
    """Measured polls (``poll_s``) are requests: the client asks through proxy and Ingress at the
    store, each paying its work, and the round ends when a poll's answer saying "committed" is
    back. A quick poll reaches the store while the update is pending and polls again one interval
    later; a slow one sees the commit the first time. Their work is the processes' too."""
    costs = {"client": 0.001, "proxy": 0.0005, "ingress": 0.002, "store": 0.0005}
    base = profile(ServingPath(store_op_s=0.001, update_batch_wait_s=0.0, cores=1e9))
    w = Workload(sessions=1, think_time_s=0.0, answer_tokens=4, turns=3)

    def with_polls(latency_s: float) -> CostProfile:
        return dataclasses.replace(base, path=dataclasses.replace(base.path, poll_s=costs, poll_latency_s=latency_s))

    free = simulate(base, w, settle_poll_s=0.05)  # pending at the last answer's end: one interval, then seen
    assert 0 < free["update_lag_p50_s"] < 0.05 and free["session_polls"] == 0
    trip = sum(costs.values())
    quick = simulate(with_polls(0.0), w, settle_poll_s=0.05)
    assert quick["session_polls"] == 2
    assert quick["wall_s"] == pytest.approx(free["wall_s"] + 2 * trip)  # poll, interval, poll
    for role in ("client", "proxy", "ingress", "store"):
        added = quick["cpu_s_per_turn"][role] - free["cpu_s_per_turn"][role]
        assert added == pytest.approx(2 * costs[role] / 3), role
    slow = simulate(with_polls(0.2), w, settle_poll_s=0.05)  # reaches the store after the commit
    assert slow["session_polls"] == 1
    assert slow["wall_s"] == pytest.approx(free["wall_s"] - 0.05 + trip + 0.2)
    assert slow["ttft_p50_s"] == quick["ttft_p50_s"] == free["ttft_p50_s"]
    with pytest.raises(ValueError, match="poll_s"):
        ServingPath(poll_s={"generator": 0.001})


def test_the_update_lag_ends_at_the_commit_stamp_and_the_next_turn_waits_for_the_write():
    """The store stamps a commit's time before it writes the version (STM, then the meta that
    names it): the benchmark's update lag ends at the stamp, the session's next turn at the
    write's end."""
    path = ServingPath(store_op_s=0.004, update_batch_wait_s=0.0, cores=1e9, request_latency_s=0.003)
    w = Workload(sessions=1, think_time_s=0.0, answer_tokens=4, turns=5)
    unmeasured = profile(path)
    measured = dataclasses.replace(unmeasured, storage={"float32": {"local_disk": {"write_s": 0.001}}})
    assert unmeasured.persist_s() == 0.0 and measured.persist_s() == pytest.approx(0.002)
    before, after = simulate(unmeasured, w, stops_early=False), simulate(measured, w, stops_early=False)
    assert after["update_lag_p50_s"] == pytest.approx(before["update_lag_p50_s"] - 0.002, rel=1e-9)
    assert after["ttft_p99_s"] == pytest.approx(before["ttft_p99_s"], rel=1e-9)  # waits for the whole commit
    assert after["waited_share"] == pytest.approx(4 / 5)
    # the store's counts, as a shard keeps them: four waiting turns, each of five commits released
    # a write after its stamp; a waiting turn arrives as long after the turn before was recorded
    # with the write as without it (the end's way out and the next request's way in)
    waits, unwritten = after["store_waits"], before["store_waits"]
    assert (waits["claims_waited"], waits["commits"]) == (4, 5)
    assert waits["commit_write_s"] == pytest.approx(0.002, rel=1e-9) and unwritten["commit_write_s"] == 0.0
    assert waits["claim_pending_age_s"] == pytest.approx(unwritten["claim_pending_age_s"], rel=1e-9)
    assert waits["claim_pending_age_s"] == pytest.approx(0.003, rel=1e-9)
    # as the benchmark's client splits it: the end's way out (nothing costs on it here) and the
    # request's way in (its latency), for every turn whose next turn waited and every request
    ways = after["between_turns"]
    assert ways["way_out"]["mean_s"] == pytest.approx(0.0, abs=1e-12)
    assert ways["way_in"]["p50_s"] == pytest.approx(0.003, rel=1e-9) == ways["way_in"]["mean_s"]


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
