"""Turn rows read from the shards into padded tensors for each stage's objective.

Shape legend: N sequences, B conversations, T tokens.

A *loss mask* (N, T) marks the positions whose next token is a training target:
``loss_mask[n, j]`` means the logit at position j is scored against ``ids[n, j + 1]``.
Rows arrive as Ray Data numpy batches (object arrays of per-turn id arrays) or as plain
Python lists; both work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rxt_dist.data.schema import PER_TURN_COLUMNS
from rxt_dist.inference.engine import pad_batch
from rxt_dist.tokens import BOS_ID, EOS_ID, interaction_ids

if TYPE_CHECKING:
    from rxt_dist.train.config import TrainConfig


@dataclass
class TokenBatch:
    """Independent sequences: text (stage 1), interactions (stage 2), histories (baseline)."""

    ids: Tensor
    """(N, T) right-padded token ids."""
    lengths: Tensor
    """(N,) real tokens per row."""
    loss_mask: Tensor
    """(N, T) bool: the next token after this position is a target."""

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(self.ids.to(device), self.lengths.to(device), self.loss_mask.to(device))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass
class TurnBatch:
    """Turn t of B conversations, as full interactions ``[BOS][Q] q [A] a [EOS]``."""

    ids: Tensor
    """(B, T) right-padded interaction ids (a conversation without turn t gets a short
    placeholder interaction, inactive)."""
    lengths: Tensor
    """(B,) real tokens per row."""
    loss_mask: Tensor
    """(B, T) bool: answer targets (zero on inactive rows)."""
    active: Tensor
    """(B,) bool: the conversation has this turn."""
    value_mask: Tensor | None = None
    """(B, T) bool: the positions whose next token is a recalled value's token (a subset of
    ``loss_mask``; None when the rows carry no recall metadata)."""
    echo_mask: Tensor | None = None
    """(B, T) bool: the positions whose next token is the token of a value the same turn's query
    states (fact and update turns: the answer repeats it); None without value metadata."""
    value_weight: Tensor | None = None
    """(B, T) float: each ``value_mask`` position's weight in the value loss (0 elsewhere); None
    when every recalled value weighs the same (``stages.smat.recall_weight_per_fact``)."""

    def to(self, device: torch.device) -> "TurnBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TurnBatch(self.ids.to(device), self.lengths.to(device), self.loss_mask.to(device),
                         self.active.to(device), move(self.value_mask), move(self.echo_mask),
                         move(self.value_weight))

    def active_part(self) -> tuple[Tensor, "TurnBatch"]:
        """The rows (K,) worth computing and this turn cut to them, padding columns trimmed:
        the active rows, or row 0 alone when none is active (a turn added by ``pad_turns``
        still runs one forward pass, scored nowhere)."""
        rows = self.active.nonzero().squeeze(1)  # (K,)
        if rows.numel() == 0:
            rows = rows.new_zeros(1)
        lengths = self.lengths[rows]
        width = int(lengths.max())
        cut = lambda t: None if t is None else t[rows, :width]  # noqa: E731
        part = TurnBatch(self.ids[rows, :width], lengths, self.loss_mask[rows, :width], self.active[rows],
                         cut(self.value_mask), cut(self.echo_mask), cut(self.value_weight))
        return rows, part


@dataclass
class ConversationBatch:
    """B conversations turn by turn (stages 3 and 4)."""

    keys: list[str]
    """Conversation ids; they seed each conversation's initial STM."""
    turns: list[TurnBatch]

    def to(self, device: torch.device) -> "ConversationBatch":
        return ConversationBatch(self.keys, [t.to(device) for t in self.turns])

    @property
    def num_tokens(self) -> int:
        return sum(int(t.lengths[t.active].sum()) for t in self.turns)


def _turns(row_queries, row_answers, max_turns: int) -> list[tuple[list[int], list[int]]]:
    return [(list(map(int, q)), list(map(int, a))) for q, a in zip(row_queries, row_answers)][:max_turns]


def _conversations(rows: Mapping[str, Sequence], max_turns: int) -> list[list[tuple[list[int], list[int]]]]:
    return [_turns(q, a, max_turns) for q, a in zip(rows["query_ids"], rows["answer_ids"])]


def _interaction(q: list[int], a: list[int], max_tokens: int) -> tuple[list[int], int]:
    """Interaction ids cut to ``max_tokens`` and the index of its first answer token."""
    ids = interaction_ids(q, a)[:max_tokens]
    return ids, min(len(q) + 3, len(ids))


def _answer_mask(length: int, answer_start: int, width: int, include_query: bool = False) -> Tensor:
    """Targets are the answer tokens and the end token: positions answer_start-1 … length-2
    (from the ``[Q]`` token on when the query counts too)."""
    mask = torch.zeros(width, dtype=torch.bool)
    first = 1 if include_query else answer_start - 1
    mask[first: length - 1] = True
    return mask


def text_batch(rows: Mapping[str, Sequence], max_tokens: int) -> TokenBatch:
    """Stage 1: ``[BOS] text [EOS]`` per row, every next token a target."""
    seqs = [[BOS_ID, *map(int, ids[: max_tokens - 2]), EOS_ID] for ids in rows["ids"]]
    ids, lengths = pad_batch(seqs)
    mask = torch.arange(ids.shape[1])[None] < (lengths - 1)[:, None]  # (N, T)
    return TokenBatch(ids, lengths, mask)


def interaction_batch(
    rows: Mapping[str, Sequence], max_turns: int, max_tokens: int, loss_on_query: bool = False
) -> TokenBatch:
    """Stage 2: every turn of every conversation as its own interaction."""
    seqs, starts = [], []
    for conv in _conversations(rows, max_turns):
        for q, a in conv:
            ids, start = _interaction(q, a, max_tokens)
            seqs.append(ids)
            starts.append(start)
    ids, lengths = pad_batch(seqs)
    mask = torch.stack([_answer_mask(int(n), s, ids.shape[1], loss_on_query) for n, s in zip(lengths, starts)])
    return TokenBatch(ids, lengths, mask)


_PLACEHOLDER = interaction_ids([], [])

VALUE_COLUMNS = ("recall_gold_start", "recall_gold_len")
"""Where each recall turn's gold value sits in its answer (see docs/data.md)."""
FACTS_COLUMNS = ("recall_facts_held",)
"""How many facts each recall turn's conversation holds (see docs/data.md)."""
ECHO_COLUMNS = ("value_start", "value_len")
"""Where each turn's stated value sits in its answer (see docs/data.md)."""


def smat_metadata_columns(cfg: TrainConfig, present: set[str]) -> list[str]:
    """The recall-metadata columns stage 4 reads from data holding ``present``: those its
    options need (an error naming the option when one is missing), and any others present."""
    smat, columns = cfg.stages.smat, []
    for option, value, needed in (("recall_pair_steps", smat.recall_pair_steps, RECALL_PAIR_COLUMNS),
                                  ("recall_loss_weight", smat.recall_loss_weight, VALUE_COLUMNS),
                                  ("recall_weight_per_fact", smat.recall_weight_per_fact, FACTS_COLUMNS),
                                  ("echo_loss_weight", smat.echo_loss_weight, VALUE_COLUMNS + ECHO_COLUMNS),
                                  ("echo_noise", smat.echo_noise, VALUE_COLUMNS + ECHO_COLUMNS)):
        missing = [c for c in needed if c not in present]
        if value and missing:
            raise ValueError(f"{cfg.source}: stages.smat.{option}={value} needs the recall metadata of "
                             f"synthetic data, which {cfg.data.url} lacks (no column {missing[0]!r}); "
                             f"set stages.smat.{option}=0")
        if not missing:
            columns += [c for c in needed if c not in columns]
    return columns


def _span_mask(start: int, size: int, length: int, answer_start: int, width: int) -> Tensor:
    """Positions (width,) predicting ``size`` answer tokens from answer offset ``start`` (none
    when ``start < 0``)."""
    mask = torch.zeros(width, dtype=torch.bool)
    if start >= 0:
        first = answer_start - 1 + start  # the position before the span's first token
        mask[first: min(first + size, length - 1)] = True
    return mask


def _value_mask(rows: Mapping[str, Sequence], conv: int, turn: int, length: int, answer_start: int,
                width: int) -> Tensor:
    """Positions predicting the gold value tokens of a recall turn (none elsewhere)."""
    return _span_mask(int(rows["recall_gold_start"][conv][turn]), int(rows["recall_gold_len"][conv][turn]),
                      length, answer_start, width)


def _echo_mask(rows: Mapping[str, Sequence], conv: int, turn: int, length: int, answer_start: int,
               width: int) -> Tensor:
    """Positions predicting the tokens of the value a non-recall turn states and its answer repeats."""
    if int(rows["recall_gold_start"][conv][turn]) >= 0:
        return torch.zeros(width, dtype=torch.bool)
    return _span_mask(int(rows["value_start"][conv][turn]), int(rows["value_len"][conv][turn]),
                      length, answer_start, width)


def conversation_batch(rows: Mapping[str, Sequence], max_turns: int, max_tokens: int,
                       pad_turns: bool = False, weight_per_fact: float = 0.0) -> ConversationBatch:
    """Stages 3 and 4: conversations aligned turn by turn. With ``pad_turns`` the batch always
    has ``max_turns`` turns (all-inactive ones at the end), so every worker runs the same number
    of forward passes — ZeRO-3 gathers parameters collectively in each one. When the rows hold
    :data:`VALUE_COLUMNS` (and :data:`ECHO_COLUMNS`), each turn also marks its recalled value's
    positions (and those of a stated value its answer repeats); with ``weight_per_fact`` (and
    :data:`FACTS_COLUMNS`) a recall turn holding f facts weighs 1 + weight_per_fact × (f − 1)."""
    convs = _conversations(rows, max_turns)
    with_values = all(c in rows for c in VALUE_COLUMNS)
    with_echoes = with_values and all(c in rows for c in ECHO_COLUMNS)
    if weight_per_fact and not (with_values and all(c in rows for c in FACTS_COLUMNS)):
        raise ValueError(f"weight_per_fact={weight_per_fact}: the rows lack {VALUE_COLUMNS + FACTS_COLUMNS}")
    turns = []
    for t in range(max_turns if pad_turns else max(len(c) for c in convs)):
        seqs, starts, active = [], [], []
        for conv in convs:
            if t < len(conv):
                ids, start = _interaction(*conv[t], max_tokens)
                seqs.append(ids)
                starts.append(start)
                active.append(True)
            else:
                seqs.append(list(_PLACEHOLDER))
                starts.append(len(_PLACEHOLDER))
                active.append(False)
        ids, lengths = pad_batch(seqs)
        width = ids.shape[1]
        off = torch.zeros(width, dtype=torch.bool)
        mask = torch.stack([_answer_mask(int(n), s, width) if on else off
                            for n, s, on in zip(lengths, starts, active)])

        def span(make) -> Tensor:  # (B, width): ``make``'s positions in every active row
            return torch.stack([make(rows, i, t, int(n), s, width) if on else off
                                for i, (n, s, on) in enumerate(zip(lengths, starts, active))]) & mask

        values = span(_value_mask) if with_values else None
        weights = None
        if weight_per_fact:
            held = torch.tensor([max(1, int(rows["recall_facts_held"][i][t])) if on else 1
                                 for i, on in enumerate(active)], dtype=torch.float32)
            weights = values.float() * (1 + weight_per_fact * (held[:, None] - 1))
        turns.append(TurnBatch(ids, lengths, mask, torch.tensor(active), values,
                               span(_echo_mask) if with_echoes else None, weights))
    return ConversationBatch([str(k) for k in rows["conversation_id"]], turns)


def first_turns(rows: Mapping[str, Sequence], turns: int) -> dict[str, list]:
    """Every conversation cut to its first ``turns`` turns, per-turn columns included (stage
    4's curriculum over the number of turns: fewer facts held, shorter distances)."""
    return {name: [list(v)[:turns] for v in column] if _per_turn(name) else list(column)
            for name, column in rows.items()}


RECALL_PAIR_COLUMNS = ("recall_stated_turn", "recall_updated", "recall_mentioned_turn")
"""The recall metadata :func:`recall_pairs` reads (see docs/data.md)."""


def recall_pairs(rows: Mapping[str, Sequence]) -> dict[str, list]:
    """Stage 4's warm-up (``recall_pair_steps``): each conversation cut to two turns, the one
    that states a fact and the first turn that recalls it, so the memory carries one fact over
    one update. Only a recall whose value was not updated and not repeated in between counts; a
    conversation without one keeps its first two turns. Reads :data:`RECALL_PAIR_COLUMNS`."""
    kept = []
    for i, queries in enumerate(rows["query_ids"]):
        keep = list(range(min(2, len(queries))))
        stated_turns = rows["recall_stated_turn"][i]
        for t, stated in enumerate(stated_turns):
            if (stated >= 0 and not rows["recall_updated"][i][t]
                    and rows["recall_mentioned_turn"][i][t] == stated):
                keep = [int(stated), t]
                break
        kept.append(keep)
    return {name: [[list(v)[t] for t in keep] for v, keep in zip(column, kept)] if _per_turn(name) else list(column)
            for name, column in rows.items()}


def _per_turn(column: str) -> bool:
    return column in PER_TURN_COLUMNS


def history_batch(rows: Mapping[str, Sequence], max_turns: int, max_tokens: int,
                  max_interaction_tokens: int) -> TokenBatch:
    """Baseline: each conversation as one sequence of interactions, answers as targets.
    Turns that do not fit in ``max_tokens`` are dropped from the end."""
    seqs, masks = [], []
    for conv in _conversations(rows, max_turns):
        seq: list[int] = []
        targets: list[tuple[int, int]] = []
        for q, a in conv:
            ids, start = _interaction(q, a, max_interaction_tokens)
            if seq and len(seq) + len(ids) > max_tokens:
                break
            targets.append((len(seq) + start - 1, len(seq) + len(ids) - 1))
            seq.extend(ids)
        seqs.append(seq[:max_tokens])
        masks.append(targets)
    ids, lengths = pad_batch(seqs)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, targets in enumerate(masks):
        for first, end in targets:
            mask[row, first: min(end, int(lengths[row]) - 1)] = True
    return TokenBatch(ids, lengths, mask)
