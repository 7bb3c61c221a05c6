"""STM locality, Ray-free: which decoder replica a session prefers, and the STMs a replica keeps.

A session's turns go to the Generator replica that rendezvous hashing picks among the running
ones (:func:`rank_by_affinity`; ``serve/routing.py`` applies it to Ray Serve's routing), and the
replica keeps the STMs it recently used or was sent, keyed by (session, memory version)
(:class:`StmCache`). The MemoryUpdater sends each STM it computes to the replica the session's
next turn will go to, before it commits it, so that turn finds it there and no STM crosses the
object store on the response path. Correctness never depends on the cache: the claim names the
committed STM by (version, digest of its bytes), and anything else is a miss, answered from the
session store.

Rendezvous (highest-random-weight) hashing needs no shared state: every caller that sees the
same replicas ranks them the same, and when a replica joins or leaves only the sessions it
wins or held move.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def affinity(session: str, replica: str) -> int:
    """The weight of ``replica`` for ``session`` (64 bits of a keyed hash)."""
    digest = hashlib.blake2b(session.encode(), key=replica.encode()[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank_by_affinity(session: str, replicas: Sequence[T], key) -> list[T]:  # noqa: ANN001 - key: T -> str
    """``replicas`` from the one ``session`` prefers most to the least (ties impossible in
    practice; broken by ``key``)."""
    return sorted(replicas, key=lambda r: (affinity(session, key(r)), key(r)), reverse=True)


@dataclass
class CacheStats:
    """What a replica's STM cache did."""

    hits: int = 0
    """Turns whose STM was here at the right version."""
    misses: int = 0
    """Turns whose STM was read from the session store."""
    pushes: int = 0
    """STMs the MemoryUpdater sent here."""
    fetched_bytes: int = 0
    """STM bytes read from the store on misses."""
    pushed_bytes: int = 0
    """STM bytes received from the MemoryUpdater."""
    evictions: int = 0


class StmCache(Generic[T]):
    """The STMs of up to ``capacity`` sessions, least recently used evicted first; at most one
    per session (the newest version seen). Each is kept with the digest of its bytes
    (:func:`~rxt_dist.serving.protocol.stm_digest`): a copy sent ahead before its commit may
    have lost the compare-and-set to another computation of the same version, and only the
    digest the store's claim names is the committed one. ``capacity`` 0 keeps nothing."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity={capacity}: must be ≥ 0")
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[int, str, T]] = OrderedDict()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, session: str, version: int, digest: str) -> T | None:
        """The STM of ``session`` at ``version`` with ``digest``, or None (counted as a miss)."""
        item = self._items.get(session)
        if item is None or item[:2] != (version, digest):
            self.stats.misses += 1
            return None
        self._items.move_to_end(session)
        self.stats.hits += 1
        return item[2]

    def version(self, session: str) -> int | None:
        """The version of ``session`` held, if any (not counted as a lookup)."""
        item = self._items.get(session)
        return None if item is None else item[0]

    def put(self, session: str, version: int, digest: str, stm: T) -> None:
        """Keep ``stm`` as ``session``'s version ``version`` unless a newer one is kept."""
        if self.capacity == 0:
            return
        item = self._items.get(session)
        if item is not None and item[0] > version:
            return  # a late copy of an older version
        self._items[session] = (version, digest, stm)
        self._items.move_to_end(session)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.stats.evictions += 1
