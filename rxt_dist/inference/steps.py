"""The decoding step, the prefill and the memory update written for ``torch.compile``: plain
tensor code over preallocated caches, whose shapes never depend on the lengths
(:mod:`rxt_dist.inference.compiled` compiles and calls them).

Shape legend: L layers, B rows, T prompt or interaction length, N query heads, Nkv key/value
heads, C cache capacity, H head dim, S memory slots, D model dim, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rxt_dist.inference.experts import routed_experts, swiglu
from rxt_dist.inference.step_weights import Layout, unpack
from rxt_dist.model.layers import CAUSAL, Attention, MoE, SwiGLU, key_mask, run_stack
from rxt_dist.model.rxt import MemoryKV, RxTModel


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE of x (B, N, 1, H) with tables (B, 1, 1, H/2), as :class:`RotaryEmbedding` does."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


def _norm(module: torch.nn.Module, weight: Tensor | None, x: Tensor) -> Tensor:
    """``module`` (an ``nn.RMSNorm``, or an identity) of x, by its weight as packed."""
    if not isinstance(module, torch.nn.RMSNorm):
        return module(x)
    return torch.nn.functional.rms_norm(x, module.normalized_shape, weight, module.eps)


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight (+ bias)``: a linear map by an (in, out) weight copy
    (:class:`~rxt_dist.inference.step_weights.StepWeights`)."""
    y = x @ weight
    return y if bias is None else y + bias


def _moe_step(moe: MoE, weights: dict[str, Tensor], x: Tensor) -> Tensor:
    """The MoE FFN of x (B, 1, D) inside the compiled step, with the router's top-k weights as
    :meth:`MoE.forward` computes them. One row reads only its chosen experts (indexed weights,
    fused by inductor: at batch 1 a step is bound by the weights it reads); a larger batch runs
    each expert on the rows that chose it (:func:`routed_experts`). Expert biases are not
    supported here (the presets have none)."""
    B, _, D = x.shape
    flat = x[:, 0]  # (B, D)
    gate_up, down = weights["gate_up"], weights["down"]
    probs = _affine(flat, weights["router"]).float().softmax(dim=-1)  # (B, E)
    top, chosen = probs.topk(moe.top_k, dim=-1)  # (B, k)
    top = (top / top.sum(dim=-1, keepdim=True)).to(x.dtype)
    if B == 1:
        pick = chosen[0]  # (k,)
        h = swiglu(torch.einsum("kfd,d->kf", gate_up[pick], flat[0]))  # (k, F)
        y = torch.einsum("kf,kdf->kd", h, down[pick])  # (k, D)
        return (y * top[0, :, None]).sum(0).view(1, 1, D)
    return routed_experts(flat, chosen, top, gate_up, down).view(B, 1, D)


def _attend_one(attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                out_weight: Tensor) -> Tensor:
    """Attention of one query per row, q (B, N, 1, H), over k/v (B, Nkv, K, H) with ``mask``
    (B, 1, 1, K) or None, projected out by ``out_weight`` (N·H, D) and ``attn``'s output bias.
    Written as elementwise products summed, over the query heads grouped by their key/value
    head (as SDPA's GQA does): inductor fuses them into a few reductions instead of calling an
    attention kernel built for long query blocks, or a batched matrix product per head group
    (with ``bmm``s a step of batch 32 took 5–7% longer, batch 1 no less; docs/BENCHMARKS.md).
    The query is scaled before its product: scaled after it, an unmasked attention (the
    memory's) once matched inductor's attention pattern and went to the flash kernel, slower
    for one query. Returns (B, 1, D)."""
    B, N, _, H = q.shape
    group = N // attn.n_kv
    qg = q.view(B, attn.n_kv, group, H) * H ** -0.5  # head n = kv·group + j, as SDPA's enable_gqa
    scores = (qg[:, :, :, None, :] * k[:, :, None]).sum(-1)  # (B, Nkv, group, K)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # mask (B, 1, 1, K)
    weights = scores.float().softmax(dim=-1).to(q.dtype)
    out = (weights[..., None] * v[:, :, None]).sum(-2)  # (B, Nkv, group, H)
    return _affine(out.reshape(B, 1, N * H), out_weight, attn.o_proj.bias)


def decode_step(
    model: RxTModel, layout: Layout, ids: Tensor, lengths: Tensor, keys: list[Tensor], values: list[Tensor],
    memory: MemoryKV, memory_mask: Tensor | None, packs: list[Tensor],
) -> Tensor:
    """One decoding step, written to compile: ``ids`` (B, 1) at positions ``lengths`` (B,) (the
    cached positions per row), the caches ``keys``/``values`` per layer (B, Nkv, C, H) written
    in place at ``lengths``, ``memory`` the projected STM, ``memory_mask`` (B, 1, 1, S) or None,
    ``packs`` and ``layout`` the weight copies
    (:class:`~rxt_dist.inference.step_weights.StepWeights`). Returns the next-token logits
    (B, V) and each row's most likely token (B,), as ``argmax``: one vectorised reduction fused
    into the step, where torch's argmax on a CPU walks a row one logit at a time (9 µs for
    `tiny`'s 4,096 logits at batch 1; 71 µs for 32 rows, blocked as
    :func:`~rxt_dist.inference.sampling.greedy_tokens` does)."""
    B, C = ids.shape[0], keys[0].shape[2]
    weights, rest = unpack(packs, layout)
    at = lengths[:, None, None, None].float()  # (B, 1, 1, 1)
    tables = lambda inv_freq: ((at * inv_freq).cos(), (at * inv_freq).sin())  # noqa: E731
    visible = (torch.arange(C, device=ids.device)[None] <= lengths[:, None])[:, None, None]  # (B, 1, 1, C)
    rows = torch.arange(B, device=ids.device)[:, None]  # (B, 1)
    x = model.embed(ids)  # (B, 1, D)
    for i, block in enumerate(model.decoder):
        attn = block.attn
        w = weights[i]
        h = _norm(block.attn_norm, w.get("attn_norm"), x)
        cos, sin = tables(w["rope"])  # (B, 1, 1, H/2) each
        q, k, v = _affine(h, w["qkv"]).split([attn.n_q * attn.head_dim] + [attn.n_kv * attn.head_dim] * 2, dim=-1)
        q = _rotate(attn._heads(q, attn.n_q), cos, sin)  # (B, N, 1, H)
        k = _rotate(attn._heads(k, attn.n_kv), cos, sin)  # (B, Nkv, 1, H)
        v = attn._heads(v, attn.n_kv)
        # index_put_ (not scatter_): inductor writes it in place; a scatter_ on a graph input
        # became a copy of the whole cache, written and copied back, per layer and step
        where = (rows, torch.arange(attn.n_kv, device=ids.device)[None], lengths[:, None])  # (B, Nkv) each
        keys[i].index_put_(where, k[:, :, 0])
        values[i].index_put_(where, v[:, :, 0])
        x = x + _attend_one(attn, q, keys[i], values[i], visible, w["o"])
        mem = block.mem_attn
        mq = _rotate(mem._heads(_affine(_norm(block.mem_norm, w.get("mem_norm"), x), w["mq"]), mem.n_q),
                     *tables(w["mem_rope"]))
        x = x + _attend_one(mem, mq, memory[i][0], memory[i][1], memory_mask, w["mo"])
        ffn = block.ffn
        h = _norm(block.ffn_norm, w.get("ffn_norm"), x)
        x = x + (_dense_ffn(ffn, w, h) if isinstance(ffn, SwiGLU) else _moe_step(ffn, w, h))
    logits = _affine(_norm(model.decoder_norm, rest.get("norm"), x), rest["head"], model.lm_head.bias)[:, -1]  # (B, V)
    return logits, logits.argmax(dim=-1)


def _dense_ffn(ffn: SwiGLU, weights: dict[str, Tensor], x: Tensor) -> Tensor:
    """:class:`SwiGLU` of x by the weight copies (gate and up in one product)."""
    bias = None if ffn.gate.bias is None else torch.cat([ffn.gate.bias, ffn.up.bias])
    return _affine(swiglu(_affine(x, weights["gate_up"], bias)), weights["down"], ffn.down.bias)


def prefill_step(
    model: RxTModel, layout: Layout, ids: Tensor, lengths: Tensor, stm: Tensor, keys: list[Tensor],
    values: list[Tensor], memory_mask: Tensor | None, packs: list[Tensor],
) -> tuple[Tensor, MemoryKV]:
    """The prefill of a turn, written to compile: right-padded prompts ``ids`` (B, T) with
    ``lengths`` (B,) real tokens, answered from ``stm`` (L, B, S, D), written into the empty
    caches ``keys``/``values`` per layer (B, Nkv, C ≥ T, H) at positions 0…T−1.

    Returns the next-token logits after each prompt's last real token (B, V) and the STM's
    projected memory keys/values (contiguous, as the decoding steps read them). A plain causal
    mask serves right-padded rows: a real token never sees a later position, so the padding is
    invisible to it (the padded positions' own outputs are never read, and their cache entries
    lie past each row's length, where every later step masks them)."""
    B, T = ids.shape
    weights, _ = unpack(packs, layout)
    memory = [tuple(t.contiguous() for t in block.project_memory(stm[i])) for i, block in enumerate(model.decoder)]
    positions = torch.arange(T, device=ids.device)[None].expand(B, T)  # (B, T)
    slot_mask = memory_mask[:, None, None, :] if memory_mask is not None else None  # (B, 1, 1, S)
    x = model.embed(ids)  # (B, T, D)
    for i, block in enumerate(model.decoder):
        attn = block.attn
        h = block.attn_norm(x)
        q = attn.project_q(h, positions)  # (B, N, T, H)
        k, v = attn.project_kv(h, positions)  # (B, Nkv, T, H)
        keys[i][:, :, :T] = k
        values[i][:, :, :T] = v
        x = x + attn.attend(q, k, v, CAUSAL)
        mem = block.mem_attn
        mq = mem.project_q(block.mem_norm(x), positions)
        x = x + mem.attend(mq, memory[i][0], memory[i][1], slot_mask)
        ffn = block.ffn
        h = block.ffn_norm(x)
        x = x + (ffn(h) if isinstance(ffn, SwiGLU) else _moe_rows(ffn, weights[i]["gate_up"], weights[i]["down"], h))
    last = x[torch.arange(B, device=ids.device), lengths - 1]  # (B, D)
    return model.lm_logits(last), memory


def _moe_rows(moe: MoE, gate_up: Tensor, down: Tensor, x: Tensor) -> Tensor:
    """The MoE FFN of x (B, T, D) for many tokens at once: every token through its chosen
    experts (:func:`routed_experts`), the router's weights as :meth:`MoE.forward` computes them."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    probs = moe.router(flat).float().softmax(dim=-1)  # (BT, E)
    weights, chosen = probs.topk(moe.top_k, dim=-1)  # (BT, k)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
    return routed_experts(flat, chosen, weights, gate_up, down).view(B, T, D)


def consolidate_step(model: RxTModel, stm: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
    """:meth:`RxTModel.consolidate` written to compile: the Memory Encoder over right-padded
    interactions ``ids`` (B, T) with ``lengths`` (B,) real tokens, then memory attention from
    ``stm`` (L, B, S, D). Every key past a row's length is hidden by one key mask (the eager
    pass picks its mask by a host-side check of the lengths, which would split the graph);
    the padded positions' own outputs differ from the eager pass's but are never read — memory
    attention masks them too."""
    B, T = ids.shape
    positions = torch.arange(T, device=ids.device)[None].expand(B, T)  # (B, T)
    _, _, hidden = run_stack(model.encoder, model.embed(ids), positions, key_mask(lengths, T), collect=True)
    return model.update_memory(stm, torch.stack(hidden), lengths)
