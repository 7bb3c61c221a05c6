"""One turn's life cycle, Ray-free: claim → stream → record → dispatch.

The Ingress (``serve/ingress.py``) wires these to Ray handles; tests wire them to an
in-process :class:`~rxt_dist.serving.sessions.SessionStore` and
:class:`~rxt_dist.serving.decode_loop.DecodeLoop`. How a turn ends decides what happens to
the session:

* **answered** — the whole answer was sent: the turn is recorded, then its memory update is
  dispatched (off the response path);
* **disconnected** — the client went away mid-answer (the request was cancelled): the query
  and the tokens produced so far are recorded and consolidated, as if the answer had ended
  there;
* **failed** — anything the server got wrong (a generator that died, a store write that
  failed, a bug): the claim is released and memory stays exactly as it was.

Only a real cancellation counts as a disconnect; every other exception is a failure.
While the answer streams, the claim is renewed so a long answer keeps its session.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rxt_dist.serving.api import ApiError, chunk_event, completion_body, completion_id, error_event, usage
from rxt_dist.serving.event_stream import LastEvents
from rxt_dist.serving.protocol import DONE_EVENT, SESSION_HEADER, StoreStatus, log_id, status
from rxt_dist.serving.text import TextCodec

logger = logging.getLogger(__name__)

StoreCall = Callable[..., Awaitable[dict]]
"""``store(method, *args)``: one session-store call for this turn's session."""
TokenStream = AsyncIterator[tuple[list[int], str | None]]
"""``(new_tokens, finish_reason)`` items; the reason only on the last one."""


class Outcome(Enum):
    ANSWERED = "answered"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


def not_found(sid: str) -> ApiError:
    return ApiError(404, f"session '{sid}' does not exist (unknown, expired or deleted)", param=SESSION_HEADER,
                    code="session_not_found")


def retry_later(message: str, code: str, retry_after: float = 1.0) -> ApiError:
    return ApiError(503, message, type="server_error", code=code,
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


@dataclass
class ClaimPolicy:
    """How long a request waits for its session's previous memory update."""

    update_wait_timeout_s: float = 30.0
    update_stale_s: float = 10.0
    """A pending update older than this is dispatched again (its first dispatcher may have died)."""


async def claim_session(store: StoreCall, sid: str, policy: ClaimPolicy, owner: str | None,
                        idempotency_key: str | None, redispatch: Callable[[int], None],
                        spawn: Callable[[Coroutine], Any], expect_transcript: str | None = None,
                        with_stm: bool = True) -> dict:
    """Claim ``sid`` for one turn once its previous update has committed; the store's answer
    (``ok`` with the memory version — and its STM unless ``with_stm`` is false —, ``replay``
    with a recorded answer, or — with ``expect_transcript`` — ``diverged``). The claim's
    ``waited_s`` is the total time spent waiting for that update. Refusals raise
    :class:`ApiError`."""
    lease = uuid.uuid4().hex
    deadline = time.monotonic() + policy.update_wait_timeout_s
    waited_s = 0.0
    while True:
        wait_s = max(0.0, min(deadline - time.monotonic(), policy.update_stale_s))
        call = asyncio.ensure_future(store("begin_turn", sid, lease, wait_s, owner, idempotency_key,
                                           expect_transcript, with_stm))
        try:
            claim = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The client left while waiting: give the claim back once the call returns.
            spawn(_release_after(store, call, sid, lease))
            raise
        result = status(claim)
        waited_s += claim.get("waited_s", 0.0)
        if result in (StoreStatus.OK, StoreStatus.REPLAY, StoreStatus.DIVERGED):
            return {**claim, "waited_s": waited_s}
        if result == StoreStatus.NOT_FOUND:
            raise not_found(sid)
        if result == StoreStatus.BUSY:
            raise ApiError(409, f"session '{sid}' is answering another request; send one message at a "
                           "time per session", param=SESSION_HEADER, code="session_busy",
                           headers={"Retry-After": "1"})
        if result == StoreStatus.FULL:
            raise retry_later("the session store has no room for this session right now (too many "
                              "sessions in use); retry shortly", "session_store_full")
        if result == StoreStatus.UPDATE_FAILED:
            raise ApiError(409, f"session '{sid}': the memory update of the previous turn cannot be "
                           f"applied ({claim['error']}). Drop that turn with DELETE /v1/sessions/{sid}/pending "
                           "(memory stays as it was before it), or delete the session",
                           param=SESSION_HEADER, code="memory_update_failed")
        if result != StoreStatus.PENDING:
            raise RuntimeError(f"session store answered {claim} to begin_turn")
        if claim["pending_age_s"] >= policy.update_stale_s:
            redispatch(claim["base_version"])  # nobody seems to be applying it: apply it here
        if time.monotonic() >= deadline:
            await store("release", sid, lease)
            raise retry_later(f"session '{sid}': the memory update of the previous turn has not finished "
                              f"after {policy.update_wait_timeout_s:g}s; retry later", "memory_update_pending",
                              policy.update_stale_s)


async def _release_after(store: StoreCall, call: asyncio.Future, sid: str, lease: str) -> None:
    await asyncio.gather(call, return_exceptions=True)  # the claim exists once the call returns
    await store("release", sid, lease)


class Turn:
    """One answer produced for a claimed session, and the bookkeeping after it.

    ``stream`` yields the answer's tokens; ``cancel_stream`` stops producing them;
    ``dispatch(recorded_answer)`` starts the memory update of the recorded turn (off the
    response path); ``spawn`` runs a coroutine as a task no request cancellation reaches;
    ``on_recorded(result, answer)`` hears the store's answer to the recording. The callbacks
    get what they need as arguments, so that closures made for one turn need not hold the turn
    (one that did made a reference cycle, left to Python's cycle collector, on every turn).
    """

    def __init__(self, *, store: StoreCall, sid: str, claim: dict, query_ids: list[int], stream: TokenStream,
                 cancel_stream: Callable[[], None], dispatch: Callable[[list[int] | None], None],
                 spawn: Callable[[Coroutine], asyncio.Task], lease_s: float,
                 idempotency_key: str | None = None,
                 transcript_after: Callable[[list[int]], str | None] | None = None,
                 on_recorded: Callable[[dict, list[int]], None] | None = None) -> None:
        self.store, self.sid, self.query_ids, self.stream = store, sid, query_ids, stream
        self.cancel_stream, self._dispatch, self.spawn = cancel_stream, dispatch, spawn
        self.lease, self.version = claim["lease"], claim["version"]
        self.idempotency_key = idempotency_key
        self.transcript_after, self.on_recorded = transcript_after, on_recorded
        self.answer: list[int] = []
        self.recorded_answer: list[int] | None = None
        """The answer as recorded (the pending update's), once it is."""
        self.finish_reason = "stop"
        self.finished = self.recorded = self.dispatched = self.closed = False
        self._moved = time.monotonic()
        # The claim is renewed every third of a lease while the answer streams. A timer, not a
        # task per turn: almost every answer ends long before the first renewal, and a
        # sleeping task cancelled at the end left a cycle (task, CancelledError, traceback,
        # frames, turn) to Python's cycle collector on every turn.
        self._renew_period_s = lease_s / 3
        self._renewing = True
        self._renewal: asyncio.TimerHandle | None = None
        self._renew_later()

    def _renew_later(self) -> None:
        if self._renewing:
            self._renewal = asyncio.get_running_loop().call_later(self._renew_period_s, self._renew_due)

    def _renew_due(self) -> None:
        """Keep the claim while the answer streams (a slow client or a long answer). A turn
        whose stream has not moved for a whole lease is dead (its response was never read):
        its claim is left to expire."""
        self._renewal = None
        if self._renewing and time.monotonic() - self._moved <= 3 * self._renew_period_s:
            self.spawn(self._renew())

    async def _renew(self) -> None:
        try:
            if status(await self.store("renew", self.sid, self.lease)) != StoreStatus.OK:
                return
        except Exception as exc:  # the store is restarting: try again next period
            logger.warning("session %s: renewing the claim failed: %r", log_id(self.sid), exc)
        self._renew_later()

    def _stop_renewing(self) -> None:
        self._renewing = False
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None

    async def tokens(self) -> AsyncIterator[list[int]]:
        async for new_tokens, reason in self.stream:
            self._moved = time.monotonic()
            self.answer.extend(new_tokens)
            if reason is not None:
                self.finish_reason, self.finished = reason, True
            yield new_tokens

    async def record(self) -> None:
        """Make the turn the session's pending update (written to storage) and release the claim."""
        answer = list(self.answer)
        transcript = None if self.transcript_after is None else self.transcript_after(answer)
        result = await self.store("finish_turn", self.sid, self.lease, self.version, self.query_ids,
                                  answer, self.idempotency_key, self.finish_reason, transcript)
        if status(result) == StoreStatus.NOT_FOUND:
            raise ApiError(404, f"session '{self.sid}' was deleted while answering; the turn is not kept",
                           param=SESSION_HEADER, code="session_not_found")
        if status(result) != StoreStatus.OK:
            raise ApiError(409, f"session '{self.sid}': this turn's claim expired and another turn went "
                           "ahead; the turn is not kept", param=SESSION_HEADER, code="session_busy")
        self.recorded, self.recorded_answer = True, answer
        self._stop_renewing()
        if self.on_recorded is not None:
            self.on_recorded(result, answer)

    def dispatch(self) -> None:
        if not self.dispatched:
            self.dispatched = True
            self._dispatch(self.recorded_answer)

    def close(self, outcome: Outcome) -> None:
        """End the turn (idempotent): see the module docstring for what each outcome does."""
        if self.closed:
            return
        self.closed = True
        self._stop_renewing()
        if not self.finished:
            self.cancel_stream()
        if self.recorded:
            self.dispatch()
        elif outcome == Outcome.DISCONNECTED:
            self.spawn(self._consolidate_partial())
        else:
            self.spawn(self.store("release", self.sid, self.lease))

    async def _consolidate_partial(self) -> None:
        logger.info("session %s: client went away after %d answer tokens; consolidating those",
                    log_id(self.sid), len(self.answer))
        try:
            await self.record()
        except Exception as exc:
            logger.warning("session %s: could not record the interrupted turn: %s", log_id(self.sid), exc)
            await self.store("release", self.sid, self.lease)
            return
        self.dispatch()


ErrorMapper = Callable[[Exception], ApiError]
"""Turns a server-side exception into the error the client sees (e.g. a dead replica → 503)."""


def internal_error(exc: Exception) -> ApiError:
    return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")


async def stream_events(turn: Turn, codec: TextCodec, model_id: str, query_len: int, include_usage: bool,
                        to_api_error: ErrorMapper = internal_error) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; the update is dispatched once ``[DONE]``
    has been sent. A failure after the stream started ends it with an error event.

    Each piece yielded is one write (the server, the proxy and the client each handle it): the
    role event goes with the first text, and the finish chunk, the usage and ``[DONE]`` are one
    :class:`~rxt_dist.serving.event_stream.LastEvents`, sent with the end of the body."""
    cid, detok = completion_id(), codec.detokenizer()
    head = chunk_event(cid, model_id, {"role": "assistant", "content": ""})  # not yet sent
    outcome = Outcome.DISCONNECTED  # unless the stream reaches an end the server chose
    try:
        try:
            async for new_tokens in turn.tokens():
                text = "".join(detok.push(t) for t in new_tokens)
                if text:
                    yield head + chunk_event(cid, model_id, {"content": text})
                    head = ""
            tail = detok.flush()
            if tail:
                yield head + chunk_event(cid, model_id, {"content": tail})
                head = ""
            await turn.record()
        except Exception as exc:  # not a disconnect (that is a CancelledError / GeneratorExit)
            outcome = Outcome.FAILED
            err = exc if isinstance(exc, ApiError) else to_api_error(exc)
            if not isinstance(exc, ApiError):
                logger.warning("session %s: answer failed: %r", log_id(turn.sid), exc)
            yield head + error_event(err)
            return
        end = head + chunk_event(cid, model_id, {}, turn.finish_reason)
        if include_usage:
            end += chunk_event(cid, model_id, {}, usage_=usage(query_len + 3, len(turn.answer)))
        outcome = Outcome.ANSWERED  # recorded: the update starts off the response path, in close()
        yield LastEvents(end + DONE_EVENT)
    finally:
        turn.close(outcome)


async def complete(turn: Turn, codec: TextCodec, model_id: str, query_len: int,
                   to_api_error: ErrorMapper = internal_error) -> dict:
    """The body of a non-streamed answer, recorded; the caller dispatches the update once the
    response is sent (:meth:`Turn.dispatch`). Failures raise :class:`ApiError`."""
    try:
        async for _ in turn.tokens():
            pass
        await turn.record()
    except ApiError:
        turn.close(Outcome.FAILED)
        raise
    except Exception as exc:
        turn.close(Outcome.FAILED)
        logger.warning("session %s: answer failed: %r", log_id(turn.sid), exc)
        raise to_api_error(exc) from None
    except BaseException:
        turn.close(Outcome.DISCONNECTED)
        raise
    return completion_body(completion_id(), model_id, codec.decode_answer(turn.answer), turn.finish_reason,
                           usage(query_len + 3, len(turn.answer)))


def replay_events(codec: TextCodec, model_id: str, claim: dict, query_len: int, include_usage: bool) -> list[str]:
    """The events of a recorded answer sent again (a retried request, same idempotency key)."""
    cid, text = completion_id(), codec.decode_answer(claim["answer_ids"])
    events = [chunk_event(cid, model_id, {"role": "assistant", "content": ""})]
    if text:
        events.append(chunk_event(cid, model_id, {"content": text}))
    events.append(chunk_event(cid, model_id, {}, claim["finish_reason"]))
    if include_usage:
        events.append(chunk_event(cid, model_id, {}, usage_=usage(query_len + 3, len(claim["answer_ids"]))))
    return [*events, DONE_EVENT]


def replay_body(codec: TextCodec, model_id: str, claim: dict, query_len: int) -> dict:
    return completion_body(completion_id(), model_id, codec.decode_answer(claim["answer_ids"]),
                           claim["finish_reason"], usage(query_len + 3, len(claim["answer_ids"])))
