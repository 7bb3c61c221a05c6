"""Fitting the serving path to a calibration run: its work per turn from the processes' CPU
time (:func:`fit_serving_path`), then its shares and latencies by simulating the calibration
workload until it gives back what was measured (:func:`fit_to_calibration`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rxt_dist.eval.capacity import STREAM_ROLES, CostProfile, ServingPath, Workload, _interp
from rxt_dist.eval.simulate import simulate


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 30) -> float:
    """x in [lo, hi] with f(x) ≈ target for an increasing f (an end when out of range)."""
    if f(hi) <= target:
        return hi
    if f(lo) >= target:
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def replayed(w: Workload, answer_tokens: Sequence[int] | None, rounds: int = 1) -> dict[str, Any]:
    """:func:`simulate`'s answer lengths for a calibration level of one session: the measured
    ones in their order (an ``answer_plan``, the same in every round) when there is one per timed
    turn, else drawn from them. Drawn, a level whose answers fall in two groups (the earlier demo
    model's level A: 15 of 1–4 tokens, 17 of 32) gets another mix with every change to the random
    stream, and its median answer — a fitting target — jumps between the groups."""
    if answer_tokens and w.sessions == 1 and len(answer_tokens) == w.turns:
        return {"answer_tokens": answer_tokens, "answer_plan": [[int(t)] * rounds for t in answer_tokens]}
    return {"answer_tokens": answer_tokens}


def fit_to_calibration(p: CostProfile, w: Workload, ttft_s: float, answer_s: float, lag_s: float,
                       answer_tokens: Sequence[int] | None = None,
                       short: tuple[Workload, float, Sequence[int]] | None = None) -> CostProfile:
    """The profile with the serving path's shares and fixed latencies chosen so that simulating
    the calibration workload ``w`` gives back its measured median TTFT, answer time and update
    lag. (A closed-form fit misses what overlaps: the decoding thread keeps stepping while the
    first token travels out, and both take the shared cores.) With ``short`` — the same
    workload with answers capped short, its measured median answer time and its answer
    lengths — the end-of-answer share and latency are fitted to the short answers and the
    latency per chunk to the long ones: what a turn costs apart from its length, and what each
    streamed token adds."""
    path = dataclasses.replace(p.path, request_latency_s=0.0, stream_latency_s=0.0, chunk_latency_s=0.0,
                               update_latency_s=0.0)

    def run(**changes) -> dict[str, Any]:
        return simulate(dataclasses.replace(p, path=dataclasses.replace(path, **changes)), w, seed=0,
                        **replayed(w, answer_tokens))

    def run_short(**changes) -> dict[str, Any]:
        return simulate(dataclasses.replace(p, path=dataclasses.replace(path, **changes)), short[0], seed=0,
                        **replayed(short[0], short[2]))

    for _ in range(4):  # the shares and latencies interact a little (their work overlaps): refit each in turn
        path = dataclasses.replace(path, request_latency_s=0.0, stream_latency_s=0.0)
        path = dataclasses.replace(path, in_share=_bisect(
            lambda x: run(in_share=x)["ttft_p50_s"], ttft_s, 0.0, 1.0 - path.out_share))
        path = dataclasses.replace(path, request_latency_s=max(0.0, ttft_s - run()["ttft_p50_s"]))
        if short is None:
            path = dataclasses.replace(path, out_share=_bisect(
                lambda x: run(out_share=x)["answer_p50_s"], answer_s, 0.0, 1.0 - path.in_share))
            path = dataclasses.replace(path, stream_latency_s=max(0.0, answer_s - run()["answer_p50_s"]))
        else:
            short_answer_s = short[1]
            path = dataclasses.replace(path, out_share=_bisect(
                lambda x: run_short(out_share=x)["answer_p50_s"], short_answer_s, 0.0, 1.0 - path.in_share))
            path = dataclasses.replace(path, stream_latency_s=max(
                0.0, short_answer_s - run_short()["answer_p50_s"]))
            path = dataclasses.replace(path, chunk_latency_s=_bisect(
                lambda x: run(chunk_latency_s=x)["answer_p50_s"], answer_s, 0.0, max(answer_s, 1e-3)))
        path = dataclasses.replace(path, update_latency_s=_bisect(
            lambda x: run(update_latency_s=x)["update_lag_p50_s"], lag_s, 0.0, max(lag_s, 1e-3)))
    return dataclasses.replace(p, path=path)


FIXED_SHARE_ROLES = ("client", "proxy", "ingress", "generator", "store", "updater")
"""Processes whose per-wake-up sharing (``ServingPath.fixed_share``) :func:`fit_fixed_shares` fits."""


def fit_fixed_shares(p: CostProfile, many: Workload, answer_tokens: Sequence[int], measured: dict[str, float],
                     slowdown: float = 1.0, rounds: int = 3, passes: int = 2) -> dict[str, float]:
    """Each process's ``fixed_share`` chosen so that simulating calibration level B (``many``:
    several sessions at once, with ``answer_tokens`` its answers' lengths) gives back the CPU
    seconds per turn measured there (``measured``, by role; times ``slowdown``, the profile's
    speed). Fitted by simulation rather than from the two levels' ratio: the simulated
    sharing counts the turns inside each process, not in the whole graph, and level B's
    answers are not as long as level A's (fewer chunks, less work per turn before any
    sharing). The Generator's share applies to its work outside the model, fitted against
    its whole CPU time (its simulated decoding and prefill included). The MemoryUpdater's is
    left alone when its work is split per batch (``updater_batch_s``), which already accounts
    for its sharing."""
    roles = [r for r in FIXED_SHARE_ROLES if r in measured and not (r == "updater" and p.path.updater_batch_s > 0)]
    shares = {**p.path.fixed_share, **{r: 1.0 for r in roles}}

    def per_turn(role: str, fixed: dict[str, float]) -> float:
        out = simulate(dataclasses.replace(p, path=dataclasses.replace(p.path, fixed_share=fixed)), many,
                       answer_tokens=answer_tokens, rounds=rounds, seed=0)
        return out["cpu_s_per_turn"][role]  # the Generator's with its simulated decoding and prefill

    for _ in range(passes):  # the processes' timings interact a little: fit each in turn, twice
        for role in roles:
            shares[role] = _bisect(lambda x: per_turn(role, {**shares, role: x}), measured[role] * slowdown,
                                   0.0, 1.0, steps=12)
    return shares


WAKE_WEIGHTS = (0.25, 0.35, 0.5, 0.7, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 1000.0)
"""The weights :func:`fit_wake_weight` and :func:`fit_wake_weight_to_decoding` try (1: equal
sharing; 1000: the short pieces all but always first; below 1: the model's threads ahead of them —
level B's decoding thread was measured slowed less than equal sharing simulates in 26 of the 30
calibrations am44–am73, where a grid starting at 1 kept 1 for them)."""

MACHINE_WAKE_WEIGHT = 4.0
"""The wake weight of the project's benchmark machine (2-core EPYC VM, Linux): the one of
:data:`WAKE_WEIGHTS` whose simulated busy-level update lag fits the 34 calibrations stored in
``docs/bench/study/capacity-profile-*.json`` best (:func:`pooled_wake_weight`, through
``jobs/capacity.py wake-weight``; rms log error 0.18, against 0.21 for 2 and 0.21 for 8, 0.34
for equal sharing), and also the 19 of them in the serving configuration as shipped. Another
machine fits its own the same way."""


def fit_wake_weight(p: CostProfile, many: Workload, answer_tokens: Sequence[int], lag_s: float,
                    rounds: int = 6) -> tuple[float, dict[float, float]]:
    """``ServingPath.wake_weight`` chosen so that simulating calibration level B (``many``,
    with ``answer_tokens`` its answers' lengths) gives back its measured update lag p50
    ``lag_s``, and the simulated lag of each weight tried. The lag is what the weight moves
    most: under load the update's own pieces (the MemoryUpdater's calls, the store's) wait for
    a core behind the decoding thread with equal sharing, ahead of it with a large weight. The
    simulated lag is not monotone in the weight at this level's size (its seeded jitter moves
    it by ±10%), so every weight of ``WAKE_WEIGHTS`` is tried and the closest (in ratio) kept."""
    lags = {}
    for weight in WAKE_WEIGHTS:
        path = dataclasses.replace(p.path, wake_weight=weight)
        out = simulate(dataclasses.replace(p, path=path), many, answer_tokens=answer_tokens, rounds=rounds, seed=0)
        lags[weight] = out["update_lag_p50_s"]
    best, _ = pooled_wake_weight([(lag_s, lags)])
    return best, lags


def fit_wake_weight_to_decoding(p: CostProfile, many: Workload, answer_tokens: Sequence[int], slowdown: float,
                                rounds: int = 6) -> tuple[float, dict[float, float]]:
    """``ServingPath.wake_weight`` chosen so that simulating calibration level B gives its
    decoding thread the slowdown measured there (``slowdown``: an iteration's wall seconds on
    the Generator's worker thread over that thread's CPU seconds — how long the model's work
    waited for a core), and the simulated slowdown of each weight of ``WAKE_WEIGHTS`` (the
    closest in ratio is kept). The weight decides how the shared cores split between the
    threads that compute without sleeping and the pieces of those that wake for a message:
    read off the decoding thread, it is measured where it acts, not through the update lag,
    which the update call's transit moves as much."""
    if slowdown <= 0:
        raise ValueError(f"a measured slowdown of {slowdown}: must be > 0")
    return _closest_on_grid(p, many, answer_tokens, rounds, "wake_weight", WAKE_WEIGHTS, slowdown,
                            lambda busy: busy["decode_tick_s"] / busy["decode_tick_alone_s"])


def _closest_on_grid(p: CostProfile, many: Workload, answer_tokens: Sequence[int], rounds: int, field: str,
                     grid: Sequence[float], measured: float, read: Callable[[dict[str, Any]], float]
                     ) -> tuple[float, dict[float, float]]:
    """The value of ``ServingPath.<field>`` of ``grid`` whose simulation of level B gives the
    figure ``read`` takes from its busy counters closest (in ratio) to ``measured``, and the
    figure of each value."""
    simulated = {}
    for value in grid:
        path = dataclasses.replace(p.path, **{field: value})
        busy = simulate(dataclasses.replace(p, path=path), many, answer_tokens=answer_tokens, rounds=rounds,
                        seed=0)["busy"]
        simulated[value] = read(busy)
    best = min(simulated, key=lambda value: abs(np.log(simulated[value] / measured)))
    return best, simulated


WAKE_WAITS_S = (0.0, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006)
"""The ``ServingPath.wake_wait_s`` :func:`fit_wake_wait` tries (0: processor sharing alone)."""


def fit_wake_wait(p: CostProfile, many: Workload, answer_tokens: Sequence[int], hops_s: float,
                  rounds: int = 6) -> tuple[float, dict[float, float]]:
    """``ServingPath.wake_wait_s`` chosen so that simulating calibration level B gives back the
    Generator's two hops per decoding iteration measured there (``hops_s``: an iteration's wall
    seconds as the event loop awaits it less its wall seconds on the worker thread — the worker
    thread's wake for it and the event loop's wake for its tokens), and the simulated hops of
    each wait of ``WAKE_WAITS_S`` (the closest in ratio is kept: the seeded simulation is not
    quite monotone in the wait)."""
    if hops_s <= 0:
        raise ValueError(f"measured hops of {hops_s} s: must be > 0")
    return _closest_on_grid(p, many, answer_tokens, rounds, "wake_wait_s", WAKE_WAITS_S, hops_s,
                            lambda busy: max(1e-9, busy["decode_iteration_s"] - busy["decode_tick_s"]))


def fit_update_transit(p: CostProfile, many: Workload, answer_tokens: Sequence[int], transit_s: float,
                       rounds: int = 6) -> float:
    """``ServingPath.update_transit_per_turn_s`` chosen so that simulating calibration level B
    gives back the update call's mean transit measured there (``transit_s``: from the Ingress's
    dispatch to the MemoryUpdater's receipt)."""
    def simulated(per_turn: float) -> float:
        path = dataclasses.replace(p.path, update_transit_per_turn_s=per_turn)
        return simulate(dataclasses.replace(p, path=path), many, answer_tokens=answer_tokens, rounds=rounds,
                        seed=0)["busy"]["update_transit_s"]

    return _bisect(simulated, transit_s, 0.0, 0.02, steps=12)


def pooled_wake_weight(runs: Sequence[tuple[float, Mapping[float, float]]]) -> tuple[float, dict[float, float]]:
    """The one ``wake_weight`` that fits the busy calibration level of many runs best, and each
    weight's error: ``runs`` holds, per calibration, its measured update lag p50 and the lag
    simulated with each weight (:func:`fit_wake_weight`'s second value); the error of a weight is
    the root mean square of log(simulated / measured) over the runs. The weight is the machine's
    scheduler's, not a run's; one level B's lag moves by ±20% between quiet runs (96 turns), so
    a weight fitted to one run follows its noise where the pooled one does not."""
    if not runs:
        raise ValueError("no calibration runs to fit the wake weight to")
    weights = set(runs[0][1])
    for measured, lags in runs:
        if measured <= 0:
            raise ValueError(f"a measured update lag of {measured} s: must be > 0")
        weights &= set(lags)
    if not weights:
        raise ValueError("the runs' simulated lags share no weight")
    errors = {w: float(np.sqrt(np.mean([np.log(lags[w] / measured) ** 2 for measured, lags in runs])))
              for w in sorted(weights)}
    return min(errors, key=errors.__getitem__), errors


def spread(values: Sequence[float]) -> float:
    """How far the slow end of ``values`` lies above their middle: p90 / p50 − 1."""
    if len(values) == 0:
        return 0.0
    middle = np.percentile(values, 50)
    return float(np.percentile(values, 90) / middle - 1) if middle > 0 else 0.0


def fit_timing_cv(p: CostProfile, w: Workload, answer_tokens: Sequence[int], ttft_samples: Sequence[float],
                  rounds: int = 8) -> float:
    """The jitter (``timing_cv``) with which calibration level A (``w``: one session at a
    time, nothing queues) simulates to the measured spread of its times to first token
    (:func:`spread`). The model's own step timings give a smaller spread than a turn through
    the serving processes shows; under load every job's variation queues, so the tail of a
    busy level follows from it."""
    target = spread(ttft_samples)

    def simulated(cv: float) -> float:
        out = simulate(dataclasses.replace(p, timing_cv=cv), w, rounds=rounds, seed=0,
                       **replayed(w, answer_tokens, rounds))
        return out["ttft_p90_s"] / out["ttft_p50_s"] - 1

    return _bisect(simulated, target, 0.0, 2.0, steps=12)


def split_per_chunk(long: dict[str, float], short: dict[str, float], long_chunks: float,
                    short_chunks: float) -> tuple[dict[str, float], dict[str, float]]:
    """Each streaming role's CPU seconds per turn split into a part per turn and a part per
    streamed chunk, from two calibration levels whose answers came in ``long_chunks`` and
    ``short_chunks`` chunks on average: the slope between them is the per-chunk part (never
    negative), and the per-turn part is what is left of the long level's figure (so the long
    level is reproduced exactly; never negative). Roles off the stream keep their long-level
    figure."""
    if long_chunks - short_chunks < 1:
        raise ValueError(f"calibration answers of {long_chunks:.1f} and {short_chunks:.1f} chunks: "
                         "need at least one chunk between them to tell per-chunk from per-turn work")
    per_turn, per_chunk = dict(long), {}
    for role in STREAM_ROLES:
        if role in long and role in short:
            slope = max(0.0, (long[role] - short[role]) / (long_chunks - short_chunks))
            per_chunk[role] = min(slope, long[role] / long_chunks)
            per_turn[role] = long[role] - per_chunk[role] * long_chunks
    return per_turn, per_chunk


def split_per_batch(alone: float, batched: float, batch_mean: float) -> tuple[float, float]:
    """The MemoryUpdater's work outside the model per update (``alone``, one update per batch;
    ``batched``, batches of ``batch_mean`` on average) split into a part per update and a part
    per batch: ``alone = item + batch`` and ``batched = item + batch / batch_mean``, neither
    negative. With batches of about one the two cannot be told apart: all of it per update."""
    if batch_mean < 1.2:
        return alone, 0.0
    batch = min(alone, max(0.0, (alone - batched) / (1 - 1 / batch_mean)))
    return alone - batch, batch


def with_consolidating_thread(path: ServingPath, model_cpu_s: Mapping[str, Mapping[str, float]],
                              many: Mapping[str, Any] | None) -> ServingPath:
    """``path`` with the consolidating thread's own work moved from the MemoryUpdater's work
    outside the model (``updater_item_s``, ``updater_batch_s``, split again) into the
    consolidation (``consolidate_thread_factor``): the thread's CPU per batch that calibration
    level B measured (``update_batches.consolidate_cpu_mean_s``) over the profile's consolidation
    CPU of its mean batch, at least 1. As it is without that reading or without batches."""
    batches = (many or {}).get("update_batches") or {}
    b, thread_s = batches.get("mean"), batches.get("consolidate_cpu_mean_s")
    cpu = {int(key): v for key, v in model_cpu_s.get("consolidate", {}).items()}
    if not b or b < 1.2 or not thread_s or not cpu:
        return path
    factor = max(1.0, thread_s / _interp(cpu, b))
    k = 1 + path.other_load
    item, batch = path.updater_item_s / k, path.updater_batch_s / k
    alone = max(0.0, item + batch - (factor - 1) * _interp(cpu, 1))
    batched = max(0.0, item + batch / b - (factor - 1) * _interp(cpu, b) / b)
    item, batch = split_per_batch(alone, batched, b)
    return dataclasses.replace(path, updater_item_s=item * k, updater_batch_s=batch * k,
                               consolidate_thread_factor=factor)


def store_call_weights(store_calls: dict[str, float] | None) -> dict[str, float]:
    """Each store call's cost relative to the mean of a turn's calls (``STORE_CALLS``), from
    their CPU seconds timed alone; empty (equal costs) without them or when they measured
    nothing."""
    from rxt_dist.eval.capacity import STORE_CALLS

    if not store_calls or any(call not in store_calls for call in STORE_CALLS):
        return {}
    mean = sum(store_calls[call] for call in STORE_CALLS) / len(STORE_CALLS)
    if mean <= 0:
        return {}
    return {call: max(0.0, store_calls[call]) / mean for call in STORE_CALLS}


def decoding_thread_work(model_cpu: dict[str, Any], long: dict[str, Any] | None,
                         short: dict[str, Any] | None) -> tuple[float, float]:
    """The decoding thread's CPU seconds beyond the model operations, per loop iteration and per
    admitted request, from the Generator loop's counters over two calibration levels of one
    session (``long`` and ``short`` answers: many iterations per admission, and few). Each
    level's excess — the thread's CPU less its prefills and steps at the model's one-row CPU
    figures — is ``iterations × tick + admitted × admit``; two levels give both. With one
    level, or where the split comes out negative, all of it counts per iteration. (0, 0)
    without counters."""
    def excess(loop: dict[str, Any]) -> float:
        model = loop["admitted"] * model_cpu["prefill"][1] + loop["steps"] * model_cpu["decode_step"][1]
        return loop["iterations"] * loop["tick_cpu_mean_s"] - model

    if not long or not long.get("tick_cpu_mean_s"):
        return 0.0, 0.0
    per_iteration = max(0.0, excess(long) / long["iterations"])
    if not short or not short.get("tick_cpu_mean_s"):
        return per_iteration, 0.0
    a = np.array([[long["iterations"], long["admitted"]], [short["iterations"], short["admitted"]]], dtype=float)
    b = np.array([excess(long), excess(short)])
    try:
        tick, admit = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return per_iteration, 0.0
    if tick < 0 or admit < 0:
        return per_iteration, 0.0
    return float(tick), float(admit)


def fit_serving_path(model_profile: dict[str, Any], cpu_per_turn: dict[str, float], level: dict[str, Any],
                     answer_steps: float, k: float, cores: int, batch_wait_s: float = 0.005,
                     short: dict[str, Any] | None = None, many: dict[str, Any] | None = None,
                     store_calls: dict[str, float] | None = None, read_share: float = 1.0,
                     decode_loop: dict[str, Any] | None = None, poll: dict[str, Any] | None = None) -> dict[str, Any]:
    """The serving path's costs (``ServingPath`` fields) from a calibration level played at
    S = 1 with think time (no queueing, no wait for updates):

    * each process's CPU seconds per turn × ``k`` (the slowdown: wall/CPU of the model
      operations measured now) is its wall-time work per turn; the Generator's and
      MemoryUpdater's share outside the model is what is left after the model operations' CPU;
      the store shard's is split over its calls per turn (claim, record, commit, and the
      MemoryUpdater's read on ``read_share`` of the updates — the share the calibration level
      measured), in proportion to ``store_calls`` (each kind's CPU seconds timed alone) when
      given, evenly otherwise;
    * how much of the client's, proxy's, Ingress's and Generator's work lies on the path to the
      first token (``in_share``) and to the end of the answer (``out_share``) is what the
      calibration's median TTFT and median first-token-to-end time leave after the model and
      the store calls; what the work cannot explain is fixed latency, never negative;
    * with ``short`` (a second level's ``cpu_per_turn``, ``chunks`` and ``answer_steps``, its
      answers capped short) each streaming role's work is split into a part per turn and a
      part per streamed chunk (:func:`split_per_chunk`, the Generator's after taking the model's
      operations out of each level), the latter × ``k`` being ``chunk_s``;
    * with ``many`` (a level with many sessions: its ``per_turn`` CPU and its measured
      ``update_batch_mean``) the MemoryUpdater's work outside the model is split into a part per
      update and a part per batch (:func:`split_per_batch`);
    * with ``decode_loop`` (the Generator's loop counters over the calibration level: its
      iterations, their thread CPU, decoding steps and admitted requests) the decoding thread's
      work beyond the model operations' CPU (the loop's own Python) is split into a part per
      iteration (``generator_tick_s``) and a part per admitted request (``generator_admit_s``)
      with ``short``'s counters (:func:`decoding_thread_work`), both × ``k`` and taken out of the
      Generator's work outside the model (one iteration per answer step, one admission per turn);
    * with ``poll`` (:func:`~rxt_dist.eval.app_readings.session_poll_costs`: a session poll's CPU
      seconds per role and its median wall time at rest) each role's work per poll is its CPU ×
      ``k`` (``poll_s``) and what the wall time leaves after that work its fixed latency;
    * the machine's other load is what makes one busy thread get 1/k of a core (k − 1 busy
      threads per core)."""
    from rxt_dist.eval.capacity import POLL_ROLES, ServingPath

    cpu = model_profile["cpu_s"]
    tick, admit = decoding_thread_work(cpu, decode_loop, (short or {}).get("decode_loop"))

    def outside_model(cpu_s: dict[str, float], steps: float) -> dict[str, float]:
        generator = cpu_s.get("generator", 0.0) - cpu["prefill"][1] - admit - steps * (cpu["decode_step"][1] + tick)
        return {**cpu_s, "generator": max(0.0, generator)}

    cpu_per_turn, chunk_s = outside_model(cpu_per_turn, answer_steps), {}
    if short is not None:
        cpu_per_turn, per_chunk = split_per_chunk(
            cpu_per_turn, outside_model(short["cpu_per_turn"], short["answer_steps"]),
            level["tokens"]["chunks_per_turn_mean"], short["chunks"])
        chunk_s = {role: v * k for role, v in per_chunk.items()}
    path: dict[str, Any] = {
        "client_s": cpu_per_turn.get("client", 0.0) * k,
        "proxy_s": cpu_per_turn.get("proxy", 0.0) * k,
        "ingress_s": cpu_per_turn.get("ingress", 0.0) * k,
        "store_op_s": cpu_per_turn.get("store", 0.0) * k / ServingPath(
            store_call_weight=store_call_weights(store_calls)).store_calls_per_turn(read_share),
        "updater_read_share": read_share,
        "generator_io_s": cpu_per_turn.get("generator", 0.0) * k,
        "generator_tick_s": tick * k,
        "generator_admit_s": admit * k,
        "updater_item_s": max(0.0, cpu_per_turn.get("updater", 0.0) - cpu["consolidate"][1]) * k,
        "updater_batch_s": 0.0,
        "cores": float(cores),
        "other_load": max(0.0, k - 1),
    }
    path["chunk_s"] = chunk_s
    path["store_call_weight"] = store_call_weights(store_calls)
    if poll is not None:
        path["poll_s"] = {role: poll["cpu_s"].get(role, 0.0) * k for role in POLL_ROLES}
        path["poll_latency_s"] = max(0.0, poll["wall_p50_s"] - sum(path["poll_s"].values()))
    if many is not None and many.get("update_batch_mean"):
        b = many["update_batch_mean"]
        consolidate_cpu = {int(key): v for key, v in cpu["consolidate"].items()}
        batched = max(0.0, many["per_turn"].get("updater", 0.0) - _interp(consolidate_cpu, b) / b)
        item, batch = split_per_batch(path["updater_item_s"] / k, batched, b)
        path["updater_item_s"], path["updater_batch_s"] = item * k, batch * k
    front = path["client_s"] + path["proxy_s"] + path["ingress_s"]
    ttft, answer = level["ttft"]["excluding_wait"]["p50_s"], level["answer"]["p50_s"]
    lag = level["update_lag"]["p50_s"]

    def store_call(call: str) -> float:  # ServingPath.store_call on the fields fitted so far
        return path["store_op_s"] * path["store_call_weight"].get(call, 1.0)

    to_first = max(0.0, ttft - store_call("claim") - model_profile["prefill_s"][1] - path["generator_tick_s"]
                   - path["generator_admit_s"]
                   - sum(chunk_s.values()))
    path["in_share"] = min(1.0, to_first / (front + path["generator_io_s"])) if front else 0.0
    path["request_latency_s"] = max(0.0, to_first - path["in_share"] * (front + path["generator_io_s"]))
    to_end = max(0.0, (answer - ttft) - answer_steps * (model_profile["decode_step_s"][1] + path["generator_tick_s"])
                 - store_call("record"))
    path["out_share"] = min(1.0 - path["in_share"], to_end / front) if front else 0.0
    path["stream_latency_s"] = max(0.0, to_end - path["out_share"] * front)
    explained_lag = (batch_wait_s + read_share * store_call("read") + store_call("commit")
                     + model_profile["consolidate_s"][1] + path["updater_item_s"] + path["updater_batch_s"])
    path["update_latency_s"] = max(0.0, lag - explained_lag)
    return path
