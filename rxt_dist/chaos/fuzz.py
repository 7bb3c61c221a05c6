"""HTTP fuzz of the serving app: many generated bad requests, fast, then checks.

Every generated request is **invalid by construction**: it carries at least one defect the
server must refuse — malformed or truncated JSON, a wrong type, an empty or out-of-range
value, an over-long message, an unknown model, a malformed or unknown session id, another
client's session asked with a wrong or missing API key, a body over the size limit, an unknown
route or method. On top of that defect, random extras: unicode or control characters in the
message, an odd ``Idempotency-Key``, an odd content type. So every answer must be a 4xx, never a
5xx and never a 2xx, in OpenAI's error shape. Afterwards the server must be healthy, still answer
a turn, and every existing session must be exactly as it was (no refused request changed one).
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from rxt_dist.chaos.client import ClientConfig, async_client, create_session
from rxt_dist.serving.protocol import IDEMPOTENCY_HEADER, SESSION_HEADER

CHAT = "/v1/chat/completions"
HTTP_LAYER_400 = b"Invalid HTTP request received."
OVERSIZED_BYTES = 4 * 2**20 + 1
"""One byte over the server's body limit (4 MiB)."""
_WORDS = ("ada", "river", "name", "cat", "mat", "green", "fox", "crow", "door", "story")
_ODD_TEXT = ("\u0000", "\u202e", "\ud800", "\U0001f600", "é", "ß", "日本語", "\r\n", "\t", "\\", "\"", "</s>",
             "<|im_start|>", "[DONE]", "data: ", "\ufeff", "\u200b", "𝕏")


@dataclass
class FuzzConfig:
    """What to fuzz and how hard."""

    url: str
    model: str
    api_key: str
    """The server's key: the fuzzer needs it to reach validation, and sends wrong ones too."""
    requests: int = 10_000
    concurrency: int = 32
    seed: int = 0
    sessions: int = 3
    """Sessions made (one turn each) before the fuzz, whose records must not change."""
    max_message_words: int = 2000
    """Words in an over-long message: far more tokens than any ``max_message_tokens``."""
    oversized_share: float = 0.005
    """Share of requests with a body over 4 MiB (they are heavy to send)."""
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.concurrency < 1 or self.sessions < 1:
            raise ValueError(f"requests={self.requests}, concurrency={self.concurrency}, sessions={self.sessions}: "
                             "each must be ≥ 1")


@dataclass
class BadRequest:
    kind: str
    method: str
    path: str
    headers: dict[str, str | bytes]
    content: bytes | None = None

    def describe(self) -> str:
        body = b"" if self.content is None else self.content[:160]
        return f"{self.kind}: {self.method} {self.path[:80]} headers={self.headers!r:.200} body={body!r}"


@dataclass
class FuzzResult:
    sent: int = 0
    seconds: float = 0.0
    by_status: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    """Requests answered 2xx although each was invalid."""
    bad_shape: list[str] = field(default_factory=list)
    """4xx answers from the app whose body is not ``{"error": {"message", "type", "param", "code"}}``."""
    http_layer: int = 0
    """Requests the HTTP server refused before the app saw them (a control character in a
    header: uvicorn's plain-text 400 "Invalid HTTP request received.")."""
    transport_errors: Counter = field(default_factory=Counter)
    dropped: list[str] = field(default_factory=list)
    """Requests whose connection closed without an answer twice: sent, then sent again."""
    resent: int = 0
    """Requests sent a second time after their connection closed without an answer: a proxy
    that reloads (Serve's HAProxy does when an Ingress replica is replaced) closes its idle
    keep-alive connections, and one the client reuses at that moment ends with no response
    at all. An HTTP client resends such a request; bad input that makes the server drop the
    connection drops the second one too and is counted in ``transport_errors``."""
    oversized_cut: int = 0
    """Oversized bodies whose connection the server closed while they were still being sent:
    it answers 413 from the declared length without reading the body, and the client may see
    the reset before the answer."""
    sessions_changed: list[str] = field(default_factory=list)
    healthy_after: bool = False
    answers_after: bool = False

    @property
    def ok(self) -> bool:
        return (not self.server_errors and not self.accepted and not self.bad_shape and not self.transport_errors
                and not self.sessions_changed and self.healthy_after and self.answers_after)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.sent, "seconds": round(self.seconds, 1),
                "requests_per_s": round(self.sent / self.seconds, 1) if self.seconds else None,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "by_kind": dict(sorted(self.by_kind.items())),
                "verdict": {"ok": self.ok, "server_errors_5xx": len(self.server_errors),
                            "accepted_2xx": len(self.accepted), "not_openai_error_shape": len(self.bad_shape),
                            "refused_by_http_layer": self.http_layer,
                            "transport_errors": dict(self.transport_errors),
                            "resent_after_a_closed_connection": self.resent,
                            "oversized_cut_while_sending": self.oversized_cut,
                            "sessions_changed": len(self.sessions_changed), "healthy_after": self.healthy_after,
                            "answers_a_turn_after": self.answers_after,
                            "cases": self.cases()[:20]}}

    def cases(self) -> list[str]:
        return self.server_errors + self.accepted + self.bad_shape + self.dropped + self.sessions_changed


class RequestFactory:
    """Seeded generator of bad requests aimed at ``sessions`` (existing ids) among others."""

    def __init__(self, cfg: FuzzConfig, sessions: list[str]) -> None:
        self.cfg, self.sessions = cfg, sessions
        self.rng = random.Random(cfg.seed)
        self.kinds: list[tuple[str, Callable[[], BadRequest]]] = [
            ("malformed_json", self.malformed_json), ("wrong_type", self.wrong_type),
            ("bad_value", self.bad_value), ("over_long_message", self.over_long_message),
            ("unknown_model", self.unknown_model), ("unknown_session", self.unknown_session),
            ("malformed_session_id", self.malformed_session_id), ("wrong_key", self.wrong_key),
            ("bad_session_body", self.bad_session_body), ("unknown_route", self.unknown_route),
        ]

    def __iter__(self) -> Iterator[BadRequest]:
        for _ in range(self.cfg.requests):
            if self.rng.random() < self.cfg.oversized_share:
                yield self.oversized()
            else:
                yield self.rng.choice(self.kinds)[1]()

    # ---- building blocks -------------------------------------------------------------------

    def text(self, words: int | None = None) -> str:
        n = words if words is not None else self.rng.randint(1, 8)
        pieces = [self.rng.choice(_WORDS) for _ in range(n)]
        for _ in range(self.rng.choice((0, 0, 1, 3))):  # unicode and control characters
            pieces.insert(self.rng.randrange(len(pieces) + 1), self.rng.choice(_ODD_TEXT))
        return " ".join(pieces)

    def body(self, **changes: Any) -> dict:
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": self.text()}],
                "max_tokens": self.rng.randint(1, 8), "temperature": 0, "stream": self.rng.random() < 0.5}
        return {**body, **changes}

    def encode(self, body: Any) -> bytes:
        return json.dumps(body, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def headers(self, sid: str | None = None, key: str | None = "right") -> dict[str, str | bytes]:
        headers: dict[str, str | bytes] = {}
        if key == "right":
            headers["authorization"] = f"Bearer {self.cfg.api_key}"
        elif key is not None:
            headers["authorization"] = key
        if sid is not None:
            headers[SESSION_HEADER] = sid
        extra = self.rng.random()
        if extra < 0.1:
            headers[IDEMPOTENCY_HEADER] = self.rng.choice(["", "x" * 300, "\x01\x02", "k" * 255, "ключ".encode()])
        elif extra < 0.2:
            headers["content-type"] = self.rng.choice(["text/plain", "application/xml", "multipart/form-data", "*/*"])
        return headers

    def session(self) -> str:
        """An existing session (most of the time) or a new random id: the defect is elsewhere."""
        return self.rng.choice(self.sessions)

    def chat(self, kind: str, content: bytes, sid: str | None = None, key: str | None = "right") -> BadRequest:
        return BadRequest(kind, "POST", CHAT, self.headers(sid, key), content)

    # ---- one method per kind of defect ----------------------------------------------------

    def malformed_json(self) -> BadRequest:
        whole = self.encode(self.body())
        how = self.rng.randrange(4)
        if how == 0:
            content = whole[:self.rng.randrange(len(whole) - 1)]  # cut short
        elif how == 1:
            content = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 64)))
        elif how == 2:
            i = self.rng.randrange(1, len(whole) - 1)
            # Bytes that break JSON wherever they land (inside a string too): invalid UTF-8, raw controls.
            content = whole[:i] + self.rng.choice([b"\xff", b"\xc3", b"\x00", b"\x01", b"\n\x1f"]) + whole[i:]
        else:
            content = self.rng.choice([b"", b"null", b"[]", b"5", b'"text"', b"{", b"}{", b"NaN", b"true"])
        return self.chat("malformed_json", content, self.session())

    def wrong_type(self) -> BadRequest:
        field_, value = self.rng.choice([
            ("model", 5), ("model", None), ("model", ["x"]), ("model", {"id": "x"}),
            ("messages", "hello"), ("messages", {"role": "user"}), ("messages", 3), ("messages", [5]),
            ("messages", ["hello"]), ("messages", [{"role": "user", "content": 5}]),
            ("messages", [{"role": "user"}]), ("messages", [{"content": "hi"}]),
            ("messages", [{"role": 1, "content": "hi"}]),
            ("messages", [{"role": "user", "content": [{"type": "image"}]}]),
            ("messages", [{"role": "user", "content": None}]), ("max_tokens", "5"), ("max_tokens", 5.5),
            ("max_tokens", True), ("max_tokens", [5]), ("temperature", "0"), ("temperature", [0]),
            ("stream", "yes"), ("stream", 1), ("stream", [True]), ("top_p", "1"), ("seed", "1"), ("seed", 1.5),
            ("stream_options", "usage"), ("stream_options", {"include_usage": "yes"}), ("n", "1"),
        ])
        return self.chat(f"wrong_type:{field_}", self.encode(self.body(**{field_: value})), self.session())

    def bad_value(self) -> BadRequest:
        field_, value = self.rng.choice([
            ("messages", []), ("messages", [{"role": "user", "content": ""}]),
            ("messages", [{"role": "robot", "content": "hi"}]),
            ("messages", [{"role": "assistant", "content": "hi"}]),
            ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 10**9), ("max_tokens", 10**40),
            ("temperature", -0.5), ("temperature", 2.5), ("temperature", 1e308), ("top_p", 0.0), ("top_p", 1.5),
            ("n", 2), ("n", 0), ("stop", "x"), ("stop", ["a", "b"]), ("seed", 2**64), ("seed", -2**70),
        ])
        return self.chat(f"bad_value:{field_}", self.encode(self.body(**{field_: value})), self.session())

    def over_long_message(self) -> BadRequest:
        content = self.text(self.cfg.max_message_words)
        body = self.body(messages=[{"role": "user", "content": content}])
        return self.chat("over_long_message", self.encode(body), self.session())

    def unknown_model(self) -> BadRequest:
        model = self.rng.choice(["", "gpt-4", self.cfg.model + " ", self.cfg.model.upper(), "m" * 10_000,
                                 self.text()])
        return self.chat("unknown_model", self.encode(self.body(model=model)), self.session())

    def unknown_session(self) -> BadRequest:
        sid = "sess_" + "".join(self.rng.choice("0123456789abcdef") for _ in range(32))
        method = self.rng.choice(["POST", "POST", "GET", "DELETE"])
        if method == "POST":  # the message is encoded before the store answers "unknown"
            return self.chat("unknown_session", self.encode(self.body()), sid)
        return BadRequest("unknown_session", method, f"/v1/sessions/{sid}", self.headers())

    def malformed_session_id(self) -> BadRequest:
        sid = self.rng.choice([
            "", "../../etc/passwd", "sess_", "sess_" + "0" * 31, "sess_" + "G" * 32, "SESS_" + "0" * 32,
            self.session().upper(), self.session() + "0", "sess_" + "0" * 32 + "/..", "%2e%2e", "x" * 5000,
            "".join(self.rng.choice(string.printable[:94]) for _ in range(self.rng.randint(1, 64))),
        ])
        if self.rng.random() < 0.5:
            return self.chat("malformed_session_id", self.encode(self.body()), sid)
        path_sid = quote(sid, safe="") or "%20"  # a bare '?' or '/' would change the route, not the id
        return BadRequest("malformed_session_id", self.rng.choice(["GET", "DELETE"]), f"/v1/sessions/{path_sid}",
                          self.headers())

    def wrong_key(self) -> BadRequest:
        """Another client's session (or none) with a missing, wrong or malformed key."""
        key = self.rng.choice([None, "Bearer", "Bearer x", f"Bearer {self.cfg.api_key}x", f"Basic {self.cfg.api_key}",
                               f"bearer  {self.cfg.api_key[:-1]}", "Bearer " + "k" * 4000])
        sid = self.session()
        how = self.rng.randrange(5)
        if how < 2:
            return self.chat("wrong_key", self.encode(self.body()), sid, key)
        if how == 2:
            return BadRequest("wrong_key", "DELETE", f"/v1/sessions/{sid}", self.headers(key=key))
        if how == 3:
            return BadRequest("wrong_key", "GET", f"/v1/sessions/{sid}", self.headers(key=key))
        return BadRequest("wrong_key", "POST", "/v1/sessions", self.headers(key=key), b'{"system": "hi"}')

    def bad_session_body(self) -> BadRequest:
        content = self.rng.choice([b'{"system": 5}', b'{"system": ["a"]}', b'{"system": ', b"[1]", b'"x"',
                                   self.encode({"system": self.text(self.cfg.max_message_words)})])
        return BadRequest("bad_session_body", "POST", "/v1/sessions", self.headers(), content)

    def unknown_route(self) -> BadRequest:
        method, path = self.rng.choice([("GET", CHAT), ("PUT", CHAT), ("GET", "/v1/nothing"), ("POST", "/v1/models"),
                                        ("PATCH", f"/v1/sessions/{self.session()}"), ("GET", "/v1/sessions"),
                                        ("POST", "/v2/chat/completions"), ("DELETE", "/v1/models")])
        return BadRequest("unknown_route", method, path, self.headers(), None)

    def oversized(self) -> BadRequest:
        return self.chat("oversized", b" " * OVERSIZED_BYTES, self.session())


def _is_error_shape(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"} and bool(error["message"])


async def _send(http: httpx.AsyncClient, req: BadRequest, result: FuzzResult) -> None:
    result.by_kind[req.kind.split(":")[0]] += 1
    for attempt in range(2):
        try:
            r = await http.request(req.method, req.path, headers=req.headers, content=req.content)
            break
        except httpx.TransportError as exc:
            if req.kind == "oversized":
                result.oversized_cut += 1
                return
            if attempt == 0:
                result.resent += 1
                continue
            result.transport_errors[type(exc).__name__] += 1
            result.dropped.append(f"{type(exc).__name__} {exc!s:.80} (twice) ← {req.describe()}")
            return
    result.by_status[r.status_code] += 1
    if r.status_code >= 500:
        result.server_errors.append(f"{r.status_code} {r.text[:200]!r} ← {req.describe()}")
    elif r.status_code < 300:
        result.accepted.append(f"{r.status_code} ← {req.describe()}")
    elif r.status_code == 400 and r.content == HTTP_LAYER_400:
        result.http_layer += 1
    elif not _is_error_shape(r.content):
        result.bad_shape.append(f"{r.status_code} {r.text[:200]!r} ← {req.describe()}")


async def _records(http: httpx.AsyncClient, cfg: FuzzConfig, sids: list[str]) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {cfg.api_key}"}
    return {sid: (await http.get(f"/v1/sessions/{sid}", headers=auth)).json() for sid in sids}


async def _one_turn(http: httpx.AsyncClient, cfg: FuzzConfig, sid: str) -> bool:
    body = {"model": cfg.model, "messages": [{"role": "user", "content": "my name is ada"}],
            "max_tokens": 4, "temperature": 0}
    headers = {"authorization": f"Bearer {cfg.api_key}", SESSION_HEADER: sid}
    r = await http.post(CHAT, json=body, headers=headers)
    return r.status_code == 200


async def _settled(http: httpx.AsyncClient, cfg: FuzzConfig, sids: list[str]) -> dict[str, Any]:
    for _ in range(600):
        records = await _records(http, cfg, sids)
        if not any(r["pending_update"] for r in records.values()):
            return records
        await asyncio.sleep(0.1)
    raise RuntimeError(f"updates still pending after 60s: {records}")


async def run_fuzz(cfg: FuzzConfig) -> FuzzResult:
    """Make ``cfg.sessions`` sessions with one turn each, send ``cfg.requests`` bad requests
    (``cfg.concurrency`` at a time), then check the server and the sessions."""
    client = ClientConfig(url=cfg.url, model=cfg.model, api_key=cfg.api_key, attempt_timeout_s=cfg.timeout_s)
    result = FuzzResult()
    async with async_client(client, connections=cfg.concurrency + 4) as http:
        sids = [await create_session(http, client) for _ in range(cfg.sessions)]
        for sid in sids:
            if not await _one_turn(http, cfg, sid):
                raise RuntimeError(f"the server did not answer a plain turn in {sid} before the fuzz")
        before = await _settled(http, cfg, sids)
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * cfg.concurrency)

        async def worker() -> None:
            while (req := await queue.get()) is not None:
                await _send(http, req, result)

        started = time.monotonic()
        workers = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
        for req in RequestFactory(cfg, sids):
            await queue.put(req)
            result.sent += 1
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        result.seconds = time.monotonic() - started
        after = await _records(http, cfg, sids)
        result.sessions_changed = [f"{sid}: {before[sid]} → {after[sid]}"
                                   for sid in sids if after[sid] != before[sid]]
        result.healthy_after = (await http.get("/healthz")).status_code == 200
        result.answers_after = await _one_turn(http, cfg, sids[0])
    return result
