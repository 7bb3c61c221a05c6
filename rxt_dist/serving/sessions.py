"""Sessions: the versioned, persistent store of each conversation's STM (a session's id and
record: :mod:`rxt_dist.serving.session_records`).

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

Storage (any fsspec URL): :mod:`rxt_dist.serving.session_files` holds the layout and the
file operations; :mod:`rxt_dist.serving.session_cache` the sessions a shard keeps in memory,
their expiry and the cap (:class:`SessionStore`'s base).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

from rxt_dist.serving.protocol import StoreStatus, log_id, status, transcript_shard
from rxt_dist.serving.session_cache import Claim, Entry, SessionCache, StoreConfig
from rxt_dist.serving.session_files import SessionFiles
from rxt_dist.serving.session_records import LastTurn, PendingUpdate, SessionMeta, is_session_id

logger = logging.getLogger(__name__)

_WAIT_GRACE_S = 5.0  # how long a claim outlives a wait for a pending update


def _is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _status(status: StoreStatus, **fields) -> dict:
    return {"status": status, **fields}


@dataclass
class _IndexMove:
    """Where a recorded turn moves its session's transcript index entry, on this shard: the
    entry at ``after`` written (``link``) and the one at ``before`` removed if it still names
    the session (``unlink``; ``known_before``: what the in-memory index says it names)."""

    sid: str
    before: str | None
    after: str | None
    link: bool
    unlink: bool
    known_before: str | None

    def apply(self, files: SessionFiles) -> dict:
        """(Blocking.) Make the moves; best effort, as the index is: a missing entry only makes
        a stateless client's next request migrate its history. Which of the two were made."""
        done = {"linked": False, "unlinked": self.before is None}
        try:
            if self.link:
                files.write_link(self.after, self.sid)
                done["linked"] = True
            if self.unlink:
                if (self.known_before or files.read_link(self.before)) == self.sid:
                    files.remove_link(self.before)
                done["unlinked"] = True
        except Exception as exc:  # the turn is recorded whatever happens to its index entry
            logger.warning("session %s: moving its transcript index entry failed: %r", log_id(self.sid), exc)
        return done


class SessionStore(SessionCache):
    """One shard of the session store: versioned STMs with compare-and-set updates.

    Every method is a coroutine returning a dict with a :class:`StoreStatus` rather than
    raising, so callers across a process boundary map outcomes to HTTP answers without
    unpickling exception types. Methods a client request reaches take the caller's
    ``owner`` (:func:`~rxt_dist.serving.protocol.owner_of` its API key): another owner's
    session answers ``not_found``.
    """

    def __init__(self, config: StoreConfig, shard: int = 0, num_shards: int = 1) -> None:
        super().__init__(config, shard, num_shards)
        self._links: OrderedDict[str, str] = OrderedDict()  # recently used transcript index entries
        self.claims = self.stm_sent = self.stm_sent_bytes = 0  # turns claimed; STMs handed out with them or by read_stm
        self.update_reads = self.update_read_bytes = 0  # STMs (and bytes) handed out to updaters by update_input
        self.claims_waited, self.claim_pending_age_s = 0, 0.0  # claims that found an update pending; its age then
        self.commits, self.commit_write_s = 0, 0.0  # updates committed; seconds from their commit time to their release
        self.commit_persist_s = self.commit_persist_cpu_s = 0.0  # of that, the write on its thread: wall and CPU

    # ---- the API ---------------------------------------------------------------------------

    async def create(self, sid: str, stm: bytes, stm_shape: list[int], turns: int = 0,
                     owner: str | None = None, transcript: str | None = None) -> dict:
        """A new session at memory version 0 holding ``stm`` (one conversation's STM bytes)."""
        if not is_session_id(sid):
            return _status(StoreStatus.INVALID_ID)
        self._ensure_sweeper()
        if sid in self._entries or await asyncio.to_thread(self._read_meta, sid) is not None:
            return _status(StoreStatus.EXISTS)
        if self._in_use(time.time()) >= self.config.cache_sessions or not await self._room_for_one_more():
            return _status(StoreStatus.FULL)
        now = time.time()
        meta = SessionMeta(id=sid, created=now, updated=now, stm_shape=list(stm_shape), turns=turns,
                           committed=now, owner=owner, transcript=transcript)
        await asyncio.to_thread(self._persist, meta, stm)
        entry = self._entries[sid] = Entry(meta, stm)
        if self._stored is not None:
            self._stored += 1
        self._evict(keep=sid)
        return _status(StoreStatus.OK, session=entry.public(self.config.session_ttl_s))

    async def _owned(self, sid: str, owner: str | None, admit: bool = False) -> Entry | StoreStatus:
        """The entry of a session ``owner`` may use, or the status to answer."""
        entry = await self._entry(sid, admit)
        if entry is StoreStatus.FULL:
            return entry
        if entry is None or entry.deleted or entry.meta.owner != owner:
            return StoreStatus.NOT_FOUND
        return entry

    async def info(self, sid: str, owner: str | None = None) -> dict:
        """The session's public record (turns, memory version, whether an update is pending,
        whether a turn is being answered now)."""
        entry = await self._owned(sid, owner)
        if isinstance(entry, StoreStatus):
            return _status(entry)
        return _status(StoreStatus.OK, session=entry.public(self.config.session_ttl_s),
                       stm_shape=entry.meta.stm_shape)

    async def begin_turn(self, sid: str, lease: str, wait_s: float, owner: str | None = None,
                         idempotency_key: str | None = None, expect_transcript: str | None = None,
                         with_stm: bool = True) -> dict:
        """Claim the session for one turn under ``lease`` (a token the caller made up), waiting
        up to ``wait_s`` for a pending update to commit.

        ``ok`` carries the memory version, its STM bytes and its commit time. ``replay``: the
        session's last answered turn had ``idempotency_key``; it carries that turn's answer and
        claims nothing. ``pending``: the update did not commit in time (``pending_age_s``, on
        this store's clock, says for how long it has been pending); the claim stays with
        ``lease`` until shortly after the wait, so the caller may call again with the same
        lease (or give it back with :meth:`release`). ``update_failed``: the pending update can
        never apply (``error`` says why; :meth:`drop_pending` recovers). ``busy``: another
        request holds the session. ``full``: the shard has no room to load it now. ``ok`` and
        ``pending`` carry ``waited_s``, how long this call waited (0.0 when nothing was pending);
        ``ok`` also carries ``arrived_at``, when this call reached the store, and
        ``waited_for_recorded_at``, when the turn whose update it found pending was recorded
        (None: nothing was pending) — both on this store's clock (time.time()).
        With ``expect_transcript`` (a stateless client continuing), ``diverged`` unless the
        session stands exactly at that transcript; nothing is claimed then. ``with_stm=False``
        leaves the STM bytes out of ``ok`` (the decoder reads them itself, see :meth:`read_stm`);
        ``stm_digest`` (:func:`~rxt_dist.serving.protocol.stm_digest`) names them either way.
        """
        entry = await self._owned(sid, owner, admit=True)
        if isinstance(entry, StoreStatus):
            return _status(entry)
        last = entry.meta.last_turn
        if idempotency_key is not None and last is not None and last.key == idempotency_key:
            pending = entry.meta.pending
            stranded = pending is not None and pending.base_version == last.base_version and pending.error is None
            return _status(StoreStatus.REPLAY, version=last.base_version, answer_ids=last.answer_ids,
                           finish_reason=last.finish_reason, update_pending=stranded)
        if expect_transcript is not None and entry.meta.transcript != expect_transcript:
            return _status(StoreStatus.DIVERGED)
        now = time.time()
        if entry.claimed_by_other(lease, now):
            return _status(StoreStatus.BUSY)
        # While waiting, the claim lapses soon after the wait unless renewed: a caller that
        # went away must not lock the session for a whole turn lease.
        entry.claim = Claim(lease, now + wait_s + _WAIT_GRACE_S)
        was_pending = entry.meta.pending is not None
        recorded = entry.meta.pending.since if was_pending else None
        if was_pending:
            self.claims_waited += 1
            self.claim_pending_age_s += max(0.0, now - recorded)
        started = time.monotonic()
        try:
            if not entry.settled.is_set():
                await asyncio.wait_for(entry.settled.wait(), timeout=wait_s)
        except asyncio.TimeoutError:
            pending = entry.meta.pending
            return _status(StoreStatus.PENDING, lease=lease,
                           base_version=pending.base_version if pending else None,
                           pending_age_s=time.time() - pending.since if pending else 0.0,
                           waited_s=time.monotonic() - started)
        except asyncio.CancelledError:
            if entry.claim is not None and entry.claim.token == lease:
                entry.claim = None
            raise
        if entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        if expect_transcript is not None and entry.meta.transcript != expect_transcript:
            entry.claim = None  # another turn moved it on while this one waited
            return _status(StoreStatus.DIVERGED)
        pending = entry.meta.pending
        if pending is not None and pending.error is not None:
            entry.claim = None
            return _status(StoreStatus.UPDATE_FAILED, base_version=pending.base_version, error=pending.error)
        entry.claim = Claim(lease, time.time() + self.config.turn_lease_s)
        waited_s = time.monotonic() - started if was_pending else 0.0
        self.claims += 1
        if with_stm:
            self._sent(entry.stm)
        return _status(StoreStatus.OK, lease=lease, version=entry.meta.version, stm_digest=entry.digest(),
                       stm=entry.stm if with_stm else None, stm_shape=entry.meta.stm_shape, turns=entry.meta.turns,
                       committed=entry.meta.committed, waited_s=waited_s, transcript=entry.meta.transcript,
                       arrived_at=now, waited_for_recorded_at=recorded)

    async def read_stm(self, sid: str, version: int) -> dict:
        """The STM of memory version ``version``: ``ok`` with ``stm`` while the session stands
        at that version, else ``conflict`` (with the current ``version``) or ``not_found``. A
        version's STM never changes once committed, so a copy keyed by (session, version) is
        never stale."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        if entry.meta.version != version:
            return _status(StoreStatus.CONFLICT, version=entry.meta.version)
        self._sent(entry.stm)
        return _status(StoreStatus.OK, stm=entry.stm, stm_shape=entry.meta.stm_shape, stm_digest=entry.digest())

    def _sent(self, stm: bytes) -> None:
        self.stm_sent += 1
        self.stm_sent_bytes += len(stm)

    async def stale_pending(self, age_s: float) -> list[tuple[str, int]]:
        """``(session, base_version)`` of the updates pending for at least ``age_s`` (their
        dispatcher may have died; a re-dispatch is harmless: compare-and-set)."""
        self._ensure_sweeper()
        now = time.time()
        return [(sid, e.meta.pending.base_version) for sid, e in self._entries.items()
                if e.meta.pending is not None and e.meta.pending.error is None and now - e.meta.pending.since >= age_s]

    async def renew(self, sid: str, lease: str) -> dict:
        """Extend the claim ``lease`` holds by a whole turn lease (an answer still streaming)."""
        entry = self._entries.get(sid)
        now = time.time()
        if entry is None or entry.claim is None or entry.claim.token != lease or entry.claim.expires <= now:
            return _status(StoreStatus.LOST_LEASE)
        entry.claim.expires = now + self.config.turn_lease_s
        return _status(StoreStatus.OK)

    async def release(self, sid: str, lease: str) -> dict:
        """Give back a claim without a turn (the request failed before answering)."""
        entry = self._entries.get(sid)
        if entry is not None and entry.claim is not None and entry.claim.token == lease:
            entry.claim = None
        return _status(StoreStatus.OK)

    async def finish_turn(self, sid: str, lease: str, version: int, query_ids: list[int],
                          answer_ids: list[int], idempotency_key: str | None = None,
                          finish_reason: str = "stop", transcript: str | None = None) -> dict:
        """Record the answered turn as the pending update of ``version`` and release the claim.

        Written to storage before anything changes in memory: if the write fails the session
        stays exactly as it was (claimed by ``lease``) and the error propagates. Once this
        answers ``ok``, a later request waits for the update (or re-dispatches it) instead of
        reading memory version ``version``.

        With ``transcript`` (the session's transcript after this turn), the transcript index
        follows the session within the same call wherever this shard owns the entries: the
        answer's ``indexed`` says which moves were done here (``linked``: the new entry,
        ``unlinked``: the old one's removal); the caller makes the others on their shards.
        """
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        async with entry.lock:
            if entry.deleted:  # deleted while this call waited for the lock
                return _status(StoreStatus.NOT_FOUND)
            meta, pending = entry.meta, entry.meta.pending
            if pending is not None and pending.lease == lease and pending.base_version == version:
                return _status(StoreStatus.OK, base_version=version)  # a repeated call: already recorded
            if entry.claimed_by_other(lease, time.time()):
                return _status(StoreStatus.LOST_LEASE)
            if meta.version != version or pending is not None:
                # The claim expired and another turn went ahead; this turn cannot be applied.
                return _status(StoreStatus.LOST_LEASE)
            now = time.time()
            last = None if idempotency_key is None else LastTurn(idempotency_key, version, list(answer_ids),
                                                                  finish_reason)
            new = replace(meta, pending=PendingUpdate(version, list(query_ids), list(answer_ids), now, lease),
                          turns=meta.turns + 1, updated=now, last_turn=last, transcript=transcript)
            move = self._index_move(sid, meta.transcript, transcript)
            indexed = await asyncio.to_thread(self._record_turn, new, move)  # one trip off the loop
            entry.meta = new
            entry.settled.clear()
            entry.claim = None
        self._moved_index(move, indexed)
        return _status(StoreStatus.OK, base_version=version, indexed=indexed)

    def _record_turn(self, meta: SessionMeta, move: _IndexMove) -> dict:
        """(Blocking.) Persist the recorded turn, then make the index moves of ``move``."""
        self._persist(meta, None)
        return move.apply(self.files)

    async def update_input(self, sid: str, base_version: int) -> dict:
        """What an updater needs to apply the pending update of ``base_version``: the STM and
        the interaction. ``applied`` when that update already committed."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        meta = entry.meta
        if meta.version > base_version:
            return _status(StoreStatus.APPLIED, version=meta.version)
        if meta.pending is None or meta.pending.base_version != base_version:
            return _status(StoreStatus.NOTHING_PENDING, version=meta.version)
        if meta.pending.error is not None:
            return _status(StoreStatus.FAILED, version=meta.version, error=meta.pending.error)
        self.update_reads += 1
        self.update_read_bytes += len(entry.stm)
        return _status(StoreStatus.OK, stm=entry.stm, stm_shape=meta.stm_shape,
                       query_ids=meta.pending.query_ids, answer_ids=meta.pending.answer_ids)

    async def commit_update(self, sid: str, base_version: int, stm: bytes, lease: str | None = None) -> dict:
        """Compare-and-set: store ``stm`` as version ``base_version + 1`` if the session is at
        ``base_version`` with that update pending — and, with ``lease``, recorded under that
        lease (the updater consolidated the turn its dispatcher sent, not one it read here);
        otherwise change nothing."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        async with entry.lock:
            if entry.deleted:  # deleted while this call waited for the lock
                return _status(StoreStatus.NOT_FOUND)
            meta = entry.meta
            if meta.version > base_version:
                return _status(StoreStatus.ALREADY_APPLIED, version=meta.version)
            pending = meta.pending
            if (pending is None or pending.base_version != base_version or pending.error
                    or (lease is not None and pending.lease != lease)):
                return _status(StoreStatus.CONFLICT, version=meta.version)
            now = time.time()
            new = replace(meta, updated=now, version=base_version + 1, pending=None, committed=now)
            wall, cpu = await asyncio.to_thread(self._timed_persist, new, stm, base_version)
            entry.meta, entry.stm = new, stm
            entry.settled.set()
            self.commits += 1
            self.commit_write_s += max(0.0, time.time() - now)
            self.commit_persist_s += wall
            self.commit_persist_cpu_s += cpu
        return _status(StoreStatus.APPLIED, version=new.version)

    def _timed_persist(self, meta: SessionMeta, stm: bytes, drop_version: int) -> tuple[float, float]:
        """:meth:`_persist` on the calling (worker) thread; its wall and CPU seconds there."""
        wall, cpu = time.perf_counter(), time.thread_time()
        self._persist(meta, stm, drop_version)
        return time.perf_counter() - wall, time.thread_time() - cpu

    async def commit_updates(self, commits: list[tuple[str, int, bytes, str | None]]) -> list[dict]:
        """:meth:`commit_update` of each ``(sid, base_version, stm, lease)`` in one call — a
        MemoryUpdater's batch commits its sessions of this shard together, one Ray call instead
        of one per session. One answer per commit, in order, each on its own: a commit whose
        write failed answers ``unavailable`` with the error, the others apply."""
        outcomes = await asyncio.gather(*(self.commit_update(*commit) for commit in commits), return_exceptions=True)
        return [_status(StoreStatus.UNAVAILABLE, error=repr(o)) if isinstance(o, Exception) else o for o in outcomes]

    async def fail_update(self, sid: str, base_version: int, error: str) -> dict:
        """Record that the pending update of ``base_version`` can never apply: waiting and
        later turns are refused with ``update_failed`` and ``error`` until it is dropped."""
        entry = await self._entry(sid)
        if entry is None or entry.deleted:
            return _status(StoreStatus.NOT_FOUND)
        async with entry.lock:
            if entry.deleted:  # deleted while this call waited for the lock
                return _status(StoreStatus.NOT_FOUND)
            pending = entry.meta.pending
            if pending is None or pending.base_version != base_version:
                return _status(StoreStatus.CONFLICT, version=entry.meta.version)
            new = replace(entry.meta, pending=replace(pending, error=error), updated=time.time())
            await asyncio.to_thread(self._persist, new, None)
            entry.meta = new
            entry.settled.set()  # wake the waiters: they see the error
        logger.warning("session %s: the update of version %d cannot apply: %s", log_id(sid), base_version, error)
        return _status(StoreStatus.OK)

    async def drop_pending(self, sid: str, owner: str | None = None) -> dict:
        """Forget the pending (unapplied) turn: memory stays at its version, the turn count
        goes back by one. The way out of ``update_failed``; refused while the update may
        still apply (no error recorded)."""
        entry = await self._owned(sid, owner)
        if isinstance(entry, StoreStatus):
            return _status(entry)
        async with entry.lock:
            if entry.deleted:  # deleted while this call waited for the lock
                return _status(StoreStatus.NOT_FOUND)
            pending = entry.meta.pending
            if pending is None:
                return _status(StoreStatus.NOTHING_PENDING, version=entry.meta.version)
            if pending.error is None:
                return _status(StoreStatus.PENDING, base_version=pending.base_version)
            new = replace(entry.meta, pending=None, turns=entry.meta.turns - 1, updated=time.time(),
                          last_turn=None)
            await asyncio.to_thread(self._persist, new, None)
            entry.meta = new
            entry.settled.set()
        return _status(StoreStatus.OK, session=entry.public(self.config.session_ttl_s))

    async def delete(self, sid: str, owner: str | None = None) -> dict:
        """Remove the session and its stored memory; waiting requests see it gone."""
        entry = await self._owned(sid, owner)
        if isinstance(entry, StoreStatus):
            return _status(entry)
        async with entry.lock:
            if entry.deleted:  # a concurrent delete won
                return _status(StoreStatus.NOT_FOUND)
            await self._remove_session(sid, entry)
        return _status(StoreStatus.OK)

    # ---- the transcript index ---------------------------------------------------------------

    async def link(self, transcript: str, sid: str) -> dict:
        """Index ``sid`` under ``transcript`` (this shard owns that hash)."""
        if not is_session_id(sid) or not _is_digest(transcript):
            return _status(StoreStatus.INVALID_ID)
        self._remember_link(transcript, sid)
        await asyncio.to_thread(self.files.write_link, transcript, sid)
        return _status(StoreStatus.OK)

    def _owns_transcript(self, transcript: str) -> bool:
        return transcript_shard(transcript, self.num_shards) == self.shard

    def _index_move(self, sid: str, before: str | None, after: str | None) -> _IndexMove:
        """The moves of ``sid``'s index entry from ``before`` to ``after`` that this shard owns."""
        link = after is not None and self._owns_transcript(after)
        unlink = before is not None and after is not None and self._owns_transcript(before)
        return _IndexMove(sid, before, after, link, unlink, self._links.get(before) if unlink else None)

    def _moved_index(self, move: _IndexMove, done: dict) -> None:
        """Bring the in-memory index entries in line with the moves made in storage."""
        if done["linked"]:
            self._remember_link(move.after, move.sid)
        if move.unlink and done["unlinked"] and self._links.get(move.before) == move.sid:
            self._links.pop(move.before)

    def _remember_link(self, transcript: str, sid: str) -> None:
        self._links[transcript] = sid
        self._links.move_to_end(transcript)
        while len(self._links) > 4 * self.config.cache_sessions:
            self._links.popitem(last=False)

    async def lookup(self, transcript: str) -> dict:
        """The session indexed under ``transcript`` (``not_found`` when none is)."""
        if not _is_digest(transcript):
            return _status(StoreStatus.NOT_FOUND)
        sid = self._links.get(transcript)
        if sid is None:
            sid = await asyncio.to_thread(self.files.read_link, transcript)
            if sid is None or not is_session_id(sid):
                return _status(StoreStatus.NOT_FOUND)
            self._remember_link(transcript, sid)
        return _status(StoreStatus.OK, session_id=sid)

    async def unlink(self, transcript: str, sid: str) -> dict:
        """Drop the index entry ``transcript`` → ``sid`` (only if it still names ``sid``)."""
        found = await self.lookup(transcript)
        if status(found) == StoreStatus.OK and found["session_id"] == sid:
            self._links.pop(transcript, None)
            await asyncio.to_thread(self.files.remove_link, transcript)
        return _status(StoreStatus.OK)

    # ---- operations --------------------------------------------------------------------------

    async def get_config(self) -> StoreConfig:
        return self.config

    async def reconfigure(self, config: StoreConfig) -> list[str]:
        """Take the settings of ``config`` (same URL) and return the names of those that
        changed: a detached shard outlives the deployment that created it."""
        if config.url != self.config.url:
            raise ValueError(f"url={config.url!r}: this shard stores sessions at {self.config.url!r}")
        changed = [f.name for f in fields(StoreConfig) if getattr(config, f.name) != getattr(self.config, f.name)]
        if changed:
            logger.warning("session store shard %d/%d: settings changed by a new deployment: %s", self.shard,
                           self.num_shards, ", ".join(f"{n} {getattr(self.config, n)} → {getattr(config, n)}"
                                                      for n in changed))
        self.config = config
        return changed

    def snapshot(self) -> dict:
        """Sessions in memory, in use, stored (at the last count), with pending updates, and
        how many expired and were evicted so far; turns claimed, and the STMs (and bytes)
        handed out for answering them (by ``begin_turn`` or ``read_stm``; a decoder that
        holds the STM reads none), and to updaters (``update_reads``; an updater that computed
        the STM reads none); the claims that found the previous turn's update pending
        (``claims_waited``) and how long after that turn was recorded they came, summed
        (``claim_pending_age_s``); the updates committed (``commits``) and the seconds from each
        one's commit time to the waiting turn's release (its write, ``commit_write_s``), summed,
        and of that the write itself on its worker thread, its wall and CPU seconds
        (``commit_persist_s``, ``commit_persist_cpu_s``)."""
        now = time.time()
        return {"cached": len(self._entries), "in_use": self._in_use(now), "stored": self._stored,
                "pending": sum(e.meta.pending is not None for e in self._entries.values()),
                "expired": self.expired, "evicted": self.evicted, "claims": self.claims,
                "stm_sent": self.stm_sent, "stm_sent_bytes": self.stm_sent_bytes,
                "update_reads": self.update_reads, "update_read_bytes": self.update_read_bytes,
                "claims_waited": self.claims_waited, "claim_pending_age_s": self.claim_pending_age_s,
                "commits": self.commits, "commit_write_s": self.commit_write_s,
                "commit_persist_s": self.commit_persist_s, "commit_persist_cpu_s": self.commit_persist_cpu_s}

    async def stats(self) -> dict:
        return self.snapshot()
