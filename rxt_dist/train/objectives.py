"""The training objective of each curriculum stage, as small separately testable units.

Shape legend: L layers, N sequences, B conversations, T tokens, S memory slots, D model
dim, V vocabulary.

Every objective returns *terms*: a summed loss, the number of items it sums over, and a
weight. The training loop adds up the item counts of all workers before dividing, so a
global batch gives the same gradient however it is split across workers.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rxt_dist.memory.health import MemoryHealth
from rxt_dist.model.rxt import RxTModel
from rxt_dist.model.stateless import StatelessLM
from rxt_dist.tokens import MASK_ID, NUM_SPECIAL
from rxt_dist.train.batches import ConversationBatch, TokenBatch
from rxt_dist.train.config import (
    BaselineStage,
    JointLMStage,
    MemoryAttentionStage,
    SMATStage,
    StageSection,
)


@dataclass
class Term:
    """One loss term: ``weight · total / (items over all workers)``."""

    total: Tensor
    count: Tensor
    weight: float = 1.0


@dataclass
class StageOutput:
    """Loss terms plus metric sums (value, count) that carry no gradient."""

    terms: dict[str, Term]
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


def combine(out: StageOutput, global_counts: Tensor, world: int) -> Tensor:
    """The loss a worker backpropagates: each term's sum divided by its item count over all
    workers (``global_counts``, in term order), times ``world`` because data-parallel
    engines average gradients over workers."""
    loss = None
    for term, count in zip(out.terms.values(), global_counts):
        part = term.weight * term.total * world / count.clamp(min=1)
        loss = part if loss is None else loss + part
    return loss


def local_counts(out: StageOutput) -> Tensor:
    """Item counts of every term on this worker, in term order (to be summed over workers)."""
    return torch.stack([t.count.detach().float() for t in out.terms.values()])


def _count(x: Tensor | int | float, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=like.device)


def token_loss(model: nn.Module, hidden: Tensor, ids: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Summed next-token cross-entropy over the ``loss_mask`` (N, T) positions of ``hidden``
    (N, T, D) against ``ids`` (N, T) shifted by one. The head runs only on those positions
    (answers are a fraction of the tokens; the vocabulary projection is the costliest matmul).
    Returns (sum, count, correct)."""
    total, count, correct, _ = token_losses(model, hidden, ids, loss_mask)
    return total, count, correct


Sums = tuple[Tensor, Tensor, Tensor]
"""(loss sum, item count, correct count) of a subset of scored tokens."""


def token_losses(model: nn.Module, hidden: Tensor, ids: Tensor, loss_mask: Tensor,
                 *subsets: Tensor | None) -> tuple[Tensor, Tensor, Tensor, list[Sums | None]]:
    """:func:`token_loss` plus, for each mask (N, T) in ``subsets`` (each a subset of
    ``loss_mask``, or None), the same (sum, count, correct) over its positions — e.g. the tokens
    of recalled values. A float mask weighs its positions: (Σ w·loss, Σ w, Σ w·correct)."""
    mask = loss_mask[:, :-1]  # (N, T-1)
    pred = model.lm_logits(hidden[:, :-1][mask])  # (K, V)
    target = ids[:, 1:][mask]  # (K,)
    per_token = F.cross_entropy(pred.float(), target, reduction="none")  # (K,)
    hit = pred.argmax(dim=-1) == target  # (K,)
    count = _count(mask.sum(), hidden)
    parts: list[Sums | None] = []
    for subset in subsets:
        if subset is None:
            parts.append(None)
            continue
        picked = subset[:, :-1][mask]  # (K,) which scored tokens belong to the subset (or their weights)
        if picked.is_floating_point():
            parts.append(((per_token * picked).sum(), picked.sum(), (hit * picked).sum()))
        else:
            parts.append((per_token[picked].sum(), _count(picked.sum(), hidden), hit[picked].sum().float()))
    return per_token.sum(), count, hit.sum().float(), parts


def mask_tokens(ids: Tensor, lengths: Tensor, prob: float, vocab_size: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT-style masking of ordinary tokens: of the chosen ``prob`` share, 80% become
    ``[MASK]``, 10% a random token, 10% stay. Returns (masked ids (N, T), chosen (N, T))."""
    N, T = ids.shape
    real = (torch.arange(T, device=ids.device)[None] < lengths[:, None]) & (ids >= NUM_SPECIAL)
    draw = torch.rand(N, T, generator=generator).to(ids.device)
    chosen = real & (draw < prob)
    how = torch.rand(N, T, generator=generator).to(ids.device)
    random_ids = torch.randint(NUM_SPECIAL, vocab_size, (N, T), generator=generator).to(ids.device)
    masked = torch.where(chosen & (how < 0.8), torch.full_like(ids, MASK_ID), ids)
    masked = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, masked)
    return masked, chosen


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean(dim=-1, keepdim=True).add(1e-12).sqrt()


def _noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise scaled to each vector's RMS."""
    if std == 0:
        return torch.zeros_like(x)
    return torch.randn(x.shape, generator=generator).to(x) * std * _rms(x)


def conversation_stm(model: RxTModel, keys: Sequence[str], seed: int) -> Tensor:
    """Fresh STM (L, B, S, D) per conversation, seeded by its id: the same conversation
    starts from the same memory on whichever worker reads it."""
    stms = []
    for key in keys:
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
        stms.append(model.initial_stm(1, gen))
    return torch.cat(stms, dim=1)


def joint_lm(model: RxTModel, batch: TokenBatch, cfg: JointLMStage, generator: torch.Generator,
             aux_weight: float) -> StageOutput:
    """Stages 1 and 2: encoder MLM on a masked copy; the decoder predicts the text while its
    memory cross-attention reads the encoder's per-layer states, detached, noised, with some
    positions dropped, as a stand-in STM."""
    masked, chosen = mask_tokens(batch.ids, batch.lengths, cfg.mask_prob, model.cfg.vocab_size, generator)
    ed, last = model.encode(masked, batch.lengths)  # (L, N, T, D), (N, T, D)
    mlm_logits = model.mlm_logits(last[chosen])  # (K, V)
    mlm_sum = F.cross_entropy(mlm_logits.float(), batch.ids[chosen], reduction="sum")
    memory = ed.detach()
    memory = memory + _noise(memory, cfg.noise_std, generator)
    N, T = batch.ids.shape
    valid = torch.arange(T, device=memory.device)[None] < batch.lengths[:, None]  # (N, T)
    kept = torch.rand(N, T, generator=generator).to(memory.device) >= cfg.slot_dropout
    kept[:, 0] = True  # every row keeps a readable slot
    hidden, aux = model.hidden(batch.ids, batch.lengths, memory, memory_mask=valid & kept)
    ar_sum, ar_count, correct = token_loss(model, hidden, batch.ids, batch.loss_mask)
    return StageOutput(
        terms={
            "ar": Term(ar_sum, ar_count, cfg.alpha),
            "mlm": Term(mlm_sum, _count(chosen.sum(), ar_sum), cfg.beta),
            "aux": Term(aux, _count(1, aux), aux_weight),
        },
        metrics={"acc": (float(correct), float(ar_count))},
    )


def step_weight(turn: int, cfg: MemoryAttentionStage, generator: torch.Generator) -> float:
    """Weight of the new interaction in turn ``turn``'s pseudo-target, with jitter."""
    if turn == 0:
        base = cfg.first_weight
    else:
        base = max(cfg.later_weight_end, cfg.later_weight_start - (turn - 1) * cfg.weight_decay_per_turn)
    jitter = (torch.rand((), generator=generator).item() * 2 - 1) * cfg.jitter
    return min(1.0, max(0.0, base + jitter))


def _pooled(ed: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each interaction's real tokens: (L, B, T, D) → (L, B, 1, D)."""
    T = ed.shape[2]
    valid = (torch.arange(T, device=ed.device)[None] < lengths[:, None]).to(ed.dtype)  # (B, T)
    summed = (ed * valid[None, :, :, None]).sum(dim=2, keepdim=True)  # (L, B, 1, D)
    return summed / lengths.to(ed.dtype)[None, :, None, None]


def _per_slot(ed: Tensor, lengths: Tensor, slots: int) -> Tensor:
    """Each slot's own position of the interaction: slot i of S ↔ token ⌊i·T_b/S⌋ of each
    row's T_b real tokens. (L, B, T, D) → (L, B, S, D)."""
    L, B, _, D = ed.shape
    index = (torch.arange(slots, device=ed.device)[None] * lengths[:, None]) // slots  # (B, S)
    return ed.gather(2, index[None, :, :, None].expand(L, B, slots, D))


def memory_attention_selfsup(model: RxTModel, conv: ConversationBatch, cfg: MemoryAttentionStage,
                             generator: torch.Generator, seed: int) -> StageOutput:
    """Stage 3: memory attention learns to move the STM towards
    ``w·ED_t + (1 − w)·STM_{t−1}`` (both RMS-normalised) by negative cosine similarity; the
    encoder is frozen and the STM is detached between turns. ED is taken per slot (slot i ↔
    its own token position, ``target='per_slot'``) or pooled over tokens (``'pooled'``)."""
    stm = conversation_stm(model, conv.keys, seed)  # (L, B, S, D)
    total, count = stm.new_zeros(()), stm.new_zeros(())
    health = MemoryHealth()
    for t, full in enumerate(conv.turns):
        rows, turn = full.active_part()  # only conversations that have turn t are computed
        old = stm[:, rows]  # (L, K, S, D)
        with torch.no_grad():
            ed, _ = model.encode(turn.ids, turn.lengths)  # (L, K, T, D)
        previous = old + _noise(old, cfg.noise_std, generator)
        new, gates = model.update_memory_with_gates(previous, ed, turn.lengths)  # (L, K, S, D)
        w = step_weight(t, cfg, generator)
        written = _per_slot(ed, turn.lengths, stm.shape[2]) if cfg.target == "per_slot" else _pooled(ed, turn.lengths)
        target = w * written / _rms(written) + (1 - w) * old / _rms(old)  # (L, K, S, D)
        target = target + _noise(target, cfg.noise_std, generator)
        cos = F.cosine_similarity(new.float(), target.float(), dim=-1)  # (L, K, S)
        active = turn.active[None, :, None].expand_as(cos).float()
        total = total - (cos * active).sum()
        count = count + active.sum()
        health.add_gates(gates[:, turn.active] if gates is not None else None)
        stm = _write_rows(stm, rows, turn.active, old, new.detach())
    health.add_state(stm.detach())
    return StageOutput(terms={"cosine": Term(total, count)},
                       metrics={"cos_sim": (-float(total.detach()), float(count)), **_health_metrics(health)})


def _health_metrics(health: MemoryHealth) -> dict[str, tuple[float, float]]:
    """Memory health as (sum, count) metrics that reduce across workers: per layer, the slot
    cosine and effective rank of the conversations' final STMs and the gates' openness."""
    d = health.to_dict()
    out = {}
    for key, short, n in (("slot_cosine", "cos", health.states), ("effective_rank", "rank", health.states),
                          ("gate_openness", "gate", health.updates)):
        for i, v in enumerate(d[key] or []):
            out[f"mem_{short}_l{i}"] = (v * n, float(n))
    return out


def misquote(ids: Tensor, echo_mask: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """``ids`` (K, T) where each row whose answer repeats a stated value (``echo_mask``, the
    positions predicting that copy's tokens) has, with probability ``prob``, the copy garbled
    the way a model's own echo goes wrong: two neighbouring tokens swapped, or one token
    replaced by a token of another row's copy (or the same row's, when it is alone).
    The query's statement is never touched. Out of place."""
    copy = F.pad(echo_mask[:, :-1], (1, 0))  # (K, T): the copy's own token positions
    rows = copy.any(dim=1).nonzero().squeeze(1).tolist()
    if not rows or prob <= 0:
        return ids
    pool = ids[copy]  # every copied token of the batch
    out = ids.clone()
    draws = torch.rand(len(rows), 3, generator=generator).tolist()
    for row, (pick, how, where) in zip(rows, draws):
        if pick >= prob:
            continue
        pos = copy[row].nonzero().squeeze(1)
        if len(pos) >= 2 and how < 0.5:
            i = int(where * (len(pos) - 1))
            a, b = int(pos[i]), int(pos[i + 1])
            out[row, a], out[row, b] = ids[row, b], ids[row, a]
        else:
            at = int(pos[int(where * len(pos))])
            others = pool[pool != ids[row, at]]
            if len(others):
                out[row, at] = others[int(torch.randint(len(others), (1,), generator=generator))]
    return out


def with_value_end(scored: Tensor, value_mask: Tensor, loss_mask: Tensor) -> Tensor:
    """``scored`` (a value mask, or its weights) plus the position after each value's last
    token — the one predicting what ends the value (" ." after ``424``) — with the weight of
    the token before it. Exact match needs the end as much as the digits."""
    end = F.pad(value_mask[:, :-1], (1, 0)) & ~value_mask & loss_mask  # (K, T)
    if scored.is_floating_point():
        return scored + F.pad(scored[:, :-1], (1, 0)) * end
    return scored | end


def memory_aware(model: RxTModel, conv: ConversationBatch, cfg: SMATStage, seed: int,
                 frozen: set[str], aux_weight: float, generator: torch.Generator | None = None,
                 step: int = 0) -> StageOutput:
    """Stage 4: answer each turn from the STM the earlier turns built, then consolidate the
    turn into it; cross-entropy on answers. Backprop through memory is cut every
    ``bptt_turns`` turns. Consolidation skips the autograd graph while both memory
    components are frozen. With ``echo_noise`` (and a ``generator``) a turn that states a
    value is consolidated, in training, with its answer's copy of it garbled (:func:`misquote`):
    the memory learns to keep what the query said, as it must when serving consolidates the
    model's own answers. ``step``, the optimizer step, starts the value-end term
    (``recall_loss_end_from``) and the echo term (``echo_loss_from``)."""
    stm = conversation_stm(model, conv.keys, seed)  # (L, B, S, D)
    zero = stm.new_zeros(())
    ce, n, correct, aux = zero, zero, zero, zero
    value = [zero, zero, zero]  # recalled-value tokens: loss sum, count, correct
    weighted = [zero, zero, zero]  # what the value loss scores: those tokens, weighted, with their end
    echo = [zero, zero, zero]  # tokens of a stated value the same turn's answer repeats
    health = MemoryHealth()
    memory_frozen = {"encoder", "memory_attention"} <= frozen
    for t, full in enumerate(conv.turns):
        if cfg.bptt_turns and t % cfg.bptt_turns == 0:
            stm = stm.detach()
        rows, turn = full.active_part()  # only conversations that have turn t are computed
        old = stm[:, rows]  # (L, K, S, D)
        hidden, layer_aux = model.hidden(turn.ids, turn.lengths, old)  # (K, T, D)
        scored = turn.value_weight if turn.value_weight is not None else turn.value_mask  # the value loss's tokens
        if cfg.recall_loss_end and step >= cfg.recall_loss_end_from and scored is not None:
            scored = with_value_end(scored, turn.value_mask, turn.loss_mask)
        s, c, k, (v, e, w) = token_losses(model, hidden, turn.ids, turn.loss_mask, turn.value_mask,
                                          turn.echo_mask, scored)
        ce, n, correct, aux = ce + s, n + c, correct + k, aux + layer_aux
        if v is not None:
            value = [a + b for a, b in zip(value, v)]
        if w is not None:
            weighted = [a + b for a, b in zip(weighted, w)]
        if e is not None:
            echo = [a + b for a, b in zip(echo, e)]
        if t == len(conv.turns) - 1:
            break
        written = turn
        if cfg.echo_noise and generator is not None and model.training and turn.echo_mask is not None:
            written = dataclasses.replace(turn, ids=misquote(turn.ids, turn.echo_mask, cfg.echo_noise, generator))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not memory_frozen):
            new, gates = _consolidate(model, old, written, encoder_frozen="encoder" in frozen)
        health.add_gates(gates[:, turn.active].detach() if gates is not None else None)
        stm = _write_rows(stm, rows, turn.active, old, new)
    health.add_state(stm.detach())
    terms = {"ar": Term(ce, n), "aux": Term(aux / len(conv.turns), _count(1, aux), aux_weight)}
    metrics = {"acc": (float(correct), float(n)), **_health_metrics(health)}
    if conv.turns[0].value_mask is not None:
        terms["value"] = Term(weighted[0], weighted[1], cfg.recall_loss_weight)
        metrics["value_acc"] = (float(value[2]), float(value[1]))
    if conv.turns[0].echo_mask is not None:
        terms["echo"] = Term(echo[0], echo[1], cfg.echo_loss_weight if step >= cfg.echo_loss_from else 0.0)
        metrics["echo_acc"] = (float(echo[2]), float(echo[1]))
    return StageOutput(terms=terms, metrics=metrics)


def _write_rows(stm: Tensor, rows: Tensor, active: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """``stm`` (L, B, S, D) with its rows ``rows`` (K,) — ``old`` (L, K, S, D) — replaced by
    ``new`` where ``active`` (K,); out of place, so autograd sees both memories."""
    return stm.index_copy(1, rows, torch.where(active[None, :, None, None], new, old))


def _consolidate(model: RxTModel, stm: Tensor, turn, encoder_frozen: bool) -> tuple[Tensor, Tensor | None]:
    with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder_frozen):
        ed, _ = model.encode(turn.ids, turn.lengths)
    return model.update_memory_with_gates(stm, ed, turn.lengths)


def stateless_lm(model: StatelessLM, batch: TokenBatch, cfg: BaselineStage, aux_weight: float) -> StageOutput:
    """The baseline: whole conversations as one causal sequence, loss on the answers."""
    hidden, aux = model.hidden(batch.ids, batch.lengths)
    s, c, k = token_loss(model, hidden, batch.ids, batch.loss_mask)
    return StageOutput(terms={"ar": Term(s, c), "aux": Term(aux, _count(1, aux), aux_weight)},
                       metrics={"acc": (float(k), float(c))})


class StageObjective(nn.Module):
    """The model plus its stage's objective, as one module so DeepSpeed's engine (and
    ZeRO-3's parameter hooks) wrap the whole forward pass."""

    def __init__(self, model: nn.Module, stage: str, cfg: StageSection, seed: int) -> None:
        super().__init__()
        self.model = model
        self.stage = stage
        self.cfg = cfg
        self.seed = seed
        self.frozen: set[str] = set()
        self.step = 0  # the optimizer step being taken; the trainers set it with ``frozen``
        ffn = getattr(model.cfg, "decoder_ffn", None) or getattr(model.cfg, "ffn", None)
        self.aux_weight = ffn.aux_loss_weight if ffn is not None and ffn.kind == "moe" else 0.0

    def forward(self, batch, generator: torch.Generator) -> StageOutput:
        if self.stage in ("joint_lm", "sft"):
            return joint_lm(self.model, batch, self.cfg, generator, self.aux_weight)
        if self.stage == "memory_attention":
            return memory_attention_selfsup(self.model, batch, self.cfg, generator, self.seed)
        if self.stage == "smat":
            return memory_aware(self.model, batch, self.cfg, self.seed, self.frozen, self.aux_weight, generator,
                                self.step)
        return stateless_lm(self.model, batch, self.cfg, self.aux_weight)
