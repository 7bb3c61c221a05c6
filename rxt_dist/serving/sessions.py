"""Sessions: random ids and the versioned, persistent store of each conversation's STM.

This module is Ray-free; the serving app runs :class:`SessionStore` as a Ray actor (one per
shard). A session's record moves through these states::

    settled(version v) --begin_turn--> claimed --finish_turn--> pending(v → v+1)
         ^                                                             |
         +------------------------- commit_update(v) -----------------+

* **claimed**: one request holds the session while it answers. A second request meanwhile
  is refused as *busy* (the app answers 409), so turns never interleave.
* **pending**: the answer is out and the interaction (query and answer token ids) is
  recorded *durably*; the next turn waits until the update commits, so it never reads the
  older memory. Because the interaction is stored, any updater can (re)apply it.
* **commit_update** is a compare-and-set on the version: it applies only the update of the
  pending turn on top of version ``v``; a duplicate (a retried call after an updater replica
  died) finds the version already moved and changes nothing.

Storage layout under the store URL (any fsspec URL): ``<id>/meta.json`` (the commit point,
rewritten atomically) and ``<id>/stm-<version>.safetensors`` (written before the meta that
names it). Only the current version's STM is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import fsspec

logger = logging.getLogger(__name__)

SESSION_PREFIX = "sess_"
SESSION_ID_BYTES = 16  # 128 random bits
_SESSION_RE = re.compile(rf"^{SESSION_PREFIX}[0-9a-f]{{{2 * SESSION_ID_BYTES}}}$")
META_FILE = "meta.json"
_WAIT_GRACE_S = 5.0  # how long a claim outlives a wait for a pending update


def new_session_id() -> str:
    """A fresh session id carrying 128 random bits (``sess_`` + 32 hex digits)."""
    return SESSION_PREFIX + secrets.token_hex(SESSION_ID_BYTES)


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the form of a session id (anything else names no session, and
    can never reach a storage path)."""
    return bool(_SESSION_RE.match(value))


def shard_of(session_id: str, num_shards: int) -> int:
    """The store shard that owns ``session_id`` (ids are random, so shards fill evenly)."""
    return int(session_id[len(SESSION_PREFIX):][:8], 16) % num_shards


@dataclass
class PendingUpdate:
    """A finished turn whose memory update has not committed yet."""

    base_version: int
    """The version the update applies to; the commit produces ``base_version + 1``."""
    query_ids: list[int]
    answer_ids: list[int]
    since: float
    """Wall-clock time the turn finished (seconds since the epoch)."""
    lease: str = ""
    """The claim the turn was answered under (a repeated ``finish_turn`` is recognised)."""


@dataclass
class SessionMeta:
    """What ``meta.json`` holds for one session."""

    id: str
    created: float
    updated: float
    stm_shape: list[int]
    """(L, S, D) of the STM, so a model with another memory size is refused clearly."""
    version: int = 0
    """Memory version: 0 at creation, +1 per committed turn update."""
    turns: int = 0
    """Turns in memory: migrated ones plus every turn answered here (counted when answered)."""
    pending: PendingUpdate | None = None
    committed: float | None = None
    """Wall-clock time (seconds since the epoch) the current memory version was committed:
    the session's creation for version 0. None in records written before it was kept."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SessionMeta":
        data = json.loads(text)
        pending = data.pop("pending", None)
        return cls(**data, pending=PendingUpdate(**pending) if pending else None)

    def public(self) -> dict:
        """The session as the HTTP API shows it."""
        return {
            "id": self.id, "object": "session", "created": int(self.created),
            "turns": self.turns, "memory_version": self.version,
            "pending_update": self.pending is not None,
            "memory_committed_at": self.committed,
        }


@dataclass
class StoreConfig:
    """One session-store shard."""

    url: str
    """Where sessions persist: a local directory or any fsspec URL (``s3://bucket/sessions``)."""
    cache_sessions: int = 4096
    """Settled sessions kept in memory; older ones are reloaded from storage when used."""
    turn_lease_s: float = 120.0
    """A claim on a session for one answer expires after this long (so a session whose
    request died with its server is not locked for ever)."""

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("url='': give a directory or fsspec URL for the session store")
        if self.cache_sessions < 1:
            raise ValueError(f"cache_sessions={self.cache_sessions}: must be ≥ 1")
        if self.turn_lease_s <= 0:
            raise ValueError(f"turn_lease_s={self.turn_lease_s}: must be > 0 seconds")


@dataclass
class _Claim:
    token: str
    expires: float


@dataclass
class _Entry:
    meta: SessionMeta
    stm: bytes
    claim: _Claim | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: bool = False

    def __post_init__(self) -> None:
        if self.meta.pending is None:
            self.settled.set()

    def claimed_by_other(self, lease: str | None, now: float) -> bool:
        return self.claim is not None and self.claim.token != lease and self.claim.expires > now

    @property
    def idle(self) -> bool:
        return self.claim is None and self.meta.pending is None and not self.lock.locked()


def _status(status: str, **fields) -> dict:
    return {"status": status, **fields}


class SessionStore:
    """One shard of the session store: versioned STMs with compare-and-set updates.

    Every method is a coroutine returning a dict with a ``status`` (``ok``, ``not_found``,
    ``busy``, ``pending``, ``applied``, …) rather than raising, so callers across a process
    boundary map outcomes to HTTP answers without unpickling exception types.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.fs, root = fsspec.core.url_to_fs(config.url)
        self.root = root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    # ---- paths and persistence -------------------------------------------------------------

    def _dir(self, sid: str) -> str:
        return f"{self.root}/{sid}"

    def _stm_path(self, sid: str, version: int) -> str:
        return f"{self._dir(sid)}/stm-{version:08d}.safetensors"

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path.rpartition('/')[0]}/.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def _persist(self, meta: SessionMeta, stm: bytes | None, drop_version: int | None = None) -> None:
        """Write the STM (if new) then the meta that names it; drop the superseded STM last."""
        self.fs.makedirs(self._dir(meta.id), exist_ok=True)
        if stm is not None:
            self._write_atomic(self._stm_path(meta.id, meta.version), stm)
        self._write_atomic(f"{self._dir(meta.id)}/{META_FILE}", meta.to_json().encode())
        if drop_version is not None and self.fs.exists(self._stm_path(meta.id, drop_version)):
            self.fs.rm(self._stm_path(meta.id, drop_version))

    def _load(self, sid: str) -> tuple[SessionMeta, bytes] | None:
        meta_path = f"{self._dir(sid)}/{META_FILE}"
        if not self.fs.exists(meta_path):
            return None
        with self.fs.open(meta_path, "rb") as f:
            try:
                meta = SessionMeta.from_json(f.read().decode())
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{meta_path}: not a session record: {exc}") from exc
        stm_path = self._stm_path(sid, meta.version)
        if not self.fs.exists(stm_path):
            raise ValueError(f"{meta_path} names memory version {meta.version} but {stm_path} is missing")
        with self.fs.open(stm_path, "rb") as f:
            return meta, f.read()

    async def _entry(self, sid: str) -> _Entry | None:
        entry = self._entries.get(sid)
        if entry is None:
            loaded = await asyncio.to_thread(self._load, sid)
            entry = self._entries.get(sid)  # another call may have loaded it meanwhile
            if entry is None:
                if loaded is None:
                    return None
                entry = self._entries[sid] = _Entry(*loaded)
        self._entries.move_to_end(sid)
        self._evict()
        return entry

    def _evict(self) -> None:
        excess = len(self._entries) - self.config.cache_sessions
        for sid in [s for s, e in self._entries.items() if e.idle][:max(excess, 0)]:
            del self._entries[sid]

    # ---- the API ---------------------------------------------------------------------------

    async def create(self, sid: str, stm: bytes, stm_shape: list[int], turns: int = 0) -> dict:
        """A new session at memory version 0 holding ``stm`` (one conversation's STM bytes)."""
        if not is_session_id(sid):
            return _status("invalid_id")
        if await self._entry(sid) is not None:
            return _status("exists")
        now = time.time()
        meta = SessionMeta(id=sid, created=now, updated=now, stm_shape=list(stm_shape), turns=turns,
                           committed=now)
        await asyncio.to_thread(self._persist, meta, stm)
        self._entries[sid] = _Entry(meta, stm)
        self._evict()
        return _status("ok", session=meta.public())

    async def info(self, sid: str) -> dict:
        """The session's public record (turns, memory version, whether an update is pending)."""
        entry = await self._entry(sid)
        if entry is None:
            return _status("not_found")
        return _status("ok", session=entry.meta.public(), stm_shape=entry.meta.stm_shape,
                       pending_since=entry.meta.pending.since if entry.meta.pending else None)

    async def begin_turn(self, sid: str, lease: str, wait_s: float) -> dict:
        """Claim the session for one turn under ``lease`` (a token the caller made up), waiting
        up to ``wait_s`` for a pending update to commit.

        ``ok`` carries the memory version, its STM bytes and its commit time. ``pending``: the
        update did not commit in time; the claim stays with ``lease`` until shortly after the
        wait, so the caller may call again with the same lease (or give it back with
        :meth:`release`). ``busy``: another request holds the session. ``ok`` and ``pending``
        carry ``waited_s``, how long this call waited for a pending update (0.0 when none was).
        """
        entry = await self._entry(sid)
        if entry is None:
            return _status("not_found")
        now = time.time()
        if entry.claimed_by_other(lease, now):
            return _status("busy")
        token = lease
        # While waiting, the claim lapses soon after the wait unless renewed: a caller that
        # went away must not lock the session for a whole turn lease.
        entry.claim = _Claim(token, now + wait_s + _WAIT_GRACE_S)
        was_pending = not entry.settled.is_set()
        started = time.monotonic()
        try:
            if was_pending:
                await asyncio.wait_for(entry.settled.wait(), timeout=wait_s)
        except asyncio.TimeoutError:
            pending = entry.meta.pending
            return _status("pending", lease=token, base_version=pending.base_version if pending else None,
                           pending_since=pending.since if pending else None,
                           waited_s=time.monotonic() - started)
        except asyncio.CancelledError:
            if entry.claim is not None and entry.claim.token == token:
                entry.claim = None
            raise
        if entry.deleted:
            return _status("not_found")
        entry.claim = _Claim(token, time.time() + self.config.turn_lease_s)
        waited_s = time.monotonic() - started if was_pending else 0.0
        return _status("ok", lease=token, version=entry.meta.version, stm=entry.stm,
                       stm_shape=entry.meta.stm_shape, turns=entry.meta.turns,
                       committed=entry.meta.committed, waited_s=waited_s)

    async def release(self, sid: str, lease: str) -> dict:
        """Give back a claim without a turn (the request failed before answering)."""
        entry = self._entries.get(sid)
        if entry is not None and entry.claim is not None and entry.claim.token == lease:
            entry.claim = None
        return _status("ok")

    async def finish_turn(self, sid: str, lease: str, version: int, query_ids: list[int],
                          answer_ids: list[int]) -> dict:
        """Record the answered turn as the pending update of ``version`` and release the claim.

        Durable before it returns: once this answers ``ok``, a later request waits for the
        update (or re-dispatches it) instead of reading memory version ``version``.
        """
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status("not_found")
        async with entry.lock:
            pending = entry.meta.pending
            if pending is not None and pending.lease == lease and pending.base_version == version:
                return _status("ok", base_version=version)  # a repeated call: already recorded
            if entry.claimed_by_other(lease, time.time()):
                return _status("lost_lease")
            if entry.meta.version != version or pending is not None:
                # The claim expired and another turn went ahead; this turn cannot be applied.
                return _status("lost_lease")
            entry.meta.pending = PendingUpdate(version, list(query_ids), list(answer_ids), time.time(), lease)
            entry.meta.turns += 1
            entry.meta.updated = entry.meta.pending.since
            entry.settled.clear()
            entry.claim = None
            await asyncio.to_thread(self._persist, entry.meta, None)
        return _status("ok", base_version=version)

    async def update_input(self, sid: str, base_version: int) -> dict:
        """What an updater needs to apply the pending update of ``base_version``: the STM and
        the interaction. ``applied`` when that update already committed."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status("not_found")
        meta = entry.meta
        if meta.version > base_version:
            return _status("applied", version=meta.version)
        if meta.pending is None or meta.pending.base_version != base_version:
            return _status("nothing_pending", version=meta.version)
        return _status("ok", stm=entry.stm, stm_shape=meta.stm_shape,
                       query_ids=meta.pending.query_ids, answer_ids=meta.pending.answer_ids)

    async def commit_update(self, sid: str, base_version: int, stm: bytes) -> dict:
        """Compare-and-set: store ``stm`` as version ``base_version + 1`` if the session is at
        ``base_version`` with that update pending; otherwise change nothing."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status("not_found")
        async with entry.lock:
            meta = entry.meta
            if meta.version > base_version:
                return _status("already_applied", version=meta.version)
            if meta.pending is None or meta.pending.base_version != base_version:
                return _status("conflict", version=meta.version)
            now = time.time()
            new = SessionMeta(id=meta.id, created=meta.created, updated=now, stm_shape=meta.stm_shape,
                              version=base_version + 1, turns=meta.turns, committed=now)
            await asyncio.to_thread(self._persist, new, stm, base_version)
            entry.meta, entry.stm = new, stm
            entry.settled.set()
        return _status("applied", version=new.version)

    async def delete(self, sid: str) -> dict:
        """Remove the session and its stored memory; waiting requests see it gone."""
        entry = await self._entry(sid)
        if entry is None:
            return _status("not_found")
        async with entry.lock:
            entry.deleted = True
            self._entries.pop(sid, None)
            if await asyncio.to_thread(self.fs.exists, self._dir(sid)):
                await asyncio.to_thread(self.fs.rm, self._dir(sid), True)
            entry.settled.set()
        return _status("ok")
