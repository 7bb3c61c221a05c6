"""The serving benchmark's HTTP side: its config, one turn's result, and the client that
creates sessions, sends streamed turns, reads their SSE streams and polls for commits."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from rxt_dist.serving.protocol import (
    ARRIVED_HEADER,
    COMMITTED_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    WAITED_FOR_HEADER,
    WAITED_HEADER,
)

MAX_SESSIONS = 256
"""Most concurrent sessions one level may open (the benchmark is bounded in count)."""
MAX_TURNS = 1024
"""Most turns one session may play."""


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost`` or a loopback IP)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServingConfig:
    """What the serving benchmark sends, and its bounds."""

    url: str = "http://127.0.0.1:8000"
    """Base URL of the running application; must be a loopback address (the update lag
    compares the client's clock with the server's)."""
    sessions: tuple[int, ...] = (1, 8, 32)
    """Concurrency levels S, run one after another."""
    turns: int = 32
    """Turns N per session."""
    rounds: int = 1
    """Times each level is played, with fresh sessions each time; the statistics pool the
    rounds (S × rounds samples per turn index), which steadies them on a busy machine."""
    query_words: int = 24
    """Words per query (random ordinary words; the report has the resulting token count)."""
    max_tokens: int = 32
    """``max_tokens`` of every request (greedy decoding: ``temperature=0``)."""
    ignore_eos: bool = False
    """Ask for answers of exactly ``max_tokens`` (the server's ``ignore_eos``), whatever the
    model would answer: tokens per second then measure the same work for every model."""
    think_time_s: float = 0.0
    """Pause between the end of an answer and the session's next turn (0: right away)."""
    ramp_s: float = 0.0
    """Session i of S sends its first turn ``i / S × ramp_s`` after the level starts (0: all
    at once, so turn 1 of every session arrives in one burst)."""
    warmup_turns: int = 2
    """Untimed turns of one session played before the first level (0: none)."""
    max_level_s: float = 600.0
    """A level (all its rounds) starts no new turn after this many seconds (its report says
    ``truncated``)."""
    request_timeout_s: float = 120.0
    """HTTP timeout of one request (connect, and between two received chunks)."""
    settle_timeout_s: float = 60.0
    """How long to wait after a session's last turn for its memory update to commit."""
    poll_interval_s: float = 0.05
    """Polling interval of ``GET /v1/sessions/{id}`` while waiting for that last commit."""
    model: str | None = None
    """Model id to request; None asks ``GET /v1/models``."""
    api_key: str | None = None
    """Bearer key if the server requires one."""
    seed: int = 0
    """Seed of the queries."""

    def __post_init__(self) -> None:
        self.sessions = tuple(self.sessions)
        if not is_loopback_url(self.url):
            raise ValueError(f"url={self.url!r}: the serving benchmark only talks to this machine; "
                             "use http://127.0.0.1:<port> (or localhost)")
        if not self.sessions or any(not isinstance(s, int) or not 1 <= s <= MAX_SESSIONS for s in self.sessions):
            raise ValueError(f"sessions={list(self.sessions)}: give one or more levels, each between 1 "
                             f"and {MAX_SESSIONS}")
        for name, high in (("turns", MAX_TURNS), ("rounds", 100), ("query_words", 512), ("max_tokens", 4096)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"{name}={value!r}: must be an integer between 1 and {high}")
        if not isinstance(self.warmup_turns, int) or self.warmup_turns < 0:
            raise ValueError(f"warmup_turns={self.warmup_turns!r}: must be an integer ≥ 0 (0 skips warm-up)")
        for name in ("think_time_s", "ramp_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 0 seconds")
        for name in ("max_level_s", "request_timeout_s", "settle_timeout_s", "poll_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0 seconds")


# -- one turn ------------------------------------------------------------------------------

@dataclass
class TurnResult:
    """What the client saw of one turn (times in seconds; None when the turn failed)."""

    turn: int
    """1-based turn index within the session."""
    ok: bool = False
    error: str | None = None
    """``<status> <code>`` or the transport error's name when the turn failed."""
    ttft_s: float | None = None
    answer_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    chunks: int = 0
    """Server-sent events that carried answer text (the server may put several tokens in one)."""
    waited_ms: float | None = None
    """``x-waited-for-update-ms``: this request's wait for the previous turn's update."""
    version: int | None = None
    """``x-memory-version``: the memory version the answer was generated from."""
    read_committed_at: float | None = None
    """``x-memory-committed-at``: when that version was committed (server clock)."""
    sent_at: float | None = None
    """Wall-clock time the request was sent (client clock)."""
    ended_at: float | None = None
    """Wall-clock time ``[DONE]`` was read (client clock)."""
    claim_arrived_at: float | None = None
    """``x-claim-arrived-at``: when the request's claim reached the store (server clock)."""
    waited_for_recorded_at: float | None = None
    """``x-waited-for-turn-recorded-at``: when the turn whose update the claim found pending was
    recorded at the store (server clock; None: nothing was pending)."""
    way_in_s: float | None = None
    """Request sent → its claim at the store (the next request's way in)."""
    way_out_s: float | None = None
    """This turn recorded at the store → ``[DONE]`` read (the end's way out), where the next
    turn's claim found this turn's update pending (its header names the record time)."""
    lag_s: float | None = None
    """End of this answer → commit of the version it produced. The update starts once the
    Ingress has handed ``[DONE]`` to Serve's proxy, so under load it can commit before the
    client reads ``[DONE]``: the lag is then negative."""


class ServingClient:
    """The HTTP calls the benchmark makes, on one ``aiohttp.ClientSession``.

    aiohttp (a dependency of Ray Serve) parses HTTP in C: on this machine it costs the
    benchmark's client 1.5 ms of CPU per streamed turn against httpx's 4.0 ms, CPU the client
    otherwise takes from the server it measures on the same cores (docs/BENCHMARKS.md)."""

    def __init__(self, cfg: ServingConfig, connections: int) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self.connections = connections
        self.headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.base = cfg.url.rstrip("/")
        self.http = None
        self.session_polls = 0
        """``GET /v1/sessions/{sid}`` calls made so far by :meth:`committed_at` (its polls for a
        commit: work on the server the capacity model simulates, ``ServingPath.poll_s``)."""

    async def __aenter__(self) -> ServingClient:
        import aiohttp

        # trust_env=False (aiohttp's default): a proxy set for package registries must not
        # intercept loopback calls. The read timeout is per chunk, as the config says.
        self.http = aiohttp.ClientSession(
            headers=self.headers, trust_env=False,
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(sock_connect=self.cfg.request_timeout_s,
                                          sock_read=self.cfg.request_timeout_s))
        self.transport_errors = (aiohttp.ClientError, asyncio.TimeoutError)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()

    async def model_id(self) -> str:
        """The model id to send (``cfg.model``, else the server's one model)."""
        if self.model is None:
            async with self.http.get(self.base + "/v1/models") as r:
                self.model = (await _json_or_raise(r, "GET /v1/models"))["data"][0]["id"]
        return self.model

    async def create_session(self) -> str:
        async with self.http.post(self.base + "/v1/sessions") as r:
            await _json_or_raise(r, "POST /v1/sessions")
            return r.headers[SESSION_HEADER]

    async def session(self, sid: str) -> dict:
        async with self.http.get(self.base + f"/v1/sessions/{sid}") as r:
            return await _json_or_raise(r, f"GET /v1/sessions/{sid}")

    async def delete_session(self, sid: str) -> None:
        async with self.http.delete(self.base + f"/v1/sessions/{sid}") as r:
            if r.status not in (200, 404):
                await _json_or_raise(r, f"DELETE /v1/sessions/{sid}")

    async def turn(self, sid: str, index: int, text: str) -> TurnResult:
        """Send one streamed, greedy turn and time it."""
        result = TurnResult(turn=index)
        body = {"model": await self.model_id(), "messages": [{"role": "user", "content": text}],
                "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": self.cfg.max_tokens, "temperature": 0}
        if self.cfg.ignore_eos:
            body["ignore_eos"] = True
        started, result.sent_at = time.perf_counter(), time.time()
        try:
            async with self.http.post(self.base + "/v1/chat/completions", json=body,
                                      headers={SESSION_HEADER: sid}) as r:
                if r.status != 200:
                    result.error = f"{r.status} {_error_code(await r.read())}"
                    return result
                _read_headers(result, r.headers)
                await _read_stream(result, _lines(r.content), started)
        except self.transport_errors as exc:
            result.error = type(exc).__name__
            return result
        return result

    async def committed_at(self, sid: str, version: int) -> float | None:
        """When ``version`` of ``sid`` was committed, polling until it is (None after
        ``settle_timeout_s``, or if the session has moved past it)."""
        deadline = time.monotonic() + self.cfg.settle_timeout_s
        while True:
            self.session_polls += 1
            info = await self.session(sid)
            if info["memory_version"] == version:
                return info.get("memory_committed_at")
            if info["memory_version"] > version or time.monotonic() > deadline:
                return None
            await asyncio.sleep(self.cfg.poll_interval_s)


async def _json_or_raise(response, what: str):
    """The response's JSON body; a clear error naming the call when it is not a success."""
    body = await response.read()
    if response.status >= 300:
        raise RuntimeError(f"{what} answered {response.status}: {body[:300].decode(errors='replace')}")
    return json.loads(body) if body else None


def _error_code(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["code"] or ""
    except (ValueError, KeyError, TypeError):
        return ""


async def _lines(content):
    """The text lines of a streamed body, without their line ends."""
    async for raw in content:
        yield raw.decode().rstrip("\r\n")


def _read_headers(result: TurnResult, headers) -> None:
    result.version = int(headers[VERSION_HEADER])
    if WAITED_HEADER in headers:
        result.waited_ms = float(headers[WAITED_HEADER])
    if COMMITTED_HEADER in headers:
        result.read_committed_at = float(headers[COMMITTED_HEADER])
    if ARRIVED_HEADER in headers:
        result.claim_arrived_at = float(headers[ARRIVED_HEADER])
        result.way_in_s = result.claim_arrived_at - result.sent_at
    if WAITED_FOR_HEADER in headers:
        result.waited_for_recorded_at = float(headers[WAITED_FOR_HEADER])


async def _read_stream(result: TurnResult, lines, started: float) -> None:
    """Consume the SSE stream of one answer into ``result``."""
    seen_role = False
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            result.answer_s = time.perf_counter() - started
            result.ended_at = time.time()
            result.ok = result.ttft_s is not None
            if not result.ok:
                result.error = "no answer chunk before [DONE]"
            return
        event = json.loads(data)
        if "error" in event:
            result.error = f"stream {event['error'].get('code') or event['error'].get('type')}"
            return
        if "usage" in event and not event.get("choices"):
            result.completion_tokens = event["usage"]["completion_tokens"]
            result.prompt_tokens = event["usage"]["prompt_tokens"]
            continue
        choice = event["choices"][0]
        if not seen_role and "role" in choice["delta"]:
            seen_role = True  # sent before generation starts: not a token
            continue
        if result.ttft_s is None and (choice["delta"].get("content") or choice.get("finish_reason")):
            result.ttft_s = time.perf_counter() - started
        if choice["delta"].get("content"):
            result.chunks += 1
    result.error = "stream ended without [DONE]"
