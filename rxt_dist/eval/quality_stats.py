"""What the quality evaluation tallies per system: teacher-forced tokens per turn index, one
record per recall turn, memory health, and their summaries (rates and breakdowns)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rxt_dist.memory.health import MemoryHealth


@dataclass
class TokenTally:
    """Teacher-forced answer tokens of one turn index."""

    tokens: int = 0
    nll: float = 0.0
    correct: int = 0

    def add(self, nll: float, tokens: int, correct: int) -> None:
        self.tokens += tokens
        self.nll += nll
        self.correct += correct

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "perplexity": math.exp(self.nll / self.tokens) if self.tokens else None,
            "accuracy": self.correct / self.tokens if self.tokens else None,
        }


@dataclass
class RecallRecord:
    """The outcome of one recall turn."""

    conversation_id: str
    turn: int
    """0-based turn index."""
    distance: int
    """Turns since the fact was stated (or last updated)."""
    mention_distance: int | None
    """Turns since the gold value last appeared in the conversation's text (a statement, or
    an earlier recall's gold answer, which the STM was also fed); None when unknown."""
    facts_held: int
    updated: bool
    seen: bool
    """The gold value occurred in the training split."""
    gold: str
    answer: str
    """The greedy answer, decoded."""
    exact_match: bool
    value_accuracy: bool
    """Teacher-forced: every gold value token was the argmax at its position."""
    echoed: bool | None = None
    """Whether the model's own answer to the turn that stated the value repeated it (so the
    memory was fed a right copy as well as the query's); None when the gold answers were
    consolidated."""

    @property
    def value_kind(self) -> str:
        """``{n}dig`` for a number or year of n digits, ``word`` for anything else."""
        return f"{len(self.gold)}dig" if self.gold.isdigit() else "word"


@dataclass
class SystemQuality:
    """Everything measured for one system."""

    name: str
    description: str
    per_turn: list[TokenTally] = field(default_factory=list)
    recalls: list[RecallRecord] = field(default_factory=list)
    memory: MemoryHealth = field(default_factory=MemoryHealth)
    """Slot statistics of the STM after each update (RxT systems only)."""
    echoes: list[tuple[bool, bool]] = field(default_factory=list)
    """Per fact/update turn answered greedily whose value is later recalled: (the answer repeats
    the stated value, the value was seen in training) — the same-turn copy, which needs no
    memory (``rxt`` only)."""

    def merge(self, other: SystemQuality) -> None:
        """Append what ``other`` measured on later conversations of the same split."""
        for turn, t in enumerate(other.per_turn):
            self.tally(turn).add(t.nll, t.tokens, t.correct)
        self.recalls.extend(other.recalls)
        self.echoes.extend(other.echoes)
        self.memory.merge(other.memory)

    def tally(self, turn: int) -> TokenTally:
        while len(self.per_turn) <= turn:
            self.per_turn.append(TokenTally())
        return self.per_turn[turn]

    @property
    def overall(self) -> TokenTally:
        total = TokenTally()
        for t in self.per_turn:
            total.add(t.nll, t.tokens, t.correct)
        return total

    @property
    def recall_exact_match(self) -> float | None:
        """Exact match over values never seen in training (the headline)."""
        return _rate(self.unseen, "exact_match")

    @property
    def unseen(self) -> list[RecallRecord]:
        return [r for r in self.recalls if not r.seen]

    @property
    def seen(self) -> list[RecallRecord]:
        return [r for r in self.recalls if r.seen]

    def recall_summary(self, examples: int = 5, seen: bool = False) -> dict[str, Any]:
        """Recall over unseen values (or, with ``seen``, over values seen in training)."""
        records = self.seen if seen else self.unseen
        failures = [r for r in records if not r.exact_match]
        shown = (failures + [r for r in records if r.exact_match])[:examples]
        return {
            "count": len(records),
            "exact_match": _rate(records, "exact_match"),
            "value_accuracy": _rate(records, "value_accuracy"),
            "by_distance": _breakdown(records, "distance"),
            "by_mention_distance": _breakdown(
                [r for r in records if r.mention_distance is not None], "mention_distance"),
            "by_facts_held": _breakdown(records, "facts_held"),
            "by_facts_held_and_distance": _breakdown(records, "facts_and_distance"),
            "by_updated": _breakdown(records, "updated"),
            "by_value_kind": _breakdown(records, "value_kind"),
            "by_echoed": _breakdown([r for r in records if r.echoed is not None], "echoed"),
            "examples": [asdict(r) for r in shown],
        }

    def to_dict(self, examples: int = 5) -> dict[str, Any]:
        out = {
            "description": self.description,
            "overall": self.overall.to_dict(),
            "per_turn": [{"turn": i + 1, **t.to_dict()} for i, t in enumerate(self.per_turn)],
            "recall": self.recall_summary(examples),
            "recall_seen": self.recall_summary(examples, seen=True),
        }
        if self.memory.states:
            out["memory"] = self.memory.to_dict()
        if self.echoes:
            out["echo"] = {"unseen": _share([hit for hit, seen in self.echoes if not seen]),
                           "seen": _share([hit for hit, seen in self.echoes if seen]),
                           "count": len(self.echoes)}
        return out


def _share(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def _rate(records: Sequence[RecallRecord], attr: str) -> float | None:
    return sum(getattr(r, attr) for r in records) / len(records) if records else None


def _breakdown(records: Sequence[RecallRecord], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[Any, list[RecallRecord]] = defaultdict(list)
    for r in records:
        groups[f"{r.facts_held}x{r.distance}" if key == "facts_and_distance" else getattr(r, key)].append(r)
    return {
        str(k).lower(): {"count": len(v), "exact_match": _rate(v, "exact_match"),
                         "value_accuracy": _rate(v, "value_accuracy")}
        for k, v in sorted(groups.items())
    }

