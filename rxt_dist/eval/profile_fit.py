"""The cost profile fitted to its calibration as a whole: the jitter to level A's spread
(:func:`fit_spread`), the processes' sharing and the CPU's wake weight to the busy level B
(:func:`fit_sharing`), and all of it again from the stored figures after a change to the
simulation (:func:`refit`, ``jobs/capacity.py compare --refit``). The single fits are in
:mod:`rxt_dist.eval.calibrate`."""

from __future__ import annotations

import dataclasses
import logging

from rxt_dist.eval.calibrate import (
    MACHINE_WAKE_WEIGHT,
    fit_fixed_shares,
    fit_timing_cv,
    fit_to_calibration,
    fit_update_transit,
    fit_wake_wait,
    fit_wake_weight,
    fit_wake_weight_to_decoding,
    with_consolidating_thread,
)
from rxt_dist.eval.capacity import CostProfile, ServingPath, Workload, speed_trace

log = logging.getLogger(__name__)

AUTO = "auto"
"""The wake weight's default (``--wake-weight``): fitted to the busy calibration level's decoding
slowdown when the profile recorded it, else :data:`MACHINE_WAKE_WEIGHT`."""


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


def fit_sharing(profile: CostProfile, wake_weight: float | str | None, wake_wait_s: float | None = None) -> CostProfile:
    """The profile with each process's ``fixed_share`` fitted by simulating calibration level B
    (:func:`~rxt_dist.eval.calibrate.fit_fixed_shares`, its CPU per turn) with the CPU's
    ``wake_weight`` set to ``wake_weight`` (None: fitted to level B's decoding slowdown where
    recorded, :func:`~rxt_dist.eval.calibrate.fit_wake_weight_to_decoding`, else to its update lag,
    :func:`~rxt_dist.eval.calibrate.fit_wake_weight`; :data:`AUTO`: fitted where the slowdown was
    recorded, else :data:`MACHINE_WAKE_WEIGHT`; the shares fitted before and again after it), a woken
    thread's wait for a core set to ``wake_wait_s`` (None: fitted to level B's decoding hops where
    recorded, :func:`~rxt_dist.eval.calibrate.fit_wake_wait`, else 0), and
    then the update call's transit per turn in flight to level B's measured handover and transit
    (from the answer's end to the call's receipt) where recorded
    (:func:`~rxt_dist.eval.calibrate.fit_update_transit`). Level B's lag simulated with
    each weight is kept in ``extra["wake_weight_lags_s"]`` (what the ``wake-weight`` command
    pools over runs). As it was for a profile measured before level B recorded its answers (and
    the weight as it was without level B's update lag)."""
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
    if wake_wait_s is not None:
        profile = dataclasses.replace(profile, path=dataclasses.replace(profile.path, wake_wait_s=wake_wait_s))
    elif loop.get("iteration_mean_s") and loop["iteration_mean_s"] > loop["tick_mean_s"]:
        hops = loop["iteration_mean_s"] - loop["tick_mean_s"]
        wait, simulated = fit_wake_wait(profile, w, many["tokens"], hops)
        log.info("a woken thread's wait for a core: %.2f ms a wake (fitted to level B's decoding hops, %.2f ms an "
                 "iteration measured, simulated %s)", wait * 1e3, hops * 1e3,
                 ", ".join(f"{k * 1e3:g}: {v * 1e3:.2f}" for k, v in simulated.items()))
        profile = dataclasses.replace(profile, path=dataclasses.replace(profile.path, wake_wait_s=wait),
                                      extra={**profile.extra, "wake_wait_hops_s": {f"{k:g}": v for k, v in
                                                                                   simulated.items()}})
    profile = with_shares(profile)
    batches = many.get("update_batches") or {}
    transit = batches.get("transit_per_update_s")
    if not transit:
        return profile
    # The simulated transit starts where the answer's end leaves the Ingress: it holds the
    # measured handover too, the wait of the update call's task on the Ingress before it starts.
    handover = batches.get("handover_per_update_s", 0.0)
    per_turn = fit_update_transit(profile, w, many["tokens"], transit + handover)
    log.info("the update call's transit: %.1f ms at level B (%.1f of it the handover on the Ingress), %.2f ms per "
             "turn in flight", (transit + handover) * 1e3, handover * 1e3, per_turn * 1e3)
    return dataclasses.replace(profile, path=dataclasses.replace(profile.path, update_transit_per_turn_s=per_turn))


def refit(profile: CostProfile, wake_weight: float | str | None, traced: bool = False,
          wake_wait_s: float | None = None) -> CostProfile:
    """The profile's serving-path shares and latencies fitted again to its stored calibration
    figures with the current simulation (after a change to the simulation, without measuring),
    from where the profile command started (``wake_weight`` and ``wake_wait_s`` as :func:`fit_sharing`
    takes them): the path as measured (``extra.path_before_fit``)
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
        path = ServingPath(**{k: v for k, v in measured.items() if k in known})
        path = with_consolidating_thread(path, profile.extra.get("model_cpu_s", {}), c.get("many"))
        timing_cv = profile.extra.get("model_timing_cv", profile.timing_cv)
        profile = dataclasses.replace(profile, path=path, timing_cv=timing_cv)
    w = level_a_workload(profile)
    ttft = c.get("ttft_excluding_wait_p50_s", c["ttft_p50_s"])  # the same with think time: nothing waits
    return fit_sharing(fit_spread(fit_to_calibration(profile, w, ttft, c["answer_p50_s"], c["update_lag_p50_s"],
                                                     c["answer_tokens"], short_calibration(w, c.get("short")))),
                       wake_weight, wake_wait_s)
