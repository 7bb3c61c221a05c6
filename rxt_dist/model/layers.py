"""Building blocks shared by the decoder, the encoder and the stateless baseline.

Shape legend: B batch, T tokens (queries), K keys, D model dim, N query heads,
Nkv key/value heads, H head dim, S memory slots, E experts, V vocabulary.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rxt_dist.model.config import AttentionConfig, FFNConfig
from rxt_dist.model.kv_cache import KVCache


class _Causal:
    """Marker mask: plain causal attention over unpadded rows, which lets SDPA take its fused
    ``is_causal`` path instead of reading an explicit (B, 1, T, T) mask."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _Causal()
Mask = Tensor | _Causal | None


class _RopeTables(threading.local):
    """The cos/sin of the last positions seen (per thread): every layer of one forward pass
    gets the same positions tensor, so the tables are computed once per pass, not per layer."""

    positions: Tensor | None = None
    key: tuple | None = None
    tables: tuple[Tensor, Tensor] | None = None


_ROPE_TABLES = _RopeTables()


class RotaryEmbedding(nn.Module):
    """Rotary position embedding computed for arbitrary per-row positions (no length limit)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.theta = float(theta)
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (H/2,)

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (B, 1, T, H/2) of ``positions`` (B, T)."""
        if torch.compiler.is_compiling():  # a compiled layer computes them in its fused graph
            return self._cos_sin(positions)
        memo = _ROPE_TABLES
        key = (self.inv_freq.shape[0], self.theta, self.inv_freq.device)
        if memo.positions is positions and memo.key == key:
            return memo.tables
        memo.positions, memo.key, memo.tables = positions, key, self._cos_sin(positions)
        return memo.tables

    def _cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions[:, None, :, None].float() * self.inv_freq  # (B, 1, T, H/2)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` (B, N, T, H) by ``positions`` (B, T)."""
        cos, sin = self.tables(positions)
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, N, T, H/2) each
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, N, T, H)
        return rotated.to(x.dtype)


class Attention(nn.Module):
    """Scaled dot-product attention with MHA/GQA/SQA head layouts and optional RoPE.

    ``rope_q``/``rope_k`` choose where rotary positions apply: both for self-attention, the
    queries only for memory cross-attention (STM slots have no order), the keys only for
    memory attention (the STM queries the encoded interaction).
    """

    def __init__(self, dim: int, cfg: AttentionConfig, rope_q: bool, rope_k: bool) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim(dim)
        self.n_q = cfg.query_heads
        self.n_kv = cfg.kv_heads
        self.q_proj = nn.Linear(dim, self.n_q * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_q * self.head_dim, dim, bias=cfg.out_bias)
        self.rope_q, self.rope_k = rope_q, rope_k
        self.rope = RotaryEmbedding(self.head_dim, cfg.rope_theta) if (rope_q or rope_k) else None

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, H)

    def project_q(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Queries of ``x`` (B, T, D) → (B, N, T, H)."""
        q = self._heads(self.q_proj(x), self.n_q)  # (B, N, T, H)
        return self.rope(q, positions) if self.rope_q else q

    def project_kv(self, x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys and values of ``x`` (B, K, D) → two (B, Nkv, K, H)."""
        k = self._heads(self.k_proj(x), self.n_kv)  # (B, Nkv, K, H)
        v = self._heads(self.v_proj(x), self.n_kv)  # (B, Nkv, K, H)
        return (self.rope(k, positions) if self.rope_k else k), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        """Attention of q (B, N, T, H) over k/v (B, Nkv, K, H); ``mask`` (B, 1, T|1, K) is True
        where a query may attend (or :data:`CAUSAL`, or None for full attention). Returns (B, T, D)."""
        causal = mask is CAUSAL
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if causal else mask, is_causal=causal,
            enable_gqa=self.n_q != self.n_kv,
        )  # (B, N, T, H)
        B, _, T, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_q * self.head_dim))  # (B, T, D)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        mask: Mask,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """Self-attention of ``x`` (B, T, D) at ``positions`` (B, T); with a ``cache`` the new
        keys/values are appended to it and the queries attend to everything cached."""
        q = self.project_q(x, positions)  # (B, N, T, H)
        k, v = self.project_kv(x, positions)  # (B, Nkv, T, H)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Nkv, K, H)
        return self.attend(q, k, v, mask)


class SwiGLU(nn.Module):
    """Dense gated feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=bias)
        self.up = nn.Linear(dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Top-k routed Mixture of SwiGLU experts with a Switch-style load-balancing loss.

    Every expert runs on every call (on zero rows when no token picks it) so all parameters
    are in the graph each step, which ZeRO's gradient hooks expect.
    """

    def __init__(self, dim: int, cfg: FFNConfig) -> None:
        super().__init__()
        self.top_k = cfg.top_k
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, cfg.hidden_dim, cfg.bias) for _ in range(cfg.num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) → (output (B, T, D), auxiliary load-balancing loss (scalar))."""
        B, T, D = x.shape
        flat = x.reshape(B * T, D)  # (BT, D)
        probs = self.router(flat).float().softmax(dim=-1)  # (BT, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (BT, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        if torch.is_grad_enabled():
            for e, expert in enumerate(self.experts):
                rows, slot = (chosen == e).nonzero(as_tuple=True)
                contribution = expert(flat[rows]) * weights[rows, slot, None]  # (rows, D)
                out = out.index_add(0, rows, contribution)
        else:
            out = self._routed(flat, chosen, weights, out)
        num_experts = len(self.experts)
        routed = F.one_hot(chosen, num_experts).float().sum(dim=1).mean(dim=0) / self.top_k  # (E,)
        aux = num_experts * (routed * probs.mean(dim=0)).sum()
        return out.view(B, T, D), aux


    def _routed(self, flat: Tensor, chosen: Tensor, weights: Tensor, out: Tensor) -> Tensor:
        """Inference routing: only the chosen experts run, grouped with one host sync (a sort
        of the choices) instead of one per expert; the same sums in the same order as the
        training path."""
        picks = chosen.flatten()  # (BT·k,)
        order = picks.argsort(stable=True)  # token order kept within each expert
        counts = torch.bincount(picks, minlength=len(self.experts)).tolist()
        rows_of, flat_weights = order // self.top_k, weights.flatten()
        start = 0
        for e, count in enumerate(counts):
            if count:
                take = order[start:start + count]
                rows = rows_of[start:start + count]
                out = out.index_add(0, rows, self.experts[e](flat[rows]) * flat_weights[take, None])
            start += count
        return out


def build_ffn(dim: int, cfg: FFNConfig) -> nn.Module:
    return SwiGLU(dim, cfg.hidden_dim, cfg.bias) if cfg.kind == "dense" else MoE(dim, cfg)


def run_ffn(ffn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Apply a dense or MoE FFN; the auxiliary loss is 0 for a dense one."""
    if isinstance(ffn, MoE):
        return ffn(x)
    return ffn(x), x.new_zeros(())


class Block(nn.Module):
    """Pre-norm transformer layer: self-attention → (memory cross-attention) → FFN.

    With ``memory_cfg`` set this is a Generator-Decoder layer: the token stream attends to
    one STM layer (keys/values from the normalised slots, RoPE on the queries only).
    Without it, it is a Memory Encoder layer or a stateless-baseline layer; causality is
    decided by the mask the caller passes.
    """

    def __init__(
        self,
        dim: int,
        attention: AttentionConfig,
        ffn: FFNConfig,
        norm_eps: float,
        memory_cfg: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, attention, rope_q=True, rope_k=True)
        self.has_memory = memory_cfg is not None
        if memory_cfg is not None:
            self.mem_norm = nn.RMSNorm(dim, eps=norm_eps)
            self.stm_norm = nn.RMSNorm(dim, eps=norm_eps)
            self.mem_attn = Attention(dim, memory_cfg, rope_q=True, rope_k=False)
        self.ffn_norm = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn = build_ffn(dim, ffn)

    def project_memory(self, stm_layer: Tensor) -> tuple[Tensor, Tensor]:
        """Memory keys/values of one STM layer (B, S, D) → two (B, Nkv, S, H). Done once per
        turn and reused for every generated token."""
        return self.mem_attn.project_kv(self.stm_norm(stm_layer), positions=None)

    compiled_training = False
    """Set by :func:`compile_for_training`: passes with gradients and no KV cache run compiled."""

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        mask: Mask,
        memory: tuple[Tensor, Tensor] | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, D) → (x (B, T, D), aux loss). ``memory`` are this layer's projected STM
        keys/values, ``memory_mask`` (B, 1, 1, S) marks readable slots (None: all)."""
        if (self.compiled_training and not torch.compiler.is_compiling() and cache is None
                and torch.is_grad_enabled() and isinstance(mask, Tensor) and x.shape[0] > 1):
            # one row, or rows of equal length (a causal marker, positions broadcast), would each
            # need a graph of their own; they are rare in training and stay eager
            _mark_dynamic(x, positions, mask, memory, memory_mask)
            return _compiled_forward()(self, x, positions, mask, memory, memory_mask)
        x = x + self.attn(self.attn_norm(x), positions, mask, cache, layer)
        if self.has_memory:
            if memory is None:
                raise ValueError("a decoder layer needs its STM keys/values (memory=None)")
            q = self.mem_attn.project_q(self.mem_norm(x), positions)  # (B, N, T, H)
            x = x + self.mem_attn.attend(q, memory[0], memory[1], memory_mask)
        out, aux = run_ffn(self.ffn, self.ffn_norm(x))
        return x + out, aux


_COMPILED_FORWARD = None


def _compiled_forward():
    """:meth:`Block.forward` through ``torch.compile`` (inductor, dynamic shapes; traced, it takes
    the eager branch): one compiled function for every block (a block's parameters are inputs of
    the graph, not constants), built on first use — importing ``torch._dynamo`` costs seconds a
    process should not pay unless it trains compiled."""
    global _COMPILED_FORWARD
    if _COMPILED_FORWARD is None:
        _COMPILED_FORWARD = torch.compile(Block.forward, dynamic=True)
    return _COMPILED_FORWARD


def _mark_dynamic(x: Tensor, positions: Tensor, mask: Tensor, memory: tuple[Tensor, Tensor] | None,
                  memory_mask: Tensor | None) -> None:
    """Rows, tokens and (in stages 1–2, where encoder states stand in for the STM) memory
    positions vary from batch to batch: the first compile is for any count, not for the first
    batch's (which the second batch would then compile again)."""
    marks = [(x, (0, 1)), (positions, (0, 1)), (mask, (0, 2, 3)), *((m, (0, 2)) for m in memory or ())]
    if memory_mask is not None:
        marks.append((memory_mask, (0, 3)))
    for tensor, dims in marks:
        for dim in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)


def compile_for_training(model: nn.Module) -> nn.Module:
    """Train ``model``'s transformer layers compiled: every :class:`Block`'s passes with gradients
    and without a KV cache go through ``torch.compile``, which fuses the norms, rotary embedding,
    residuals and gated FFN around the matmuls (docs/training.md, "Compiled layers"). Inference
    (no gradients, or a cache) stays eager, and the parameters and ``state_dict`` are unchanged."""
    for module in model.modules():
        if isinstance(module, Block):
            module.compiled_training = True
    return model


def token_mask(
    starts: Tensor, new_lens: Tensor, num_new: int, num_keys: int, causal: bool
) -> Tensor:
    """Attention mask (B, 1, T, K) for ``num_new`` tokens per row written after ``starts``
    (B,) cached ones, of which ``new_lens`` (B,) are real and the rest right padding.

    A key is visible if it is real (``< starts + new_lens``) and, when causal, not after the
    query. Every query also sees itself, so padding rows stay finite instead of NaN.
    """
    device = starts.device
    q_pos = starts[:, None] + torch.arange(num_new, device=device)[None]  # (B, T)
    k_pos = torch.arange(num_keys, device=device)[None, None]  # (1, 1, K)
    visible = k_pos < (starts + new_lens)[:, None, None]  # (B, 1, K)
    if causal:
        visible = visible & (k_pos <= q_pos[:, :, None])  # (B, T, K)
    visible = visible | (k_pos == q_pos[:, :, None])  # (B, T, K)
    return visible[:, None]  # (B, 1, T, K)


def key_mask(lengths: Tensor, num_keys: int) -> Tensor:
    """Mask (B, 1, 1, K) that is True on the first ``lengths`` (B,) keys of each row."""
    return (torch.arange(num_keys, device=lengths.device)[None] < lengths[:, None])[:, None, None]


def prepare_tokens(
    lengths: Tensor | None, num_new: int, cache: KVCache | None, causal: bool, batch: int | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, Mask]:
    """Positions (B, T) and attention mask (B, 1, T, K) for ``num_new`` right-padded tokens
    per row with ``lengths`` (B,) real ones (None: every row has ``num_new``, then ``batch``
    and ``device`` say the shape), placed after whatever ``cache`` holds.

    Without padding the mask is :data:`CAUSAL` for a fresh sequence and None for a one-token
    step after a cache whose rows are all equally long (the step sees every cached key)."""
    if lengths is not None:
        batch, device = lengths.shape[0], lengths.device
    steps = torch.arange(num_new, device=device)[None]  # (1, T)
    uniform = cache.uniform_length if cache is not None else 0
    if uniform is not None:
        positions = (steps + uniform).expand(batch, num_new)  # (B, T)
        if lengths is None or bool((lengths == num_new).all()):
            if uniform == 0:
                return positions, CAUSAL if causal else None
            if num_new == 1:
                return positions, None
    else:
        positions = cache.lengths[:, None] + steps  # (B, T)
    starts = cache.lengths if cache is not None else torch.zeros(batch, dtype=torch.long, device=device)
    new_lens = lengths if lengths is not None else torch.full((batch,), num_new, dtype=torch.long, device=device)
    num_keys = (cache.max_length() if cache is not None else 0) + num_new
    return positions, token_mask(starts, new_lens, num_new, num_keys, causal)


def run_stack(
    blocks: nn.ModuleList,
    x: Tensor,
    positions: Tensor,
    mask: Mask,
    memory: list[tuple[Tensor, Tensor]] | None = None,
    memory_mask: Tensor | None = None,
    cache: KVCache | None = None,
    collect: bool = False,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run ``blocks`` over x (B, T, D). Returns the output, the summed auxiliary loss and,
    with ``collect``, every layer's output (the encoder's ED)."""
    aux = x.new_zeros(())
    hidden: list[Tensor] = []
    for i, block in enumerate(blocks):
        x, layer_aux = block(
            x, positions, mask,
            memory=memory[i] if memory is not None else None,
            memory_mask=memory_mask, cache=cache, layer=i,
        )
        aux = aux + layer_aux
        if collect:
            hidden.append(x)
    return x, aux, hidden
