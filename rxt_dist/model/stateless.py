"""The stateless baseline: a decoder-only LM built from the same blocks as RxT, without
memory cross-attention. It reads the whole conversation history every turn (or keeps its
KV cache across turns), which is what RxT is compared against.

Shape legend: B batch, T tokens, D model dim, V vocabulary.
"""

from __future__ import annotations

from torch import Tensor, nn

from rxt_dist.model.config import StatelessConfig
from rxt_dist.model.init import init_weights
from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.layers import Block, prepare_tokens, run_stack


class StatelessLM(nn.Module):
    """Decoder-only causal LM (see the module docstring)."""

    def __init__(self, cfg: StatelessConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.decoder = nn.ModuleList(
            Block(cfg.dim, cfg.attention, cfg.ffn, cfg.norm_eps) for _ in range(cfg.num_layers)
        )
        self.decoder_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        init_weights(self, cfg)

    def lm_logits(self, h: Tensor) -> Tensor:
        """Hidden states (B, T, D) → next-token logits (B, T, V)."""
        return self.lm_head(self.decoder_norm(h))

    def hidden(self, ids: Tensor, lengths: Tensor | None, cache: KVCache | None = None) -> tuple[Tensor, Tensor]:
        """Causal pass over right-padded tokens (B, T) with ``lengths`` (B,) real ones
        (None: no padding), continuing ``cache`` when given. Returns the last layer's hidden states (B, T, D),
        before the head, and the MoE auxiliary loss."""
        positions, mask = prepare_tokens(lengths, ids.shape[1], cache, causal=True, batch=ids.shape[0],
                                         device=ids.device)
        x = self.embed(ids)  # (B, T, D)
        x, aux, _ = run_stack(self.decoder, x, positions, mask, cache=cache)
        if cache is not None:
            cache.advance(lengths if lengths is not None else ids.shape[1])
        return x, aux

    def decode(self, ids: Tensor, lengths: Tensor | None, cache: KVCache | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`hidden` followed by the head: logits (B, T, V) and the aux loss."""
        x, aux = self.hidden(ids, lengths, cache)
        return self.lm_logits(x), aux

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(ids, lengths)

    def new_cache(self, batch: int, capacity: int = 64) -> KVCache:
        """An empty self-attention cache for ``batch`` sequences."""
        att, ref = self.cfg.attention, self.embed.weight
        return KVCache.empty(self.cfg.num_layers, batch, att.kv_heads, att.head_dim(self.cfg.dim),
                             capacity, ref.dtype, ref.device)
