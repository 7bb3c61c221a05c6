"""The event engine under :mod:`rxt_dist.eval.simulate`: a clock with an event heap, one
shared CPU (processor sharing, stalls, a woken thread's wait for a core) and processes on it
(``Server``: an event-loop share run one piece after another, the rest alongside). Ray-free,
plain Python."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable


class Sim:
    """The event queue, the clock, and the machine's CPU shared by every process."""

    def __init__(self, seed: int, cv: float, speed: Callable[[int], float] = lambda busy: 1.0,
                 wake_weight: float = 1.0, wake_wait: Callable[[int], float] = lambda busy: 0.0) -> None:
        self.now = 0.0
        self._heap: list = []
        self._seq = itertools.count()
        self.rng = random.Random(seed)
        self.sigma = math.sqrt(math.log(1 + cv * cv)) if cv > 0 else 0.0
        self.cpu = CPU(self, speed, wake_weight)
        self.wake_wait = wake_wait
        """The mean wait for a core of a thread woken while ``busy`` jobs share the CPU
        (``ServingPath.wake_wait``)."""
        self.wakes = 0
        self.wake_waited_s = 0.0

    def wake(self, then: Callable[[], None]) -> None:
        """A sleeping thread woke for ``then``: it runs once the thread gets a core — at once
        while one is free, else after an exponential wait of :attr:`wake_wait`'s mean."""
        mean = self.wake_wait(len(self.cpu.jobs))
        if mean <= 0:
            then()
            return
        wait = self.rng.expovariate(1.0 / mean)
        self.wakes += 1
        self.wake_waited_s += wait
        self.after(wait, then)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def after(self, dt: float, fn: Callable[[], None]) -> None:
        self.at(self.now + dt, fn)

    def jitter(self, seconds: float) -> float:
        """``seconds`` times a log-normal factor of mean 1 and the profile's spread."""
        if self.sigma == 0 or seconds <= 0:
            return seconds
        return seconds * math.exp(self.rng.gauss(-self.sigma ** 2 / 2, self.sigma))

    def run(self, until: float = math.inf) -> None:
        while self._heap and self._heap[0][0] <= until:
            self.now, _, fn = heapq.heappop(self._heap)
            fn()


class CPU:
    """Processor sharing: the busy processes together advance at ``busy × speed(busy)`` lone
    speeds, split in proportion to each job's weight, no job faster than alone. With every
    weight equal (``wake_weight`` 1) each advances at ``speed(busy)``. ``hog`` jobs (a thread
    that computes without sleeping: decoding, consolidation) weigh 1; the others — short pieces
    of work of a thread that sleeps between them — weigh ``wake_weight``."""

    def __init__(self, sim: Sim, speed: Callable[[int], float], wake_weight: float = 1.0) -> None:
        self.sim, self.speed, self.wake_weight = sim, speed, wake_weight
        self.machine = 1.0
        """The whole machine's speed now relative to its usual (:meth:`set_machine_speed`):
        every job advances at its share × this."""
        self.jobs: dict[int, list] = {}  # id → [remaining seconds of lone work, callback, weight]
        self._rates: dict[int, float] = {}
        self._ids = itertools.count()
        self._last = 0.0
        self._version = 0
        self.frozen = False

    def freeze(self, seconds: float) -> None:
        """Nothing runs for ``seconds``: the machine's other load took every core (a stall)."""
        if self.frozen:
            return
        self._advance()
        self.frozen = True
        self._version += 1  # no completion while frozen

        def thaw() -> None:
            self._advance()
            self.frozen = False
            self._schedule()

        self.sim.after(seconds, thaw)

    def set_machine_speed(self, speed: float) -> None:
        """From now on the machine gets ``speed`` × its usual work done per second (a slow or
        fast stretch every process shares)."""
        if speed <= 0:
            raise ValueError(f"machine speed {speed}: must be > 0")
        self._advance()
        self.machine = speed
        self._schedule()

    def run(self, seconds: float, then: Callable[[], None], hog: bool = False) -> None:
        if seconds <= 0:
            self.sim.after(0.0, then)
            return
        self._advance()
        self.jobs[next(self._ids)] = [seconds, then, 1.0 if hog else self.wake_weight]
        self._schedule()

    def _advance(self) -> None:
        if self.jobs and not self.frozen:
            dt = self.sim.now - self._last
            for k, job in self.jobs.items():
                job[0] -= dt * self._rates.get(k, 0.0)
        self._last = self.sim.now

    def _share(self) -> dict[int, float]:
        """Each job's speed: ``busy × speed(busy)`` split by weight, capped at 1 (water-filling)."""
        n = len(self.jobs)
        each = self.speed(n)
        if each >= 1.0 or self.wake_weight == 1.0:  # nobody waits, or equal weights
            return dict.fromkeys(self.jobs, each)
        rates: dict[int, float] = {}
        left, free = n * each, dict(self.jobs)
        while free:
            per_weight = left / sum(job[2] for job in free.values())
            capped = [k for k, job in free.items() if job[2] * per_weight >= 1.0]
            if not capped:
                rates.update({k: job[2] * per_weight for k, job in free.items()})
                break
            for k in capped:
                rates[k] = 1.0
                left -= 1.0
                del free[k]
        return rates

    def _schedule(self) -> None:
        self._version += 1
        if self.jobs and not self.frozen:
            self._rates = {k: rate * self.machine for k, rate in self._share().items()}
            left = min(max(0.0, job[0]) / self._rates[k] for k, job in self.jobs.items())
            version = self._version
            self.sim.after(left, lambda: self._finish(version))

    def _finish(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        finished = [k for k, job in self.jobs.items() if job[0] <= 1e-12]
        callbacks = [self.jobs.pop(k)[1] for k in finished]
        self._schedule()
        for fn in callbacks:
            fn()


class Server:
    """A process on the shared CPU. A ``serial`` share of each job runs on its event-loop thread,
    one job's piece after another; the rest runs alongside on Ray's own threads, limited only
    by the CPU (the share is measured per thread, ``ServingPath.serial_share``).

    A job that finds the event loop idle wakes it (``Sim.wake``: with every core taken it waits
    for one before it starts); jobs arriving meanwhile queue behind it.

    A job may name the turn it works for (``owner``): the per-wake-up sharing of ``fixed``
    (``ServingPath.fixed_share``) counts the *turns* in the process at once, as its calibration
    does, so several jobs of one turn (a stream's chunks) do not share a wake-up among
    themselves. A job without an owner counts as a turn of its own."""

    def __init__(self, sim: Sim, serial: float = 1.0, fixed: float = 1.0) -> None:
        self.sim = sim
        self.serial = serial
        self.fixed = fixed
        self.queue: deque = deque()
        self.running = False
        self.waking: list | None = None
        """Jobs that arrived while the event loop waits for a core to wake on (then: run them in order)."""
        self.busy_s = 0.0
        self.loop_s = 0.0
        """Seconds its event loop had work: a piece running, queued, or waiting for a core to
        wake on (a real thread's CPU time and run-queue wait together)."""
        self._loop_since: float | None = None
        self.loop_work_s = 0.0
        """Seconds of work its event loop did (at the profile's speed: the rest of ``loop_s`` it
        waited for a core)."""
        self._owners: dict[object, int] = {}
        """Turns with a job in this process, and how many jobs each has here."""

    def do(self, seconds: float, then: Callable[[], None] = lambda: None, owner: object = None) -> None:
        """Run ``seconds`` of this process's work (shared with the turns already in it, see
        ``ServingPath.fixed_share``), then ``then``."""
        if self.waking is not None:
            self.waking.append((seconds, then, owner))
            return
        if not self.running and not self.queue:  # the event loop sleeps: this job wakes it
            self.waking = [(seconds, then, owner)]
            if self.serial > 0:
                self._loop_since = self.sim.now

            def woken() -> None:
                jobs, self.waking = self.waking, None
                for job in jobs:
                    self._do(*job)

            self.sim.wake(woken)
            return
        self._do(seconds, then, owner)

    def _do(self, seconds: float, then: Callable[[], None], owner: object) -> None:
        owner = object() if owner is None else owner
        self._owners[owner] = self._owners.get(owner, 0) + 1
        seconds = self.sim.jitter(seconds) * (self.fixed + (1 - self.fixed) / len(self._owners))
        self.busy_s += seconds
        alongside = seconds * (1 - self.serial)

        def finished() -> None:
            left = self._owners[owner] - 1
            if left:
                self._owners[owner] = left
            else:
                del self._owners[owner]
            then()

        def rest() -> None:
            self.sim.cpu.run(alongside, finished)

        if self.serial <= 0:
            rest()
            return
        self.loop_work_s += seconds * self.serial
        self.queue.append((seconds * self.serial, rest if alongside > 0 else finished))
        if not self.running:
            self._next()

    def _next(self) -> None:
        if not self.queue:
            self.running = False
            if self._loop_since is not None:
                self.loop_s += self.sim.now - self._loop_since
                self._loop_since = None
            return
        if self._loop_since is None:
            self._loop_since = self.sim.now
        self.running = True
        seconds, then = self.queue.popleft()

        def done() -> None:
            then()
            self._next()

        self.sim.cpu.run(seconds, done)
