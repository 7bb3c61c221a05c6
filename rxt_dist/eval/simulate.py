"""Discrete-event simulation of the RxT serving graph, driven by a :class:`CostProfile`.

What it plays, per session (closed loop, as the serving benchmark drives the app):

1. the request passes the client, Serve's proxy and an Ingress replica (``in_share / 2`` of
   each one's per-turn work), then a fixed request latency;
2. the claim at the session's store shard — **waiting first for the previous turn's memory
   update to commit** (the ordering guarantee);
3. the Generator replica with the fewest ongoing requests takes it through its Ray side, then
   its decode loop admits it: each loop iteration is one step of the running sequences plus
   the prefill of the admitted ones and the loop's own work (``generator_tick_s`` and
   ``generator_admit_s`` per admitted one; ``DecodeLoop._tick``); every iteration gives each sequence
   a token, handed over on the replica's event loop (behind what waits there) before the next;
4. the Generator sends the first token at once and later ones at most every
   ``stream_interval_s``, the tokens decoded meanwhile in one chunk (0: one chunk per token),
   through its event loop (``chunk_s``) to the Ingress, which streams the answer one event at
   a time: a chunk passes Ingress, proxy and client (``chunk_s`` at each) and
   ``chunk_latency_s`` later the next follows; the first chunk, with ``in_share / 2`` of the
   per-turn work, is the TTFT;
5. after the last step (an end-of-answer step for answers that stop by themselves) the end
   follows the last chunk; the Ingress records the turn (store call) and sends the end out
   (``out_share``): the answer time; the next turn starts after the think time;
6. once the Ingress has sent the end on (to the proxy), after a fixed latency and
   ``update_transit_per_turn_s`` for every other turn in flight, the least-loaded MemoryUpdater: the
   call's receipt on its event loop, then a batch starts when ``update_batch_size`` items wait
   or ``update_batch_wait_s`` after its first; it reads every item's input at once (gathered
   store calls), consolidates the batch, commits its items in one call per store shard (the
   shard's side of a call once, then each item's write); each write releases its session's
   next turn. The batch's own work (``updater_batch_s``) runs half as its commits start (on the
   replica's event loop ahead of their calls, its Ray-side share alongside them) and half after
   them (the replies), on the event loop while the batcher waits for company, whose wake-up
   queues behind it there. Each of the three calls carries a third of the update's
   work outside the model (``updater_item_s``) through the replica's process (``Server``: its
   event-loop share one call after another, the rest alongside), as ``apply_updates`` gathers
   them.
   The store stamps a commit before it writes the new version (``CostProfile.persist_s``);
   the write's end releases the session's next turn. The update lag is stamp − end of answer,
   as the benchmark measures it (the version's ``memory_committed_at``).

7. with a poll interval (the benchmark's ``poll_interval_s``), once a session's last answer has
   ended its client polls the session until it sees the last update committed
   (:meth:`Graph._settle`, ``poll_s`` through client, proxy, Ingress and the store), and the
   round ends with the last of them.

Each process is a :class:`~rxt_dist.eval.des.Server` on one shared CPU (:mod:`rxt_dist.eval.des`).
Every service time is multiplied by a log-normal jitter with the profile's ``timing_cv``
(seeded), and with a ``speed_trace`` the whole CPU runs at the machine's measured speed of the
moment (the trace replayed from a seeded point): slow stretches that every process shares.
Plain Python with a heap; about a million events per ten seconds. The two model deployments'
replicas are in :mod:`rxt_dist.eval.sim_replicas`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rxt_dist.eval.capacity import (
    POLL_ROLES,
    SPEED_TRACE_PERIOD_S,
    STREAM_ROLES,
    CostProfile,
    Workload,
)
from rxt_dist.eval.des import Server, Sim
from rxt_dist.eval.sim_replicas import DecodeLoop, Seq, Updater


@dataclass
class _Session:
    index: int
    turns_left: int
    update_pending: bool = False
    pending_since: float = 0.0
    """When the store recorded the turn whose update is pending."""
    on_commit: Callable[[], None] | None = None
    last_turn: TurnRecord | None = None
    """The session's last turn whose end the client has read, and when it read it."""
    last_ended: float = 0.0


@dataclass
class TurnRecord:
    """What the client saw of one simulated turn (seconds)."""

    session: int
    turn: int
    ttft_s: float = math.nan
    answer_s: float = math.nan
    waited_s: float = 0.0
    lag_s: float = math.nan
    tokens: int = 0
    way_in_s: float = math.nan
    """Request sent → its claim at the store."""
    way_out_s: float = math.nan
    """Turn recorded at the store → its end read by the client, where the next turn's claim
    found this turn's update pending (as the serving benchmark reads it)."""


class Turn:
    """One turn's path through the graph (module docstring, steps 1–6)."""

    def __init__(self, graph: Graph, session: _Session, index: int, answer_tokens: int) -> None:
        self.g, self.session, self.answer_tokens = graph, session, answer_tokens
        self.record = TurnRecord(session.index, index, tokens=answer_tokens)
        self.sent = graph.sim.now
        self.ended = math.nan
        self.commit_at = math.nan
        self.handed_over_at = math.nan
        """When the Ingress handed the update over (the MemoryUpdater's call leaves)."""
        self.received_at = math.nan
        """When the MemoryUpdater took the update call in."""
        self.steps_seen = 0
        self.unsent = 0
        """Tokens decoded and not yet sent by the Generator's stream."""
        self.sent_at: float | None = None
        self.chunks_sent = 0
        self.timer_armed = False
        self.decoded = False
        self.end_sent = False
        self.front_queue: deque[int] = deque()
        """Chunks (1, 2, …) and the end (0) that reached the Ingress, not yet streamed on."""
        self.front_busy = False
        client, proxy, ingress = graph.front_for(session.index)
        path = graph.p.path
        self.inward = [(client, path.client_s), (proxy, path.proxy_s), (ingress, path.ingress_s)]
        self.generator = graph.generator_for()
        self.generator.ongoing += 1
        self.outward = [(self.generator.io, path.generator_io_s)] + self.inward[::-1]
        self.chunk_s = [path.chunk(role) for role in STREAM_ROLES]
        """Per streamed chunk, each stage of ``outward``."""
        self._chain(self.inward, path.in_share / 2, lambda: graph.sim.after(path.request_latency_s, self._claim))

    def _chain(self, stages: list[tuple[Server, float]], share: float, then: Callable[[], None],
               extra: Sequence[float] = ()) -> None:
        """``share`` of each stage's per-turn work (plus its ``extra`` seconds), one stage after
        the other, then ``then``."""
        chain = then
        for i in reversed(range(len(stages))):
            server, seconds = stages[i]
            work = seconds * share + (extra[i] if i < len(extra) else 0.0)
            chain = (lambda s=server, sec=work, nxt=chain: s.do(sec, nxt, self))
        chain()

    def _claim(self) -> None:
        arrived = self.g.sim.now
        session = self.session
        self.record.way_in_s = arrived - self.sent

        def claim() -> None:
            self.record.waited_s = self.g.sim.now - arrived
            self.g.store_of(session.index).do(self.g.p.path.store_call("claim"), self._generate, self)

        if session.update_pending:
            if session.last_turn is not None:
                session.last_turn.way_out_s = session.last_ended - session.pending_since
            self.g.claims_waited += 1
            self.g.claim_pending_age_s += arrived - session.pending_since
            session.on_commit = claim
        else:
            claim()

    def _generate(self) -> None:
        path = self.g.p.path
        steps = self.answer_tokens + (1 if self.g.stops_early else 0)
        self.generator.io.do(path.generator_io_s * path.in_share / 2,
                             lambda: self.generator.submit(Seq(self, steps)), self)

    def token(self, first: bool, last: bool) -> None:
        """A decoding step of this turn ended: its token (the end-of-answer step has none) waits
        for the Generator's stream, and after the last step the end does too."""
        path = self.g.p.path
        self.steps_seen += 1
        if self.steps_seen <= self.answer_tokens:
            self.unsent += 1
        if last:
            self.decoded = True
            self.generator.io.do(path.generator_io_s * (1 - path.in_share), owner=self)
        self._stream()

    def _stream(self) -> None:
        """The Generator's stream (``DecodeLoop.stream``): the first token goes at once, later
        ones at most every ``stream_interval_s`` (stretched to share ``stream_chunks_per_s``
        among the replica's open answers), the tokens decoded meanwhile in one chunk, and
        whatever is left when decoding ends. Each chunk goes through the Generator's event loop
        (its ``chunk_s`` once per chunk: the stream sleeps until its chunk is due, the tokens
        decoded meanwhile waiting without waking it, ``_Inbox``; and ``in_share / 2`` of the
        per-turn work with the first) to the Ingress's queue for this answer; the end follows
        the last one."""
        path = self.g.p.path
        now = self.g.sim.now
        interval = path.stream_interval(self.generator.ongoing)
        due = self.sent_at is None or self.decoded or now >= self.sent_at + interval - 1e-12
        if not due:
            if self.unsent and not self.timer_armed:
                self.timer_armed = True
                self.g.sim.at(self.sent_at + interval, self._timer)
            return
        if self.unsent:
            self.chunks_sent += 1
            chunk, share = self.chunks_sent, (path.in_share / 2 if self.chunks_sent == 1 else 0.0)
            self.unsent, self.sent_at = 0, now
            self.generator.io.do(path.generator_io_s * share + self.chunk_s[0], lambda: self._arrive(chunk), self)
        if self.decoded and not self.end_sent:
            self.end_sent = True
            self.generator.io.do(0.0, lambda: self._arrive(0), self)

    def _timer(self) -> None:
        self.timer_armed = False
        self._stream()

    def _arrive(self, chunk: int) -> None:
        self.front_queue.append(chunk)
        if not self.front_busy:
            self._pump()

    def _pump(self) -> None:
        """The Ingress streams this answer one event at a time: a chunk goes through Ingress,
        proxy and client (``chunk_s`` at each) and, ``chunk_latency_s`` later, the next one
        follows (the stream waits for each send). The
        first chunk, with ``in_share / 2`` of the per-turn work, is the TTFT. The end (0) makes
        the Ingress record the turn (store call) and send the end of the answer out."""
        if not self.front_queue:
            self.front_busy = False
            return
        self.front_busy = True
        chunk = self.front_queue.popleft()
        path = self.g.p.path
        if chunk == 0:
            ingress = self.outward[1][0]
            ingress.do(0.0, lambda: self.g.store_of(self.session.index).do(path.store_call("record"), self._recorded,
                                                                           self), self)
            return
        share = path.in_share / 2 if chunk == 1 else 0.0

        def read() -> None:
            if chunk == 1:
                self.record.ttft_s = self.g.sim.now - self.sent
            self.g.sim.after(path.chunk_latency_s, self._pump)

        self._chain(self.outward[1:], share, read, self.chunk_s[1:])

    def _recorded(self) -> None:
        """The turn is stored as pending; the end of the answer goes out through Ingress, proxy
        and client."""
        self.session.update_pending = True
        self.session.pending_since = self.g.sim.now
        path = self.g.p.path
        ingress, out = self.inward[-1], self.inward[-2::-1]

        def handed_over() -> None:
            self.handed_over_at = self.g.sim.now
            transit = path.update_latency_s + path.update_transit_per_turn_s * (self.g.in_flight - 1)
            self.g.sim.after(transit, lambda: self.g.updater_for().submit(self))
            self._chain(out, path.out_share, self._ended)

        self.g.sim.after(path.stream_latency_s, lambda: self._chain([ingress], path.out_share, handed_over))

    def _ended(self) -> None:
        """The client has read the end (after every chunk before it)."""
        self.ended = self.g.sim.now
        self.record.answer_s = self.ended - self.sent
        if not math.isnan(self.commit_at):  # the update committed before the end reached the client
            self.record.lag_s = self.commit_at - self.ended
        path = self.g.p.path
        rest = 1 - path.in_share - path.out_share
        for server, seconds in self.inward:
            server.do(seconds * rest, owner=self)
        self.g.turn_ended(self)

    def stamped(self) -> None:
        """The store stamped the new version's commit time (the update lag's end)."""
        self.commit_at = self.g.sim.now
        if not math.isnan(self.ended):
            self.record.lag_s = self.commit_at - self.ended

    def committed(self) -> None:
        """The new version is written and visible: the session's next turn may claim it."""
        self.g.commits += 1
        self.g.commit_write_s += self.g.sim.now - self.commit_at
        self.session.update_pending = False
        waiting, self.session.on_commit = self.session.on_commit, None
        if waiting is not None:
            waiting()


@dataclass
class Replicas:
    """How many of each part the simulated application runs."""

    generators: int = 1
    updaters: int = 1
    ingress: int = 1
    store_shards: int = 1


class Graph:
    """The whole application and its clients for one workload."""

    def __init__(self, p: CostProfile, w: Workload, replicas: Replicas, seed: int = 0,
                 answer_tokens: Sequence[int] | None = None, stops_early: bool = True,
                 ramp_s: float = 0.0, answer_plan: Sequence[Sequence[int]] | None = None,
                 settle_poll_s: float = 0.0) -> None:
        self.p, self.w, self.replicas = p, w, replicas
        self.settle_poll_s = settle_poll_s
        """With a poll interval, a session ends once its last update is seen committed, as the
        serving benchmark's client does (it polls the session at once, then every interval)."""
        self.sim = Sim(seed, p.timing_cv, p.path.speed, p.path.wake_weight, p.path.wake_wait)
        self.answer_choices = list(answer_tokens) if answer_tokens else [w.answer_tokens]
        self.stops_early = stops_early
        self.answer_plan = answer_plan
        path = p.path
        self.stores = [Server(self.sim, path.serial("store"), path.fixed("store")) for _ in range(replicas.store_shards)]
        self.ingress = [Server(self.sim, path.serial("ingress"), path.fixed("ingress")) for _ in range(replicas.ingress)]
        self.proxies = [Server(self.sim, path.serial("proxy"), path.fixed("proxy")) for _ in range(replicas.ingress)]
        self.clients = [Server(self.sim, path.serial("client"), path.fixed("client"))]
        self.generators = [DecodeLoop(self.sim, p, w.query_tokens) for _ in range(replicas.generators)]
        self.updaters = [Updater(self.sim, p, self.store_of) for _ in range(replicas.updaters)]
        self.records: list[TurnRecord] = []
        self.polls = 0
        """The clients' session polls for their last commits (with ``settle_poll_s``)."""
        self.claims_waited, self.claim_pending_age_s = 0, 0.0
        """Claims that found the previous turn's update pending, and the seconds since the store
        recorded that turn, summed (as the store shard counts them, ``SessionStore.snapshot``)."""
        self.commits, self.commit_write_s = 0, 0.0
        """Updates committed, and the seconds from each one's commit stamp to its release, summed."""
        self.in_flight = 0
        """Turns between their request and the end of their answer at the client."""
        self.sessions = [_Session(i, w.turns) for i in range(w.sessions)]
        self.active = w.sessions
        self.last_end = 0.0
        self._stall_rate = p.stalls.get("rate_per_s", 0.0) if p.stalls.get("durations_s") else 0.0
        if self._stall_rate > 0:
            self._next_stall()
        if p.speed_trace:
            self._speed_at(self.sim.rng.randrange(len(p.speed_trace)))
        for s in self.sessions:
            self.sim.at(ramp_s * s.index / w.sessions, lambda s=s: self._start_turn(s))

    def store_of(self, session: int) -> Server:
        return self.stores[session % len(self.stores)]

    def front_for(self, session: int) -> tuple[Server, Server, Server]:
        i = session % len(self.ingress)
        return self.clients[0], self.proxies[i], self.ingress[i]

    def generator_for(self) -> DecodeLoop:
        return min(self.generators, key=lambda g: g.ongoing)

    def updater_for(self) -> Updater:
        return min(self.updaters, key=lambda u: u.ongoing)

    def _start_turn(self, s: _Session) -> None:
        s.turns_left -= 1
        index = self.w.turns - s.turns_left
        planned = self.answer_plan
        if planned is not None and index - 1 < len(planned) and s.index < len(planned[index - 1]):
            tokens = planned[index - 1][s.index]
        else:
            tokens = self.sim.rng.choice(self.answer_choices)
        self.in_flight += 1
        Turn(self, s, index, max(1, int(tokens)))

    def turn_ended(self, turn: Turn) -> None:
        self.in_flight -= 1
        self.records.append(turn.record)
        turn.session.last_turn, turn.session.last_ended = turn.record, self.sim.now
        self.last_end = max(self.last_end, self.sim.now)
        if turn.session.turns_left > 0:
            self.sim.after(self.w.think_time_s, lambda: self._start_turn(turn.session))
        elif self.settle_poll_s > 0:
            self._settle(turn.session)
        else:
            self.active -= 1

    def _settle(self, session: _Session) -> None:
        """The client polls the session (``GET /v1/sessions/{id}``) until it sees its last update
        committed, at once and then every ``settle_poll_s``; then the session is done. A poll
        passes client, proxy and Ingress to the session's store shard and back — half of each
        one's ``poll_s`` each way, the store's between, half of ``poll_latency_s`` each way — and
        sees what the store holds as it answers. Without ``poll_s`` (a profile from before polls
        were measured) a poll costs nothing and sees the commit at once."""
        path = self.p.path

        def answered(pending: bool) -> None:
            if pending:
                self.sim.after(self.settle_poll_s, lambda: self._settle(session))
            else:
                self._settled()

        if not path.poll_s:
            answered(session.update_pending)
            return
        self.polls += 1
        poll = object()  # the poll's job in each process it passes
        client, proxy, ingress = self.front_for(session.index)
        half = {role: path.poll_s.get(role, 0.0) / 2 for role in POLL_ROLES}

        def at_store() -> None:
            pending = session.update_pending

            def back() -> None:
                client.do(half["client"], lambda: answered(pending), poll)

            ingress.do(half["ingress"], lambda: proxy.do(
                half["proxy"], lambda: self.sim.after(path.poll_latency_s / 2, back), poll), poll)

        def there() -> None:
            store = self.store_of(session.index)
            self.sim.after(path.poll_latency_s / 2, lambda: store.do(2 * half["store"], at_store, poll))

        def to_ingress() -> None:
            proxy.do(half["proxy"], lambda: ingress.do(half["ingress"], there, poll), poll)

        client.do(half["client"], to_ingress, poll)

    def _settled(self) -> None:
        self.active -= 1
        self.last_end = max(self.last_end, self.sim.now)

    def _next_stall(self) -> None:
        """Stalls of the machine (the profile's measured rate and durations), while any
        session plays."""
        def stall() -> None:
            if self.active > 0:
                self.sim.cpu.freeze(self.sim.rng.choice(self.p.stalls["durations_s"]))
                self._next_stall()

        self.sim.after(self.sim.rng.expovariate(self._stall_rate), stall)

    def _speed_at(self, i: int) -> None:
        """The machine's speed from the profile's trace, one value per period from its ``i``-th
        on (cycled), while any session plays."""
        trace = self.p.speed_trace
        self.sim.cpu.set_machine_speed(trace[i % len(trace)])
        if self.active > 0:
            self.sim.after(SPEED_TRACE_PERIOD_S, lambda: self._speed_at(i + 1))

    def run(self) -> dict[str, Any]:
        self.sim.run()
        return summarise(self.records, self.last_end, self)


def _pct(values: Sequence[float], q: float) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return float(np.percentile(values, q)) if values else None


def _p50_mean(values: Sequence[float]) -> dict[str, float | None]:
    kept = [v for v in values if not math.isnan(v)]
    return {"p50_s": _pct(kept, 50), "mean_s": float(np.mean(kept)) if kept else None}


def summarise(records: Sequence[TurnRecord], wall_s: float, graph: Graph | None = None) -> dict[str, Any]:
    """The serving benchmark's headline figures for simulated turns."""
    ttft = [r.ttft_s for r in records]
    out = {
        "turns": len(records),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90), "ttft_p99_s": _pct(ttft, 99),
        "answer_p50_s": _pct([r.answer_s for r in records], 50),
        "update_lag_p50_s": _pct([r.lag_s for r in records], 50),
        "update_lag_p99_s": _pct([r.lag_s for r in records], 99),
        "waited_share": sum(r.waited_s > 0 for r in records) / len(records) if records else None,
        "tokens_per_s": sum(r.tokens for r in records) / wall_s if wall_s else None,
        "wall_s": wall_s,
        "between_turns": {"way_out": _p50_mean([r.way_out_s for r in records]),
                          "way_in": _p50_mean([r.way_in_s for r in records])},
    }
    if graph is not None and wall_s:
        out["busy"] = {
            "generator": [g.busy_s / wall_s for g in graph.generators],
            "generator_occupancy": [g.row_s / wall_s / graph.p.path.max_batch_size for g in graph.generators],
            "store": [s.busy_s / wall_s for s in graph.stores],
            "ingress": [s.busy_s / wall_s for s in graph.ingress],
            "client": graph.clients[0].busy_s / wall_s,
            "updater": max(u.busy_s for u in graph.updaters) / wall_s,
            "update_batch_mean": float(np.mean([b for u in graph.updaters for b in u.batches] or [0])),
            **_batch_phases(graph.updaters),
            "decode_iterations": sum(g.iterations for g in graph.generators),
            **_decode_ticks(graph.generators),
        }
        out["cpu_s_per_turn"] = _cpu_per_turn(graph)
    return out


def _cpu_per_turn(graph: Graph) -> dict[str, float]:
    """Each role's work (seconds at the profile's speed) per turn played, as the check reads the
    real processes' CPU time per turn; model work included (decoding, consolidating)."""
    turns = max(1, len(graph.records))
    work = {"client": sum(s.busy_s for s in graph.clients), "proxy": sum(s.busy_s for s in graph.proxies),
            "ingress": sum(s.busy_s for s in graph.ingress), "store": sum(s.busy_s for s in graph.stores),
            "generator": sum(g.io.busy_s + g.busy_s for g in graph.generators),
            "updater": sum(u.loop.busy_s + u.model_s for u in graph.updaters)}
    return {role: seconds / turns for role, seconds in work.items()}


def _event_loop_seconds(graph: Graph) -> dict[str, tuple[float, float]]:
    """Per front role, the seconds its event loop had work and the work it did (``Server.loop_s``,
    ``loop_work_s``; the busiest of a role's replicas), as the check reads each real process's
    busiest thread (its CPU time and its wait for a core)."""
    return {role: max((s.loop_s, s.loop_work_s) for s in servers) for role, servers in
            (("client", graph.clients), ("proxy", graph.proxies), ("ingress", graph.ingress), ("store", graph.stores))}


def _batch_phases(updaters: Sequence[Updater]) -> dict[str, float]:
    """A batch's mean duration and phases over the updaters (``update_batch_s``, …)."""
    batches = sum(len(u.batches) for u in updaters)
    if not batches:
        return {}
    out = {f"update_{phase}_s": sum(u.phase_s[phase] for u in updaters) / batches
           for phase in ("read", "consolidate", "commit")}
    out["update_batch_s"] = sum(u.busy_s for u in updaters) / batches
    out["update_consolidate_run_s"] = sum(u.model_wall_s for u in updaters) / batches
    out["update_consolidate_alone_s"] = sum(u.model_s for u in updaters) / batches
    received = sum(u.received for u in updaters)
    if received:
        out["update_transit_s"] = sum(u.transit_s for u in updaters) / received
        out["update_queued_s"] = sum(u.queued_s for u in updaters) / received
    gaps = sum(u.gaps for u in updaters)
    if gaps:
        out["update_gap_s"] = sum(u.gap_s for u in updaters) / gaps
    return out


def _decode_ticks(generators: Sequence[DecodeLoop]) -> dict[str, float]:
    """A decoding iteration's mean batch and the mean wall seconds of its model work, as the
    Generator's counters give them (``decode_rows_mean``, ``decode_tick_s``), what that work
    takes alone (``decode_tick_alone_s``: their ratio is the slowdown the shared CPU gave it), and
    the iteration's wall seconds with the hops to and from the worker thread (``decode_iteration_s``)."""
    n = sum(g.iterations for g in generators)
    if not n:
        return {}
    return {"decode_rows_mean": sum(g.rows_summed for g in generators) / n,
            "decode_tick_s": sum(g.tick_s for g in generators) / n,
            "decode_tick_alone_s": sum(g.busy_s for g in generators) / n,
            "decode_iteration_s": sum(g.iteration_s for g in generators) / n}


def simulate(p: CostProfile, w: Workload, replicas: Replicas | None = None, seed: int = 0,
             answer_tokens: Sequence[int] | None = None, stops_early: bool = True, rounds: int = 1,
             ramp_s: float = 0.0, answer_plan: Sequence[Sequence[int]] | None = None,
             settle_poll_s: float = 0.0) -> dict[str, Any]:
    """Play ``w`` (``rounds`` times with fresh sessions, pooled) on ``replicas`` and return the
    benchmark's figures (TTFT p50/p99, answer p50, update lag p50/p99, waited share, tokens/s).
    ``answer_tokens``: answer lengths to draw from (default: the workload's, always);
    ``stops_early``: answers end by an end-of-answer step (one step after the last token);
    ``answer_plan[turn - 1][round × sessions + session]``: the answer length of each turn when
    known (the model's greedy answers to the benchmark's seeded queries); ``settle_poll_s``: each
    session ends when its last update is seen committed, polled at that interval (the serving
    benchmark's rounds end so), else when its last answer ends."""
    records, wall, iterations, polls = [], 0.0, 0, 0
    loops: dict[str, list[float]] = {}
    waits = dict.fromkeys(("claims_waited", "claim_pending_age_s", "commits", "commit_write_s"), 0.0)
    for r in range(rounds):
        plan = None if answer_plan is None else [row[r * w.sessions:(r + 1) * w.sessions] for row in answer_plan]
        g = Graph(p, w, replicas or Replicas(), seed + r, answer_tokens, stops_early, ramp_s, plan, settle_poll_s)
        out = g.run()
        records += g.records
        wall += out["wall_s"]
        iterations += out["busy"]["decode_iterations"]
        polls += g.polls
        for key in waits:
            waits[key] += getattr(g, key)
        for role, (had_work, worked) in _event_loop_seconds(g).items():
            total = loops.setdefault(role, [0.0, 0.0])
            total[0] += had_work
            total[1] += worked
    result = summarise(records, wall, g)
    result["busy"]["decode_iterations"] = iterations  # every round's (the other busy figures: the last's)
    turns = max(1, len(records))
    result["event_loop_s_per_turn"] = {role: {"cpu_s": worked / turns, "wait_s": max(0.0, had_work - worked) / turns}
                                       for role, (had_work, worked) in loops.items()}
    result["session_polls"] = polls
    waited, commits = int(waits["claims_waited"]), int(waits["commits"])
    result["store_waits"] = {
        "claims_waited": waited, "commits": commits,
        "claim_pending_age_s": waits["claim_pending_age_s"] / waited if waited else None,
        "commit_write_s": waits["commit_write_s"] / commits if commits else None}
    return result
