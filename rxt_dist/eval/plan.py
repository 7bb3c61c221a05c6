"""Sizing a deployment: replicas for a TTFT p99 objective, checked in simulation.

:func:`plan` sizes one Generator replica's **share** of the workload (its sessions, the
updates they cause, the serving path's work for them) by simulating that share, and multiplies
out. Replicas behind Serve's router are independent apart from the front (proxy, Ingress,
store shards), which is sized from its CPU work and is assumed not to queue (it is provisioned
at ``max_busy``). The share is simulated with the CPU side unconstrained for the same reason:
on a GPU node the model runs on the accelerator and the path on its own cores.

:func:`daily_users_workload` turns "N daily users" into concurrent sessions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rxt_dist.eval.capacity import (
    CostProfile,
    ServingPath,
    Workload,
    bounds,
    path_cpu_per_turn,
    reads_per_update,
    storage_traffic,
)
from rxt_dist.eval.simulate import Replicas, simulate


@dataclasses.dataclass
class Usage:
    """How daily users turn into concurrent sessions."""

    conversations_per_user: float = 2.0
    """Conversations a daily user holds per day."""
    turns: int = 8
    """Turns per conversation."""
    think_time_s: float = 20.0
    """Seconds a user reads and types between an answer and the next query."""
    query_tokens: int = 48
    answer_tokens: int = 64
    peak_to_mean: float = 3.0
    """Busiest hour's load over the day's mean."""


def daily_users_workload(users: int, usage: Usage, answer_s: float = 1.0) -> Workload:
    """Concurrent sessions at the daily peak: users × conversations × conversation length /
    one day × peak factor (Little's law); ``answer_s`` is the time of one answer."""
    length_s = usage.turns * (usage.think_time_s + answer_s)
    concurrent = users * usage.conversations_per_user * length_s / 86_400 * usage.peak_to_mean
    return Workload(sessions=max(1, math.ceil(concurrent)), think_time_s=usage.think_time_s,
                    query_tokens=usage.query_tokens, answer_tokens=usage.answer_tokens, turns=usage.turns)


FRONT = ("client", "proxy", "ingress", "store")
"""Processes that scale out beside the Generators (users' clients, proxies and Ingress replicas
on every node, store shards): sized by their CPU work, not queued in the share."""


def _unconstrained(p: CostProfile) -> CostProfile:
    """The profile with the CPU side provisioned: no shared cores, no other load, no stalls,
    and the front scaled out (its work runs alongside, never queued on one event loop)."""
    serial = {**p.path.serial_share, **{role: 0.0 for role in FRONT}}
    path = dataclasses.replace(p.path, cores=1e9, other_load=0.0, serial_share=serial)
    return dataclasses.replace(p, path=path, stalls={"rate_per_s": 0.0, "durations_s": []})


def simulate_share(p: CostProfile, w: Workload, generators: int, sim_turns: int = 2, seed: int = 0,
                   updaters: int = 1) -> dict[str, Any]:
    """One Generator replica's share of ``w`` (its sessions, ramped in over one cycle so turns
    arrive spread out as a day's traffic does), with ``updaters`` MemoryUpdaters of its own."""
    share = dataclasses.replace(w, sessions=math.ceil(w.sessions / generators), turns=sim_turns)
    ramp = w.think_time_s + bounds(p, w)["answer_unloaded_s"]
    return simulate(_unconstrained(p), share, Replicas(updaters=updaters), seed=seed, ramp_s=ramp)


def plan(p: CostProfile, w: Workload, slo_ttft_p99_s: float, max_busy: float = 0.7, dtype: str = "float32",
         sim_turns: int = 2, max_generators: int = 1 << 20) -> dict[str, Any]:
    """Fewest Generator replicas whose simulated share meets TTFT p99 ≤ ``slo_ttft_p99_s``
    with the continuous batch at most ``max_busy`` full on average (room for bursts); MemoryUpdater
    replicas from the share's updater busy time; CPU cores for the serving path; storage and
    object-store traffic."""
    b = bounds(p, w)
    if b["ttft_unloaded_s"] > slo_ttft_p99_s:
        return {"feasible": False, "bounds": b,
                "reason": f"one query alone takes {b['ttft_unloaded_s'] * 1e3:.0f} ms to its first token"}

    # MemoryUpdaters by the operational law (updates/s over what one gives at full batches);
    # each Generator's share is simulated with its part of them, rounded up.
    updaters = max(1, math.ceil(b["turns_per_s"] / (b["max_updates_per_s_per_updater"] * max_busy)))

    def meets(g: int) -> tuple[bool, dict[str, Any]]:
        r = simulate_share(p, w, g, sim_turns, updaters=math.ceil(updaters / g))
        return r["ttft_p99_s"] <= slo_ttft_p99_s and max(r["busy"]["generator_occupancy"]) <= max_busy, r

    low = max(1, math.floor(b["generators_at_full_busy"]))
    high = max(low, math.ceil(b["generators_at_full_busy"] / max_busy))
    while not meets(high)[0]:
        low, high = high + 1, high * 2
        if high > max_generators:
            return {"feasible": False, "bounds": b, "reason": f"more than {max_generators} Generator replicas"}
    while low < high:
        mid = (low + high) // 2
        if meets(mid)[0]:
            high = mid
        else:
            low = mid + 1
    generators = high
    share = meets(generators)[1]
    turns_per_s = share["turns"] / share["wall_s"] * generators
    return {
        "feasible": True, "generators": generators, "updaters": updaters,
        "path_cpu_cores": math.ceil(turns_per_s * path_cpu_per_turn(p, w.answer_tokens, reads_per_update(p, w))
                                    / max_busy),
        "sessions": w.sessions, "sessions_per_generator": math.ceil(w.sessions / generators),
        "turns_per_s": turns_per_s, "tokens_per_s": share["tokens_per_s"] * generators,
        "ttft_p50_s": share["ttft_p50_s"], "ttft_p99_s": share["ttft_p99_s"],
        "update_lag_p50_s": share["update_lag_p50_s"], "update_lag_p99_s": share["update_lag_p99_s"],
        "waited_share": share["waited_share"], "generator_occupancy": max(share["busy"]["generator_occupancy"]),
        "updater_busy": share["busy"]["updater"],
        "bounds": b, "traffic": storage_traffic(p, turns_per_s, w.sessions, dtype),
    }


# -- assumed GPU profiles (until measured) -------------------------------------------------------

GPU_NODE = ("NVIDIA L4 node (e.g. AWS g6.2xlarge: 1× L4 24 GB, 8 vCPU, 32 GiB; ~US$0.98/h on demand "
            "in us-east-1 at the time of writing)")
"""The GPU node type docs/scaling.md plans with."""

_ASSUMED_MODEL_MS = {
    # one step of B sequences / prefill of B 48-token queries / consolidation of B interactions, in ms.
    # Eager PyTorch on a small model is kernel-launch bound: ~150 launches per decoder step, so the
    # time barely grows with B until the matmuls fill the GPU. Numbers to replace by a measurement.
    "nano": ({1: 3.0, 8: 3.1, 32: 3.3, 64: 3.6, 128: 4.2}, {1: 3.5, 8: 3.8, 32: 4.5, 64: 6.0},
             {1: 5.0, 16: 5.5, 64: 8.0}),
    "micro": ({1: 3.2, 8: 3.3, 32: 3.6, 64: 4.0, 128: 5.0}, {1: 3.8, 8: 4.2, 32: 5.5, 64: 8.0},
              {1: 5.5, 16: 6.5, 64: 11.0}),
}


def assumed_gpu_profile(preset: str) -> CostProfile:
    """An **assumed** cost profile of one RxT preset on :data:`GPU_NODE` (marked
    ``assumed=True``): model costs from the launch-bound estimate above; the serving path's
    work per turn from this machine's measurement (docs/bench/capacity-profile-cpu.json: CPU
    seconds per turn; the proxy's and Ingress's from the application in Serve's high-throughput
    mode, docs/bench/study/capacity-profile-ht1.json) halved for a dedicated modern core, plus
    0.1 ms per streamed token on Ingress and proxy for 64-token answers; the Generator's and
    MemoryUpdater's event loops do about a third of their processes' work, as measured here.
    Run ``jobs/capacity.py profile`` on the node to replace it."""
    from rxt_dist.model import build_model, count_parameters, from_name

    cfg = from_name(preset)
    decode, prefill, consolidate = (_ms_to_s(t) for t in _ASSUMED_MODEL_MS[preset])
    L, S, D = cfg.stm_shape
    # proxy and Ingress per turn: Serve's high-throughput mode as measured here (HAProxy 0.7 ms,
    # Ingress 14 ms: docs/bench/study/capacity-profile-ht1.json), halved; per token as before
    path = ServingPath(client_s=0.0, proxy_s=0.00035 + 0.0064, ingress_s=0.007 + 0.0064, store_op_s=0.0012,
                       generator_io_s=0.005, updater_item_s=0.005, in_share=0.3, out_share=0.2,
                       cores=1e9, other_load=0.0, max_batch_size=128, update_batch_size=64,
                       update_batch_wait_s=0.0, serial_share={"generator": 0.35, "updater": 0.35})
    header = 80  # safetensors header of one tensor with the format tag
    return CostProfile(
        source=f"ASSUMED (not measured): {preset} on {GPU_NODE}; see rxt_dist.eval.plan.assumed_gpu_profile",
        model={"preset": preset, "dim": cfg.dim, "layers": cfg.num_layers, "stm_shape": [L, S, D],
               "parameters": count_parameters(build_model(cfg))},
        query_tokens=48, answer_tokens=64, decode_step_s=decode, prefill_s=prefill,
        prefill_length_s={16: prefill[1] * 0.9, 48: prefill[1], 256: prefill[1] * 1.6},
        consolidate_s=consolidate, stm_bytes={"float32": L * S * D * 4 + header, "bfloat16": L * S * D * 2 + header},
        path=path, timing_cv=0.1, assumed=True)


def _ms_to_s(table: dict[int, float]) -> dict[int, float]:
    return {k: v / 1e3 for k, v in table.items()}


# -- the stateless alternative --------------------------------------------------------------------

def stateless_kv(preset: str, turn: int, tokens_per_turn: int, bytes_per_value: int = 2) -> dict[str, float]:
    """A stateless server with prefix caching for the same conversation: the KV cache one session
    holds after ``turn`` turns (``baseline-<preset>``: every layer's keys and values of every
    token, bf16), and what one eviction costs — the whole history prefilled again."""
    from rxt_dist.model import from_name

    cfg = from_name(f"baseline-{preset}")
    heads = cfg.attention.num_kv_heads or cfg.attention.num_heads
    per_token = 2 * cfg.num_layers * heads * (cfg.dim // cfg.attention.num_heads) * bytes_per_value
    tokens = turn * tokens_per_turn
    return {"kv_bytes_per_token": per_token, "history_tokens": tokens, "kv_bytes": tokens * per_token,
            "reprefill_tokens": tokens}


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
