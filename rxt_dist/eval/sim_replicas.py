"""The simulated replicas of the serving graph's two model deployments: a Generator's
continuous batch (:class:`DecodeLoop`) and a MemoryUpdater's batches (:class:`Updater`), as
:mod:`rxt_dist.eval.simulate` (steps 3 and 6 of its docstring) drives them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rxt_dist.eval.capacity import CostProfile
from rxt_dist.eval.des import Server, Sim

if TYPE_CHECKING:
    from rxt_dist.eval.simulate import Turn


@dataclass
class Seq:
    turn: Turn
    tokens_left: int
    first: bool = True


class DecodeLoop:
    """A Generator replica's continuous batch (``rxt_dist.serving.decode_loop``)."""

    def __init__(self, sim: Sim, p: CostProfile, query_tokens: int) -> None:
        self.sim, self.p, self.query_tokens = sim, p, query_tokens
        self.io = Server(sim, p.path.serial("generator"), p.path.fixed("generator"))
        """The replica's event loop (Ray calls, streaming), beside the decoding thread."""
        self.waiting: deque[Seq] = deque()
        self.rows: list[Seq] = []
        self.running = False
        self.ongoing = 0
        self.busy_s = 0.0
        self.row_s = 0.0
        """Rows × seconds decoded: over wall time, the mean batch."""
        self.max_rows = 0
        self.iterations = 0
        self.rows_summed = 0
        """Sequences stepped or admitted, summed over iterations."""
        self.tick_s = 0.0
        """Wall seconds of the iterations' model work (on the shared CPU: its wait for a core included)."""
        self.iteration_s = 0.0
        """Wall seconds of the iterations from their handing to the worker thread to the tokens' taking
        up on the event loop: the model work and the two hops (``LoopStats.iteration_s``)."""

    def submit(self, seq: Seq) -> None:
        self.waiting.append(seq)
        if not self.running:
            self._iterate()

    def _iterate(self) -> None:
        if not self.waiting and not self.rows:
            self.running = False
            return
        self.running = True
        admit = []
        while self.waiting and len(self.rows) + len(admit) < self.p.path.max_batch_size:
            admit.append(self.waiting.popleft())
        stepping = list(self.rows)
        self.max_rows = max(self.max_rows, len(stepping) + len(admit))
        seconds = self.sim.jitter(self.p.decode_step(len(stepping)) + self.p.prefill(len(admit), self.query_tokens)
                                  + (len(stepping) + len(admit)) * self.p.path.generator_chunk_s
                                  + self.p.path.generator_tick_s + len(admit) * self.p.path.generator_admit_s)
        self.busy_s += seconds
        self.iterations += 1
        self.rows_summed += len(stepping) + len(admit)
        self.row_s += seconds * (len(stepping) + len(admit))
        handed = self.sim.now

        def start() -> None:
            # the worker thread woke for the iteration (``asyncio.to_thread``); its tokens are handed
            # over on the replica's event loop, behind what waits there
            started = self.sim.now

            def computed() -> None:
                self.tick_s += self.sim.now - started
                self.io.do(0.0, lambda: self._emit(stepping, admit, handed))

            self.sim.cpu.run(seconds, computed, hog=True)

        self.sim.wake(start)

    def _emit(self, stepping: list[Seq], admit: list[Seq], handed: float) -> None:
        self.iteration_s += self.sim.now - handed
        self.rows = [s for s in stepping + admit if s.tokens_left > 1]
        for seq in stepping + admit:
            seq.tokens_left -= 1
            seq.turn.token(first=seq.first, last=seq.tokens_left == 0)
            seq.first = False
            if seq.tokens_left == 0:
                self.ongoing -= 1
        self._iterate()


class Updater:
    """A MemoryUpdater replica: ``UpdateBatcher`` batches, one at a time."""

    def __init__(self, sim: Sim, p: CostProfile, store_of: Callable[[int], Server]) -> None:
        self.sim, self.p, self.store_of = sim, p, store_of
        self.queue: deque[Turn] = deque()
        fixed = 1.0 if p.path.updater_batch_s > 0 else p.path.fixed("updater")  # per batch: fitted apart
        self.loop = Server(sim, p.path.serial("updater"), fixed)
        self.busy = False
        self.timer_armed = False
        self.ongoing = 0
        self.batches: list[int] = []
        self.busy_s = 0.0
        self.model_s = 0.0
        """Seconds of consolidation (the model's work, beside the process's own in ``loop``)."""
        self.model_wall_s = 0.0
        """Wall seconds of it (on the shared CPU: its wait for a core included)."""
        self.phase_s = {"read": 0.0, "consolidate": 0.0, "commit": 0.0}
        """Seconds in each phase of a batch, as ``apply_updates`` times them."""
        self._started = 0.0
        call_s = p.path.updater_item_s / p.path.updater_calls_per_update()  # one Ray call's share of it
        in_batch = p.path.updater_in_batch
        self.receipt_s = call_s if in_batch else p.path.updater_item_s
        self.in_batch_s = call_s if in_batch else 0.0
        """Each of the batch's calls (the read, the commit)."""
        self.transit_s = 0.0
        """Seconds from the Ingress's handing over of each update to its receipt here."""
        self.queued_s = 0.0
        """Seconds from each update's receipt to its batch's start."""
        self.received = 0
        self.gaps = 0
        self.gap_s = 0.0
        """Of the batches whose items already waited when the batch before had its commits
        answered, the seconds from then to their start (``UpdateBatcher.stats``)."""
        self._carried_since: float | None = None
        self.held: set[int] = set()
        """Sessions whose STM this replica computed: their next update reads nothing (when the
        application's updaters keep STMs, ``ServingPath.updater_keeps_stms``)."""

    def submit(self, turn: Turn) -> None:
        """The update call's share of the update's own work (Ray, the replica's event loop) is
        done on receipt, alongside a running batch; then the item waits for a batch."""
        self.ongoing += 1
        self.loop.do(self.receipt_s, lambda: self._enqueue(turn), turn)

    def _enqueue(self, turn: Turn) -> None:
        self.received += 1
        self.transit_s += self.sim.now - turn.handed_over_at
        turn.received_at = self.sim.now
        self.queue.append(turn)
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.busy or not self.queue:
            return
        if len(self.queue) >= self.p.path.update_batch_size or self.p.path.update_batch_wait_s <= 0:
            # full, or no wait for company: ``UpdateBatcher`` takes the next batch without
            # yielding to its event loop, so it starts ahead of the replies of the batch before
            self._start()
        elif not self.timer_armed:
            self.timer_armed = True
            self.sim.after(self.p.path.update_batch_wait_s, self._timer)

    def _timer(self) -> None:
        """The batcher's wait is over; it goes on when the replica's event loop gets to it
        (behind the replies of the batch before, :meth:`_start`)."""
        self.timer_armed = False
        self.loop.do(0.0, lambda: None if self.busy or not self.queue else self._start())

    def _start(self) -> None:
        self.busy = True
        self._started = self.sim.now
        if self._carried_since is not None:
            self.gaps += 1
            self.gap_s += self.sim.now - self._carried_since
        batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.p.path.update_batch_size))]
        self.queued_s += sum(self.sim.now - turn.received_at for turn in batch)
        self.batches.append(len(batch))
        reads = [t for t in batch if t.session.index not in self.held]
        pending = {"reads": len(reads)}

        # The batch's own work on the replica's process: half at the start of its commits, on
        # the event loop ahead of the commit calls (the STMs sent ahead to the Generator, which
        # ``apply_updates`` schedules before its commits), its Ray-side share alongside them;
        # half after its commits (the replies to the update calls). The application's event
        # loop and process CPU per phase (``read_loop_cpu_s``, …) put about half of the batch's
        # work outside the model in its commit phase (2.2–7.3 ms of the process's CPU against
        # 0.2–2.8 beside the consolidating thread in its phase); none before its reads, where the
        # application's read phase measures 0.5–3 ms against the 2–8 this half made when it ran
        # there. The replies run on the event loop while the batcher waits for company: the
        # app's wait from a batch's end to the next's start is the 5 ms wait and 0.3–0.6 ms
        # more, where the replies before it had made it 9–11 ms.
        half_batch_s = self.p.path.updater_batch_s / 2

        def lap(phase: str) -> None:
            self.phase_s[phase] += self.sim.now - pending.get("since", self._started)
            pending["since"] = self.sim.now

        def read_done() -> None:
            pending["reads"] -= 1
            if pending["reads"] == 0:
                lap("read")
                seconds = self.sim.jitter(self.p.consolidate(len(batch)) * self.p.path.consolidate_thread_factor)
                self.model_s += seconds
                started = self.sim.now

                def consolidated() -> None:
                    self.model_wall_s += self.sim.now - started
                    commit()

                self.sim.cpu.run(seconds, consolidated, hog=True)

        def commit() -> None:
            lap("consolidate")
            if half_batch_s > 0:
                self.loop.do(half_batch_s)  # the commits' event-loop pieces queue behind it
            pending["commits"] = len(batch)
            shards: dict[Server, list[Turn]] = {}
            for turn in batch:
                shards.setdefault(self.store_of(turn.session.index), []).append(turn)
            for turns in shards.values():
                self._commit(turns, committed)

        def finished() -> None:
            self.busy = False
            self.busy_s += self.sim.now - self._started
            self._maybe_start()

        def committed(turn: Turn) -> None:
            self.ongoing -= 1
            if self.p.path.updater_keeps_stms:
                self.held.add(turn.session.index)
            turn.committed()
            pending["commits"] -= 1
            if pending["commits"] == 0:
                lap("commit")
                self._carried_since = self.sim.now if self.queue else None
                if half_batch_s > 0:
                    self.loop.do(half_batch_s)  # the replies
                finished()

        def read() -> None:
            if not reads:
                pending["reads"] = 1
                read_done()
            for turn in reads:
                self._call(turn, "read", read_done)

        read()

    def _call(self, turn: Turn, call: str, then: Callable[[], None]) -> None:
        """A store call gathered with the batch's others: the replica's side of it on its event
        loop (shared with the calls in flight, ``Server``), then the shard's."""
        store = self.store_of(turn.session.index)
        self.loop.do(self.in_batch_s, lambda: store.do(self.p.path.store_call(call), then, turn), turn)

    def _commit(self, turns: list[Turn], then: Callable[[Turn], None]) -> None:
        """The batch's commits to one shard, one call (``commit_updates``): the replica's side
        of it and the shard's once, then each commit, stamped before the shard writes its new
        version (``CostProfile.persist_s``) — the stamp is the commit time the benchmark's
        update lag ends at; the write's end releases the session's next turn."""
        store = self.store_of(turns[0].session.index)
        seconds = self.p.path.store_call("commit")
        persist = min(seconds, self.p.persist_s())

        def write(k: int) -> None:
            if k < len(turns):
                turns[k].stamped()
                store.do(persist, lambda: (then(turns[k]), write(k + 1)), turns[k])

        self.loop.do(self.in_batch_s, lambda: store.do(seconds - persist, lambda: write(0), turns[0]), turns[0])
