"""What the serving processes say to each other and to clients, in one Ray-free place.

* :class:`StoreStatus`: every outcome a session-store call can answer (the store, the
  Ingress and the MemoryUpdater match on these, never on bare strings);
* the HTTP header names of the session API;
* server-sent-event framing of streamed answers.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum


class StoreStatus(str, Enum):
    """The ``status`` of a session-store answer (a ``str`` subclass, so it pickles across Ray
    and compares equal to its value)."""

    OK = "ok"
    NOT_FOUND = "not_found"
    """No such session, deleted, expired, or owned by another API key (indistinguishable on
    purpose)."""
    EXISTS = "exists"
    INVALID_ID = "invalid_id"
    BUSY = "busy"
    """Another request holds the session."""
    PENDING = "pending"
    """The previous turn's memory update did not commit within the wait."""
    UPDATE_FAILED = "update_failed"
    """The previous turn's memory update can never apply (recorded by an updater)."""
    DIVERGED = "diverged"
    """The session no longer stands at the transcript the request continues."""
    REPLAY = "replay"
    """The request repeats the session's last turn (same idempotency key): its recorded
    answer, nothing applied again."""
    FULL = "full"
    """The shard cannot take this session now (too many sessions in use, or at its cap)."""
    LOST_LEASE = "lost_lease"
    """The claim expired and another turn went ahead."""
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    NOTHING_PENDING = "nothing_pending"
    CONFLICT = "conflict"
    INCOMPATIBLE = "incompatible"
    """The session's memory has another shape than the model's."""
    FAILED = "failed"
    """Consolidating this update raised; the error is recorded on the session."""
    UNAVAILABLE = "unavailable"
    """(updater) a store call failed; the dispatcher retries."""

    def __str__(self) -> str:
        return self.value


def status(result: dict) -> StoreStatus:
    """The status of a store answer."""
    return StoreStatus(result["status"])


# ---- HTTP headers ---------------------------------------------------------------------------

SESSION_HEADER = "x-session-id"
VERSION_HEADER = "x-memory-version"
COMMITTED_HEADER = "x-memory-committed-at"
WAITED_HEADER = "x-waited-for-update-ms"
ARRIVED_HEADER = "x-claim-arrived-at"
"""When the request's claim reached the session store (epoch seconds, the store's clock)."""
WAITED_FOR_HEADER = "x-waited-for-turn-recorded-at"
"""When the turn whose update the claim waited for was recorded (epoch seconds, the store's
clock); absent when nothing was pending."""
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "x-idempotent-replay"
MAX_IDEMPOTENCY_KEY = 255


def log_id(session_id: str) -> str:
    """What logs say instead of a session id (the id is a capability): a short hash."""
    return "s#" + hashlib.sha256(session_id.encode()).hexdigest()[:10]


def owner_of(api_key: str | None) -> str | None:
    """The owner recorded on a session created with ``api_key`` (a hash, never the key)."""
    return None if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()[:32]


# ---- server-sent events ---------------------------------------------------------------------

def sse(data: dict | str) -> str:
    """One server-sent event carrying ``data`` (a JSON object, or a literal like ``[DONE]``)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


DONE_EVENT = sse("[DONE]")


# ---- transcripts: how a stateless client's resent history finds its session -----------------

_TRANSCRIPT_TAG = "rxt-transcript-v1"


def transcript_start(owner: str | None, system_text: str | None) -> str:
    """The transcript hash of a conversation before its first turn: the owner (so a match
    never crosses API keys) and the system prompt."""
    return _digest(_TRANSCRIPT_TAG, owner or "", system_text or "")


def transcript_step(transcript: str, user_text: str, answer_text: str) -> str:
    """The transcript hash after one more (user message, answer as the server sent it) turn."""
    return _digest(transcript, user_text, answer_text)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))  # length-prefixed: no two splits hash alike
        h.update(data)
    return h.hexdigest()


def transcript_shard(transcript: str, num_shards: int) -> int:
    """The store shard that indexes ``transcript``."""
    return int(transcript[:8], 16) % num_shards


def stm_digest(stm: bytes) -> str:
    """A short digest of an STM's bytes: tells two computations of one memory version apart."""
    return hashlib.blake2b(stm, digest_size=12).hexdigest()


# ---- the session store's actors -------------------------------------------------------------

STORE_NAMESPACE = "rxt_dist"
"""The Ray namespace of the session store's shard actors."""
STORE_ACTOR_PREFIX = "rxt-session-store-"


def store_actor_name(url: str, shard: int, num_shards: int) -> str:
    """The cluster-wide name of one shard actor (same URL and layout → same actor)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{STORE_ACTOR_PREFIX}{digest}-{shard}-of-{num_shards}"


def store_actor_shard(name: str) -> int | None:
    """The shard index in a shard actor's name (:func:`store_actor_name`); None for another actor."""
    if not name.startswith(STORE_ACTOR_PREFIX):
        return None
    _, shard, of, num_shards = name.rsplit("-", 3)
    return int(shard) if of == "of" and shard.isdigit() and num_shards.isdigit() else None
