"""Statistics of the latency benchmark: per-turn summaries of the timed runs, turn-N / turn-1
ratios (endpoint and paired with the turn-1 replays), the other systems against RxT at the
last turn, and the latency targets judged on them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from rxt_dist.eval.latency_systems import TurnRun, TurnSamples


def _ratio(values: Sequence[float]) -> float:
    return values[-1] / values[0] if values[0] > 0 else float("inf")


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def _timing_fields(name: str, samples: list[list[float]], references: list[list[float]]) -> dict[str, Any]:
    """``<name>_s`` (per-turn medians), ``<name>_min_s``, the raw samples, the turn-N / turn-1
    ratios of both, and with ``references`` the paired ratio per turn and at turn N."""
    medians = [statistics.median(x) for x in samples]
    minima = [min(x) for x in samples]
    out: dict[str, Any] = {
        f"{name}_s": medians,
        f"{name}_min_s": minima,
        f"{name}_samples_s": samples,
        f"{name}_ratio_last_first": _ratio(medians),
        f"{name}_ratio_last_first_min": _ratio(minima),
    }
    if all(references):
        paired = [_median_ratio(x, ref) for x, ref in zip(samples, references)]
        out[f"{name}_reference_s"] = [statistics.median(ref) for ref in references]
        out[f"{name}_paired_ratio"] = paired
        out[f"{name}_ratio_paired"] = paired[-1]
        out[f"{name}_ratio_paired_tail"] = statistics.median(paired[-tail_turns(len(paired)):])
    return out


def tail_turns(turns: int) -> int:
    """How many final turns ``*_ratio_paired_tail`` pools: the last quarter (at least one)."""
    return max(1, turns // 4)


def summarise_runs(per_turn: list[TurnSamples]) -> dict[str, Any]:
    """Per-turn medians and minima, raw samples, ratios turn-N / turn-1 (endpoint and paired),
    token and memory figures."""
    last = [t.runs[-1] for t in per_turn]

    def timing(name: str, get: Callable[[TurnRun], float]) -> dict[str, Any]:
        return _timing_fields(name, [[get(r) for r in t.runs] for t in per_turn],
                              [[get(r) for r in t.references] for t in per_turn])

    out: dict[str, Any] = {
        **timing("prompt", lambda r: r.prompt_s),
        **timing("turn", lambda r: r.turn_s),
        "repeats_per_turn": [len(t.runs) for t in per_turn],
        "tokens_per_turn": [r.tokens for r in last],
        "context_tokens": [r.context for r in last],
        "kv_cache_bytes": [r.kv_cache_bytes for r in last],
        "carried_bytes": [r.carried_bytes for r in last],
        "state_bytes": [r.state_bytes for r in last],
    }
    out["tokens_total"] = sum(out["tokens_per_turn"])
    out["peak_state_bytes"] = max(out["state_bytes"])
    for key in last[0].extra:
        if key.endswith("_s"):
            out.update(timing(key[:-2], lambda r, key=key: r.extra[key]))
        else:
            out[f"{key}_per_turn"] = [r.extra[key] for r in last]
    return out


def compare_to_rxt(results: dict[str, Any]) -> dict[str, Any]:
    """Each other system's time at the last turn divided by RxT's (>1: slower than RxT)."""
    if "rxt" not in results:
        return {}
    rxt = results["rxt"]
    return {
        name: {"prompt": r["prompt_s"][-1] / rxt["prompt_s"][-1],
               "turn": r["turn_s"][-1] / rxt["turn_s"][-1],
               "prompt_min": r["prompt_min_s"][-1] / rxt["prompt_min_s"][-1],
               "turn_min": r["turn_min_s"][-1] / rxt["turn_min_s"][-1]}
        for name, r in results.items() if name != "rxt"
    }


RXT_PROMPT_RATIO_TARGET = 1.15
"""Largest turn-N / turn-1 ratio of RxT's time to first token that counts as flat."""


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The latency targets judged on these results: RxT's turn-N / turn-1 time-to-first-token
    ratio (every statistic) against :data:`RXT_PROMPT_RATIO_TARGET`, and whether re-reading the
    whole history is slower than RxT at the last turn."""
    out: dict[str, Any] = {}
    if "rxt" in results:
        for stat in ("last_first", "last_first_min", "paired", "paired_tail"):
            ratio = results["rxt"][f"prompt_ratio_{stat}"]
            out[f"rxt_prompt_ratio_{stat}"] = ratio
            out[f"rxt_prompt_ratio_{stat}_met"] = ratio <= RXT_PROMPT_RATIO_TARGET
        out["rxt_prompt_ratio_target"] = RXT_PROMPT_RATIO_TARGET
        if "stateless_full" in results:
            full = results["stateless_full"]["prompt_s"][-1] / results["rxt"]["prompt_s"][-1]
            out["stateless_full_vs_rxt_prompt_last_turn"] = full
            out["stateless_full_slower_than_rxt"] = full > 1.0
    return out
