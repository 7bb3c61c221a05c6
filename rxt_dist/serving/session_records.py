"""What a session is, as stored: its id (random, sharded by its bits) and its record
(``meta.json``: memory version, the pending update, the last turn, owner, transcript hash).
Ray-free and torch-free; :mod:`rxt_dist.serving.sessions` keeps the records."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass

SESSION_PREFIX = "sess_"
SESSION_ID_BYTES = 16  # 128 random bits
_SESSION_RE = re.compile(rf"^{SESSION_PREFIX}[0-9a-f]{{{2 * SESSION_ID_BYTES}}}$")


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
    """Wall-clock time the turn finished (seconds since the epoch, the store's clock)."""
    lease: str = ""
    """The claim the turn was answered under (a repeated ``finish_turn`` is recognised)."""
    error: str | None = None
    """Why this update can never apply (recorded by an updater); the session's next turn is
    refused until the pending turn is dropped."""


@dataclass
class LastTurn:
    """The session's last answered turn, kept so a retried request (same idempotency key)
    gets the recorded answer instead of a second turn."""

    key: str
    base_version: int
    answer_ids: list[int]
    finish_reason: str


@dataclass
class SessionMeta:
    """What ``meta.json`` holds for one session."""

    id: str
    created: float
    updated: float
    """Last time the session was created, answered or updated (its idle time runs from here)."""
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
    owner: str | None = None
    """Hash of the API key that created the session (None: created without keys); only that
    key reaches it."""
    last_turn: LastTurn | None = None
    transcript: str | None = None
    """Hash of everything consolidated so far (system prompt, then each user message and
    answer as sent; :func:`~rxt_dist.serving.protocol.transcript_step`): a stateless client
    resending this history continues this session."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SessionMeta":
        data = json.loads(text)
        pending, last = data.pop("pending", None), data.pop("last_turn", None)
        return cls(**data, pending=PendingUpdate(**pending) if pending else None,
                   last_turn=LastTurn(**last) if last else None)

    def public(self, ttl_s: float | None = None) -> dict:
        """The session as the HTTP API shows it (``expires_at``: when it is deleted if it stays
        idle, None when sessions do not expire)."""
        return {
            "id": self.id, "object": "session", "created": int(self.created),
            "turns": self.turns, "memory_version": self.version,
            "pending_update": self.pending is not None,
            "update_error": self.pending.error if self.pending else None,
            "memory_committed_at": self.committed,
            "expires_at": None if ttl_s is None else self.updated + ttl_s,
        }
