"""The quality evaluation's report: every system's results as JSON and as a readable table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rxt_dist.eval.quality_scoring import EXACT_MATCH_DEFINITION
from rxt_dist.eval.quality_stats import SystemQuality
from rxt_dist.eval.report import write_json_atomic

if TYPE_CHECKING:
    from rxt_dist.eval.quality import QualityConfig


@dataclass
class QualityReport:
    """The quality evaluation of one or more systems on one split."""

    data_url: str
    split: str
    conversations: int
    turns: int
    recall_turns: int
    models: dict[str, str | None]
    config: QualityConfig
    systems: dict[str, SystemQuality]
    elapsed_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluation": "quality",
            "command": self.command,
            "data_url": self.data_url,
            "split": self.split,
            "conversations": self.conversations,
            "turns": self.turns,
            "recall_turns": self.recall_turns,
            "models": self.models,
            "config": asdict(self.config),
            "exact_match_definition": EXACT_MATCH_DEFINITION,
            "elapsed_s": self.elapsed_s,
            "machine": self.machine,
            "systems": {k: v.to_dict(self.config.examples) for k, v in self.systems.items()},
        }

    def write_json(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON (temporary name, renamed last)."""
        write_json_atomic(path, self.to_dict())

    def summary_table(self) -> str:
        """A readable table: overall PPL/accuracy/recall (unseen and seen values), recall by
        distance, by facts held and by kind of value, memory health, PPL per turn index."""
        head = (f"Quality on {self.data_url} [{self.split}]: {self.conversations} conversations, "
                f"{self.turns} turns, {self.recall_turns} recall turns")
        lines = [head, "",
                 (f"{'system':16} {'PPL':>8} {'tok acc':>8} {'recall EM':>10} {'seen EM':>8} {'value acc':>10}"
                  "  description")]
        for name, s in self.systems.items():
            o, r, seen = s.overall.to_dict(), s.recall_summary(0), s.recall_summary(0, seen=True)
            lines.append(f"{name:16} {_f(o['perplexity'], 8, 3)} {_pct(o['accuracy'], 8)} "
                         f"{_pct(r['exact_match'], 10)} {_pct(seen['exact_match'], 8)} "
                         f"{_pct(r['value_accuracy'], 10)}  {s.description}")
        lines.append("(recall EM: values never seen in training; seen EM: values that were)")
        for name, s in self.systems.items():
            d = s.to_dict(0)
            echo = d.get("echo")
            if echo:
                lines.append(f"{name}: same-turn echo of a stated value (no memory needed): new values "
                             f"{_pct(echo['unseen'], 6).strip()}, seen values {_pct(echo['seen'], 6).strip()}")
                wrong = d["recall"]["by_echoed"].get("false")
                if wrong:
                    lines.append(f"{name}: recall of new values whose statement its answer misquoted: "
                                 f"{_pct(wrong['exact_match'], 6).strip()} of {wrong['count']}")
        seen = self._only_seen()
        which = " — seen values (the dataset has no unseen ones)" if seen else ""
        lines += self._breakdown_table(f"recall EM by distance (turns since stated){which}", "by_distance", seen)
        lines += self._breakdown_table(f"recall EM by turns since the value was last in the text{which}",
                                       "by_mention_distance", seen)
        lines += self._breakdown_table(f"recall EM by facts held{which}", "by_facts_held", seen)
        lines += self._breakdown_table(f"recall EM by kind of value (numbers by digits; words){which}",
                                       "by_value_kind", seen)
        lines += self._memory_table()
        lines += self._per_turn_table()
        return "\n".join(lines)

    def _only_seen(self) -> bool:
        return not any(s.unseen for s in self.systems.values()) and any(s.seen for s in self.systems.values())

    def _breakdown_table(self, title: str, key: str, seen: bool = False) -> list[str]:
        tables = {name: s.recall_summary(0, seen=seen)[key] for name, s in self.systems.items()}
        keys = sorted({k for b in tables.values() for k in b}, key=_num)
        if not keys:
            return []
        counts = {k: max(b.get(k, {}).get("count", 0) for b in tables.values()) for k in keys}
        lines = ["", title, f"{'':16} " + " ".join(f"{k:>6}" for k in keys),
                 f"{'(count)':16} " + " ".join(f"{counts[k]:>6}" for k in keys)]
        for name, b in tables.items():
            lines.append(f"{name:16} " + " ".join(_pct(b.get(k, {}).get("exact_match"), 6) for k in keys))
        return lines

    def _memory_table(self) -> list[str]:
        rows = {name: s.memory.to_dict() for name, s in self.systems.items() if s.memory.states}
        if not rows:
            return []
        lines = ["", "memory health per layer (mean over every STM after an update)",
                 f"{'':16} {'slot cosine':>24} {'effective rank':>24} {'gate openness':>24}"]
        for name, m in rows.items():
            lines.append(f"{name:16} {_floats(m['slot_cosine']):>24} {_floats(m['effective_rank']):>24} "
                         f"{_floats(m['gate_openness']):>24}")
        return lines

    def _per_turn_table(self) -> list[str]:
        width = max((len(s.per_turn) for s in self.systems.values()), default=0)
        if not width:
            return []
        lines = ["", "answer PPL by turn", f"{'':16} " + " ".join(f"{t + 1:>6}" for t in range(width))]
        for name, s in self.systems.items():
            cells = [s.per_turn[t].to_dict()["perplexity"] if t < len(s.per_turn) else None for t in range(width)]
            lines.append(f"{name:16} " + " ".join(_f(c, 6, 2) for c in cells))
        return lines


def _num(key: str):
    return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)


def _f(x: float | None, width: int, digits: int) -> str:
    return f"{'—':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def _floats(xs: Sequence[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs) if xs else "—"


def _pct(x: float | None, width: int) -> str:
    return f"{'—':>{width}}" if x is None else f"{100 * x:{width - 1}.1f}%"

