"""Readings of a running serving application for the capacity model: the serving processes'
CPU per turn of a played workload and at rest, the store shard's CPU per call, and the
MemoryUpdater's and Generator's counters between two reads (``stats()``).

Used by :mod:`rxt_dist.eval.app_calibration` (``jobs/capacity.py profile`` / ``check``)."""

from __future__ import annotations

import time
from typing import Any

from rxt_dist.eval.capacity import STORE_CALLS


def cpu_per_turn(pids: dict[str, list[int]], cfg, rate: dict[str, float],
                 poll_cpu_s: dict[str, float] | None = None) -> tuple[dict, dict[str, float], dict[str, float]]:
    """Play ``cfg`` (a :class:`~rxt_dist.eval.serving.ServingConfig` of one level); its level
    report, each role's CPU seconds per turn (``rate``, the idle rate, subtracted; this
    process's as ``client``; with ``poll_cpu_s``, :func:`session_poll_costs`' CPU per poll, the
    level's polls for its last commits too: the capacity model plays them apart) and the share
    of each role's CPU its busiest thread did."""
    from rxt_dist.eval.profile import process_cpu, serial_shares, thread_cpu
    from rxt_dist.eval.serving import run_serving

    threads0 = thread_cpu(pids)
    before, client0, w0 = process_cpu(pids), time.process_time(), time.perf_counter()
    report = run_serving(cfg)
    after, client1, w1 = process_cpu(pids), time.process_time(), time.perf_counter()
    shares = serial_shares(threads0, thread_cpu(pids))
    after["client"], before["client"] = client1, client0
    level = report["levels"][0]
    turns = level["requests"] + cfg.warmup_turns
    polls, poll_cpu_s = report.get("session_polls", 0), poll_cpu_s or {}  # the warm-up's polls too
    per_turn = {role: max(0.0, after[role] - before[role] - rate[role] * (w1 - w0)
                          - polls * poll_cpu_s.get(role, 0.0)) / turns for role in after}
    return level, per_turn, shares


def idle_rates(pids: dict[str, list[int]], idle_s: float = 4.0) -> dict[str, float]:
    """Each role's CPU seconds per second while no request runs (Ray's background work: health
    checks, metrics, long polls), this process's as ``client``."""
    from rxt_dist.eval.profile import process_cpu

    idle0, client_idle0, t0 = process_cpu(pids), time.process_time(), time.perf_counter()
    time.sleep(idle_s)
    idle1, client_idle1, t1 = process_cpu(pids), time.process_time(), time.perf_counter()
    rate = {role: (idle1[role] - idle0[role]) / (t1 - t0) for role in idle1}
    rate["client"] = (client_idle1 - client_idle0) / (t1 - t0)
    return rate


def session_poll_costs(url: str, pids: dict[str, list[int]], rate: dict[str, float],
                       polls: int = 200) -> dict[str, Any]:
    """What one poll of a session costs (``GET /v1/sessions/{id}``, as the serving benchmark's
    client polls for a session's last commit: client, proxy, Ingress and the store's ``info``),
    measured on a session of its own with the benchmark's own client: ``polls`` polls one after
    another, each role's CPU seconds per poll (``rate``, the idle rate, subtracted; this
    process's as ``client``; clock-tick resolution, averaged over the polls) and the polls'
    median wall time (``wall_p50_s``)."""
    import asyncio
    import statistics

    from rxt_dist.eval.profile import process_cpu
    from rxt_dist.eval.serving import ServingClient, ServingConfig

    async def play() -> dict[str, Any]:
        async with ServingClient(ServingConfig(url=url), connections=1) as client:
            sid = await client.create_session()
            await client.session(sid)  # its connection open, as the benchmark's is
            walls = []
            before, client0, w0 = process_cpu(pids), time.process_time(), time.perf_counter()
            for _ in range(polls):
                t = time.perf_counter()
                await client.session(sid)
                walls.append(time.perf_counter() - t)
            after, client1, w1 = process_cpu(pids), time.process_time(), time.perf_counter()
            await client.delete_session(sid)
        after["client"], before["client"] = client1, client0
        cpu = {role: max(0.0, after[role] - before[role] - rate.get(role, 0.0) * (w1 - w0)) / polls for role in after}
        return {"polls": polls, "cpu_s": cpu, "wall_p50_s": statistics.median(walls)}

    return asyncio.run(play())


def store_shards() -> dict[int, Any]:
    """The session store's shard actors, by shard number. The cluster must hold one session
    store (the application's)."""
    import ray

    from rxt_dist.serving.protocol import STORE_NAMESPACE, store_actor_shard

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == STORE_NAMESPACE]
    return {shard: ray.get_actor(name, namespace=STORE_NAMESPACE)
            for name in names if (shard := store_actor_shard(name)) is not None}


STORE_WAIT_COUNTERS = ("claims_waited", "claim_pending_age_s", "commits", "commit_write_s", "commit_persist_s",
                       "commit_persist_cpu_s")
"""The store shards' counters :func:`store_waits` reads (``SessionStore.snapshot``)."""


def store_counters(shards: dict[int, Any]) -> dict[str, float]:
    """:data:`STORE_WAIT_COUNTERS` summed over the shards, as they stand now."""
    import ray

    snapshots = ray.get([shard.stats.remote() for shard in shards.values()])
    return {key: sum(snap.get(key, 0) for snap in snapshots) for key in STORE_WAIT_COUNTERS}


def store_waits(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Between two :func:`store_counters` readings: how long after a turn was recorded its
    session's next turn reached the store, for those that found its update still pending
    (``claim_pending_age_s``, mean: the way back to the client and the next request's way in),
    and how long from an update's commit time to the release of the turn waiting on it
    (``commit_write_s``, mean: the write), of that the write on its worker thread (its wall and
    CPU seconds, ``commit_persist_s`` and ``commit_persist_cpu_s``, means), with their counts."""
    waited, commits = after["claims_waited"] - before["claims_waited"], after["commits"] - before["commits"]
    per_commit = {key: (after[key] - before[key]) / commits if commits else None
                  for key in ("commit_write_s", "commit_persist_s", "commit_persist_cpu_s")}
    return {"claims_waited": waited, "commits": commits,
            "claim_pending_age_s": (after["claim_pending_age_s"] - before["claim_pending_age_s"]) / waited
            if waited else None, **per_commit}


def store_call_costs(url: str, pids: dict[str, list[int]], cycles: int = 200) -> tuple[dict[str, float], float]:
    """The store shard's CPU seconds per call of each kind a turn makes, measured on a session of
    its own: ``cycles`` times claim (``begin_turn``), record (``finish_turn``, moving the
    session's transcript index entry as a turn does), read (``update_input``) and commit
    (``commit_update``), each call alone, the shard process's CPU read around it (clock-tick
    resolution: averaged over many calls); and the shard's CPU seconds per cycle read around
    the whole loop (a reading of the machine's speed: the same work each time, ~1% resolution).
    The cluster must hold one session store (the application's)."""
    import httpx
    import ray

    from rxt_dist.eval.profile import process_cpu
    from rxt_dist.serving.protocol import SESSION_HEADER, transcript_start, transcript_step
    from rxt_dist.serving.session_records import shard_of

    r = httpx.post(f"{url}/v1/sessions", timeout=30.0)
    r.raise_for_status()
    sid = r.headers[SESSION_HEADER]
    shards = store_shards()
    shard = shards[shard_of(sid, len(shards))]
    store = {"store": pids["store"]}
    spent = dict.fromkeys(STORE_CALLS, 0.0)
    transcript = transcript_start(None, None)  # the new session's, as the Ingress indexes it

    def timed(kind: str, call):
        before = process_cpu(store)["store"]
        out = ray.get(call)
        spent[kind] += process_cpu(store)["store"] - before
        return out

    start = process_cpu(store)["store"]
    for _ in range(cycles):
        lease = f"capacity-{time.monotonic_ns()}"
        claim = timed("claim", shard.begin_turn.remote(sid, lease, 5.0))
        version = claim["version"]
        transcript = transcript_step(transcript, "query", "answer")  # the index entry moves, as in a turn
        timed("record", shard.finish_turn.remote(sid, lease, version, [5] * 24, [6] * 6, None, "stop", transcript))
        data = timed("read", shard.update_input.remote(sid, version))
        timed("commit", shard.commit_update.remote(sid, version, data["stm"]))
    per_cycle = (process_cpu(store)["store"] - start) / cycles
    httpx.delete(f"{url}/v1/sessions/{sid}", timeout=30.0)
    return {kind: v / cycles for kind, v in spent.items()}, per_cycle


def read_share(before: dict, after: dict) -> float:
    """The share of updates between two reads of the MemoryUpdater's STM counters (``stats()["stm"]``)
    whose STM it read from the store; 1 when it counted none (an application whose updaters
    keep no STMs, or one from before they did)."""
    hits = after.get("hits", 0) - before.get("hits", 0)
    misses = after.get("misses", 0) - before.get("misses", 0)
    return misses / (hits + misses) if hits + misses and after.get("sessions") is not None else 1.0


def update_batches(before: dict, after: dict) -> dict[str, Any]:
    """The MemoryUpdater's batches and updates between two reads of its counters, the mean
    batch (None without a batch), a batch's mean duration and phases (``batch_mean_s``,
    ``read_mean_s``, …), and of the batches whose items waited behind the batch before, the
    mean time from that batch's end to their start (``gap_mean_s``)."""
    batches, applied = after["batches"] - before["batches"], after["applied"] - before["applied"]
    out = {"batches": batches, "applied": applied, "mean": applied / batches if batches else None}
    for key in ("batch_s", "read_s", "consolidate_s", "commit_s",  # absent before 2026-12-02
                "consolidate_run_s", "consolidate_cpu_s",  # absent before 2026-12-05
                *(f"{phase}_{thread}_cpu_s" for phase in ("read", "consolidate", "commit")
                  for thread in ("loop", "proc"))):  # absent before 2026-12-07 (evening)
        if key in after and batches:
            out[f"{key[:-2]}_mean_s"] = (after[key] - before.get(key, 0.0)) / batches
    timed = after.get("timed", 0) - before.get("timed", 0)
    if timed:  # per update, not per batch (absent before 2026-12-05)
        out["transit_per_update_s"] = (after["transit_s"] - before["transit_s"]) / timed
        out["queued_per_update_s"] = (after["queued_s"] - before["queued_s"]) / timed
    gaps = after.get("gaps", 0) - before.get("gaps", 0)
    if gaps:  # absent before 2026-12-06 (night)
        out["gap_mean_s"] = (after["gap_s"] - before["gap_s"]) / gaps
    handed = after.get("handed", 0) - before.get("handed", 0)
    if handed:  # absent before 2026-12-06
        out["handover_per_update_s"] = (after["handover_s"] - before["handover_s"]) / handed
    return out


def decode_loop_counters(before: dict, after: dict) -> dict[str, float]:
    """The Generator's decoding loop between two reads of its counters (``stats()``): its
    iterations, their mean batch, and an iteration's mean seconds as the event loop awaits it
    (``iteration_mean_s``), on the worker thread (``tick_mean_s``) and of that thread's CPU
    (``tick_cpu_mean_s``), and the two hops between the event loop and the worker thread
    (``dispatch_mean_s``, ``resume_mean_s``: where counted); empty for a replica from before it
    counted them."""
    n = after.get("iterations", 0) - before.get("iterations", 0)
    if not n:
        return {}
    return {"iterations": n, "rows_mean": (after["rows"] - before["rows"]) / n,
            "steps": after["steps"] - before["steps"], "admitted": after["admitted"] - before["admitted"],
            **{f"{key[:-2]}_mean_s": (after[key] - before[key]) / n
               for key in ("iteration_s", "tick_s", "tick_cpu_s", "dispatch_s", "resume_s") if key in after}}


def fixed_share(alone: float, together: float, in_flight: float) -> float:
    """From CPU per turn one at a time and with ``in_flight`` turns at once: the share ``f`` with
    together = alone × (f + (1 − f) / in_flight), between 0 and 1."""
    if alone <= 0 or in_flight <= 1.2:
        return 1.0
    return min(1.0, max(0.0, (together / alone - 1 / in_flight) / (1 - 1 / in_flight)))
