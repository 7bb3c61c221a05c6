"""Capacity model of the RxT serving graph: from a cost profile to replicas, bytes and latency.

A :class:`CostProfile` holds what one machine costs (measured by ``jobs/capacity.py profile``,
or written down as an assumption and marked so): the model's three operations by batch size,
the STM's stored size, the session-storage tiers, and the serving path's own costs (proxy,
Ingress, store shard, the Generator's and MemoryUpdater's Ray side) per turn. A
:class:`Workload` says what users do. :func:`plan` turns the two into replica counts for a TTFT
p99 objective, tokens/s, update lag, and the bytes and operations the session store and Ray's
object store see; :mod:`rxt_dist.eval.simulate` plays the same graph event by event and is what
the replica counts are checked with. docs/scaling.md explains the model and its numbers.

All times are wall seconds on the profiled machine.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY_INLINE_BYTES = 100 * 1024
"""Ray passes call arguments and results up to this size inline with the call
(``max_direct_call_object_size``); larger ones go through the object store."""
STALL_THRESHOLD_S = 0.03
"""An oversleep beyond this counts as a stall of the machine (a busy shared host)."""
META_BYTES = 700
"""A session's ``meta.json`` with a pending turn (ids of a ~50-token query and a short
answer); measured on the store's files, rounded up."""
STREAM_ROLES = ("generator", "ingress", "proxy", "client")
"""The processes every streamed chunk passes, in order."""
POLL_ROLES = ("client", "proxy", "ingress", "store")
"""The processes a session poll passes (``GET /v1/sessions/{id}``: the store's ``info``), in
order (``ServingPath.poll_s``)."""
STORE_CALLS = ("claim", "record", "read", "commit")
"""The store-shard calls of a turn (``begin_turn``, ``finish_turn`` with the move of the
transcript index entry, ``update_input``, ``commit_update``), by their names in
``ServingPath.store_call_weight``; the read only when the MemoryUpdater does not hold the
session's STM (``ServingPath.updater_read_share``)."""


def _interp(table: dict[int, float], x: float) -> float:
    """Piecewise-linear ``table`` at ``x``; below the first key scaled toward 0 at x = 0,
    beyond the last key extrapolated along the last segment."""
    keys = sorted(table)
    if x <= keys[0]:
        return table[keys[0]] * max(x, 0.0) / keys[0]
    if len(keys) == 1:
        return table[keys[0]] * x / keys[0]
    i = min(bisect.bisect_left(keys, x), len(keys) - 1)
    lo, hi = keys[i - 1], keys[i]
    slope = (table[hi] - table[lo]) / (hi - lo)
    return table[lo] + slope * (x - lo)


def monotone(table: dict[int, float]) -> dict[int, float]:
    """The largest non-decreasing table below ``table``: a batch never costs less than a
    smaller one, so a point above a larger batch's cost is a measurement the machine's other
    load disturbed, and the smaller later value is kept."""
    out, low = {}, math.inf
    for k in sorted(table, reverse=True):
        low = min(low, table[k])
        out[k] = low
    return dict(sorted(out.items()))


APP_BATCHING = ("max_batch_size", "update_batch_size", "update_batch_wait_s")
"""The application's batching settings (``serve/args.py``) that :class:`ServingPath` holds too: the
serving benchmark lists them in its report, and a measured profile takes them from there."""


@dataclass
class ServingPath:
    """The serving path's own costs per turn (wall seconds), beside the model's."""

    client_s: float = 0.0
    """The HTTP client's work for one turn (send, parse the stream)."""
    proxy_s: float = 0.0
    """Serve's HTTP proxy, per turn."""
    ingress_s: float = 0.0
    """The Ingress replica (parse, tokenize, claim, stream SSE, record), per turn."""
    store_op_s: float = 0.0
    """One store-shard call on average (of ``STORE_CALLS``), persistence included."""
    store_call_weight: dict[str, float] = field(default_factory=dict)
    """Per store call of a turn (``STORE_CALLS``): its cost relative to ``store_op_s`` (mean 1),
    measured by timing each kind of call alone (a claim and a read only read memory; a record
    and a commit write the session to storage); empty: every call costs ``store_op_s``."""
    generator_io_s: float = 0.0
    """The Generator replica's work outside the model per turn (Ray call, STM bytes, streaming)."""
    generator_tick_s: float = 0.0
    """The decoding thread's own work per loop iteration beyond the model's step and prefill
    (rows joining and leaving the batch, token events): measured as the thread's CPU per
    iteration in calibration level A less the model operations' CPU; 0.5 ms at one row on this
    machine, a third of the iteration. 0 in a profile from before it was measured (it then
    counted in ``generator_io_s``)."""
    generator_admit_s: float = 0.0
    """The decoding thread's own work per admitted request beyond the prefill (its STM stacked,
    its row joined to the running batch): with ``generator_tick_s``, split from the thread's CPU
    in calibration levels A and C (long and short answers); 0 where not measured."""
    updater_item_s: float = 0.0
    """The MemoryUpdater's work outside the model per update (Ray calls, STM bytes)."""
    generator_chunk_s: float = 0.0
    """The Generator's event-loop work per streamed token (handing it to Ray's stream). The
    decode loop waits for it: the next step starts once the loop has forwarded the last one's
    tokens, so an iteration of B rows costs ``decode_step(B) + B × generator_chunk_s``."""
    chunk_s: dict[str, float] = field(default_factory=dict)
    """Per process role on the answer's stream (generator, ingress, proxy, client): its work per
    streamed chunk — the Generator hands one item of tokens to Ray's stream, the Ingress makes
    it a server-sent event, the proxy forwards it, the client parses it — beside the per-turn
    work above. With ``stream_interval_s`` 0 each token is one chunk (measured: the answers'
    chunks equal their tokens at every load); with time slicing every role's part is per chunk
    (the Generator's stream sleeps until its chunk is due, the tokens decoded meanwhile waiting
    without waking it: ``rxt_dist.serving.decode_loop._Inbox``, since 2026-12-05). Fitted from
    two calibration levels whose answers differ in length; empty: all of a turn's work counts
    per turn, whatever its length."""
    poll_s: dict[str, float] = field(default_factory=dict)
    """Per process role on a session poll's way (:data:`POLL_ROLES`): its work per poll — the
    serving benchmark's client, once a session's last answer has ended, asks for the session
    (``GET /v1/sessions/{id}``) until its last update has committed, every ``poll_interval_s``,
    and a level's round ends with the last of them. Measured on polls of a session of its own
    (``rxt_dist.eval.app_readings.session_poll_costs``) and taken out of the calibration levels'
    per-turn work. Empty (a profile from before polls were measured): a simulated poll costs
    nothing and sees the commit at once."""
    poll_latency_s: float = 0.0
    """A poll's fixed latency beyond that work (its median wall time at rest less the work)."""
    stream_interval_s: float = 0.0
    """The application's ``stream_interval_s``: after an answer's first token the Generator sends
    the tokens decoded meanwhile at most this often, in one chunk (0: one chunk per token)."""
    stream_chunks_per_s: float = 0.0
    """The application's ``stream_chunks_per_s``: a Generator replica's open answers share this
    many chunks a second, each answer's interval stretched to ``streams / stream_chunks_per_s``
    when that is longer (0: no budget)."""
    updater_batch_s: float = 0.0
    """The MemoryUpdater's work outside the model per *batch* (gathering its calls, handing the
    batch to the consolidating thread, sending its STMs ahead, answering its calls), half as its
    commits start (ahead of their calls on the replica's event loop, where the application's
    batches spend about half of their CPU outside the model) and half after them, on the event
    loop while the batcher waits for the next batch (none before its reads: the application's
    read phase is short). When set, ``updater_item_s`` is
    each update's own work and the updater's work is not also shared through ``fixed_share``.
    Fitted from the CPU per update at two batch sizes (calibration levels A and B, with the
    updater's batch counters)."""
    updater_read_share: float = 1.0
    """The share of updates for which the MemoryUpdater read the session's STM and turn from the
    store (``update_input``) in the calibration the path was fitted on; the others it held (it
    computed that STM, and the Ingress sent the turn with the update). 1: the application's
    updaters keep no STMs and read on every update, and so does the simulation; below 1 a
    simulated updater replica reads only for the sessions it does not hold."""
    consolidate_thread_factor: float = 1.0
    """The MemoryUpdater's consolidating thread's CPU per batch over the profile's consolidation
    of that batch: the thread also turns each STM from and to bytes and stacks and splits the
    batch, on the batch's path. Measured at calibration level B (``consolidate_cpu_mean_s``)
    and taken out of ``updater_item_s`` / ``updater_batch_s``
    (:func:`~rxt_dist.eval.calibrate.with_consolidating_thread`); 1: the profile's alone."""
    updater_in_batch: bool = True
    """Whether two thirds of each update's ``updater_item_s`` (its STM read and its commit) are
    done inside its batch, as ``rxt_dist.serving.updates.apply_updates`` does — gathered with
    the batch's other calls, through the replica's process — rather than all of it on receipt
    of the call."""
    in_share: float = 1 / 3
    """Share of that per-turn work (client, proxy, Ingress, Generator's Ray side) on the path
    to the first token (half before the Generator, half carrying the first token back)."""
    out_share: float = 1 / 3
    """Share between the last token and the client's end of answer; the rest is done after
    the answer ended (recording, dispatching the update, bookkeeping): it occupies the
    process without delaying this answer."""
    request_latency_s: float = 0.0
    """Fixed latency before a request reaches the Generator beyond the work above (what the
    calibration's TTFT shows that the work does not explain)."""
    stream_latency_s: float = 0.0
    """Fixed latency from the last token to the client's end of answer, likewise."""
    chunk_latency_s: float = 0.0
    """Fixed latency per streamed chunk beyond its work: the Ingress sends an answer's events one
    after another, each once the last has gone out (fitted, with ``chunk_s``, to the
    calibration's answer time at two answer lengths)."""
    update_latency_s: float = 0.0
    """Fixed latency from the end of an answer to the MemoryUpdater receiving its update."""
    update_transit_per_turn_s: float = 0.0
    """The update call's further way to the MemoryUpdater for each turn in flight when it leaves:
    between two steps of the call (the Ingress's routing and sending, the MemoryUpdater's taking
    it in) each event loop passes every other turn's waiting callbacks — measured from the
    dispatcher's stamp to the updater's receipt, 2 ms at 1 session and 37 ms at 32 on this
    machine. Fitted to the busy calibration level's transit (``fit_update_transit``); 0 in a
    profile from before it was measured."""
    cores: float = 1.0
    """CPU cores the machine has, shared by the serving processes with each other and with the
    machine's other load."""
    other_load: float = 0.0
    """The other programs' load on each core, in busy threads of normal priority: a lone busy
    thread got 1 / (1 + other_load) of a core when the profile was measured (slowdown − 1).
    Niced programs weigh little, which is why this is measured and not read from the load
    average. 0 on a machine of its own."""
    serial_share: dict[str, float] = field(default_factory=dict)
    """Per process role (client, proxy, ingress, store, generator, updater): the share of its
    work its busiest thread does (one piece after another); the rest runs alongside on Ray's
    own threads. Measured per thread in the calibration run; 1 (all serial) when missing."""
    fixed_share: dict[str, float] = field(default_factory=dict)
    """Per process role: the share of its per-turn work that stays when many turns are in the
    process at once. The rest is per wake-up (an event loop that wakes for one message handles
    several when they queue), so a turn's job costs ``fixed + (1 − fixed) / turns`` of the
    one-at-a-time figure, ``turns`` counting the turns with a job in the process. Fitted by
    simulating a second calibration level with many sessions until it gives back that level's
    CPU per turn (``rxt_dist.eval.calibrate.fit_fixed_shares``); 1 (no sharing) when missing."""
    wake_weight: float = 1.0
    """How the CPU favours the serving processes' short pieces of work (a thread that wakes for
    a message and sleeps again) over the model's long ones (decoding, consolidating: a thread
    that computes without sleeping) when more threads want a core than there are: their
    weight in the sharing, the model's being 1. Linux's scheduler runs a thread that has slept
    ahead of those that have not; 1 shares equally; below 1 the model's threads get more than an
    equal share (what the decoding thread's measured slowdown asks for on this project's VMs).
    Fitted by simulating the busy calibration level until it gives back its decoding thread's
    slowdown (``fit_wake_weight_to_decoding``) or, where not recorded, its update lag
    (``fit_wake_weight``)."""
    wake_wait_s: float = 0.0
    """How long a thread that wakes while every core is taken waits for one, per thread beyond
    the cores (:meth:`wake_wait`). Processor sharing alone lets a woken piece of work start at
    once at its share; the scheduler runs threads in slices, so a thread woken for a short piece
    first waits for a slice: the Generator's hops between its event loop and its decoding thread
    measured 0.2 ms with a core free and 1–2.7 ms at the busy calibration level and at
    32 sessions, where processor sharing gives 0.02–0.3 ms. Fitted by simulating the busy
    calibration level until it gives back those hops (``fit_wake_wait``); 0 (no wait) in a
    profile from before they were fitted."""
    max_batch_size: int = 32
    """Sequences one Generator replica decodes together (``max_batch_size``)."""
    update_batch_size: int = 16
    update_batch_wait_s: float = 0.0
    """The three above as the application runs them (``serve/args.py``; a measured profile takes
    them from the application it calibrated)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            tables = ("serial_share", "fixed_share", "chunk_s", "store_call_weight", "poll_s")
            if f.name not in tables and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name}={getattr(self, f.name)}: must be ≥ 0")
        for name in ("serial_share", "fixed_share"):
            for role, share in getattr(self, name).items():
                if not 0 <= share <= 1:
                    raise ValueError(f"{name}[{role!r}]={share}: must be between 0 and 1")
        for call, weight in self.store_call_weight.items():
            if call not in STORE_CALLS or weight < 0:
                raise ValueError(f"store_call_weight[{call!r}]={weight}: calls are {STORE_CALLS}, weights ≥ 0")
        for role, seconds in self.chunk_s.items():
            if seconds < 0:
                raise ValueError(f"chunk_s[{role!r}]={seconds}: must be ≥ 0")
        for role, seconds in self.poll_s.items():
            if role not in POLL_ROLES or seconds < 0:
                raise ValueError(f"poll_s[{role!r}]={seconds}: roles are {POLL_ROLES}, seconds ≥ 0")
        if self.updater_read_share > 1:
            raise ValueError(f"updater_read_share={self.updater_read_share}: a share, at most 1")
        if self.in_share + self.out_share > 1 + 1e-9:
            raise ValueError(f"in_share={self.in_share} + out_share={self.out_share}: must be ≤ 1")
        if self.cores <= 0:
            raise ValueError(f"cores={self.cores}: must be > 0")
        if not self.wake_weight > 0:
            raise ValueError(f"wake_weight={self.wake_weight}: must be > 0 (1: equal sharing)")

    def serial(self, role: str) -> float:
        return self.serial_share.get(role, 1.0)

    def fixed(self, role: str) -> float:
        return self.fixed_share.get(role, 1.0)

    def chunk(self, role: str) -> float:
        return self.chunk_s.get(role, 0.0)

    def store_call(self, call: str) -> float:
        """Seconds of one store call of kind ``call`` (``STORE_CALLS``)."""
        return self.store_op_s * self.store_call_weight.get(call, 1.0)

    def stream_interval(self, streams: int) -> float:
        """The least time between two chunks of an answer while ``streams`` answers stream from
        its Generator replica (``DecodeLoop.interval_s``)."""
        if not self.stream_chunks_per_s:
            return self.stream_interval_s
        return max(self.stream_interval_s, streams / self.stream_chunks_per_s)

    @property
    def updater_keeps_stms(self) -> bool:
        return self.updater_read_share < 1.0

    def store_calls_per_turn(self, read_share: float) -> float:
        """A turn's store calls in units of ``store_op_s``: claim, record and commit, and the
        read for a share ``read_share`` of the updates."""
        weight = self.store_call_weight.get
        return weight("claim", 1.0) + weight("record", 1.0) + weight("commit", 1.0) + read_share * weight("read", 1.0)

    def updater_calls_per_update(self) -> float:
        """The Ray calls an update makes at the MemoryUpdater in the calibration (its receipt,
        its commit, and the read on ``updater_read_share`` of them): ``updater_item_s`` is
        split over these."""
        return 2.0 + self.updater_read_share

    def speed(self, busy: int) -> float:
        """Speed of each of ``busy`` busy processes relative to one busy alone (the profile's
        wall times are those of one alone): up to one per core each runs as fast as alone;
        beyond, they share the cores with each other and the other load (``1 / (busy / cores
        + other_load)`` of a core each, against ``1 / (1 + other_load)`` alone)."""
        if busy <= self.cores:
            return 1.0
        return (1 + self.other_load) / (busy / self.cores + self.other_load)

    def wake_wait(self, busy: int) -> float:
        """The mean wait for a core of a thread that wakes while ``busy`` pieces of work share
        the CPU: none while a core is free (``busy`` and the other load's threads fewer than the
        cores), else ``wake_wait_s`` × the threads beyond the cores, the woken one counted, per core."""
        excess = busy + self.other_load * self.cores + 1 - self.cores
        return self.wake_wait_s * excess / self.cores if excess > 0 else 0.0


@dataclass
class CostProfile:
    """What one machine costs; tables map a batch size (or a query length) to seconds."""

    source: str
    """Where the numbers come from: ``measured …`` or ``ASSUMED …`` (until measured)."""
    model: dict[str, Any]
    """What was profiled: name, dims, STM shape, parameters."""
    query_tokens: int
    """Prompt length ``prefill_s`` was measured at."""
    answer_tokens: int
    """Answer length ``consolidate_s`` was measured with."""
    decode_step_s: dict[int, float]
    prefill_s: dict[int, float]
    prefill_length_s: dict[int, float]
    """Prefill of one query of T tokens (scales ``prefill_s`` to other query lengths)."""
    consolidate_s: dict[int, float]
    stm_bytes: dict[str, int]
    """Stored bytes of one session's STM by dtype."""
    storage: dict[str, Any] = field(default_factory=dict)
    """Write/read seconds of one STM per storage tier (``profile_storage``)."""
    path: ServingPath = field(default_factory=ServingPath)
    timing_cv: float = 0.0
    """Coefficient of variation of one operation's time (the simulation's jitter)."""
    stalls: dict[str, Any] = field(default_factory=lambda: {"rate_per_s": 0.0, "durations_s": []})
    """Moments the whole machine stopped for us (a probe thread's 5 ms sleep overslept by more
    than ``STALL_THRESHOLD_S``): how often per second, and how long each one was."""
    speed_trace: list[float] = field(default_factory=list)
    """The machine's speed over time relative to its average, one value per
    ``SPEED_TRACE_PERIOD_S`` (:func:`speed_trace`, from the speed probe's pieces while the
    calibration played): the simulated CPU runs at that speed, the trace replayed from a seeded
    point and cycled. Empty: a steady machine."""
    assumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Provenance: load average, slowdown, the calibration run's figures."""

    def __post_init__(self) -> None:
        if isinstance(self.path, dict):
            self.path = ServingPath(**self.path)
        for name in ("decode_step_s", "prefill_s", "prefill_length_s", "consolidate_s"):
            table = {int(k): float(v) for k, v in getattr(self, name).items()}
            if not table or min(table) < 1 or min(table.values()) < 0:
                raise ValueError(f"{name}={table}: needs ≥ 1 entry, keys ≥ 1, times ≥ 0")
            setattr(self, name, monotone(table))

    def in_environment(self, slowdown: float, stalls: dict[str, Any] | None = None,
                       speed_ratio: float | None = None, trace: list[float] | None = None) -> CostProfile:
        """This profile on the same machine under another load: every time that is work (model
        operations, the serving path's work and its fixed latencies) scaled from the slowdown
        the profile was measured at to ``slowdown``, the other load and the stalls as measured
        now (both slowdowns by :func:`rxt_dist.eval.profile.measure_environment`); with
        ``speed_ratio`` (a reading of the machine's speed now over the same reading when the
        profile was measured: the CPU time the same work takes now, relative;
        :func:`rxt_dist.eval.simcheck.speed_ratio`), scaled by it too — the work per CPU second
        the machine lost or gained since; with ``trace`` (:func:`speed_trace` of the speed probe
        read meanwhile), the machine's speed from moment to moment as it was then."""
        base = self.extra.get("environment", {}).get("slowdown", 1.0)
        f = slowdown / base
        if speed_ratio:
            f *= speed_ratio

        def scaled(table: dict[int, float]) -> dict[int, float]:
            return {k: v * f for k, v in table.items()}

        work = {name: getattr(self.path, name) * f for name in (
            "client_s", "proxy_s", "ingress_s", "store_op_s", "generator_io_s", "generator_tick_s", "generator_admit_s",
            "updater_item_s", "updater_batch_s",
            "request_latency_s", "stream_latency_s", "chunk_latency_s", "update_latency_s", "poll_latency_s")}
        path = dataclasses.replace(self.path, **work, chunk_s={r: v * f for r, v in self.path.chunk_s.items()},
                                   poll_s={r: v * f for r, v in self.path.poll_s.items()},
                                   other_load=max(0.0, slowdown - 1))
        return dataclasses.replace(
            self, decode_step_s=scaled(self.decode_step_s), prefill_s=scaled(self.prefill_s),
            prefill_length_s=scaled(self.prefill_length_s), consolidate_s=scaled(self.consolidate_s), path=path,
            stalls=stalls if stalls is not None else self.stalls,
            speed_trace=list(trace) if trace is not None else self.speed_trace,
            extra={**self.extra, "environment": {"slowdown": slowdown}, "profiled_at_slowdown": base})

    def decode_step(self, batch: float) -> float:
        """One decoding step of ``batch`` sequences (0 for an empty batch)."""
        return _interp(self.decode_step_s, batch) if batch > 0 else 0.0

    def prefill(self, batch: float, query_tokens: int | None = None) -> float:
        """Admitting ``batch`` queries of ``query_tokens`` tokens."""
        if batch <= 0:
            return 0.0
        scale = 1.0
        if query_tokens is not None and query_tokens != self.query_tokens:
            scale = _interp(self.prefill_length_s, query_tokens) / _interp(self.prefill_length_s, self.query_tokens)
        return _interp(self.prefill_s, batch) * scale

    def persist_s(self, dtype: str = "float32") -> float:
        """Seconds of the store's write of a committed version (after its commit time is
        stamped): the STM and the meta that names it, each written to a temporary name and
        renamed, taken as two STM writes of the local-disk tier (``storage``; 0 when not
        measured)."""
        return 2 * self.storage.get(dtype, {}).get("local_disk", {}).get("write_s", 0.0)

    def consolidate(self, batch: float) -> float:
        return _interp(self.consolidate_s, batch) if batch > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostProfile:
        """From :meth:`to_dict`'s output (other top-level keys, such as the ``command`` a
        profile file records, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_file(cls, path: str | Path) -> CostProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not a cost profile ({exc})") from None


SPEED_TRACE_PERIOD_S = 0.1
"""Seconds per value of a :attr:`CostProfile.speed_trace` (the speed probe's period)."""
MIN_TRACE_PIECES = 20
"""Fewer probe pieces than this make no trace (too short to say)."""


def speed_trace(pieces: Sequence[float]) -> list[float]:
    """The machine's speed at each of the speed probe's pieces relative to its typical speed
    over all of them: their geometric mean piece time ÷ each piece's (0.8 where the same work
    took 25% longer), so that slow and fast stretches balance (the mean log speed is 0) and the
    simulation runs at the profile's speed in the middle.
    The probe times a fixed piece of work in CPU seconds every ``SPEED_TRACE_PERIOD_S``; on this
    VM its pieces vary by ±25% from one to the next even with nothing else running, and
    neighbouring pieces go together (slow and fast stretches of a fraction of a second to
    seconds that every process on the machine shares), which a jitter drawn for each job
    alone cannot give. Empty for fewer than ``MIN_TRACE_PIECES`` pieces (too short to say)."""
    values = [float(x) for x in pieces if x and x > 0]
    if len(values) < MIN_TRACE_PIECES:
        return []
    typical = statistics.geometric_mean(values)
    return [round(typical / x, 4) for x in values]


@dataclass
class Workload:
    """What the users of a deployment do."""

    sessions: int
    """Concurrent sessions (each a user in a conversation)."""
    think_time_s: float = 0.0
    """Pause between the end of an answer and the user's next query."""
    query_tokens: int = 48
    answer_tokens: int = 32
    turns: int = 8
    """Turns per session (conversation length)."""

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError(f"sessions={self.sessions}: must be ≥ 1")
        for name in ("query_tokens", "answer_tokens", "turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.think_time_s < 0:
            raise ValueError(f"think_time_s={self.think_time_s}: must be ≥ 0")


# -- closed-form bounds (operational laws) ---------------------------------------------------------

def reads_per_update(p: CostProfile, w: "Workload") -> float:
    """The share of ``w``'s updates that read the store: each session's first one where the
    MemoryUpdater keeps the STMs it computed (one replica), else all."""
    return 1.0 / w.turns if p.path.updater_keeps_stms else 1.0


def path_cpu_per_turn(p: CostProfile, answer_tokens: float, read_share: float = 1.0) -> float:
    """Seconds of the serving path's own work per turn of ``answer_tokens`` streamed tokens
    (client excluded: users bring their own), with the updater reading the store for a share
    ``read_share`` of the updates."""
    path = p.path
    per_chunk = sum(path.chunk(role) for role in STREAM_ROLES if role != "client")
    updater = path.updater_item_s * (2.0 + read_share) / path.updater_calls_per_update()
    return (path.proxy_s + path.ingress_s + path.store_calls_per_turn(read_share) * path.store_op_s
            + path.generator_io_s + (answer_tokens + 1) * path.generator_tick_s + path.generator_admit_s + updater
            + answer_tokens * per_chunk)


def bounds(p: CostProfile, w: Workload) -> dict[str, float]:
    """What no queueing can beat: the unloaded turn, the turn rate of ``w`` at that cycle, the
    most tokens/s one Generator replica and the most updates/s one MemoryUpdater replica can
    give (full batches), and the replicas that rate needs at 100% busy."""
    path = p.path
    front = path.client_s + path.proxy_s + path.ingress_s
    first_token = sum(path.chunk(role) for role in STREAM_ROLES)
    ttft = (path.in_share * (front + path.generator_io_s) + path.request_latency_s + path.store_call("claim")
            + p.prefill(1, w.query_tokens) + path.generator_tick_s + path.generator_admit_s + first_token)
    answer = (ttft + w.answer_tokens * (p.decode_step(1) + path.generator_tick_s) + path.store_call("record")
              + path.out_share * front)
    cycle = w.think_time_s + answer
    turns_per_s = w.sessions / cycle
    b, u = path.max_batch_size, path.update_batch_size
    tokens_per_replica = b / (p.decode_step(b) + path.generator_tick_s)
    updates_per_replica = min(u / p.consolidate(u), 1 / path.updater_item_s if path.updater_item_s else math.inf)
    return {"ttft_unloaded_s": ttft, "answer_unloaded_s": answer, "cycle_s": cycle, "turns_per_s": turns_per_s,
            "tokens_per_s": turns_per_s * w.answer_tokens,
            "max_tokens_per_s_per_generator": tokens_per_replica,
            "max_updates_per_s_per_updater": updates_per_replica,
            "generators_at_full_busy": turns_per_s * w.answer_tokens / tokens_per_replica,
            "updaters_at_full_busy": turns_per_s / updates_per_replica,
            "path_cpu_cores": turns_per_s * path_cpu_per_turn(p, w.answer_tokens, reads_per_update(p, w))}


# -- bytes and operations -----------------------------------------------------------------------

def storage_traffic(p: CostProfile, turns_per_s: float, stored_sessions: int, dtype: str = "float32"
                    ) -> dict[str, float]:
    """Session-store bytes and write/read operations, and Ray object-store bytes per turn.

    Per turn the store writes the pending turn (meta), then the new STM and the meta that
    names it, and deletes the old STM: 3 writes + 1 delete. It reads from storage only when a
    session is not in a shard's memory (two reads: meta and STM). Through Ray each turn moves
    the STM four times (store → Ingress → Generator; store → MemoryUpdater → store); objects
    above ``RAY_INLINE_BYTES`` go through the object store."""
    stm = p.stm_bytes[dtype]
    per_session = stm + META_BYTES
    ray_bytes = 4 * stm
    return {
        "stm_bytes": stm,
        "stored_bytes": stored_sessions * per_session,
        "write_ops_per_s": 3 * turns_per_s,
        "delete_ops_per_s": turns_per_s,
        "write_bytes_per_s": turns_per_s * (stm + 2 * META_BYTES),
        "read_ops_per_s_per_miss_rate": 2 * turns_per_s,
        "ray_bytes_per_turn": ray_bytes,
        "ray_object_store_bytes_per_turn": ray_bytes if stm > RAY_INLINE_BYTES else 0,
    }


