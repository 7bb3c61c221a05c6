"""Serving benchmark: concurrent conversations against the running Ray Serve app, over HTTP.

For each concurrency level S, S sessions each hold a conversation of ``turns`` turns at the
same time. Every turn is a streamed, greedy chat request with a fixed ``max_tokens``. A session
sends its next turn as soon as its previous answer has ended (``think_time_s`` adds a pause).
That cadence is what stresses the server's ordering: the next turn must wait for the previous
turn's memory update, which runs only after that answer has ended. Per turn the client records:

* **time to first token** (TTFT): request sent → first streamed chunk after the role chunk
  (the first answer text, or the end of an empty answer). It includes any wait for the
  previous update;
* **answer time**: request sent → ``[DONE]``; the completion tokens (``include_usage``);
* **waited for an update**: the ``x-waited-for-update-ms`` response header (> 0: this
  request waited for a pending update before it could read the memory);
* **memory update lag**: end of this answer (client clock, at ``[DONE]``) → commit of the
  memory version it produced (server clock). The commit time is the next turn's
  ``x-memory-committed-at`` header; after a session's last turn it is polled from
  ``GET /v1/sessions/{id}`` (``memory_committed_at``). Both clocks are this machine's, which is
  why the benchmark only talks to a loopback address.

Sessions are created with ``POST /v1/sessions`` before the level starts, so turn 1 is a plain
turn (not a session creation), and deleted afterwards. Levels run one after another; a level
stops starting turns once ``max_level_s`` has passed (reported as ``truncated``). The report
has per-turn-index p50/p99 figures, throughput, the share of requests that waited, and the
issue's targets judged on each level.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from rxt_dist.eval.report import load_average, machine_info
from rxt_dist.serving.demo import DEMO_TEXT

log = logging.getLogger(__name__)

SESSION_HEADER = "x-session-id"
VERSION_HEADER = "x-memory-version"
COMMITTED_HEADER = "x-memory-committed-at"
WAITED_HEADER = "x-waited-for-update-ms"

MAX_SESSIONS = 256
"""Most concurrent sessions one level may open (the benchmark is bounded in count)."""
MAX_TURNS = 1024
"""Most turns one session may play."""
TARGET_SESSIONS = 8
"""The level the issue's targets name: 8 concurrent sessions."""
TTFT_RATIO_TARGET = 1.2
"""TTFT p50 at turn N must be ≤ this × TTFT p50 at turn 1."""
WINDOW_TURNS = 4
"""Turns at the end of a conversation whose p50s the window ratio takes the median of."""
_WORDS = tuple(sorted({w.strip(".,!?:").lower() for text in DEMO_TEXT for w in text.split()} - {""}))
"""Ordinary words to build queries from (each of them a word the demo tokenizer knows)."""


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


# -- one turn, one session ----------------------------------------------------------------

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
    waited_ms: float | None = None
    """``x-waited-for-update-ms``: this request's wait for the previous turn's update."""
    version: int | None = None
    """``x-memory-version``: the memory version the answer was generated from."""
    read_committed_at: float | None = None
    """``x-memory-committed-at``: when that version was committed (server clock)."""
    ended_at: float | None = None
    """Wall-clock time ``[DONE]`` was read (client clock)."""
    lag_s: float | None = None
    """End of this answer → commit of the version it produced. The update starts once the
    Ingress has handed ``[DONE]`` to Serve's proxy, so under load it can commit before the
    client reads ``[DONE]``: the lag is then negative."""


class ServingClient:
    """The HTTP calls the benchmark makes, on one ``httpx.AsyncClient``."""

    def __init__(self, cfg: ServingConfig, connections: int) -> None:
        import httpx

        headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.cfg = cfg
        self.model = cfg.model
        # trust_env=False: a proxy set for package registries must not intercept loopback calls.
        self.http = httpx.AsyncClient(
            base_url=cfg.url.rstrip("/"), headers=headers, trust_env=False,
            timeout=httpx.Timeout(cfg.request_timeout_s),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))
        self.transport_errors = (httpx.TransportError,)

    async def __aenter__(self) -> "ServingClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def model_id(self) -> str:
        """The model id to send (``cfg.model``, else the server's one model)."""
        if self.model is None:
            r = await self.http.get("/v1/models")
            _raise_for(r, "GET /v1/models")
            self.model = r.json()["data"][0]["id"]
        return self.model

    async def create_session(self) -> str:
        r = await self.http.post("/v1/sessions")
        _raise_for(r, "POST /v1/sessions")
        return r.headers[SESSION_HEADER]

    async def session(self, sid: str) -> dict:
        r = await self.http.get(f"/v1/sessions/{sid}")
        _raise_for(r, f"GET /v1/sessions/{sid}")
        return r.json()

    async def delete_session(self, sid: str) -> None:
        r = await self.http.delete(f"/v1/sessions/{sid}")
        if r.status_code not in (200, 404):
            _raise_for(r, f"DELETE /v1/sessions/{sid}")

    async def turn(self, sid: str, index: int, text: str) -> TurnResult:
        """Send one streamed, greedy turn and time it."""
        result = TurnResult(turn=index)
        body = {"model": await self.model_id(), "messages": [{"role": "user", "content": text}],
                "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": self.cfg.max_tokens, "temperature": 0}
        started = time.perf_counter()
        try:
            async with self.http.stream("POST", "/v1/chat/completions", json=body,
                                        headers={SESSION_HEADER: sid}) as r:
                if r.status_code != 200:
                    await r.aread()
                    result.error = f"{r.status_code} {_error_code(r)}"
                    return result
                _read_headers(result, r.headers)
                await _read_stream(result, r.aiter_lines(), started)
        except self.transport_errors as exc:
            result.error = type(exc).__name__
            return result
        return result

    async def committed_at(self, sid: str, version: int) -> float | None:
        """When ``version`` of ``sid`` was committed, polling until it is (None after
        ``settle_timeout_s``, or if the session has moved past it)."""
        deadline = time.monotonic() + self.cfg.settle_timeout_s
        while True:
            info = await self.session(sid)
            if info["memory_version"] == version:
                return info.get("memory_committed_at")
            if info["memory_version"] > version or time.monotonic() > deadline:
                return None
            await asyncio.sleep(self.cfg.poll_interval_s)


def _raise_for(response, what: str) -> None:
    if response.status_code >= 300:
        raise RuntimeError(f"{what} answered {response.status_code}: {response.text[:300]}")


def _error_code(response) -> str:
    try:
        return response.json()["error"]["code"] or ""
    except (ValueError, KeyError, TypeError):
        return ""


def _read_headers(result: TurnResult, headers) -> None:
    result.version = int(headers[VERSION_HEADER])
    if WAITED_HEADER in headers:
        result.waited_ms = float(headers[WAITED_HEADER])
    if COMMITTED_HEADER in headers:
        result.read_committed_at = float(headers[COMMITTED_HEADER])


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
    result.error = "stream ended without [DONE]"


def make_query(rng: random.Random, words: int) -> str:
    """A query of ``words`` random ordinary words."""
    return " ".join(rng.choice(_WORDS) for _ in range(words))


async def play_session(client: ServingClient, sid: str, rng: random.Random, deadline: float,
                       start_delay_s: float = 0.0, on_turn: Callable[[], None] = lambda: None
                       ) -> tuple[list[TurnResult], bool]:
    """One session's conversation at the configured cadence, starting after ``start_delay_s``;
    returns its turns and whether the level's time ran out before it finished. A failed turn
    ends the session."""
    cfg = client.cfg
    results: list[TurnResult] = []
    truncated = False
    await asyncio.sleep(start_delay_s)
    for index in range(1, cfg.turns + 1):
        if time.monotonic() > deadline:
            truncated = True
            break
        if index > 1 and cfg.think_time_s:
            await asyncio.sleep(cfg.think_time_s)
        result = await client.turn(sid, index, make_query(rng, cfg.query_words))
        results.append(result)
        on_turn()
        if not result.ok:
            log.warning("session %s turn %d failed: %s", sid, index, result.error)
            break
    await _fill_lags(client, sid, results)
    return results, truncated


async def _fill_lags(client: ServingClient, sid: str, results: list[TurnResult]) -> None:
    """Set each turn's update lag from the commit time of the version it produced: the next
    turn's header, or for the last answered turn the session record once it commits."""
    for prev, nxt in zip(results, results[1:]):
        if prev.ok and nxt.version == prev.version + 1 and nxt.read_committed_at is not None:
            prev.lag_s = nxt.read_committed_at - prev.ended_at
    last = results[-1] if results else None
    if last is not None and last.ok:
        committed = await client.committed_at(sid, last.version + 1)
        if committed is not None:
            last.lag_s = committed - last.ended_at


# -- a level: S sessions at once -----------------------------------------------------------

@dataclass
class LevelRun:
    """The raw outcome of one concurrency level."""

    sessions: int
    turns: list[list[TurnResult]]
    """Per session (of every round), its turns in order."""
    wall_s: float
    """Time the sessions were playing (summed over rounds)."""
    truncated: bool
    load_before: list[float] | None
    load_after: list[float] | None
    rounds: int = 1
    server_state: dict[str, Any] = field(default_factory=dict)


async def run_round(client: ServingClient, sessions: int, round_index: int, deadline: float,
                    on_turn: Callable[[], None] = lambda: None) -> LevelRun:
    """Open ``sessions`` sessions, play them concurrently, delete them."""
    cfg = client.cfg
    sids = [await client.create_session() for _ in range(sessions)]
    load_before = load_average()
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(
        play_session(client, sid, random.Random(f"{cfg.seed}-{sessions}-{round_index}-{i}"), deadline,
                     i * cfg.ramp_s / sessions, on_turn)
        for i, sid in enumerate(sids)))
    wall_s = time.perf_counter() - started
    load_after = load_average()
    for sid in sids:
        await client.delete_session(sid)
    return LevelRun(sessions=sessions, turns=[turns for turns, _ in outcomes], wall_s=wall_s,
                    truncated=any(cut for _, cut in outcomes), load_before=load_before, load_after=load_after)


async def run_level(client: ServingClient, sessions: int, on_turn: Callable[[], None] = lambda: None
                    ) -> LevelRun:
    """``cfg.rounds`` rounds of ``sessions`` concurrent sessions, pooled into one run."""
    cfg = client.cfg
    deadline = time.monotonic() + cfg.max_level_s
    runs = []
    for round_index in range(cfg.rounds):
        if runs and time.monotonic() > deadline:
            runs[-1].truncated = True
            break
        runs.append(await run_round(client, sessions, round_index, deadline, on_turn))
    return LevelRun(sessions=sessions, turns=[t for run in runs for t in run.turns],
                    wall_s=sum(run.wall_s for run in runs), truncated=any(run.truncated for run in runs),
                    load_before=runs[0].load_before, load_after=runs[-1].load_after, rounds=len(runs))


async def warm_up(client: ServingClient) -> None:
    """Untimed turns of one throwaway session (first requests pay one-off start-up costs)."""
    if client.cfg.warmup_turns == 0:
        return
    sid = await client.create_session()
    rng = random.Random(f"{client.cfg.seed}-warmup")
    for index in range(1, client.cfg.warmup_turns + 1):
        result = await client.turn(sid, index, make_query(rng, client.cfg.query_words))
        if not result.ok:
            raise RuntimeError(f"warm-up turn {index} failed: {result.error}")
    await client.committed_at(sid, client.cfg.warmup_turns)
    await client.delete_session(sid)


# -- statistics ----------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation); None for no values. With fewer than
    100 values p99 lies between the two largest."""
    return float(np.percentile(values, q)) if len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _by_turn(run: LevelRun, n: int, get: Callable[[TurnResult], float | None]) -> list[list[float]]:
    """Per turn index 1..n, the values ``get`` gives for every session (None dropped)."""
    out: list[list[float]] = [[] for _ in range(n)]
    for session in run.turns:
        for r in session:
            value = get(r)
            if value is not None:
                out[r.turn - 1].append(value)
    return out


def _dist(values: Sequence[float], unit: str = "s") -> dict[str, Any]:
    return {f"p50_{unit}": percentile(values, 50), f"p99_{unit}": percentile(values, 99),
            f"min_{unit}": min(values) if values else None, f"max_{unit}": max(values) if values else None,
            "count": len(values)}


def _slope_per_turn(p50: Sequence[float | None], first: int, last: int) -> float | None:
    """Least-squares slope (seconds per turn) of the per-turn p50s of turns ``first..last``."""
    points = [(t, p50[t - 1]) for t in range(first, last + 1) if p50[t - 1] is not None]
    if len(points) < 2:
        return None
    turns, values = zip(*points)
    return float(np.polyfit(turns, values, 1)[0])


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def _tokens_per_s(turns: Sequence[TurnResult]) -> float | None:
    busy = sum(r.answer_s for r in turns if r.ok)
    return sum(r.completion_tokens for r in turns if r.ok) / busy if busy else None


def _flat(per_turn: list[list[float]]) -> list[float]:
    return [x for values in per_turn for x in values]


def _ttft_summary(ttft: list[list[float]], own: list[list[float]], played: int) -> dict[str, Any]:
    """TTFT over all turns, at turn 1 and the last turn, and how it moves with the turn index:
    the issue's ratio (last / first turn, p50s), the median of the last ``WINDOW_TURNS`` p50s
    over turn 1 and over turns 2…``WINDOW_TURNS``+1 (turn 1 never waits for an update and, when
    all sessions start together, arrives as one burst), and the fitted slope from turn 2 on."""
    p50 = [percentile(v, 50) for v in ttft]
    last = max(played - 1, 0)
    window = _median_or_none(p50[max(0, played - WINDOW_TURNS):played])
    early = _median_or_none(p50[1:1 + WINDOW_TURNS])
    return {
        **_dist(_flat(ttft)),
        "turn1_p50_s": p50[0],
        "last_turn_p50_s": p50[last],
        "ratio_last_first": _ratio(p50[last], p50[0]),
        "ratio_window_first": _ratio(window, p50[0]),
        "ratio_window_early": _ratio(window, early) if played > 2 * WINDOW_TURNS else None,
        "slope_s_per_turn": _slope_per_turn(p50, 2, played),
        "excluding_wait": _dist(_flat(own)),
    }


def _waited_summary(waited: list[list[float]]) -> dict[str, Any]:
    """The share of requests that waited for a pending update, and how long those waited."""
    values = _flat(waited)
    positive = [w for w in values if w > 0]
    return {"share": len(positive) / len(values) if values else None, "requests_waited": len(positive),
            **{k: v for k, v in _dist(positive, "ms").items() if k != "count"}}


def _token_summary(run: LevelRun, done: list[TurnResult], max_tokens: int) -> dict[str, Any]:
    total = sum(r.completion_tokens for r in done)
    per_session = [x for x in (_tokens_per_s(s) for s in run.turns) if x is not None]
    return {
        "tokens": {
            "completion_total": total,
            "completion_per_turn_mean": float(np.mean([r.completion_tokens for r in done])) if done else None,
            "prompt_per_turn_mean": float(np.mean([r.prompt_tokens for r in done])) if done else None,
            "max_tokens": max_tokens,
        },
        "throughput": {
            "aggregate_tokens_per_s": total / run.wall_s if run.wall_s else None,
            "per_session_tokens_per_s": _dist(per_session, "tokens_per_s"),
        },
    }


def summarise_level(run: LevelRun, cfg: ServingConfig) -> dict[str, Any]:
    """Per-turn-index and overall statistics of one level."""
    n = cfg.turns
    done = [r for session in run.turns for r in session if r.ok]
    ttft = _by_turn(run, n, lambda r: r.ttft_s if r.ok else None)
    own = _by_turn(run, n, lambda r: r.ttft_s - r.waited_ms / 1e3 if r.ok and r.waited_ms is not None else None)
    answer = _by_turn(run, n, lambda r: r.answer_s if r.ok else None)
    lag = _by_turn(run, n, lambda r: r.lag_s)
    waited = _by_turn(run, n, lambda r: r.waited_ms if r.ok else None)
    tokens = _by_turn(run, n, lambda r: float(r.completion_tokens) if r.ok else None)
    played = max((len(s) for s in run.turns), default=0)
    lag_p50, answer_p50 = percentile(_flat(lag), 50), percentile(_flat(answer), 50)
    return {
        "sessions": run.sessions, "rounds": run.rounds, "turns": n, "turns_played": played,
        "requests": sum(len(s) for s in run.turns), "requests_ok": len(done),
        "errors": dict(Counter(r.error for s in run.turns for r in s if not r.ok)),
        "truncated": run.truncated, "wall_s": run.wall_s,
        "load_average_before": run.load_before, "load_average_after": run.load_after,
        "per_turn": {
            "turn": list(range(1, n + 1)),
            "ttft_p50_s": [percentile(v, 50) for v in ttft],
            "ttft_p99_s": [percentile(v, 99) for v in ttft],
            "ttft_excluding_wait_p50_s": [percentile(v, 50) for v in own],
            "answer_p50_s": [percentile(v, 50) for v in answer],
            "update_lag_p50_s": [percentile(v, 50) for v in lag],
            "update_lag_p99_s": [percentile(v, 99) for v in lag],
            "waited_share": [sum(w > 0 for w in v) / len(v) if v else None for v in waited],
        },
        "ttft": _ttft_summary(ttft, own, played),
        "answer": _dist(_flat(answer)),
        # Negative: the commit landed before [DONE] reached the client (slow proxy or client).
        "update_lag": {**_dist(_flat(lag)), "negative_count": sum(x < 0 for x in _flat(lag))},
        "waited": _waited_summary(waited),
        **_token_summary(run, done, cfg.max_tokens),
        "lag_below_median_answer": lag_p50 < answer_p50 if lag_p50 is not None and answer_p50 else None,
        "samples": {"ttft_s": ttft, "answer_s": answer, "update_lag_s": lag, "waited_ms": waited,
                    "completion_tokens": tokens},
        "server_state": run.server_state,
    }


def judge_targets(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's serving targets on every level (the issue names S = 8): TTFT p50 at the
    last turn ≤ 1.2 × turn 1, and the median update lag below the median answer time."""
    out: dict[str, Any] = {"target_sessions": TARGET_SESSIONS, "ttft_ratio_target": TTFT_RATIO_TARGET,
                           "levels": {}}
    for level in levels:
        ratio = level["ttft"]["ratio_last_first"]
        lag, answer = level["update_lag"]["p50_s"], level["answer"]["p50_s"]
        out["levels"][str(level["sessions"])] = {
            "ttft_ratio_last_first": ratio,
            "ttft_ratio_met": ratio is not None and ratio <= TTFT_RATIO_TARGET,
            "update_lag_p50_s": lag,
            "answer_p50_s": answer,
            "update_lag_below_median_answer_met": bool(level["lag_below_median_answer"]),
        }
    named = out["levels"].get(str(TARGET_SESSIONS))
    out["met"] = None if named is None else named["ttft_ratio_met"] and named["update_lag_below_median_answer_met"]
    return out


# -- the whole benchmark -------------------------------------------------------------------

def run_serving(cfg: ServingConfig, progress: bool = False, command: str | None = None,
                server: dict[str, Any] | None = None,
                describe_server: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every level of ``cfg`` against the application at ``cfg.url``; returns the report
    (fields in docs/evaluation.md). ``server`` describes what is being served (recorded as
    is); ``describe_server()`` is called after each level (e.g. replica counts)."""
    return asyncio.run(_run(cfg, progress, command, server or {}, describe_server))


async def _run(cfg: ServingConfig, progress: bool, command: str | None, server: dict[str, Any],
               describe_server: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    machine = machine_info()
    levels = []
    started = time.perf_counter()
    async with ServingClient(cfg, connections=max(cfg.sessions) + 4) as client:
        model = await client.model_id()
        await warm_up(client)
        total = sum(cfg.sessions) * cfg.turns * cfg.rounds
        with tqdm(total=total, desc="serving", unit="turn", disable=not progress) as bar:
            for sessions in cfg.sessions:
                bar.set_postfix_str(f"S={sessions}")
                run = await run_level(client, sessions, lambda: bar.update(1))
                if describe_server is not None:
                    run.server_state = describe_server()
                level = summarise_level(run, cfg)
                levels.append(level)
                log.info("S=%d: TTFT p50 turn 1 %s ms, turn %d %s ms; update lag p50 %s ms; waited %s",
                         sessions, _ms(level["ttft"]["turn1_p50_s"]), level["turns_played"],
                         _ms(level["ttft"]["last_turn_p50_s"]), _ms(level["update_lag"]["p50_s"]),
                         level["waited"]["share"])
    return {
        "benchmark": "serving",
        "command": command,
        "config": {**dataclasses.asdict(cfg), "api_key": "***" if cfg.api_key else None},
        "machine": machine,
        "load_average_after": load_average(),
        "wall_s": time.perf_counter() - started,
        "server": {**server, "url": cfg.url, "model_id": model},
        "levels": levels,
        "targets": judge_targets(levels),
    }


# -- presenting it -------------------------------------------------------------------------

def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.1f}"


def summary_table(report: dict[str, Any]) -> str:
    """One row per level: TTFT p50/p99 at turn 1 and the last turn, their ratio, answer time,
    update lag, waited share, throughput, errors."""
    lines = [f"serving {report['server'].get('model_id')} at {report['server']['url']}: "
             f"{report['config']['turns']} turns, {report['config']['query_words']} words → "
             f"max {report['config']['max_tokens']} tokens, think {report['config']['think_time_s']} s",
             f"{'S':>3} {'TTFT t1 p50/p99 ms':>19} {'TTFT tN p50/p99 ms':>19} {'tN/t1':>6} {'answer p50':>10} "
             f"{'lag p50/p99 ms':>15} {'waited':>7} {'tok/s agg':>9} {'tok/s/sess':>10} {'errors':>6}"]
    for lv in report["levels"]:
        pt, last = lv["per_turn"], max(lv["turns_played"] - 1, 0)
        ratio = lv["ttft"]["ratio_last_first"]
        waited = lv["waited"]["share"]
        per_session = lv["throughput"]["per_session_tokens_per_s"]["p50_tokens_per_s"]
        lines.append(
            f"{lv['sessions']:>3} {_ms(pt['ttft_p50_s'][0]) + '/' + _ms(pt['ttft_p99_s'][0]):>19} "
            f"{_ms(pt['ttft_p50_s'][last]) + '/' + _ms(pt['ttft_p99_s'][last]):>19} "
            f"{'—' if ratio is None else f'{ratio:.2f}':>6} {_ms(lv['answer']['p50_s']):>10} "
            f"{_ms(lv['update_lag']['p50_s']) + '/' + _ms(lv['update_lag']['p99_s']):>15} "
            f"{'—' if waited is None else f'{100 * waited:.0f}%':>7} "
            f"{lv['throughput']['aggregate_tokens_per_s'] or 0:9.1f} {per_session or 0:10.1f} "
            f"{lv['requests'] - lv['requests_ok']:>6}" + ("  (truncated)" if lv["truncated"] else ""))
    met = report["targets"]["met"]
    lines.append(f"targets at S={TARGET_SESSIONS}: " + ("not run" if met is None else "met" if met else "NOT met"))
    return "\n".join(lines)


def plot_serving(report: dict[str, Any], path: str | Path) -> Path:
    """TTFT p50/p99 by turn index, update lag p50/p99 by turn index (median answer time
    dotted) and the share of requests that waited, one line per level; PNG, atomically."""
    from rxt_dist.eval.plots import _pyplot, save_png

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, lv in enumerate(report["levels"]):
        color, pt, label = colors[i % len(colors)], lv["per_turn"], f"S={lv['sessions']}"
        turns = pt["turn"]
        axes[0].plot(turns, _scaled(pt["ttft_p50_s"]), color=color, label=f"{label} p50")
        axes[0].plot(turns, _scaled(pt["ttft_p99_s"]), color=color, linestyle="--", label=f"{label} p99")
        axes[1].plot(turns, _scaled(pt["update_lag_p50_s"]), color=color, label=f"{label} lag p50")
        axes[1].plot(turns, _scaled(pt["update_lag_p99_s"]), color=color, linestyle="--", label=f"{label} lag p99")
        if lv["answer"]["p50_s"] is not None:
            axes[1].axhline(lv["answer"]["p50_s"] * 1e3, color=color, linestyle=":", label=f"{label} answer p50")
        axes[2].plot(turns, [None if x is None else 100 * x for x in pt["waited_share"]], color=color,
                     marker=".", label=label)
    axes[0].set(title="time to first token (streamed)", xlabel="turn", ylabel="ms", yscale="log")
    axes[1].set(title="memory update lag (end of answer → version committed)", xlabel="turn", ylabel="ms",
                yscale="log")
    axes[2].set(title="requests that waited for the previous update", xlabel="turn", ylabel="%", ylim=(-5, 105))
    server = report["server"]
    fig.suptitle(f"{server.get('model_source') or server.get('model_id')} — {report['config']['max_tokens']} "
                 f"tokens/answer, think {report['config']['think_time_s']} s, load average "
                 f"{report['machine']['load_average']} before → {report['load_average_after']} after",
                 fontsize=9)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(plt, fig, path)


def _scaled(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None else v * 1e3 for v in values]
