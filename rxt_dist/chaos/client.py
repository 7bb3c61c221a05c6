"""A chat client that keeps its conversations going while the server is being broken.

Each session plays a fixed list of user messages, one turn at a time, greedy. An attempt that
fails in a way a real client would retry — a 5xx, a dropped or refused connection, a timeout, a
stream that ends in an error event or without ``[DONE]``, 409 ``session_busy`` — is sent again
with the same ``x-session-id`` **and the same Idempotency-Key**: one key per logical turn, so a
server that recorded the dead attempt's turn can answer the retry from that record instead of
applying the turn twice. Any other 4xx ends the session (the verdict reports it).

What the client keeps per turn is what the verdict checks: the answer it finally read, the
``x-memory-version`` that answer was generated from, and how many attempts it took.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from rxt_dist.serving.protocol import IDEMPOTENCY_HEADER, SESSION_HEADER, VERSION_HEADER

Pace = Callable[[int], Awaitable[None]]
"""Awaited with a turn's index before the turn is sent (holds a session back until then)."""


@dataclass
class ClientConfig:
    """How the chaos client talks to the server."""

    url: str
    """Base URL of the application (``http://127.0.0.1:8000``)."""
    model: str
    """Model id sent in every request."""
    max_tokens: int = 8
    """Answer length of every turn (greedy, so answers are reproducible)."""
    api_key: str | None = None
    """Bearer key, when the server wants one."""
    attempt_timeout_s: float = 60.0
    """One attempt's HTTP timeout. Long on purpose: a client that gives up on a live request
    disconnects, and the server then records the partial answer as the turn."""
    turn_deadline_s: float = 240.0
    """A turn that has not been answered after this long ends its session as failed."""
    backoff_s: float = 0.1
    """First pause before a retry; doubled per retry up to ``max_backoff_s``."""
    max_backoff_s: float = 1.0
    """Longest pause before a retry (a ``Retry-After`` header is honoured up to this)."""
    stream_share: float = 0.5
    """Share of turns sent as streamed requests (the others are plain JSON requests)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be ≥ 1")
        if not 0.0 <= self.stream_share <= 1.0:
            raise ValueError(f"stream_share={self.stream_share}: must be within 0…1")
        if self.attempt_timeout_s <= 0 or self.turn_deadline_s <= 0:
            raise ValueError(f"attempt_timeout_s={self.attempt_timeout_s}, turn_deadline_s="
                             f"{self.turn_deadline_s}: both must be > 0 seconds")


@dataclass
class Turn:
    """One logical turn: the message, its idempotency key, and what the client finally read."""

    text: str
    key: str
    answer: str | None = None
    memory_version: int | None = None
    """``x-memory-version`` of the kept answer: the memory version it was generated from."""
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    """Why each failed attempt was retried, in order."""


@dataclass
class SessionLog:
    """What one session did: its turns, and why attempts were retried."""

    sid: str
    turns: list[Turn] = field(default_factory=list)
    retries: Counter = field(default_factory=Counter)
    failure: str | None = None
    """Why the session stopped early (a non-retryable answer, or a turn past its deadline)."""

    @property
    def answered(self) -> list[Turn]:
        return [t for t in self.turns if t.answer is not None]


@dataclass
class _Outcome:
    kind: str  # "ok", "retry" or "fatal"
    reason: str = ""
    answer: str = ""
    version: int | None = None
    retry_after_s: float = 0.0


def conversations(rng: random.Random, words: Sequence[str], sessions: int, turns: int,
                  words_per_turn: tuple[int, int] = (3, 7)) -> list[list[str]]:
    """``sessions`` conversations of ``turns`` messages made of ``words`` (seeded)."""
    return [[" ".join(rng.choice(words) for _ in range(rng.randint(*words_per_turn))) for _ in range(turns)]
            for _ in range(sessions)]


def _headers(cfg: ClientConfig, **extra: str) -> dict[str, str]:
    headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    return {**headers, **extra}


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "no-error-body"


def _classify(status: int, body: bytes, headers: httpx.Headers) -> _Outcome:
    """An answer other than 200: retry it (5xx, busy session) or give up (other 4xx)."""
    code = _error_code(body)
    try:
        retry_after = float(headers.get("retry-after", "0"))
    except ValueError:
        retry_after = 0.0
    if status >= 500 or (status == 409 and code == "session_busy"):
        return _Outcome("retry", f"{status} {code}", retry_after_s=retry_after)
    return _Outcome("fatal", f"{status} {code}: {body[:200]!r}")


async def _attempt_json(http: httpx.AsyncClient, cfg: ClientConfig, body: dict, headers: dict) -> _Outcome:
    r = await http.post("/v1/chat/completions", json=body, headers=headers)
    if r.status_code != 200:
        return _classify(r.status_code, r.content, r.headers)
    answer = r.json()["choices"][0]["message"]["content"]
    return _Outcome("ok", answer=answer, version=int(r.headers[VERSION_HEADER]))


async def _attempt_stream(http: httpx.AsyncClient, cfg: ClientConfig, body: dict, headers: dict) -> _Outcome:
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        if r.status_code != 200:
            return _classify(r.status_code, await r.aread(), r.headers)
        version = int(r.headers[VERSION_HEADER])
        parts: list[str] = []
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                return _Outcome("ok", answer="".join(parts), version=version)
            event = json.loads(data)
            if "error" in event:
                code = event["error"].get("code")
                kind = "retry" if event["error"].get("type") == "server_error" else "fatal"
                return _Outcome(kind, f"stream error {code}")
            if event.get("choices"):
                parts.append(event["choices"][0]["delta"].get("content") or "")
    return _Outcome("retry", "stream ended without [DONE]")


async def _attempt(http: httpx.AsyncClient, cfg: ClientConfig, sid: str, turn: Turn, stream: bool) -> _Outcome:
    body = {"model": cfg.model, "messages": [{"role": "user", "content": turn.text}],
            "max_tokens": cfg.max_tokens, "temperature": 0}
    headers = _headers(cfg, **{SESSION_HEADER: sid, IDEMPOTENCY_HEADER: turn.key})
    try:
        if stream:
            return await _attempt_stream(http, cfg, body, headers)
        return await _attempt_json(http, cfg, body, headers)
    except httpx.TransportError as exc:  # refused, reset, cut mid-body, timed out
        return _Outcome("retry", type(exc).__name__)


async def _pause(cfg: ClientConfig, retry: int, retry_after_s: float) -> None:
    backoff = min(cfg.backoff_s * 2 ** retry, cfg.max_backoff_s)
    await asyncio.sleep(max(backoff, min(retry_after_s, cfg.max_backoff_s)))


async def create_session(http: httpx.AsyncClient, cfg: ClientConfig, deadline_s: float | None = None) -> str:
    """``POST /v1/sessions`` until one answers 201 (a session orphaned by a lost answer is
    harmless: it has no turns)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (deadline_s or cfg.turn_deadline_s)
    retry = 0
    while True:
        try:
            r = await http.post("/v1/sessions", headers=_headers(cfg))
            if r.status_code == 201:
                return r.headers[SESSION_HEADER]
            outcome = _classify(r.status_code, r.content, r.headers)
            if outcome.kind == "fatal":
                raise RuntimeError(f"creating a session: {outcome.reason}")
        except httpx.TransportError:
            outcome = _Outcome("retry")
        if loop.time() > deadline:
            raise RuntimeError("creating a session: no 201 before the deadline")
        await _pause(cfg, retry, outcome.retry_after_s)
        retry += 1


async def play_session(http: httpx.AsyncClient, cfg: ClientConfig, texts: Sequence[str],
                       rng: random.Random, session_id: str | None = None,
                       pace: Pace | None = None) -> SessionLog:
    """Play ``texts`` in ``session_id`` (a new session when None), retrying each turn until it
    is answered; turn ``t`` starts once ``await pace(t)`` returned."""
    log = SessionLog(session_id or await create_session(http, cfg))
    loop = asyncio.get_running_loop()
    for t, text in enumerate(texts):
        if pace is not None:
            await pace(t)
        turn = Turn(text, uuid.uuid4().hex)
        log.turns.append(turn)
        deadline = loop.time() + cfg.turn_deadline_s
        stream = rng.random() < cfg.stream_share
        while True:
            turn.attempts += 1
            outcome = await _attempt(http, cfg, log.sid, turn, stream)
            if outcome.kind == "ok":
                turn.answer, turn.memory_version = outcome.answer, outcome.version
                break
            if outcome.kind == "fatal":
                log.failure = f"turn {len(log.turns) - 1}: {outcome.reason}"
                return log
            log.retries[outcome.reason] += 1
            turn.failures.append(outcome.reason)
            if loop.time() > deadline:
                log.failure = f"turn {len(log.turns) - 1}: not answered within {cfg.turn_deadline_s:g}s"
                return log
            await _pause(cfg, turn.attempts - 1, outcome.retry_after_s)
    return log


def async_client(cfg: ClientConfig, connections: int = 64) -> httpx.AsyncClient:
    """An HTTP client for ``cfg.url`` (no proxies from the environment: loopback only)."""
    return httpx.AsyncClient(base_url=cfg.url, timeout=cfg.attempt_timeout_s, trust_env=False,
                             limits=httpx.Limits(max_connections=connections))


async def play_sessions(cfg: ClientConfig, texts: Sequence[Sequence[str]], seed: int = 0,
                        session_ids: Sequence[str] | None = None, pace: Pace | None = None) -> list[SessionLog]:
    """Play every conversation of ``texts`` at the same time, one session each: the sessions of
    ``session_ids`` (created beforehand, no turns yet) or new ones; ``pace`` as in
    :func:`play_session`."""
    if session_ids is not None and len(session_ids) != len(texts):
        raise ValueError(f"{len(session_ids)} session ids for {len(texts)} conversations")
    sids = list(session_ids) if session_ids is not None else [None] * len(texts)
    rngs = [random.Random(f"{seed}-{i}") for i in range(len(texts))]
    async with async_client(cfg, connections=2 * len(texts) + 8) as http:
        return list(await asyncio.gather(*(play_session(http, cfg, t, rng, sid, pace)
                                           for t, rng, sid in zip(texts, rngs, sids))))


async def settled_sessions(cfg: ClientConfig, sids: Sequence[str], timeout_s: float = 120.0) -> dict[str, dict]:
    """``GET /v1/sessions/{id}`` of each session once no update is pending (or at the
    timeout: the record as it is then, ``pending_update`` still true)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    records: dict[str, dict] = {}
    async with async_client(cfg) as http:
        for sid in sids:
            while True:
                try:
                    r = await http.get(f"/v1/sessions/{sid}", headers=_headers(cfg))
                    if r.status_code == 404:
                        records[sid] = {"id": sid, "missing": True}
                        break
                    if r.status_code == 200:
                        records[sid] = r.json()
                        if not records[sid]["pending_update"] or loop.time() > deadline:
                            break
                except httpx.TransportError:
                    if loop.time() > deadline:
                        raise
                await asyncio.sleep(0.1)
    return records
