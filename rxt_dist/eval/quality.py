"""Quality evaluation on held-out conversations: what the memory adds, turn by turn.

Three systems answer the same conversations (the ``test`` split of a dataset by default):

``rxt``
    The RxT model as a user meets it: each turn is answered (greedy) from the STM, then the
    interaction **with the model's own answer** is consolidated into it. Teacher-forced
    scores (PPL, value accuracy) are taken from that same STM.
``rxt_gold``
    The same model with the **gold** answer consolidated after each turn (as in training: it
    measures the memory apart from the compounding of the model's own earlier mistakes).
``stateless_full``
    The stateless baseline reading the whole history (every earlier interaction, gold
    answers) before each turn.
``stateless_none``
    The same baseline reading only the current query: the floor, what a model without any
    memory gets right.

Metrics (definitions in docs/evaluation.md):

* per turn index: answer perplexity and token accuracy, teacher-forced, over the answer
  tokens and the closing ``[EOS]`` (the training targets);
* on recall turns: **exact match** of the greedy answer (:func:`recall_exact_match`), and the
  teacher-forced value accuracy (every gold value token is the argmax at its position),
  each broken down by distance (turns since the fact was stated), facts held, and both.
  ``recall`` counts values never seen in training (what a user's new facts are), ``recall_seen``
  values that occurred in the training split; a closed-vocabulary dataset has only the latter;
* for RxT, memory health (:mod:`rxt_dist.memory.health`): slot cosine and effective rank of
  the STM after every update, and the gate's openness.

Everything is batched over conversations: the turns of a batch advance together, RxT's STM
rows and the baseline's histories side by side.

Shape legend: L layers, B conversations, S memory slots, D model dim, T tokens, V vocabulary.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rxt_dist.eval.report import machine_info, write_json_atomic
from rxt_dist.inference import SamplingParams, collect, generate, pad_batch, respond_stateless
from rxt_dist.data.conversation import FACT, UPDATE
from rxt_dist.memory.health import MemoryHealth
from rxt_dist.model import RxTModel, StatelessLM, load_model_dir
from rxt_dist.model.io import load_tokenizer_json
from rxt_dist.tokens import history_ids, interaction_ids, prompt_ids

log = logging.getLogger(__name__)

QUALITY_SYSTEMS: tuple[str, ...] = ("rxt", "rxt_gold", "stateless_full", "stateless_none")
DESCRIPTIONS = {
    "rxt": "RxT, STM carried through the conversation, consolidating its own answers",
    "rxt_gold": "RxT, STM carried through the conversation, consolidating the gold answers",
    "stateless_full": "stateless baseline, full history (gold answers)",
    "stateless_none": "stateless baseline, current query only (the floor)",
}


@dataclass
class QualityConfig:
    """What the quality evaluation reads and how it generates."""

    split: str = "test"
    """Dataset split of held-out conversations."""
    max_conversations: int | None = None
    """Evaluate only the first N conversations of the split (``None``: all)."""
    batch_size: int = 16
    """Conversations advanced together."""
    max_new_tokens: int = 32
    """Greedy answer limit on recall turns (answers stop at ``[EOS]`` before that)."""
    systems: tuple[str, ...] = QUALITY_SYSTEMS
    """Which of :data:`QUALITY_SYSTEMS` to evaluate."""
    seed: int = 0
    """Seed of each conversation's initial STM (conversation i uses ``seed + i``)."""
    threads: int | None = None
    """``torch.set_num_threads`` during the run (``None``: leave it)."""
    examples: int = 5
    """Recall answers kept verbatim per system in the report (failures first)."""

    def __post_init__(self) -> None:
        self.systems = tuple(self.systems)
        if self.max_conversations is not None and self.max_conversations < 1:
            raise ValueError(f"max_conversations={self.max_conversations}: must be ≥ 1 (or None for all)")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be ≥ 1 (or None to leave torch's setting)")
        if self.examples < 0:
            raise ValueError(f"examples={self.examples}: must be ≥ 0")
        unknown = [s for s in self.systems if s not in QUALITY_SYSTEMS]
        if unknown or not self.systems:
            raise ValueError(f"systems={list(self.systems)}: choose one or more of {list(QUALITY_SYSTEMS)}")


# -- exact match ----------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (``"Rex."`` → ``["rex", "."]``)."""
    return _WORD.findall(text.lower())


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def recall_exact_match(answer: str, gold: str, stale: Iterable[str] = ()) -> bool:
    """Exact-match recall: the gold value's words appear as a contiguous run of whole words
    in ``answer`` and no ``stale`` value (an older value of the same fact) appears.

    Words are compared lower-cased, with punctuation split off (:func:`words`), so
    ``"your pet is called rex ."`` matches gold ``rex`` but not ``rexa``; a multi-word value
    (``"apples , milk and soap"``) must appear whole and in order.
    """
    got = words(answer)
    if not _contains(got, words(gold)):
        return False
    return not any(_contains(got, words(s)) for s in stale if words(s) != words(gold))


# -- tallies --------------------------------------------------------------------------------

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


# -- teacher-forced scoring -----------------------------------------------------------------

def answer_positions(query_len: int, answer_len: int, offset: int = 0) -> range:
    """Logit positions that predict the answer tokens and the closing ``[EOS]`` of the
    interaction ``[BOS][Q] q [A] a [EOS]`` starting at ``offset`` (position p predicts p+1)."""
    first = offset + query_len + 2  # the [A] token
    return range(first, first + answer_len + 1)


def token_scores(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood and correctness (B, T) of the next token at the ``mask`` (B, T)
    logit positions of ``logits`` (B, T, V) against ``ids`` (B, T); 0 elsewhere."""
    mask = mask.to(logits.device).clone()
    mask[:, -1] = False  # the last position has no next token
    targets = torch.roll(ids, shifts=-1, dims=1)[mask]  # (K,): position p predicts token p+1
    picked = logits[mask].float()  # (K, V)
    nll = torch.zeros(ids.shape, dtype=torch.float32, device=logits.device)
    correct = torch.zeros(ids.shape, dtype=torch.bool, device=logits.device)
    nll[mask] = F.cross_entropy(picked, targets, reduction="none")
    correct[mask] = picked.argmax(dim=-1) == targets
    return nll.cpu(), correct.cpu()


@dataclass
class _Scored:
    """One turn's teacher-forced result in a batch row."""

    nll: float
    tokens: int
    correct: int
    value_ok: bool


def _score_rows(
    logits: Tensor, ids: Tensor, spans: Sequence[Sequence[tuple[range, range | None]]]
) -> list[list[_Scored]]:
    """Score the answer spans of each row: ``spans[b]`` lists, per turn in row b, the answer
    positions and (on recall turns) the positions predicting the gold value tokens."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for b, row in enumerate(spans):
        for answer, _ in row:
            mask[b, answer.start:answer.stop] = True
    nll, correct = token_scores(logits, ids, mask)
    out = []
    for b, row in enumerate(spans):
        scored = []
        for answer, value in row:
            sl = slice(answer.start, answer.stop)
            value_ok = bool(correct[b, value.start:value.stop].all()) if value is not None else False
            scored.append(_Scored(float(nll[b, sl].sum()), len(answer), int(correct[b, sl].sum()), value_ok))
        out.append(scored)
    return out


def _value_positions(turn, answer: range) -> range | None:
    """Logit positions predicting the gold value tokens of a recall turn (None otherwise)."""
    rec = turn.recall
    if rec is None or rec.gold_start < 0 or not rec.gold_ids:
        return None
    first = answer.start + rec.gold_start
    return range(first, first + len(rec.gold_ids))


# -- the three systems ----------------------------------------------------------------------

@dataclass
class _Pending:
    """A recall turn waiting for its greedy answer."""

    conv: Any
    turn: int
    value_ok: bool


def _stale_values(conv, turn: int) -> list[str]:
    """Values stated for the recalled fact before ``turn`` that are not the gold value."""
    rec = conv.turns[turn].recall
    return [t.value for t in conv.turns[:turn]
            if t.fact == rec.fact and t.value is not None and t.value != rec.gold]


def _record(p: _Pending, answer_ids: list[int], codec) -> RecallRecord:
    rec = p.conv.turns[p.turn].recall
    text = codec.decode(answer_ids)
    return RecallRecord(
        conversation_id=p.conv.conversation_id, turn=p.turn, distance=rec.distance,
        mention_distance=p.turn - rec.mentioned_turn if rec.mentioned_turn >= 0 else None,
        facts_held=rec.facts_held, updated=rec.updated, seen=getattr(rec, "seen", True), gold=rec.gold,
        answer=text,
        exact_match=recall_exact_match(text, rec.gold, _stale_values(p.conv, p.turn)),
        value_accuracy=p.value_ok,
    )


@torch.no_grad()
def evaluate_rxt_batch(model: RxTModel, convs: Sequence, codec, result: SystemQuality,
                       cfg: QualityConfig, first_index: int, own_answers: bool = True) -> None:
    """Play a batch of conversations through RxT turn by turn, one STM row each; after each
    turn consolidate the model's own greedy answer (``own_answers``) or the gold one."""
    device = model.embed.weight.device
    stm = torch.cat([model.initial_stm(1, torch.Generator().manual_seed(cfg.seed + first_index + i))
                     for i in range(len(convs))], dim=1).to(device)  # (L, B, S, D)
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens)
    # whether a stated value was seen in training is known from the recalls that ask for it
    seen_values = {t.recall.gold: getattr(t.recall, "seen", True) for c in convs for _, t in c.recall_turns}
    for t in range(max(len(c.turns) for c in convs)):
        rows = [i for i, c in enumerate(convs) if t < len(c.turns)]
        turns = [convs[i].turns[t] for i in rows]
        sub = stm[:, rows]  # (L, B', S, D)
        ids, lengths = pad_batch([interaction_ids(x.query_ids, x.answer_ids) for x in turns], device)
        logits, _ = model(ids, lengths, sub)  # (B', T, V)
        spans = []
        for x in turns:
            answer = answer_positions(len(x.query_ids), len(x.answer_ids))
            spans.append([(answer, _value_positions(x, answer))])
        pending: list[tuple[int, _Pending]] = []  # (row in this turn's batch, recall turn)
        for r, (i, x, (scored,)) in enumerate(zip(rows, turns, _score_rows(logits, ids, spans))):
            result.tally(t).add(scored.nll, scored.tokens, scored.correct)
            if x.recall is not None:
                pending.append((r, _Pending(convs[i], t, scored.value_ok)))
        answered = list(range(len(turns))) if own_answers else [r for r, _ in pending]
        answers = dict(zip(answered, generate(model, [turns[r].query_ids for r in answered],
                                              sub[:, answered], sampling))) if answered else {}
        result.recalls.extend(_record(p, answers[r], codec) for r, p in pending)
        if own_answers:
            result.echoes.extend(_echo(x, answers[r], codec, seen_values) for r, x in enumerate(turns)
                                 if x.kind in (FACT, UPDATE) and x.value in seen_values)
        consolidated = [answers[r] if own_answers else x.answer_ids for r, x in enumerate(turns)]
        stm[:, rows] = _consolidate_tracked(model, sub, [x.query_ids for x in turns], consolidated, result)


def _echo(turn, answer_ids: list[int], codec, seen_values: dict[str, bool]) -> tuple[bool, bool]:
    """(the greedy answer to a fact/update turn repeats its value, that value was seen in training)."""
    return recall_exact_match(codec.decode(answer_ids), turn.value), seen_values[turn.value]


def _consolidate_tracked(model: RxTModel, stm: Tensor, queries: list[list[int]], answers: list[list[int]],
                         result: SystemQuality) -> Tensor:
    """:func:`rxt_dist.inference.consolidate`, counting the new STM's slot statistics and the
    gate's openness into ``result.memory``."""
    ids, lengths = pad_batch([interaction_ids(q, a) for q, a in zip(queries, answers)], stm.device)
    ed, _ = model.encode(ids, lengths)
    new, gates = model.update_memory_with_gates(stm, ed, lengths)
    result.memory.add_state(new)
    result.memory.add_gates(gates)
    return new


def _conversation_ids(conv) -> tuple[list[int], list[tuple[range, range | None]]]:
    """The whole conversation as one token sequence (gold answers) and, per turn, its answer
    positions and gold-value positions."""
    seq: list[int] = []
    spans = []
    for x in conv.turns:
        answer = answer_positions(len(x.query_ids), len(x.answer_ids), offset=len(seq))
        spans.append((answer, _value_positions(x, answer)))
        seq.extend(interaction_ids(x.query_ids, x.answer_ids))
    return seq, spans


@torch.no_grad()
def evaluate_full_history_batch(model: StatelessLM, convs: Sequence, codec, result: SystemQuality,
                                cfg: QualityConfig) -> None:
    """The baseline with the whole history. One causal pass over a conversation scores every
    turn given all earlier ones; recall turns are then answered from their history."""
    device = model.embed.weight.device
    seqs, spans = zip(*(_conversation_ids(c) for c in convs))
    ids, lengths = pad_batch(seqs, device)
    logits, _ = model(ids, lengths)  # (B, T, V)
    pending, histories = [], []
    for conv, scored_turns in zip(convs, _score_rows(logits, ids, spans)):
        for t, scored in enumerate(scored_turns):
            result.tally(t).add(scored.nll, scored.tokens, scored.correct)
            if conv.turns[t].recall is not None:
                pending.append(_Pending(conv, t, scored.value_ok))
                earlier = [(x.query_ids, x.answer_ids) for x in conv.turns[:t]]
                histories.append(history_ids(earlier, conv.turns[t].query_ids))
    _answer_stateless(model, pending, histories, codec, result, cfg)


@torch.no_grad()
def evaluate_no_history_batch(model: StatelessLM, convs: Sequence, codec, result: SystemQuality,
                              cfg: QualityConfig) -> None:
    """The baseline given each turn alone: the floor."""
    device = model.embed.weight.device
    turns = [(c, t, x) for c in convs for t, x in enumerate(c.turns)]
    ids, lengths = pad_batch([interaction_ids(x.query_ids, x.answer_ids) for _, _, x in turns], device)
    logits, _ = model(ids, lengths)  # (B·turns, T, V)
    spans = []
    for _, _, x in turns:
        answer = answer_positions(len(x.query_ids), len(x.answer_ids))
        spans.append([(answer, _value_positions(x, answer))])
    pending, prompts = [], []
    for (conv, t, x), (scored,) in zip(turns, _score_rows(logits, ids, spans)):
        result.tally(t).add(scored.nll, scored.tokens, scored.correct)
        if x.recall is not None:
            pending.append(_Pending(conv, t, scored.value_ok))
            prompts.append(prompt_ids(x.query_ids))
    _answer_stateless(model, pending, prompts, codec, result, cfg)


def _answer_stateless(model: StatelessLM, pending: list[_Pending], prompts: list[list[int]], codec,
                      result: SystemQuality, cfg: QualityConfig) -> None:
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens)
    for start in range(0, len(pending), cfg.batch_size):
        chunk = prompts[start:start + cfg.batch_size]
        answers = collect(respond_stateless(model, chunk, sampling), len(chunk))
        result.recalls.extend(_record(p, a, codec) for p, a in zip(pending[start:], answers))


# -- the report -----------------------------------------------------------------------------

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
                 f"{'system':16} {'PPL':>8} {'tok acc':>8} {'recall EM':>10} {'seen EM':>8} {'value acc':>10}"
                 "  description"]
        for name, s in self.systems.items():
            o, r, seen = s.overall.to_dict(), s.recall_summary(0), s.recall_summary(0, seen=True)
            lines.append(f"{name:16} {_f(o['perplexity'], 8, 3)} {_pct(o['accuracy'], 8)} "
                         f"{_pct(r['exact_match'], 10)} {_pct(seen['exact_match'], 8)} "
                         f"{_pct(r['value_accuracy'], 10)}  {s.description}")
        lines.append("(recall EM: values never seen in training; seen EM: values that were)")
        for name, s in self.systems.items():
            echo = s.to_dict(0).get("echo")
            if echo:
                lines.append(f"{name}: same-turn echo of a stated value (no memory needed): new values "
                             f"{_pct(echo['unseen'], 6).strip()}, seen values {_pct(echo['seen'], 6).strip()}")
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
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs) if xs else "—"  # noqa: E731
        for name, m in rows.items():
            lines.append(f"{name:16} {fmt(m['slot_cosine']):>24} {fmt(m['effective_rank']):>24} "
                         f"{fmt(m['gate_openness']):>24}")
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


EXACT_MATCH_DEFINITION = (
    "greedy answer (stopped at [EOS] or max_new_tokens), decoded with the dataset tokenizer, "
    "split into lower-cased words and punctuation marks; exact match = the gold value's words "
    "appear as a contiguous run and no older value of the same fact (stated earlier in the "
    "conversation, then updated) appears"
)


def _num(key: str):
    return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)


def _f(x: float | None, width: int, digits: int) -> str:
    return f"{'—':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def _pct(x: float | None, width: int) -> str:
    return f"{'—':>{width}}" if x is None else f"{100 * x:{width - 1}.1f}%"


# -- entry points ---------------------------------------------------------------------------

def load_conversations(data_url: str, split: str, max_conversations: int | None) -> list:
    """The first ``max_conversations`` conversations of ``split`` (all when None)."""
    from rxt_dist.data import iter_conversations

    convs = []
    for conv in iter_conversations(data_url, split):
        if max_conversations is not None and len(convs) >= max_conversations:
            break
        convs.append(conv)
    if not convs:
        raise ValueError(f"{data_url}: split {split!r} holds no conversations")
    return convs


def _load_model(url: str, kind: type, role: str, data_vocab: int, data_tokenizer) -> RxTModel | StatelessLM:
    model = load_model_dir(url).eval()
    if not isinstance(model, kind):
        raise ValueError(f"{role}={url!r}: holds a {model.cfg.model_type} model; expected "
                         f"{'an rxt' if kind is RxTModel else 'a stateless'} model")
    if model.cfg.vocab_size < data_vocab:
        raise ValueError(f"{role}={url!r}: vocab_size={model.cfg.vocab_size} in config.json is smaller "
                         f"than the dataset's vocabulary of {data_vocab} tokens")
    text = load_tokenizer_json(url)
    if text is not None:
        from tokenizers import Tokenizer

        if Tokenizer.from_str(text).get_vocab() != data_tokenizer.get_vocab():
            raise ValueError(f"{url.rstrip('/')}/tokenizer.json differs from the dataset's tokenizer: "
                             "the model was trained on other token ids")
    return model


def evaluate_conversations(
    conversations: Sequence,
    codec,
    rxt: RxTModel | None = None,
    baseline: StatelessLM | None = None,
    cfg: QualityConfig | None = None,
    progress: bool = False,
) -> dict[str, SystemQuality]:
    """Evaluate in-memory models on ``conversations`` (``codec`` decodes answers to text:
    :class:`rxt_dist.data.TextCodec`). Systems whose model is None are skipped."""
    from tqdm.auto import tqdm

    cfg = cfg or QualityConfig()
    runners = {
        "rxt": (rxt, lambda b, s, i: evaluate_rxt_batch(rxt, b, codec, s, cfg, i)),
        "rxt_gold": (rxt, lambda b, s, i: evaluate_rxt_batch(rxt, b, codec, s, cfg, i, own_answers=False)),
        "stateless_full": (baseline, lambda b, s, i: evaluate_full_history_batch(baseline, b, codec, s, cfg)),
        "stateless_none": (baseline, lambda b, s, i: evaluate_no_history_batch(baseline, b, codec, s, cfg)),
    }
    chosen = [n for n in cfg.systems if runners[n][0] is not None]
    results = {n: SystemQuality(n, DESCRIPTIONS[n]) for n in chosen}
    with tqdm(total=len(chosen) * len(conversations), desc="quality", unit="conv", disable=not progress) as bar:
        for name in chosen:
            bar.set_postfix_str(name)
            for start in range(0, len(conversations), cfg.batch_size):
                batch = conversations[start:start + cfg.batch_size]
                runners[name][1](batch, results[name], start)
                bar.update(len(batch))
    return results


def evaluate_models(
    data_url: str,
    rxt_dir: str | None,
    baseline_dir: str | None,
    cfg: QualityConfig | None = None,
    progress: bool = False,
    command: str | None = None,
) -> QualityReport:
    """Evaluate the RxT model directory and/or the stateless baseline directory on the
    held-out split of the dataset at ``data_url``; see the module docstring."""
    from rxt_dist.data import TextCodec, load_tokenizer, read_manifest

    cfg = cfg or QualityConfig()
    if rxt_dir is None and baseline_dir is None:
        raise ValueError("rxt_dir=None and baseline_dir=None: give at least one model directory")
    manifest = read_manifest(data_url)
    tokenizer = load_tokenizer(data_url)
    rxt = _load_model(rxt_dir, RxTModel, "rxt_dir", manifest.vocab_size, tokenizer) if rxt_dir else None
    baseline = (_load_model(baseline_dir, StatelessLM, "baseline_dir", manifest.vocab_size, tokenizer)
                if baseline_dir else None)
    convs = load_conversations(data_url, cfg.split, cfg.max_conversations)
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        systems = evaluate_conversations(convs, TextCodec(tokenizer), rxt, baseline, cfg, progress)
    finally:
        torch.set_num_threads(previous_threads)
    report = QualityReport(
        data_url=data_url, split=cfg.split, conversations=len(convs),
        turns=sum(len(c.turns) for c in convs),
        recall_turns=sum(len(c.recall_turns) for c in convs),
        models={"rxt": rxt_dir, "baseline": baseline_dir}, config=cfg, systems=systems,
        elapsed_s=time.perf_counter() - start, machine=machine_info(), command=command,
    )
    for name, s in systems.items():
        log.info("%s: recall exact match %s over %d recall turns", name, s.recall_exact_match, len(s.recalls))
    return report
