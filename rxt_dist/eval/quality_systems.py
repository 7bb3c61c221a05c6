"""The systems of the quality evaluation, each advancing a batch of conversations turn by turn:
RxT carrying its STM (consolidating its own answers or the gold ones), and the stateless
baseline reading the whole history or the current query alone. Each scores every turn
teacher-forced, answers the recall turns greedily and records the outcome into a
:class:`SystemQuality`.

Shape legend: L layers, B conversations, S memory slots, D model dim, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rxt_dist.data.conversation import FACT, UPDATE
from rxt_dist.eval.quality_scoring import (
    _score_rows,
    _stale_values,
    _value_positions,
    answer_positions,
    recall_exact_match,
)
from rxt_dist.eval.quality_stats import RecallRecord, SystemQuality
from rxt_dist.inference import (
    SamplingParams,
    collect,
    generate,
    pad_batch,
    respond_stateless,
)
from rxt_dist.model import RxTModel, StatelessLM
from rxt_dist.tokens import history_ids, interaction_ids, prompt_ids

if TYPE_CHECKING:
    from rxt_dist.eval.quality import QualityConfig


@dataclass
class _Pending:
    """A recall turn waiting for its greedy answer."""

    conv: Any
    turn: int
    value_ok: bool


def _record(p: _Pending, answer_ids: list[int], codec, echoed: dict[tuple[str, int], bool] | None = None) -> RecallRecord:
    rec = p.conv.turns[p.turn].recall
    text = codec.decode(answer_ids)
    return RecallRecord(
        conversation_id=p.conv.conversation_id, turn=p.turn, distance=rec.distance,
        mention_distance=p.turn - rec.mentioned_turn if rec.mentioned_turn >= 0 else None,
        facts_held=rec.facts_held, updated=rec.updated, seen=getattr(rec, "seen", True), gold=rec.gold,
        answer=text,
        exact_match=recall_exact_match(text, rec.gold, _stale_values(p.conv, p.turn)),
        value_accuracy=p.value_ok,
        echoed=echoed.get((p.conv.conversation_id, p.turn - rec.distance)) if echoed is not None else None,
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
    echoed: dict[tuple[str, int], bool] = {}  # (conversation, fact/update turn) → its answer repeated the value
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
        result.recalls.extend(_record(p, answers[r], codec, echoed) for r, p in pending)
        if own_answers:
            for r, (i, x) in enumerate(zip(rows, turns)):
                if x.kind in (FACT, UPDATE) and x.value in seen_values:
                    hit = _echo(x, answers[r], codec, seen_values)
                    result.echoes.append(hit)
                    echoed[(convs[i].conversation_id, t)] = hit[0]
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

