"""The Reactive Transformer: Generator-Decoder, Memory Encoder and Memory Attention.

Shape legend: L layers, B batch, T tokens, D model dim, S memory slots, V vocabulary,
Nkv key/value heads, H head dim.

The model holds no conversation state: the STM (L, B, S, D) is passed in and returned.
:meth:`RxTModel.decode` answers from an STM, :meth:`RxTModel.encode` plus
:meth:`RxTModel.update_memory` consolidate an interaction into a new STM.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rxt_dist.model.config import RxTConfig
from rxt_dist.model.init import init_weights
from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.layers import Block, prepare_tokens, run_stack
from rxt_dist.model.memory_attention import MemoryAttention

MemoryKV = list[tuple[Tensor, Tensor]]
"""Per decoder layer, the STM keys and values (B, Nkv, S, H) projected once per turn."""


class LearnedSTM(nn.Module):
    """A learned initial STM shared by every new conversation (a module so that ZeRO-3
    gathers it on call)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))  # (L, S, D)

    def forward(self, batch: int) -> Tensor:
        L, S, D = self.weight.shape
        return self.weight[:, None].expand(L, batch, S, D).clone()  # (L, B, S, D)


class RxTModel(nn.Module):
    """A Reactive Transformer (see the module docstring)."""

    def __init__(self, cfg: RxTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, eps = cfg.dim, cfg.norm_eps
        self.embed = nn.Embedding(cfg.vocab_size, D)
        self.decoder = nn.ModuleList(
            Block(D, cfg.decoder_attention, cfg.decoder_ffn, eps, memory_cfg=cfg.memory_cross_attention)
            for _ in range(cfg.num_layers)
        )
        self.decoder_norm = nn.RMSNorm(D, eps=eps) if cfg.decoder_final_norm else nn.Identity()
        self.encoder = nn.ModuleList(
            Block(D, cfg.encoder_attention, cfg.encoder_ffn, eps) for _ in range(cfg.num_layers)
        )
        self.encoder_norm = nn.RMSNorm(D, eps=eps)
        self.memory_attention = MemoryAttention(cfg)
        # Heads are modules even when tied, so ZeRO-3 gathers their weight on call.
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.mlm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
            self.mlm_head.weight = self.embed.weight
        if cfg.stm.init == "learned":
            self.stm_init = LearnedSTM(cfg.stm_shape)
        init_weights(self, cfg)

    # -- heads ---------------------------------------------------------------------------
    def lm_logits(self, h: Tensor) -> Tensor:
        """Decoder hidden states (B, T, D) → next-token logits (B, T, V)."""
        return self.lm_head(self.decoder_norm(h))

    def mlm_logits(self, h: Tensor) -> Tensor:
        """Encoder final hidden states (B, T, D) → masked-token logits (B, T, V)."""
        return self.mlm_head(self.encoder_norm(h))

    # -- memory --------------------------------------------------------------------------
    def initial_stm(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A fresh STM (L, B, S, D) for ``batch`` new conversations."""
        L, S, D = self.cfg.stm_shape
        ref = self.embed.weight
        if self.cfg.stm.init == "learned":
            stm = self.stm_init(batch)  # (L, B, S, D)
            if self.cfg.stm.init_noise_std > 0:
                noise = torch.randn(L, batch, S, D, generator=generator, dtype=torch.float32)
                stm = stm + (noise * self.cfg.stm.init_noise_std).to(device=ref.device, dtype=ref.dtype)
            return stm
        if self.cfg.stm.init == "zeros":
            return ref.new_zeros(L, batch, S, D)
        noise = torch.randn(L, batch, S, D, generator=generator, dtype=torch.float32)
        return (noise * self.cfg.stm.init_std).to(device=ref.device, dtype=ref.dtype)

    def project_memory(self, stm: Tensor) -> MemoryKV:
        """STM (L, B, S, D) → per-layer memory keys/values, computed once per turn."""
        return [block.project_memory(stm[i]) for i, block in enumerate(self.decoder)]

    def encode(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Right-padded interactions (B, T) with ``lengths`` (B,) → (ED (L, B, T, D), the last
        layer's hidden states (B, T, D)). Bidirectional: no causal mask."""
        positions, mask = prepare_tokens(lengths, ids.shape[1], None, causal=False)
        x = self.embed(ids)  # (B, T, D)
        x, _, hidden = run_stack(self.encoder, x, positions, mask, collect=True)
        return torch.stack(hidden), x

    def update_memory(self, stm: Tensor, ed: Tensor, lengths: Tensor) -> Tensor:
        """STM_{t−1} (L, B, S, D) and ED (L, B, T, D) of ``lengths`` (B,) → STM_t (L, B, S, D)."""
        return self.memory_attention(stm, ed, lengths)

    def update_memory_with_gates(self, stm: Tensor, ed: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`update_memory` plus the gate's mean openness (L, B) (None without a gate)."""
        return self.memory_attention.update_with_gates(stm, ed, lengths)

    def consolidate(self, stm: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """Encode interactions (B, T) and merge them into ``stm`` (L, B, S, D)."""
        ed, _ = self.encode(ids, lengths)
        return self.update_memory(stm, ed, lengths)

    # -- generation ----------------------------------------------------------------------
    def decode_hidden(
        self,
        ids: Tensor,
        lengths: Tensor | None,
        memory: MemoryKV,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decoder pass over right-padded tokens (B, T) with ``lengths`` (B,) real ones (None:
        no padding),
        reading ``memory`` (see :meth:`project_memory`); ``memory_mask`` (B, S) marks readable
        slots. With a ``cache`` the tokens continue the cached ones and are appended to it.
        Returns the last layer's hidden states (B, T, D), before the head, and the MoE
        auxiliary loss."""
        positions, mask = prepare_tokens(lengths, ids.shape[1], cache, causal=True, batch=ids.shape[0],
                                         device=ids.device)
        slot_mask = memory_mask[:, None, None, :] if memory_mask is not None else None  # (B, 1, 1, S)
        x = self.embed(ids)  # (B, T, D)
        x, aux, _ = run_stack(self.decoder, x, positions, mask, memory, slot_mask, cache)
        if cache is not None:
            cache.advance(lengths if lengths is not None else ids.shape[1])
        return x, aux

    def decode(
        self,
        ids: Tensor,
        lengths: Tensor | None,
        memory: MemoryKV,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`decode_hidden` followed by the head: logits (B, T, V) and the aux loss."""
        x, aux = self.decode_hidden(ids, lengths, memory, memory_mask, cache)
        return self.lm_logits(x), aux

    def hidden(
        self, ids: Tensor, lengths: Tensor, stm: Tensor, memory_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Training-time decoder pass without the head (training applies it only where a
        token is scored): tokens (B, T) answered from ``stm`` (L, B, S', D), where S' may be
        any number of slots (stage 1 feeds encoder states). Returns (B, T, D) and aux."""
        return self.decode_hidden(ids, lengths, self.project_memory(stm), memory_mask)

    def forward(
        self, ids: Tensor, lengths: Tensor, stm: Tensor, memory_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`hidden` followed by the head: logits (B, T, V) and aux."""
        x, aux = self.hidden(ids, lengths, stm, memory_mask)
        return self.lm_logits(x), aux

    def new_cache(self, batch: int, capacity: int = 64) -> KVCache:
        """An empty self-attention cache for ``batch`` sequences."""
        att = self.cfg.decoder_attention
        ref = self.embed.weight
        return KVCache.empty(self.cfg.num_layers, batch, att.kv_heads, att.head_dim(self.cfg.dim),
                             capacity, ref.dtype, ref.device)
