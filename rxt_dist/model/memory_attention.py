"""Memory Attention: writes the encoded interaction into the Short-Term Memory.

Shape legend: L layers, B batch, S memory slots, T interaction tokens, D model dim.

Layer i builds a query state from STM layer i (the variant decides how), lets it attend
to the encoded data ED layer i (RoPE on the keys only: the interaction is a sequence, the
memory is a set), and a residual gate mixes the result into STM layer i.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rxt_dist.model.config import GateConfig, RxTConfig
from rxt_dist.model.layers import Attention, key_mask


class ResidualGate(nn.Module):
    """``STM_t = (1 − G) ⊙ STM_{t−1} + G ⊙ Update`` with G from the configured kind.

    The static kind holds one logit per slot, so its parameter is slot-indexed (S, 1).
    """

    def __init__(self, cfg: GateConfig, num_slots: int, dim: int) -> None:
        super().__init__()
        self.kind, self.activation = cfg.kind, cfg.activation
        if cfg.kind == "static":
            self.logit = nn.Parameter(torch.full((num_slots, 1), cfg.init_bias))  # (S, 1)
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
        else:
            logit = self.proj(old + update)  # (B, S, D)
        return torch.sigmoid(logit) if self.activation == "sigmoid" else torch.tanh(logit)

    def forward(self, old: Tensor, update: Tensor) -> Tensor:
        if self.kind == "none":
            return old + update
        g = self.gate(old, update)
        if self.activation == "tanh":
            return (1 - g) * old + (1 + g) * update
        return (1 - g) * old + g * update


class MemoryAttentionLayer(nn.Module):
    """One layer of memory attention (see the module docstring and the config's variants)."""

    def __init__(self, cfg: RxTConfig) -> None:
        super().__init__()
        ma, dim, eps = cfg.memory_attention, cfg.dim, cfg.norm_eps
        self.variant = ma.variant
        if self.variant != "simple":
            self.pre_norm = nn.RMSNorm(dim, eps=eps)
            self.pre_attn = Attention(dim, ma.attention, rope_q=False, rope_k=False)
        if self.variant == "interlayer":
            self.mean_norm = nn.RMSNorm(dim, eps=eps)
        if self.variant == "gated_self_interlayer":
            self.mix = nn.Linear(dim, dim)
        self.stm_norm = nn.RMSNorm(dim, eps=eps)
        self.ed_norm = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, ma.attention, rope_q=False, rope_k=True)
        self.gate = ResidualGate(ma.gate, cfg.stm.num_slots, dim)

    def _self_step(self, state: Tensor) -> Tensor:
        normed = self.pre_norm(state)  # (B, S, D)
        q = self.pre_attn.project_q(normed, None)
        k, v = self.pre_attn.project_kv(normed, None)
        return state + self.pre_attn.attend(q, k, v, None)

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
        mix = torch.sigmoid(self.mix(stm_layer + stm_mean))  # (B, S, D)
        return self._self_step(mix * stm_layer + (1 - mix) * stm_mean)

    def forward(
        self, stm_layer: Tensor, stm_mean: Tensor, ed_layer: Tensor, ed_positions: Tensor, ed_mask: Tensor
    ) -> Tensor:
        """STM layer (B, S, D), all-layer mean (B, S, D), ED layer (B, T, D) at
        ``ed_positions`` (B, T) with ``ed_mask`` (B, 1, 1, T) → new STM layer (B, S, D)."""
        state = self.query_state(stm_layer, stm_mean)
        q = self.attn.project_q(self.stm_norm(state), None)  # (B, N, S, H)
        k, v = self.attn.project_kv(self.ed_norm(ed_layer), ed_positions)  # (B, Nkv, T, H)
        update = self.attn.attend(q, k, v, ed_mask)  # (B, S, D)
        return self.gate(stm_layer, update)


class MemoryAttention(nn.Module):
    """All layers of memory attention: ``(STM_{t−1}, ED_t) → STM_t``."""

    def __init__(self, cfg: RxTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, stm: Tensor, ed: Tensor, ed_lengths: Tensor) -> Tensor:
        """STM (L, B, S, D), ED (L, B, T, D), real ED lengths (B,) → STM (L, B, S, D)."""
        _, B, T, _ = ed.shape
        positions = torch.arange(T, device=ed.device).expand(B, T)  # (B, T)
        mask = key_mask(ed_lengths, T)  # (B, 1, 1, T)
        stm_mean = stm.mean(dim=0)  # (B, S, D)
        return torch.stack([
            layer(stm[i], stm_mean, ed[i], positions, mask) for i, layer in enumerate(self.layers)
        ])
