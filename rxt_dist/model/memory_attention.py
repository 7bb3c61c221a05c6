"""Memory Attention: writes the encoded interaction into the Short-Term Memory.

Shape legend: L layers, B batch, S memory slots, T interaction tokens, D model dim.

Layer i builds a query state from STM layer i (the variant decides how), lets it attend
to the encoded data ED layer i (RoPE on the keys only: the interaction is a sequence, the
memory is a set), and a residual gate mixes the result into STM layer i.

Two things can keep the slots of a layer apart (both off by default, the paper's plain
memory attention): learned slot identities added to the queries (``slot_ids``), and a
competitive write in which each token's attention is a softmax over the slots (``write``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rxt_dist.model.config import GateConfig, RxTConfig
from rxt_dist.model.layers import Attention, key_mask


class ResidualGate(nn.Module):
    """``STM_t = (1 − G) ⊙ STM_{t−1} + G ⊙ Update`` with G from the configured kind.

    The static kind holds one logit per slot, so its parameter is slot-indexed (S, 1); so are
    the ``slot_mean`` kind's weight (S, 1) and the optional per-slot bias (S, 1) added to any
    kind's logit.
    """

    def __init__(self, cfg: GateConfig, num_slots: int, dim: int) -> None:
        super().__init__()
        self.kind, self.activation = cfg.kind, cfg.activation
        if cfg.per_slot_bias:
            self.slot_bias = nn.Parameter(torch.zeros(num_slots, 1))  # (S, 1)
        if cfg.kind == "static":
            self.logit = nn.Parameter(torch.full((num_slots, 1), cfg.init_bias))  # (S, 1)
        elif cfg.kind == "slot_mean":
            self.slot_weight = nn.Parameter(torch.full((num_slots, 1), cfg.init_bias))  # (S, 1)
        elif cfg.kind == "elementwise":
            self.weight = nn.Parameter(torch.zeros(dim))  # (D,)
            self.bias = nn.Parameter(torch.full((dim,), cfg.init_bias))  # (D,)
        elif cfg.kind == "linear":
            self.proj = nn.Linear(dim, dim)

    def gate(self, old: Tensor, update: Tensor) -> Tensor:
        """The gate G (broadcastable to (B, S, D)) for ``old``/``update`` (B, S, D)."""
        if self.kind == "static":
            logit = self.logit  # (S, 1)
        elif self.kind == "elementwise":
            logit = self.weight * (old + update) + self.bias  # (B, S, D)
        elif self.kind == "slot_mean":
            logit = self.slot_weight * (old + update).mean(dim=-1, keepdim=True)  # (B, S, 1)
        else:
            logit = self.proj(old + update)  # (B, S, D)
        if hasattr(self, "slot_bias"):
            logit = logit + self.slot_bias  # (B, S, D) or (S, 1)
        return torch.sigmoid(logit) if self.activation == "sigmoid" else torch.tanh(logit)

    def forward(self, old: Tensor, update: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The new state (B, S, D) and the gate's mean openness per row (B,) (None for the
        plain residual, which has no gate). ``scale`` (B, S, 1) in [0, 1] multiplies the gate:
        a slot scaled to 0 keeps its content exactly."""
        if self.kind == "none":
            return old + (update if scale is None else scale * update), None
        g = self.gate(old, update)
        if scale is not None:
            g = g * scale
        openness = g.expand_as(old).mean(dim=(1, 2))  # (B,)
        if self.activation == "tanh":
            return (1 - g) * old + (1 + g) * update, openness
        return (1 - g) * old + g * update, openness


def competitive_attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Slot-Attention-style write: each token's weights are a softmax over the slots (the
    slots compete for it), then each slot takes the mean of the values weighted by what it
    won. q (B, N, S, H), k/v (B, Nkv, T, H), ``key_valid`` (B, 1, 1, T) → the update (B, S, D)
    and how much of the interaction each slot won (B, S, 1): its summed share of the tokens,
    averaged over heads, at most 1."""
    if attn.n_q != attn.n_kv:
        k = k.repeat_interleave(attn.n_q // attn.n_kv, dim=1)  # (B, N, T, H)
        v = v.repeat_interleave(attn.n_q // attn.n_kv, dim=1)
    logits = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5  # (B, N, S, T)
    share = logits.float().softmax(dim=-2).to(q.dtype) + 1e-8  # (B, N, S, T), softmax over slots
    share = share * key_valid  # padding tokens are nobody's
    total = share.sum(dim=-1, keepdim=True)  # (B, N, S, 1)
    weights = share / total  # (B, N, S, T), a mean over tokens
    out = weights @ v  # (B, N, S, H)
    B, _, S, _ = out.shape
    won = total.mean(dim=1).clamp(max=1.0)  # (B, S, 1)
    return attn.o_proj(out.transpose(1, 2).reshape(B, S, attn.n_q * attn.head_dim)), won  # (B, S, D)


def sinusoidal_code(positions: Tensor, dim: int) -> Tensor:
    """The fixed sine/cosine position code (B, T, D) of ``positions`` (B, T)."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
                      * (-torch.log(torch.tensor(10000.0)) / dim))  # (D/2,)
    angles = positions.float().unsqueeze(-1) * freqs  # (B, T, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, T, D)


class MemoryAttentionLayer(nn.Module):
    """One layer of memory attention (see the module docstring and the config's variants)."""

    def __init__(self, cfg: RxTConfig) -> None:
        super().__init__()
        ma, dim, eps = cfg.memory_attention, cfg.dim, cfg.norm_eps
        self.variant = ma.variant
        if self.variant != "simple":
            self.pre_norm = nn.RMSNorm(dim, eps=eps)
            self.pre_attn = Attention(dim, ma.pre_attention or ma.attention, rope_q=False, rope_k=False)
        if self.variant in ("interlayer", "self_interlayer"):
            self.mean_norm = nn.RMSNorm(dim, eps=eps)
        if self.variant == "self_interlayer":
            self.mix_gate = ResidualGate(ma.gate, cfg.stm.num_slots, dim)
            self.pre_gate = ResidualGate(ma.gate, cfg.stm.num_slots, dim)
        if self.variant == "gated_self_interlayer":
            self.mix = nn.Linear(dim, dim)
        self.stm_norm = nn.RMSNorm(dim, eps=eps)
        self.ed_norm = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, ma.attention, rope_q=False, rope_k=True)
        self.gate = ResidualGate(ma.gate, cfg.stm.num_slots, dim)
        self.competitive = ma.write in ("competitive", "competitive_keep")
        self.keep_unwon = ma.write == "competitive_keep"
        if ma.slot_ids:
            self.slot_id = nn.Parameter(torch.zeros(cfg.stm.num_slots, dim))  # (S, D)
        self.ed_positions = ma.ed_positions
        if ma.ed_previous:
            self.ed_previous = nn.Linear(dim, dim, bias=False)  # zero at the start (init.py)
        if ma.write_sink:
            self.sink = nn.Parameter(torch.zeros(dim))  # (D,): the query of the dropped row

    def _self_step(self, state: Tensor) -> Tensor:
        normed = self.pre_norm(state)  # (B, S, D)
        q = self.pre_attn.project_q(normed, None)
        k, v = self.pre_attn.project_kv(normed, None)
        return state + self.pre_attn.attend(q, k, v, None)

    def _self_interlayer_step(self, stm_layer: Tensor, stm_mean: Tensor) -> Tensor:
        normed = self.pre_norm(stm_layer)  # (B, S, D)
        mixed, _ = self.mix_gate(normed, self.mean_norm(stm_mean))  # (B, S, D)
        q = self.pre_attn.project_q(normed, None)
        k, v = self.pre_attn.project_kv(mixed, None)
        state, _ = self.pre_gate(stm_layer, self.pre_attn.attend(q, k, v, None))
        return state

    def query_state(self, stm_layer: Tensor, stm_mean: Tensor) -> Tensor:
        """The state (B, S, D) that queries the encoded interaction."""
        if self.variant == "simple":
            return stm_layer
        if self.variant == "self":
            return self._self_step(stm_layer)
        if self.variant == "interlayer":
            q = self.pre_attn.project_q(self.pre_norm(stm_layer), None)
            k, v = self.pre_attn.project_kv(self.mean_norm(stm_mean), None)
            return stm_layer + self.pre_attn.attend(q, k, v, None)
        if self.variant == "self_interlayer":
            return self._self_interlayer_step(stm_layer, stm_mean)
        mix = torch.sigmoid(self.mix(stm_layer + stm_mean))  # (B, S, D)
        return self._self_step(mix * stm_layer + (1 - mix) * stm_mean)

    def forward(
        self, stm_layer: Tensor, stm_mean: Tensor, ed_layer: Tensor, ed_positions: Tensor, ed_mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """STM layer (B, S, D), all-layer mean (B, S, D), ED layer (B, T, D) at
        ``ed_positions`` (B, T) with ``ed_mask`` (B, 1, 1, T) → new STM layer (B, S, D) and
        the gate's mean openness per row (B,) (None without a gate)."""
        state = self.query_state(stm_layer, stm_mean)  # (B, S, D)
        queries = self.stm_norm(state)  # (B, S, D)
        if hasattr(self, "slot_id"):
            queries = queries + self.slot_id  # identity on the queries only, not in the STM
        q = self.attn.project_q(queries, None)  # (B, N, S, H)
        ed = self.ed_norm(ed_layer)  # (B, T, D)
        if self.ed_positions:
            ed = ed + sinusoidal_code(ed_positions, ed.shape[-1]).to(ed.dtype)
        if hasattr(self, "ed_previous"):
            ed = ed + self.ed_previous(F.pad(ed[:, :-1], (0, 0, 1, 0)))  # token t sees token t−1
        k, v = self.attn.project_kv(ed, ed_positions)  # (B, Nkv, T, H)
        scale = None
        if self.competitive:
            S = q.shape[2]
            if hasattr(self, "sink"):
                sink = self.attn.project_q(self.sink.expand(q.shape[0], 1, -1), None)  # (B, N, 1, H)
                q = torch.cat([q, sink], dim=2)  # (B, N, S + 1, H)
            update, won = competitive_attend(self.attn, q, k, v, ed_mask)  # (B, S[+1], D), (B, S[+1], 1)
            update, won = update[:, :S], won[:, :S]
            scale = won if self.keep_unwon else None
        else:
            update = self.attn.attend(q, k, v, ed_mask)  # (B, S, D)
        # self_interlayer keeps the stepped state (as rxlm does); the older variants keep the STM
        kept = state if self.variant == "self_interlayer" else stm_layer
        return self.gate(kept, update, scale)


class MemoryAttention(nn.Module):
    """All layers of memory attention: ``(STM_{t−1}, ED_t) → STM_t``."""

    def __init__(self, cfg: RxTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, stm: Tensor, ed: Tensor, ed_lengths: Tensor) -> Tensor:
        """STM (L, B, S, D), ED (L, B, T, D), real ED lengths (B,) → STM (L, B, S, D)."""
        return self.update_with_gates(stm, ed, ed_lengths)[0]

    def update_with_gates(self, stm: Tensor, ed: Tensor, ed_lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward` plus the mean gate openness (L, B) of the update (None when the
        gate kind is ``none``) — for memory-health metrics."""
        _, B, T, _ = ed.shape
        positions = torch.arange(T, device=ed.device).expand(B, T)  # (B, T)
        mask = key_mask(ed_lengths, T)  # (B, 1, 1, T)
        stm_mean = stm.mean(dim=0)  # (B, S, D)
        outs = [layer(stm[i], stm_mean, ed[i], positions, mask) for i, layer in enumerate(self.layers)]
        gates = [g for _, g in outs]
        return torch.stack([s for s, _ in outs]), (None if gates[0] is None else torch.stack(gates))
