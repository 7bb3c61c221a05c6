"""The serving benchmark's load: one session's conversation at the configured cadence, a round
of S concurrent sessions, a level of ``rounds`` rounds pooled into one :class:`LevelRun`, and
the untimed warm-up before the first level."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rxt_dist.eval.report import load_average
from rxt_dist.eval.serving_client import ServingClient, TurnResult
from rxt_dist.serving.demo import DEMO_TEXT

log = logging.getLogger(__name__)

_WORDS = tuple(sorted({w.strip(".,!?:").lower() for text in DEMO_TEXT for w in text.split()} - {""}))
"""Ordinary words to build queries from (each of them a word the demo tokenizer knows)."""


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
    turn's header, or for the last answered turn the session record once it commits; and the
    end's way out where the next turn waited for this one's update (its header)."""
    for prev, nxt in itertools.pairwise(results):
        if not (prev.ok and nxt.version == prev.version + 1):
            continue
        if nxt.read_committed_at is not None:
            prev.lag_s = nxt.read_committed_at - prev.ended_at
        if nxt.waited_for_recorded_at is not None:
            prev.way_out_s = prev.ended_at - nxt.waited_for_recorded_at
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
    started_at: float | None = None
    """Wall clock (``time.time()``) when the level's first round started, and its last ended."""
    ended_at: float | None = None
    session_polls: int = 0
    """The client's polls of its sessions for their last commit (``ServingClient.session_polls``)."""


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
    started_at, polls = time.time(), client.session_polls
    runs = []
    for round_index in range(cfg.rounds):
        if runs and time.monotonic() > deadline:
            runs[-1].truncated = True
            break
        runs.append(await run_round(client, sessions, round_index, deadline, on_turn))
    return LevelRun(sessions=sessions, turns=[t for run in runs for t in run.turns],
                    wall_s=sum(run.wall_s for run in runs), truncated=any(run.truncated for run in runs),
                    load_before=runs[0].load_before, load_after=runs[-1].load_after, rounds=len(runs),
                    started_at=started_at, ended_at=time.time(), session_polls=client.session_polls - polls)


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
