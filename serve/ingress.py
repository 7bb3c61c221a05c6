"""The Ingress deployment: the HTTP API (OpenAI-compatible chat + sessions). Owns no model.

One turn, as the Ingress drives it (the life cycle itself is Ray-free:
:mod:`rxt_dist.serving.turn`)::

    claim the session (waits while the previous turn's update is pending; 409 if another
    request holds it) → stream the answer from a Generator replica, renewing the claim →
    record the turn as the session's pending update (persisted) → send the end of the answer
    → dispatch the update to a MemoryUpdater replica as its own call, retried until it lands.

The update call runs in a task of its own (not a child of the HTTP request), so a client
that disconnects cannot cancel it. Session ids are capabilities: logs carry a short hash
of them (:func:`~rxt_dist.serving.protocol.log_id`), never the id.
"""

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import Coroutine, Iterator
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from rxt_dist.model import load_config, load_tokenizer
from rxt_dist.serving.api import (
    ApiError,
    CreateSessionRequest,
    encode_message,
    error_body,
    history_transcript,
    parse_body,
    parse_chat_request,
    prepare_turn,
    read_limited,
    system_text,
)
from rxt_dist.serving.event_stream import EventStream
from rxt_dist.serving.protocol import (
    ARRIVED_HEADER,
    COMMITTED_HEADER,
    IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY,
    REPLAYED_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    WAITED_FOR_HEADER,
    WAITED_HEADER,
    StoreStatus,
    log_id,
    owner_of,
    status,
    transcript_start,
    transcript_step,
)
from rxt_dist.serving.session_records import is_session_id, new_session_id
from rxt_dist.serving.text import TextCodec
from rxt_dist.serving.turn import (
    ClaimPolicy,
    Turn,
    claim_session,
    complete,
    internal_error,
    not_found,
    replay_body,
    replay_events,
    retry_later,
    stream_events,
)
from rxt_dist.serving.updates import recorded_turn
from serve.args import AppArgs
from serve.logs import route_library_logs
from serve.metrics import IngressMetrics
from serve.ray_env import with_serve_transport
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")

MAX_BODY_BYTES = 4 * 2**20  # far above any request the token limits allow

api = FastAPI(title="rxt_dist chat", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = f"{request.method} {request.url.path}: {exc.detail}"
    code = "not_found" if exc.status_code == 404 else None
    return JSONResponse(error_body(message, "invalid_request_error", None, code), status_code=exc.status_code)


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("internal error on %s %s", request.method, request.url.path.partition("/sess_")[0])
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
    return await read_limited(request.stream(), MAX_BODY_BYTES)


def _unavailable(what: str, exc: BaseException) -> ApiError:
    return retry_later(f"{what} is unavailable, retry shortly ({type(exc).__name__})", "service_unavailable")


def _to_api_error(exc: Exception) -> ApiError:
    """A failure while answering, as the client sees it: a replica lost is transient (503)."""
    return _unavailable("the generator", exc) if isinstance(exc, RayError) else internal_error(exc)


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.1},
                  health_check_period_s=5)
@serve.ingress(api)
class Ingress:
    """HTTP front end: validates requests, sequences turns per session, streams answers."""

    def __init__(self, generator: DeploymentHandle, updater: DeploymentHandle, args: AppArgs,
                 model_id: str) -> None:
        route_library_logs()
        cfg = load_config(args.model_dir)
        self.codec = TextCodec(load_tokenizer(args.model_dir, cfg.vocab_size))
        self.stm_shape = list(cfg.stm_shape)
        self.model_id = model_id
        self.created = int(time.time())
        self.args = args
        self.limits = args.limits()
        self.api_keys = args.resolved_api_keys()
        self.policy = ClaimPolicy(args.update_wait_timeout_s, args.update_stale_s)
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self.generator = with_serve_transport(generator)
        self.updater = with_serve_transport(updater)
        self._updates: dict[tuple[str, int], asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self.metrics = IngressMetrics()
        self._janitor: asyncio.Task | None = None

    # ---- routes ----------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.model_id}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "rxt_dist"}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        with self._counted():
            return await self._chat(request)

    async def _chat(self, request: Request):
        self._ensure_janitor()
        owner = self._authorize(request)
        req = parse_chat_request(await _read_body(request))
        if req.model != self.model_id:
            raise ApiError(404, f"model '{req.model}' is not served here; this server serves "
                           f"'{self.model_id}'", param="model", code="model_not_found")
        sid = self._session_header(request)
        key = self._idempotency_key(request)
        claim, history = None, None
        if sid is None:
            # A stateless client resends the whole history: continue the session that stands
            # at exactly that transcript, if there is one (one consolidation per turn).
            history = history_transcript(req, owner)
            if history is not None:
                sid, claim = await self._continue(history, owner, key)
        turn = prepare_turn(req, self.codec, self.limits, new_session=sid is None)
        if sid is None:
            start = transcript_start(owner, system_text(req))
            sid = await self._create_session(turn.system_ids, turn.history, owner, history or start)
        if claim is None:
            claim = await claim_session(self._store_call(sid), sid, self.policy, owner, key,
                                        lambda version: self._dispatch_update(sid, version), self._spawn,
                                        with_stm=False)
        self.metrics.claimed(claim["waited_s"])
        headers = {SESSION_HEADER: sid, VERSION_HEADER: str(claim["version"]),
                   WAITED_HEADER: f"{claim['waited_s'] * 1e3:.3f}"}
        if claim.get("committed") is not None:
            headers[COMMITTED_HEADER] = f"{claim['committed']:.6f}"
        if claim.get("arrived_at") is not None:  # where a turn's time goes, on the store's clock
            headers[ARRIVED_HEADER] = f"{claim['arrived_at']:.6f}"
        if claim.get("waited_for_recorded_at") is not None:
            headers[WAITED_FOR_HEADER] = f"{claim['waited_for_recorded_at']:.6f}"
        query_len = len(turn.query_ids)
        if status(claim) == StoreStatus.REPLAY:
            headers[REPLAYED_HEADER] = "true"
            if claim["update_pending"]:
                # The request that recorded this turn may have died before dispatching its
                # update: dispatch it (applying it twice is impossible: compare-and-set).
                self._dispatch_update(sid, claim["version"])
            if turn.stream:
                events = replay_events(self.codec, self.model_id, claim, query_len, turn.include_usage)
                return StreamingResponse(iter(events), media_type="text/event-stream",
                                         headers={**headers, "cache-control": "no-cache"})
            return JSONResponse(replay_body(self.codec, self.model_id, claim, query_len), headers=headers)
        if list(claim["stm_shape"]) != self.stm_shape:
            self._spawn(self._store(sid).release.remote(sid, claim["lease"]))
            raise ApiError(409, f"session '{sid}' holds a memory of shape {claim['stm_shape']} but the "
                           f"served model's is {self.stm_shape}: it was made by another model",
                           param=SESSION_HEADER, code="session_incompatible")
        try:
            # The Generator replica this session prefers keeps its STM (serve/routing.py):
            # only the version travels; a replica without it reads it from the store.
            stream = self.generator.options(stream=True).generate.remote(
                turn.query_ids, asdict(turn.sampling), session=sid, version=claim["version"],
                digest=claim["stm_digest"])
        except BaseException:
            self._spawn(self._store(sid).release.remote(sid, claim["lease"]))
            raise
        before, query_text = claim.get("transcript"), req.messages[-1].text()

        def transcript_after(answer: list[int]) -> str | None:
            return None if before is None else transcript_step(before, query_text, self.codec.decode_answer(answer))

        def relink(recorded: dict, answer: list[int]) -> None:
            """The index follows the session to its new transcript: the store's shard of
            the session moved the entries it owns as it recorded the turn, here the rest."""
            after = transcript_after(answer)
            done = recorded.get("indexed", {})
            if after is not None and not (done.get("linked") and done.get("unlinked")):
                self._spawn(self._relink(sid, None if done.get("unlinked") else before,
                                         None if done.get("linked") else after))

        def dispatch(recorded_answer: list[int] | None) -> None:  # the recorded turn travels with the update
            recorded = None
            if recorded_answer is not None and claim.get("stm_digest"):
                recorded = recorded_turn(turn.query_ids, recorded_answer, claim["lease"], claim["stm_digest"])
            self._dispatch_update(sid, claim["version"], recorded)

        run = Turn(store=self._store_call(sid), sid=sid, claim=claim, query_ids=turn.query_ids, stream=stream,
                   cancel_stream=stream.cancel, dispatch=dispatch,
                   spawn=self._spawn, lease_s=self.args.turn_lease_s, idempotency_key=key,
                   transcript_after=transcript_after, on_recorded=relink)
        if turn.stream:
            events = stream_events(run, self.codec, self.model_id, query_len, turn.include_usage, _to_api_error)
            return EventStream(events, headers={**headers, "cache-control": "no-cache"})
        body = await complete(run, self.codec, self.model_id, query_len, _to_api_error)
        # The update is dispatched once the response has been sent (Starlette background).
        return JSONResponse(body, headers=headers, background=BackgroundTask(self._after_response, run))

    @api.post("/v1/sessions")
    async def create_session(self, request: Request) -> JSONResponse:
        with self._counted():
            owner = self._authorize(request)
            body = parse_body(CreateSessionRequest, await _read_body(request), empty_ok=True)
            system_ids = None
            if body.system is not None:
                system_ids = encode_message(self.codec, body.system, "system", self.limits)
            sid = await self._create_session(system_ids, [], owner, transcript_start(owner, body.system))
            info = await self._call(self._store(sid).info.remote(sid, owner), "the session store")
            return JSONResponse(info["session"], status_code=201, headers={SESSION_HEADER: sid})

    @api.get("/v1/sessions/{sid}")
    async def get_session(self, sid: str, request: Request) -> dict:
        with self._counted():
            owner = self._authorize(request)
            info = await self._call(self._store(self._known_id(sid)).info.remote(sid, owner), "the session store")
            if status(info) != StoreStatus.OK:
                raise not_found(sid)
            return info["session"]

    @api.delete("/v1/sessions/{sid}")
    async def delete_session(self, sid: str, request: Request) -> dict:
        with self._counted():
            owner = self._authorize(request)
            result = await self._call(self._store(self._known_id(sid)).delete.remote(sid, owner), "the session store")
            if status(result) != StoreStatus.OK:
                raise not_found(sid)
            return {"id": sid, "object": "session.deleted", "deleted": True}

    @api.delete("/v1/sessions/{sid}/pending")
    async def drop_pending(self, sid: str, request: Request) -> dict:
        """Forget a turn whose memory update cannot apply (the way out of
        ``memory_update_failed``): memory stays at its version."""
        with self._counted():
            owner = self._authorize(request)
            result = await self._call(self._store(self._known_id(sid)).drop_pending.remote(sid, owner),
                                      "the session store")
            outcome = status(result)
            if outcome == StoreStatus.OK:
                return result["session"]
            if outcome == StoreStatus.NOT_FOUND:
                raise not_found(sid)
            if outcome == StoreStatus.PENDING:
                raise ApiError(409, f"session '{sid}': its pending update has not failed (it may still apply); "
                               "only a failed update can be dropped", code="update_not_failed",
                               headers={"Retry-After": "1"})
            raise ApiError(409, f"session '{sid}' has no pending turn to drop", code="nothing_pending")

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Count the request under its outcome: ``ok`` or the error code it is refused with."""
        try:
            yield
        except ApiError as exc:
            self.metrics.answered(exc.code or f"http_{exc.status}")
            raise
        except Exception:
            self.metrics.answered("internal_error")
            raise
        self.metrics.answered("ok")

    # ---- request checks --------------------------------------------------------------------

    def _authorize(self, request: Request) -> str | None:
        """The owner (a hash of the caller's key) sessions are bound to; None without keys."""
        if self.api_keys is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() == "bearer":
            for key in self.api_keys:
                if secrets.compare_digest(given, key.encode()):
                    return owner_of(key)
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _session_header(self, request: Request) -> str | None:
        sid = request.headers.get(SESSION_HEADER)
        return None if sid is None else self._known_id(sid.strip())

    @staticmethod
    def _known_id(sid: str) -> str:
        if not is_session_id(sid):
            raise not_found(sid[:80])
        return sid

    @staticmethod
    def _idempotency_key(request: Request) -> str | None:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return None
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise ApiError(400, f"'{IDEMPOTENCY_HEADER}' must be 1 to {MAX_IDEMPOTENCY_KEY} printable "
                           "characters", param=IDEMPOTENCY_HEADER, code="invalid_idempotency_key")
        return key

    # ---- sessions and turns ----------------------------------------------------------------

    def _store(self, sid: str):
        return self.stores.for_session(sid)

    def _store_call(self, sid: str):
        """``call(method, *args)`` on the shard of ``sid``; a shard that cannot be reached is a 503."""
        shard = self._store(sid)

        async def call(method: str, *args) -> dict:
            return await self._call(getattr(shard, method).remote(*args), "the session store")
        return call

    async def _call(self, ref, what: str):
        try:
            return await ref
        except RayError as exc:
            logger.warning("%s failed: %s", what, type(exc).__name__)
            raise _unavailable(what, exc) from None

    async def _create_session(self, system_ids: list[int] | None, history: list, owner: str | None,
                              transcript: str) -> str:
        """A new session whose memory holds the system prompt and migrated turns, indexed
        under their ``transcript``."""
        try:
            stm = await self.updater.new_session_stm.remote(system_ids, history)
        except RayError as exc:
            raise _unavailable("the memory updater", exc) from None
        sid = new_session_id()
        result = await self._call(self._store(sid).create.remote(sid, stm, self.stm_shape, len(history), owner,
                                                                 transcript), "the session store")
        if status(result) == StoreStatus.FULL:
            raise retry_later("the session store is full (too many sessions in use or stored); retry later",
                              "session_store_full", 5)
        if status(result) != StoreStatus.OK:
            raise RuntimeError(f"session store refused a new session: {result['status']}")
        if history:
            self._spawn(self._relink(sid, None, transcript))
        return sid

    # ---- stateless clients: the transcript index -----------------------------------------------

    def _index(self, transcript: str):
        return self.stores.for_transcript(transcript)

    async def _continue(self, transcript: str, owner: str | None, key: str | None) -> tuple[str | None, dict | None]:
        """The session standing at ``transcript`` and a claim on it, or (None, None): no such
        session, or it has moved on (another turn, a regenerated answer, another client)."""
        found = await self._call(self._index(transcript).lookup.remote(transcript), "the session store")
        if status(found) != StoreStatus.OK:
            return None, None
        sid = found["session_id"]
        try:
            claim = await claim_session(self._store_call(sid), sid, self.policy, owner, key,
                                        lambda version: self._dispatch_update(sid, version), self._spawn,
                                        expect_transcript=transcript, with_stm=False)
        except ApiError as exc:
            if exc.code == "session_busy":  # another client is continuing it: this one diverges
                return None, None
            if exc.code != "session_not_found":
                raise
            claim = {"status": StoreStatus.NOT_FOUND}
        if status(claim) in (StoreStatus.DIVERGED, StoreStatus.NOT_FOUND):
            self._spawn(self._call(self._index(transcript).unlink.remote(transcript, sid), "the session store"))
            return None, None
        return sid, claim

    async def _relink(self, sid: str, before: str | None, after: str | None) -> None:
        """Index ``sid`` under its new transcript and drop the old entry (best effort: a lost
        entry only means the next stateless request migrates its history again); None: that
        move is already made."""
        if after is not None:
            await self._call(self._index(after).link.remote(after, sid), "the session store")
        if before is not None:
            await self._call(self._index(before).unlink.remote(before, sid), "the session store")

    async def _after_response(self, run: Turn) -> None:
        run.dispatch()  # a coroutine, so Starlette runs it on the event loop, not in a thread

    # ---- memory updates ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        """Run ``coro`` as a task outside the current request's context, so cancelling the
        request (client disconnect) does not cancel it; keep a reference until it ends."""
        task = contextvars.Context().run(asyncio.ensure_future, coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("background task failed: %r", task.exception())

    def _dispatch_update(self, sid: str, base_version: int, turn: dict | None = None) -> None:
        """Drive the update of ``base_version`` to its end (``turn``: the turn as this replica
        recorded it, which spares the updater a read; without it the updater reads the store)."""
        key = (sid, base_version)
        if key in self._updates:
            return  # this replica is already driving it
        if turn is not None:  # the updater times the hand-over to the call's task (the capacity check reads it)
            turn = {**turn, "dispatched_at": time.time()}
        self._updates[key] = self._spawn(self._drive_update(sid, base_version, turn))
        self._updates[key].add_done_callback(lambda _: self._updates.pop(key, None))

    async def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``: it also keeps the janitor running."""
        self._ensure_janitor()

    def _ensure_janitor(self) -> None:
        if self._janitor is None or self._janitor.done():
            self._janitor = self._spawn(self._redispatch_stale_forever())

    async def _redispatch_stale_forever(self) -> None:
        """Dispatch updates left pending longer than ``update_stale_s`` (the Ingress that
        recorded them died before dispatching): a session whose client never comes back must
        not stay one turn behind. Every Ingress replica does it; duplicates are harmless."""
        while True:
            await asyncio.sleep(self.args.update_stale_s)
            for shard in self.stores.handles:
                try:
                    stale = await shard.stale_pending.remote(self.args.update_stale_s)
                except RayError:
                    continue  # the shard is restarting: next round
                for sid, version in stale:
                    self._dispatch_update(sid, version)

    async def _drive_update(self, sid: str, base_version: int, turn: dict | None = None) -> None:
        """Call the updater until the update is applied (or found applied, or failed for good)."""
        started = time.monotonic()
        deadline = started + self.args.update_retry_s
        backoff = 0.1
        while True:
            try:
                # the updater times the call's transit (and, on its first try, the hand-over before it)
                sent = None if turn is None else {**turn, "sent_at": time.time()}
                if turn is not None:  # a retry's wait is not the hand-over's
                    turn.pop("dispatched_at", None)
                result = await self.updater.update.remote(session=sid, base_version=base_version, turn=sent)
                retry = status(result) == StoreStatus.UNAVAILABLE
                failure = result.get("error", "") if retry else None
            except Exception as exc:  # the replica died, was restarted, or is unreachable
                retry, failure = True, type(exc).__name__
            if not retry:
                if status(result) == StoreStatus.APPLIED:
                    self.metrics.update_lag_s.observe(time.monotonic() - started)
                if status(result) not in (StoreStatus.APPLIED, StoreStatus.ALREADY_APPLIED, StoreStatus.NOT_FOUND):
                    logger.warning("session %s: update of version %d: %s", log_id(sid), base_version,
                                   result["status"])
                return
            if time.monotonic() > deadline:
                logger.error("session %s: giving up on the update of version %d after %.0fs (%s); "
                             "the next request dispatches it again", log_id(sid), base_version,
                             self.args.update_retry_s, failure)
                return
            logger.warning("session %s: update of version %d failed (%s); retrying in %.1fs",
                           log_id(sid), base_version, failure, backoff)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, 2.0)
