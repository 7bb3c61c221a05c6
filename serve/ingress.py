"""The Ingress deployment: the HTTP API (OpenAI-compatible chat + sessions). Owns no model.

One turn, as the Ingress drives it::

    claim the session (waits while the previous turn's update is pending; 409 if another
    request holds it) → stream the answer from a Generator replica → record the turn as the
    session's pending update (durable) → send the end of the answer → dispatch the update to
    a MemoryUpdater replica as its own call, retried until it lands.

The update call runs in a task of its own (not a child of the HTTP request), so a client
that disconnects cannot cancel it.
"""

import asyncio
import contextvars
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
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
    DONE_EVENT,
    ApiError,
    CreateSessionRequest,
    chunk_event,
    completion_body,
    completion_id,
    encode_message,
    error_body,
    error_event,
    parse_body,
    parse_chat_request,
    prepare_turn,
    usage,
)
from rxt_dist.serving.sessions import is_session_id, new_session_id
from rxt_dist.serving.text import TextCodec
from serve.args import AppArgs
from serve.store import StoreShards

logger = logging.getLogger("ray.serve")

SESSION_HEADER = "x-session-id"
VERSION_HEADER = "x-memory-version"
COMMITTED_HEADER = "x-memory-committed-at"
WAITED_HEADER = "x-waited-for-update-ms"
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
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


async def _read_body(request: Request) -> bytes:
    too_large = ApiError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise too_large
    return body


def _not_found(sid: str) -> ApiError:
    return ApiError(404, f"session '{sid}' does not exist (unknown or deleted)", param=SESSION_HEADER,
                    code="session_not_found")


def _unavailable(what: str, exc: BaseException, retry_after: int = 1) -> ApiError:
    return ApiError(503, f"{what} is unavailable, retry shortly ({type(exc).__name__})", type="server_error",
                    code="service_unavailable", headers={"Retry-After": str(retry_after)})


class _Turn:
    """One answer produced for a claimed session, and the bookkeeping after it.

    Whatever way the response ends, :meth:`close` leaves the session consistent: after a
    client disconnect the query and the answer tokens produced so far are recorded and
    consolidated; after a server-side failure the claim is released and memory is unchanged.
    """

    def __init__(self, ingress: "Ingress", sid: str, claim: dict, query_ids: list[int], stream) -> None:
        self.ingress, self.sid, self.query_ids, self.stream = ingress, sid, query_ids, stream
        self.lease, self.version = claim["lease"], claim["version"]
        self.answer: list[int] = []
        self.finish_reason = "stop"
        self.finished = self.recorded = self.dispatched = self.closing = False

    async def tokens(self) -> AsyncIterator[list[int]]:
        async for new_tokens, reason in self.stream:
            self.answer.extend(new_tokens)
            if reason is not None:
                self.finish_reason, self.finished = reason, True
            yield new_tokens

    async def record(self) -> None:
        """Make the turn the session's pending update (durable) and release the claim."""
        await self.ingress._finish_turn(self.sid, self.lease, self.version, self.query_ids, self.answer)
        self.recorded = True

    def dispatch(self) -> None:
        self.dispatched = True
        self.ingress._dispatch_update(self.sid, self.version)

    async def dispatch_async(self) -> None:
        self.dispatch()  # a coroutine, so Starlette runs it on the event loop, not in a thread

    def close(self, consolidate: bool) -> None:
        """End the turn: ``consolidate`` after a client disconnect, not after a failure."""
        if not self.finished:
            self.stream.cancel()
        if self.recorded:
            if not self.dispatched:
                self.dispatch()
        elif not self.closing:
            self.closing = True
            self.ingress._spawn(self._settle(consolidate))

    async def _settle(self, consolidate: bool) -> None:
        if not consolidate:
            await self.ingress._store(self.sid).release.remote(self.sid, self.lease)
            return
        logger.info("session %s: client went away after %d answer tokens; consolidating those",
                    self.sid, len(self.answer))
        try:
            await self.record()
        except ApiError as exc:
            logger.warning("session %s: could not record the interrupted turn: %s", self.sid, exc.message)
            return
        self.dispatch()


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.1},
                  health_check_period_s=5)
@serve.ingress(api)
class Ingress:
    """HTTP front end: validates requests, sequences turns per session, streams answers."""

    def __init__(self, generator: DeploymentHandle, updater: DeploymentHandle, args: AppArgs,
                 model_id: str) -> None:
        cfg = load_config(args.model_dir)
        self.codec = TextCodec(load_tokenizer(args.model_dir, cfg.vocab_size))
        self.stm_shape = list(cfg.stm_shape)
        self.model_id = model_id
        self.created = int(time.time())
        self.args = args
        self.limits = args.limits()
        self.api_key = args.resolved_api_key()
        self.stores = StoreShards(args.store_config(), args.store_shards)
        self.generator = generator
        self.updater = updater
        self._updates: dict[tuple[str, int], asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

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
        self._authorize(request)
        req = parse_chat_request(await _read_body(request))
        if req.model != self.model_id:
            raise ApiError(404, f"model '{req.model}' is not served here; this server serves "
                           f"'{self.model_id}'", param="model", code="model_not_found")
        sid = self._session_header(request)
        turn = prepare_turn(req, self.codec, self.limits, new_session=sid is None)
        if sid is None:
            sid = await self._create_session(turn.system_ids, turn.history)
        claim = await self._claim(sid)
        try:
            stream = self.generator.options(stream=True).generate.remote(
                turn.query_ids, claim["stm"], asdict(turn.sampling))
        except BaseException:
            self._spawn(self._store(sid).release.remote(sid, claim["lease"]))
            raise
        run = _Turn(self, sid, claim, turn.query_ids, stream)
        headers = {SESSION_HEADER: sid, VERSION_HEADER: str(claim["version"]),
                   WAITED_HEADER: f"{claim['waited_s'] * 1e3:.3f}"}
        if claim.get("committed") is not None:
            headers[COMMITTED_HEADER] = f"{claim['committed']:.6f}"
        if turn.stream:
            return StreamingResponse(self._sse(run, len(turn.query_ids), turn.include_usage),
                                     media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        return await self._complete(run, len(turn.query_ids), headers)

    @api.post("/v1/sessions")
    async def create_session(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = parse_body(CreateSessionRequest, await _read_body(request), empty_ok=True)
        system_ids = None
        if body.system is not None:
            system_ids = encode_message(self.codec, body.system, "system", self.limits)
        sid = await self._create_session(system_ids, [])
        info = await self._call(self._store(sid).info.remote(sid), "the session store")
        return JSONResponse(info["session"], status_code=201, headers={SESSION_HEADER: sid})

    @api.get("/v1/sessions/{sid}")
    async def get_session(self, sid: str, request: Request) -> dict:
        self._authorize(request)
        info = await self._call(self._store(self._known_id(sid)).info.remote(sid), "the session store")
        if info["status"] != "ok":
            raise _not_found(sid)
        return info["session"]

    @api.delete("/v1/sessions/{sid}")
    async def delete_session(self, sid: str, request: Request) -> dict:
        self._authorize(request)
        result = await self._call(self._store(self._known_id(sid)).delete.remote(sid), "the session store")
        if result["status"] != "ok":
            raise _not_found(sid)
        return {"id": sid, "object": "session.deleted", "deleted": True}

    # ---- request checks --------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _session_header(self, request: Request) -> str | None:
        sid = request.headers.get(SESSION_HEADER)
        return None if sid is None else self._known_id(sid.strip())

    @staticmethod
    def _known_id(sid: str) -> str:
        if not is_session_id(sid):
            raise _not_found(sid[:80])
        return sid

    # ---- sessions and turns ----------------------------------------------------------------

    def _store(self, sid: str):
        return self.stores.for_session(sid)

    async def _call(self, ref, what: str):
        try:
            return await ref
        except RayError as exc:
            logger.warning("%s failed: %s", what, exc)
            raise _unavailable(what, exc) from None

    async def _create_session(self, system_ids: list[int] | None, history: list) -> str:
        """A new session whose memory holds the system prompt and migrated turns."""
        try:
            stm = await self.updater.new_session_stm.remote(system_ids, history)
        except RayError as exc:
            raise _unavailable("the memory updater", exc) from None
        sid = new_session_id()
        result = await self._call(self._store(sid).create.remote(sid, stm, self.stm_shape, len(history)),
                                  "the session store")
        if result["status"] != "ok":
            raise RuntimeError(f"session store refused new session {sid}: {result['status']}")
        return sid

    async def _claim(self, sid: str) -> dict:
        """Claim ``sid`` for one turn once its previous update has committed. The claim's
        ``waited_s`` is the total time spent waiting for that update (0.0: none was pending)."""
        store = self._store(sid)
        lease = uuid.uuid4().hex
        deadline = time.monotonic() + self.args.update_wait_timeout_s
        waited_s = 0.0
        while True:
            wait_s = max(0.0, min(deadline - time.monotonic(), self.args.update_stale_s))
            ref = store.begin_turn.remote(sid, lease, wait_s)
            try:
                claim = await self._call(ref, "the session store")
            except asyncio.CancelledError:
                # The client left while waiting: give the claim back once the call returns.
                self._spawn(self._release_after(ref, sid, lease))
                raise
            status = claim["status"]
            waited_s += claim.get("waited_s", 0.0)
            if status == "ok":
                return self._checked(sid, {**claim, "waited_s": waited_s})
            if status == "not_found":
                raise _not_found(sid)
            if status == "busy":
                raise ApiError(409, f"session '{sid}' is answering another request; send one "
                               "message at a time per session", param=SESSION_HEADER,
                               code="session_busy", headers={"Retry-After": "1"})
            if claim["pending_age_s"] >= self.args.update_stale_s:  # the store's clock, not ours
                # Nobody seems to be applying it (its dispatcher may have died): apply it here.
                self._dispatch_update(sid, claim["base_version"])
            if time.monotonic() >= deadline:
                await self._call(store.release.remote(sid, lease), "the session store")
                retry = max(1, math.ceil(self.args.update_stale_s))
                raise ApiError(503, f"session '{sid}': the memory update of the previous turn has "
                               f"not finished after {self.args.update_wait_timeout_s:g}s; retry later",
                               type="server_error", code="memory_update_pending",
                               headers={"Retry-After": str(retry)})

    def _checked(self, sid: str, claim: dict) -> dict:
        if list(claim["stm_shape"]) != self.stm_shape:
            self._spawn(self._store(sid).release.remote(sid, claim["lease"]))
            raise ApiError(409, f"session '{sid}' holds a memory of shape {claim['stm_shape']} but the "
                           f"served model's is {self.stm_shape}: it was made by another model",
                           param=SESSION_HEADER, code="session_incompatible")
        return claim

    async def _release_after(self, ref, sid: str, lease: str) -> None:
        await asyncio.gather(ref, return_exceptions=True)  # the claim exists once the call returns
        await self._store(sid).release.remote(sid, lease)

    async def _finish_turn(self, sid: str, lease: str, version: int, query_ids: list[int],
                           answer_ids: list[int]) -> None:
        result = await self._call(self._store(sid).finish_turn.remote(sid, lease, version, query_ids, answer_ids),
                                  "the session store")
        if result["status"] == "not_found":
            raise ApiError(404, f"session '{sid}' was deleted while answering; the turn is not kept",
                           param=SESSION_HEADER, code="session_not_found")
        if result["status"] != "ok":
            raise ApiError(409, f"session '{sid}': this turn's claim expired and another turn went "
                           "ahead; the turn is not kept", param=SESSION_HEADER, code="session_busy")

    # ---- answering ---------------------------------------------------------------------------

    async def _sse(self, run: _Turn, query_len: int, include_usage: bool) -> AsyncIterator[str]:
        cid, detok = completion_id(), self.codec.detokenizer()
        disconnected = True  # until the stream reaches an end the server chose
        try:
            yield chunk_event(cid, self.model_id, {"role": "assistant", "content": ""})
            try:
                async for new_tokens in run.tokens():
                    text = "".join(detok.push(t) for t in new_tokens)
                    if text:
                        yield chunk_event(cid, self.model_id, {"content": text})
                tail = detok.flush()
                if tail:
                    yield chunk_event(cid, self.model_id, {"content": tail})
                await run.record()
            except ApiError as exc:
                disconnected = False
                yield error_event(exc)
                return
            except RayError as exc:
                disconnected = False
                logger.warning("session %s: generation failed: %s", run.sid, exc)
                yield error_event(_unavailable("the generator", exc))
                return
            yield chunk_event(cid, self.model_id, {}, run.finish_reason)
            if include_usage:
                yield chunk_event(cid, self.model_id, {}, usage_=usage(query_len + 3, len(run.answer)))
            yield DONE_EVENT
            # Reached only after the server sent [DONE]: the update starts off the response path.
            disconnected = False
            run.dispatch()
        finally:
            run.close(consolidate=disconnected)

    async def _complete(self, run: _Turn, query_len: int, headers: dict) -> JSONResponse:
        outcome = "disconnected"  # until the answer is ready or the server failed
        try:
            try:
                async for _ in run.tokens():
                    pass
            except RayError as exc:
                logger.warning("session %s: generation failed: %s", run.sid, exc)
                raise _unavailable("the generator", exc) from None
            await run.record()
            outcome = "answered"
        except ApiError:
            outcome = "failed"
            raise
        finally:
            if outcome != "answered":
                run.close(consolidate=outcome == "disconnected")
        body = completion_body(completion_id(), self.model_id, self.codec.decode_answer(run.answer),
                               run.finish_reason, usage(query_len + 3, len(run.answer)))
        # The update is dispatched once the response has been sent (Starlette background).
        return JSONResponse(body, headers=headers, background=BackgroundTask(run.dispatch_async))

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

    def _dispatch_update(self, sid: str, base_version: int) -> None:
        key = (sid, base_version)
        if key in self._updates:
            return  # this replica is already driving it
        self._updates[key] = self._spawn(self._drive_update(sid, base_version))
        self._updates[key].add_done_callback(lambda _: self._updates.pop(key, None))

    async def _drive_update(self, sid: str, base_version: int) -> None:
        """Call the updater until the update is applied (or found applied already)."""
        deadline = time.monotonic() + self.args.update_retry_s
        backoff = 0.1
        while True:
            try:
                result = await self.updater.update.remote(sid, base_version)
            except Exception as exc:  # the replica died, was restarted, or is unreachable
                if time.monotonic() > deadline:
                    logger.error("session %s: giving up on the update of version %d after %.0fs (%s); "
                                 "the next request dispatches it again", sid, base_version,
                                 self.args.update_retry_s, exc)
                    return
                logger.warning("session %s: update of version %d failed (%s); retrying in %.1fs",
                               sid, base_version, type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)
                continue
            if result["status"] not in ("applied", "already_applied", "not_found"):
                logger.warning("session %s: update of version %d: %s", sid, base_version, result)
            return
