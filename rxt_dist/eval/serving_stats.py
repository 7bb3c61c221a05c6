"""Statistics of the serving benchmark: percentiles per turn index and overall, how TTFT moves
with the turn index, the share of requests that waited, tokens and throughput of one level,
and the serving targets judged on every level."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rxt_dist.eval.serving_client import ServingConfig, TurnResult
from rxt_dist.eval.serving_levels import LevelRun

TARGET_SESSIONS = 8
"""The level whose targets decide ``met`` in :func:`judge_targets`: 8 concurrent sessions."""
TTFT_RATIO_TARGET = 1.2
"""TTFT p50 at turn N must be ≤ this × TTFT p50 at turn 1."""
WINDOW_TURNS = 4
"""Turns at the end of a conversation whose p50s the window ratio takes the median of."""


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
    the last turn's p50 over turn 1's (the ratio :func:`judge_targets` judges), the median of
    the last ``WINDOW_TURNS`` p50s over turn 1 and over turns 2…``WINDOW_TURNS``+1 (turn 1 never
    waits for an update and, when all sessions start together, arrives as one burst), and the
    fitted slope from turn 2 on."""
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


def _between_turns(done: list[TurnResult]) -> dict[str, Any]:
    """Where the time between two turns of a session goes, from the client's clock and the
    store's headers (one machine, one clock): ``way_out``, a turn recorded at the store →
    its end read by the client (the turns whose next turn waited for their update), and
    ``way_in``, a request sent → its claim at the store."""
    out = {}
    for name in ("way_out", "way_in"):
        values = [getattr(r, f"{name}_s") for r in done if getattr(r, f"{name}_s") is not None]
        out[name] = {**_dist(values), "mean_s": float(np.mean(values)) if values else None}
    return out


def _token_summary(run: LevelRun, done: list[TurnResult], max_tokens: int) -> dict[str, Any]:
    total = sum(r.completion_tokens for r in done)
    per_session = [x for x in (_tokens_per_s(s) for s in run.turns) if x is not None]
    return {
        "tokens": {
            "completion_total": total,
            "completion_per_turn_mean": float(np.mean([r.completion_tokens for r in done])) if done else None,
            "prompt_per_turn_mean": float(np.mean([r.prompt_tokens for r in done])) if done else None,
            "chunks_per_turn_mean": float(np.mean([r.chunks for r in done])) if done else None,
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
    chunks = _by_turn(run, n, lambda r: float(r.chunks) if r.ok else None)
    played = max((len(s) for s in run.turns), default=0)
    lag_p50, answer_p50 = percentile(_flat(lag), 50), percentile(_flat(answer), 50)
    return {
        "sessions": run.sessions, "rounds": run.rounds, "turns": n, "turns_played": played,
        "requests": sum(len(s) for s in run.turns), "requests_ok": len(done),
        "errors": dict(Counter(r.error for s in run.turns for r in s if not r.ok)),
        "truncated": run.truncated, "wall_s": run.wall_s, "session_polls": run.session_polls,
        "started_at_unix": run.started_at, "ended_at_unix": run.ended_at,
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
        "between_turns": _between_turns(done),
        **_token_summary(run, done, cfg.max_tokens),
        "lag_below_median_answer": lag_p50 < answer_p50 if lag_p50 is not None and answer_p50 else None,
        "samples": {"ttft_s": ttft, "answer_s": answer, "update_lag_s": lag, "waited_ms": waited,
                    "completion_tokens": tokens, "chunks": chunks},
        "server_state": run.server_state,
    }


def judge_targets(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The serving targets judged on every level: TTFT p50 at the last turn ≤
    ``TTFT_RATIO_TARGET`` × turn 1, and the median update lag below the median answer time.
    ``met`` is both at S = ``TARGET_SESSIONS`` (None when no level had that many sessions)."""
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
