"""Fault injection into a running serving app: ``ray.kill`` of its actors at random moments.

Two kinds of target:

* a **Serve replica** of a deployment (``Ingress``, ``Generator``, ``MemoryUpdater``) is killed
  without restart; Serve notices and starts a replacement. Recovered = a new replica of that
  deployment is RUNNING and the killed one is gone.
* a **session-store shard** (a named, detached actor with ``max_restarts=-1``) is killed *with*
  restart; Ray restarts it in place. Recovered = it answers a call again.

One fault at a time: after a random pause the next target is killed, and the injector waits
for it to recover before the next pause, so each fault is counted as injected and survived (or
not) on its own. Targets are taken in shuffled rounds, so every kind is hit about equally often.
The caller has joined the cluster (``ray.init``); this module never starts one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
from ray import serve

log = logging.getLogger(__name__)

SERVE_NAMESPACE = "serve"
_PROBE_SESSION = "sess_" + "0" * 32  # well-formed, never created: a cheap call every shard answers


@dataclass
class Fault:
    """One injected fault."""

    kind: str
    """The deployment name, or ``store``."""
    target: str
    """The killed actor's name."""
    at_s: float
    """Seconds since the injector started."""
    recovered_after_s: float | None = None
    """Seconds from the kill until recovery was seen (None: not within the timeout)."""


def replica_names(app: str, deployment: str) -> list[str]:
    """Names of the live replica actors of ``deployment`` in ``app`` (Serve's naming)."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(prefix))


def running_replicas(app: str, deployment: str) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return sum(n for state, n in status.replica_states.items() if str(state).endswith("RUNNING"))


@dataclass
class Target:
    """Something the injector can kill, and how to tell it came back."""

    kind: str
    kill: Callable[[random.Random], str]
    """Kill one actor (chosen with the rng); returns its name."""
    recovered: Callable[[str], bool]
    """Whether the target is back after killing the named actor."""


def replica_target(app: str, deployment: str, replicas: int) -> Target:
    """A replica of ``deployment`` (``replicas`` of them when healthy)."""

    before: set[str] = set()

    def kill(rng: random.Random) -> str:
        names = replica_names(app, deployment)
        before.clear()
        before.update(names)
        name = rng.choice(names)
        ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
        return name

    def recovered(name: str) -> bool:
        # A replacement has a new name; Serve's status may say RUNNING for the dead one for a
        # moment, so a new name must be among the live ones before the count is believed.
        names = set(replica_names(app, deployment))
        return name not in names and bool(names - before) and running_replicas(app, deployment) >= replicas

    return Target(deployment, kill, recovered)


def store_target(names: Sequence[str], namespace: str) -> Target:
    """The session-store shard actors called ``names``; Ray restarts a killed one."""

    def kill(rng: random.Random) -> str:
        name = rng.choice(list(names))
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
        return name

    def recovered(name: str) -> bool:
        try:
            actor = ray.get_actor(name, namespace=namespace)
            return ray.get(actor.info.remote(_PROBE_SESSION), timeout=5)["status"] == "not_found"
        except (ray.exceptions.RayError, ValueError):
            return False

    return Target("store", kill, recovered)


@dataclass
class FaultInjector:
    """Kills targets at random moments from a background thread (``start`` … ``stop``)."""

    targets: Sequence[Target]
    seed: int = 0
    pause_s: tuple[float, float] = (1.0, 4.0)
    """A fault comes this long (uniform) after the previous one recovered."""
    recover_timeout_s: float = 90.0
    max_faults: int | None = None
    """Stop injecting after this many faults (None: until :meth:`stop`)."""
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("targets=[]: give at least one target to kill")
        if not 0 <= self.pause_s[0] <= self.pause_s[1]:
            raise ValueError(f"pause_s={self.pause_s}: must be (low, high) with 0 ≤ low ≤ high")
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self._started = 0.0
        self.error: BaseException | None = None

    def start(self) -> FaultInjector:
        self._started = time.monotonic()
        self._thread.start()
        return self

    @property
    def injected(self) -> int:
        """Faults injected so far."""
        return len(self.faults)

    @property
    def injecting(self) -> bool:
        """Whether more faults may come (started, not stopped, not failed, below max_faults)."""
        return self._thread.is_alive()

    def stop(self) -> list[Fault]:
        """Stop injecting (a fault in progress is waited for until it recovered) and return
        every fault injected."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("the fault injector failed") from self.error
        return self.faults

    def _rounds(self):
        while True:
            order = list(self.targets)
            self._rng.shuffle(order)
            yield from order

    def _run(self) -> None:
        try:
            for target in self._rounds():
                if self.max_faults is not None and len(self.faults) >= self.max_faults:
                    return
                if self._stop.wait(self._rng.uniform(*self.pause_s)):
                    return
                self._inject(target)
        except Exception as exc:  # noqa: BLE001 — any failure of the thread is raised again by stop()
            self.error = exc

    def _inject(self, target: Target) -> None:
        killed_at = time.monotonic()
        name = target.kill(self._rng)
        fault = Fault(target.kind, name, round(killed_at - self._started, 3))
        self.faults.append(fault)
        log.info("fault %d: killed %s (%s)", len(self.faults), name, target.kind)
        while time.monotonic() - killed_at < self.recover_timeout_s:
            time.sleep(0.2)
            if target.recovered(name):
                fault.recovered_after_s = round(time.monotonic() - killed_at, 3)
                return
        log.warning("fault %d: %s did not recover within %.0fs", len(self.faults), name, self.recover_timeout_s)


def fault_summary(faults: Sequence[Fault]) -> dict:
    """Injected and survived faults per kind, with the slowest recovery."""
    kinds: dict[str, dict] = {}
    for f in faults:
        k = kinds.setdefault(f.kind, {"injected": 0, "recovered": 0, "slowest_recovery_s": 0.0})
        k["injected"] += 1
        if f.recovered_after_s is not None:
            k["recovered"] += 1
            k["slowest_recovery_s"] = max(k["slowest_recovery_s"], f.recovered_after_s)
    return {"injected": len(faults), "recovered": sum(k["recovered"] for k in kinds.values()), "by_kind": kinds}
