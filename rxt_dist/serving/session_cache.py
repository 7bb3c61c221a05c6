"""The session store's memory of its sessions: which a shard holds in memory (least recently used
first out, never one in use), when an idle one expires from storage, the cap on sessions stored,
and the sweeper that finds expired sessions and pending updates after a restart.

:class:`SessionCache` is the base of :class:`~rxt_dist.serving.sessions.SessionStore`, which
adds the turn protocol on top; Ray-free like it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from rxt_dist.serving.protocol import StoreStatus, log_id, stm_digest
from rxt_dist.serving.session_files import SessionFiles
from rxt_dist.serving.session_records import SessionMeta, is_session_id, shard_of

logger = logging.getLogger(__name__)


@dataclass
class StoreConfig:
    """One session-store shard."""

    url: str
    """Where sessions persist: a local directory or any fsspec URL (``s3://bucket/sessions``)."""
    cache_sessions: int = 4096
    """Sessions kept in memory; idle ones beyond this leave memory (they stay in storage and
    are reloaded when used). Sessions in use never leave: when that many are in use, a
    request for another one is refused (503, retry)."""
    turn_lease_s: float = 120.0
    """A claim on a session for one answer expires after this long unless renewed (answers
    renew it while they stream), so a session whose request died with its server is not
    locked for ever."""
    session_ttl_s: float | None = 30 * 86400.0
    """An idle session (no turn, no update) older than this is deleted from storage (None:
    never)."""
    max_sessions: int | None = 1_000_000
    """Most sessions this shard keeps in storage; a new one beyond it is refused (503) after
    expired ones are removed (None: no cap)."""
    sweep_interval_s: float = 300.0
    """How often the shard looks for expired sessions in storage."""

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("url='': give a directory or fsspec URL for the session store")
        if self.cache_sessions < 1:
            raise ValueError(f"cache_sessions={self.cache_sessions}: must be ≥ 1")
        if self.turn_lease_s <= 0:
            raise ValueError(f"turn_lease_s={self.turn_lease_s}: must be > 0 seconds")
        if self.session_ttl_s is not None and self.session_ttl_s <= 0:
            raise ValueError(f"session_ttl_s={self.session_ttl_s}: must be > 0 seconds (or None: never)")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions={self.max_sessions}: must be ≥ 1 (or None: no cap)")
        if self.sweep_interval_s <= 0:
            raise ValueError(f"sweep_interval_s={self.sweep_interval_s}: must be > 0 seconds")


@dataclass
class Claim:
    token: str
    expires: float


@dataclass
class Entry:
    meta: SessionMeta
    stm: bytes
    claim: Claim | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no update is pending (or the pending one has failed for good)."""
    deleted: bool = False
    _digest: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        if self.meta.pending is None:
            self.settled.set()

    def digest(self) -> str:
        """:func:`stm_digest` of the current STM (computed once per version)."""
        if self._digest is None or self._digest[0] != self.meta.version:
            self._digest = (self.meta.version, stm_digest(self.stm))
        return self._digest[1]

    def claimed_by_other(self, lease: str | None, now: float) -> bool:
        return self.claim is not None and self.claim.token != lease and self.claim.expires > now

    def public(self, ttl_s: float | None) -> dict:
        """The record the HTTP API shows, with whether a turn is being answered now (claimed)."""
        answering = self.claim is not None and self.claim.expires > time.time()
        return {**self.meta.public(ttl_s), "answering": answering}

    def in_use(self, now: float) -> bool:
        """Claimed (unexpired), waiting for its update, or being written: must stay in memory."""
        claimed = self.claim is not None and self.claim.expires > now
        return claimed or self.meta.pending is not None or self.lock.locked()


class SessionCache:
    """One shard's sessions in memory (``Entry``), loaded from storage on first use, and the
    shard's storage kept within its TTL and cap."""

    def __init__(self, config: StoreConfig, shard: int = 0, num_shards: int = 1) -> None:
        self.config = config
        self.shard, self.num_shards = shard, num_shards
        self.files = SessionFiles(config.url)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._stored: int | None = None  # sessions of this shard in storage, counted on first use
        self._sweeper: asyncio.Task | None = None
        self._sweeping = asyncio.Lock()
        self._removing: set[str] = set()  # sessions (deleted or expired) whose files are being removed
        self.expired = self.evicted = 0

    # ---- paths and persistence -------------------------------------------------------------

    def _persist(self, meta: SessionMeta, stm: bytes | None, drop_version: int | None = None) -> None:
        """Write the STM (if new) then the meta that names it; drop the superseded STM last."""
        self.files.write_session(meta.id, meta.version, meta.to_json(), stm, drop_version)

    def _read_meta(self, sid: str) -> SessionMeta | None:
        text = self.files.read_meta(sid)
        if text is None:
            return None
        try:
            return SessionMeta.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{self.files.meta_path(sid)}: not a session record: {exc}") from exc

    def _load(self, sid: str) -> tuple[SessionMeta, bytes] | None:
        meta = self._read_meta(sid)
        if meta is None:
            return None
        return meta, self.files.read_stm(sid, meta.version)

    # ---- the in-memory cache, expiry and the cap ---------------------------------------------

    def _expired(self, meta: SessionMeta, now: float) -> bool:
        ttl = self.config.session_ttl_s
        return ttl is not None and meta.pending is None and now - meta.updated > ttl

    def _in_use(self, now: float) -> int:
        return sum(e.in_use(now) for e in self._entries.values())

    async def _entry(self, sid: str, admit: bool = False) -> Entry | None | StoreStatus:
        """The session's entry, loaded from storage if needed; None when it does not exist
        (or has expired: then it is deleted). With ``admit``, :attr:`StoreStatus.FULL` when
        loading it would need the room of a session in use."""
        self._ensure_sweeper()
        if sid in self._removing:  # gone already; its files are on their way out
            return None
        entry = self._entries.get(sid)
        if entry is None:
            if admit and self._in_use(time.time()) >= self.config.cache_sessions:
                return StoreStatus.FULL
            loaded = await asyncio.to_thread(self._load, sid)
            entry = self._entries.get(sid)  # another call may have loaded it meanwhile
            if entry is None:
                if loaded is None:
                    return None
                entry = self._entries[sid] = Entry(*loaded)
        if self._expired(entry.meta, time.time()) and not entry.in_use(time.time()):
            await self._expire(sid, entry)
            return None
        self._entries.move_to_end(sid)
        self._evict(keep=sid)
        return entry

    def _evict(self, keep: str) -> None:
        """Drop the least recently used sessions not in use (never ``keep``, the one a call is
        working on) until the cache fits."""
        excess = len(self._entries) - self.config.cache_sessions
        if excess <= 0:
            return
        now = time.time()
        for sid in [s for s, e in self._entries.items() if s != keep and not e.in_use(now)][:excess]:
            del self._entries[sid]
            self.evicted += 1

    async def _remove_session(self, sid: str, entry: Entry | None) -> None:
        """Remove a session (its cached ``entry`` too, if any). Calls arriving while its files
        are removed find it gone instead of loading the half-removed session from storage
        (and writing into the directory being removed, or expiring it a second time); calls
        that already hold the entry see it ``deleted``."""
        self._removing.add(sid)
        if entry is not None:
            entry.deleted = True
            if self._entries.get(sid) is entry:
                self._entries.pop(sid)
        try:
            await asyncio.to_thread(self.files.remove_session, sid)
        finally:
            self._removing.discard(sid)
            if entry is not None:
                entry.settled.set()
        if self._stored is not None:
            self._stored = max(0, self._stored - 1)

    async def _expire(self, sid: str, entry: Entry | None) -> None:
        await self._remove_session(sid, entry)
        self.expired += 1
        logger.info("session %s expired after %.0fs idle", log_id(sid), self.config.session_ttl_s)

    def _own_ids(self) -> list[str]:
        """Ids of the sessions of this shard in storage."""
        return [n for n in self.files.names() if is_session_id(n) and shard_of(n, self.num_shards) == self.shard]

    async def sweep(self) -> int:
        """Delete the expired sessions of this shard from storage (and memory), load those
        with a pending update, recount what is stored. Returns how many were deleted (one
        sweep at a time)."""
        async with self._sweeping:
            return await self._sweep()

    async def _sweep(self) -> int:
        ids = await asyncio.to_thread(self._own_ids)
        deleted, now = 0, time.time()
        for sid in ids:
            entry = self._entries.get(sid)
            if entry is not None:
                expired = self._expired(entry.meta, now) and not entry.in_use(now)
            else:
                try:
                    meta = await asyncio.to_thread(self._read_meta, sid)
                except ValueError as exc:
                    logger.warning("sweep: %s", exc)
                    continue
                expired = meta is not None and self._expired(meta, now)
                if meta is not None and meta.pending is not None and meta.pending.error is None:
                    await self._entry(sid)  # in memory, where stale_pending finds it
                    continue
            if expired and self._entries.get(sid) is entry:  # nobody loaded it meanwhile
                await self._expire(sid, entry)
                deleted += 1
        self._stored = len(ids) - deleted
        return deleted

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None and self.config.session_ttl_s is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:  # first right away: a restarted shard finds its pending updates
            try:
                await self.sweep()
            except Exception:  # storage hiccup: try again next time
                logger.exception("sweeping expired sessions failed")
            await asyncio.sleep(self.config.sweep_interval_s)

    async def _room_for_one_more(self) -> bool:
        cap = self.config.max_sessions
        if cap is None:
            return True
        if self._stored is None or self._stored >= cap:
            await self.sweep()  # counts, and frees what has expired
        return self._stored < cap
