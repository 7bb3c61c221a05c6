"""A compiled decoding step: one token for every row of a batch through ``torch.compile``.

Shape legend: L layers, B rows, Nkv key/value heads, C cache capacity, H head dim, S memory
slots, D model dim, V vocabulary, E experts.

The eager step (:meth:`RxTModel.decode` on a :class:`KVCache`) runs a few hundred small
operations, each paying Python and dispatch overhead that dwarfs its arithmetic at these sizes.
The compiled step is the same computation written for a compiler: it reads the whole
preallocated cache (capacity C, masked past each row's length) so no shape depends on the
lengths, computes the rotary tables once, and lets inductor fuse the norms, rotations, masks and
residuals into a few kernels. The batch and the capacity are dynamic dimensions, so one
compilation serves every batch size above 1 (batch 1 gets its own). The step multiplies by a
copy of the decoder's weights laid out for its products (:class:`StepWeights`: transposed, the
query, key and value projections side by side). A mixture-of-experts FFN is compiled too, from
a stacked copy of its expert weights: one row indexes its chosen experts' weights; a batch runs
each expert on the rows that chose it only (:func:`routed_experts`: the routing compiled, the
experts' products one opaque operator that inductor calls as it is, :func:`grouped_swiglu`).

Same weights and the same operations (the products' and the MoE's sums grouped differently):
greedy answers equal the eager path's (tests).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import platform
import threading
import types
from collections.abc import Callable

import torch
from torch import Tensor

from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.layers import CAUSAL, Attention, Block, MoE, SwiGLU, key_mask, run_stack
from rxt_dist.model.rxt import MemoryKV, RxTModel

logger = logging.getLogger(__name__)

StepFn = Callable[[Tensor, Tensor, list[Tensor], list[Tensor], MemoryKV, Tensor | None, list[Tensor]],
                  tuple[Tensor, Tensor]]
PrefillFn = Callable[[Tensor, Tensor, Tensor, list[Tensor], list[Tensor], Tensor | None, list[Tensor]],
                     tuple[Tensor, MemoryKV]]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE of x (B, N, 1, H) with tables (B, 1, 1, H/2), as :class:`RotaryEmbedding` does."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class StepWeights:
    """The weights the compiled decoding step multiplies by, copied once in the layouts its
    products read fastest and packed into one flat tensor per dtype (:attr:`packs`), which the
    step takes as its inputs and slices into views (:func:`unpack`). Per layer:

    - ``qkv`` (D, (N + 2·Nkv)·H): the self-attention's query, key and value projections side by
      side (one product instead of three), ``o`` (N·H, D), ``mq`` (D, N·H) and ``mo`` the memory
      cross-attention's query and output projections — every linear map transposed to
      (in, out) and contiguous: on this CPU a product by an (out, in) weight's transposed view
      (what ``nn.Linear`` hands inductor) took 1.4–2.2× the time of the same product by an
      (in, out) copy at 8 and 32 rows (docs/BENCHMARKS.md);
    - a dense FFN's ``gate_up`` (D, 2F) and ``down`` (F, D); a mixture of experts' ``router``
      (D, E), ``gate_up`` (E, 2F, D) (each expert's gate and up stacked) and ``down`` (E, D, F),
      the modules' own layouts stacked: one row's products then sum along contiguous memory
      (`nano` batch 1 −5% against ``down`` as (E, F, D); a batch's grouped products read
      them transposed, as fast; docs/BENCHMARKS.md);
    - the three norms' weights and the two rotary embeddings' frequencies, as the modules hold
      them;

    and ``head`` (D, V) and the final norm's ``norm``. Biases and the embedding stay the
    modules' own tensors. One flat tensor rather than ~75: every tensor a compiled call takes
    costs it about a microsecond of guards and argument handling (docs/BENCHMARKS.md). A copy
    made once, renewed when any weight has changed (by the tensors' identities and version
    counters) at each :meth:`CompiledDecoder.prefill` — every admission of a
    :class:`~rxt_dist.inference.DecodeBatch` — not on every step: the check reads some 200
    tensors' counters, ≈ 0.12 ms of a `nano` batch-1 step of ≈ 1.7 (7%) when each step has just
    streamed the weights through the caches (docs/BENCHMARKS.md). Weights changed in place while
    a batch decodes reach its steps at its next admission."""

    def __init__(self, model: RxTModel) -> None:
        for block in model.decoder:
            ffn = block.ffn
            if isinstance(ffn, MoE) and ffn.experts[0].gate.bias is not None:
                raise ValueError("compiled decoding of a mixture of experts with biases (decoder_ffn.bias: true) "
                                 "is not implemented; decode it eagerly (compile off)")
        self.model = model
        modules = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.RMSNorm))]
        self._parameters = [m._parameters for m in modules + [model.lm_head, model.decoder_norm]
                            if m._parameters.get("weight") is not None]
        self._weights: list[Tensor] = []
        self._versions: list[int] = []
        self.packs: list[Tensor] = []
        self.layout: Layout = {}
        self.refresh()

    def refresh(self) -> None:
        # kept cheap: the modules' ``_parameters`` dicts rather than ``.weight`` (whose
        # nn.Module.__getattr__ made the check of `nano`'s 199 weights take ~0.5 ms), read by
        # C-level maps; 39 µs for `nano` in a loop, most of it reading the versions
        weights = list(map(_WEIGHT, self._parameters))
        versions = list(map(_VERSION, weights))
        if versions != self._versions or any(map(operator.is_not, weights, self._weights)):
            with torch.no_grad():
                pieces = {(i, name): t for i, block in enumerate(self.model.decoder)
                          for name, t in _layer_weights(block).items()}
                pieces[None, "head"] = _t(self.model.lm_head)
                if isinstance(self.model.decoder_norm, torch.nn.RMSNorm):
                    pieces[None, "norm"] = self.model.decoder_norm.weight
                self.packs, layout = _pack(pieces)
            if layout != self.layout:  # the same object while equal: the compiled steps guard on it
                self.layout = layout
            self._weights, self._versions = weights, versions

    @property
    def layers(self) -> dict[int, dict[str, Tensor]]:
        """Each layer's pieces, as views of :attr:`packs`."""
        return unpack(self.packs, self.layout)[0]


Piece = tuple[int | None, str]  # (the layer, or None for the head and the final norm; its name)
Layout = dict[Piece, tuple[int, int, tuple[int, ...]]]
_WEIGHT, _VERSION = operator.itemgetter("weight"), operator.attrgetter("_version")
_ALIGN = 64  # bytes: every piece starts where a fresh allocation would


def _pack(pieces: dict[Piece, Tensor | None]) -> tuple[list[Tensor], Layout]:
    """``pieces`` copied into one flat tensor per dtype; the layout maps each piece to (which
    flat tensor, offset, shape). None pieces are left out."""
    dtypes = list(dict.fromkeys(t.dtype for t in pieces.values() if t is not None))
    layout, ends = {}, [0] * len(dtypes)
    for name, t in pieces.items():
        if t is not None:
            j = dtypes.index(t.dtype)
            align = _ALIGN // t.element_size()
            start = -(-ends[j] // align) * align
            layout[name] = (j, start, tuple(t.shape))
            ends[j] = start + t.numel()
    device = next(t.device for t in pieces.values() if t is not None)
    packs = [torch.empty(n, dtype=dtype, device=device) for n, dtype in zip(ends, dtypes)]
    for name, (j, start, shape) in layout.items():
        packs[j][start:start + pieces[name].numel()].view(shape).copy_(pieces[name])
    return packs, layout


def unpack(packs: list[Tensor], layout: Layout) -> tuple[dict[int, dict[str, Tensor]], dict[str, Tensor]]:
    """The views of :class:`StepWeights` in ``packs``: a dict per layer and one of the rest
    (``head``, ``norm``); a piece the model has no tensor for is absent."""
    layers, rest = {}, {}
    for (layer, name), (j, start, shape) in layout.items():
        piece = packs[j][start:start + math.prod(shape)].view(shape)
        (rest if layer is None else layers.setdefault(layer, {}))[name] = piece
    return layers, rest


def _t(*layers: torch.nn.Linear) -> Tensor:
    """The weights of ``layers`` (out_i, in) side by side as one contiguous (in, Σ out_i)."""
    return torch.cat([layer.weight for layer in layers]).T.contiguous()


def _layer_weights(block: Block) -> dict[str, Tensor | None]:
    """One decoder layer's pieces of :class:`StepWeights`."""
    attn, mem, ffn = block.attn, block.mem_attn, block.ffn
    weights = {"qkv": _t(attn.q_proj, attn.k_proj, attn.v_proj), "o": _t(attn.o_proj),
               "mq": _t(mem.q_proj), "mo": _t(mem.o_proj),
               "attn_norm": block.attn_norm.weight, "mem_norm": block.mem_norm.weight,
               "ffn_norm": block.ffn_norm.weight, "rope": attn.rope.inv_freq, "mem_rope": mem.rope.inv_freq}
    if isinstance(ffn, MoE):
        experts = ffn.experts
        weights["router"] = _t(ffn.router)
        weights["gate_up"] = torch.stack([torch.cat([e.gate.weight, e.up.weight]) for e in experts])
        weights["down"] = torch.stack([e.down.weight for e in experts])  # (E, D, F)
    else:
        weights["gate_up"] = _t(ffn.gate, ffn.up)
        weights["down"] = _t(ffn.down)
    return weights


def _norm(module: torch.nn.Module, weight: Tensor | None, x: Tensor) -> Tensor:
    """``module`` (an ``nn.RMSNorm``, or an identity) of x, by its weight as packed."""
    if not isinstance(module, torch.nn.RMSNorm):
        return module(x)
    return torch.nn.functional.rms_norm(x, module.normalized_shape, weight, module.eps)


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight (+ bias)``: a linear map by an (in, out) weight copy (:class:`StepWeights`)."""
    y = x @ weight
    return y if bias is None else y + bias


def routed_experts(flat: Tensor, chosen: Tensor, weights: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """The top-k SwiGLU experts of rows ``flat`` (B, D): row b goes through experts
    ``chosen[b]`` (k,) with ``weights[b]`` (k,); stacked weights as :class:`StepWeights`
    holds them. Returns (B, D), each row's contributions added in expert order as
    :meth:`MoE._routed` does.

    The choices are sorted by expert so each expert multiplies only the rows that chose it
    (:func:`grouped_swiglu`, an operator of its own: its groups' sizes depend on the data, which
    the compiler cannot trace). The sort, the gather, the weighting and the sums around it are
    plain tensor operations that inductor compiles with the rest of the step."""
    E, k = gate_up.shape[0], chosen.shape[1]
    picks = chosen.flatten()  # (B·k,)
    order = picks.argsort(stable=True)  # row order kept within each expert
    rows = order // k
    counts = (picks[:, None] == torch.arange(E, device=picks.device)).sum(0)  # (E,), shape known
    y = grouped_swiglu(flat[rows], counts, gate_up, down)  # (B·k, D)
    y = y * weights.flatten()[order, None]
    return torch.zeros_like(flat).index_add_(0, rows, y)


def _grouped_swiglu_kernel(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """The kernel of :func:`grouped_swiglu` on every device."""
    grouped = xs.device.type == "cpu" and hasattr(torch.nn.functional, "grouped_mm")
    return (_grouped_swiglu if grouped else _looped_swiglu)(xs, counts, gate_up, down)


# Registered without an autograd kernel (inference only): ``torch.library.custom_op`` wraps every
# call in a Python autograd function, ≈ 90 µs of a 1 ms call at batch 32 even under ``no_grad``.
_LIBRARY = torch.library.Library("rxt_dist", "DEF")
_LIBRARY.define("grouped_swiglu(Tensor xs, Tensor counts, Tensor gate_up, Tensor down) -> Tensor")
_LIBRARY.impl("grouped_swiglu", _grouped_swiglu_kernel, "CompositeExplicitAutograd")


@torch.library.register_fake("rxt_dist::grouped_swiglu")
def _(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    return xs.new_empty(xs.shape[0], down.shape[1])


def grouped_swiglu(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """SwiGLU experts of rows ``xs`` (N, D) sorted by expert, ``counts`` (E,) rows each: one
    grouped matrix product per weight where torch has one for the device (CPU), else one
    product per expert. Returns (N, D)."""
    return torch.ops.rxt_dist.grouped_swiglu(xs, counts, gate_up, down)


def _swiglu(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _grouped_swiglu(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """SwiGLU experts of rows ``xs`` grouped by expert (``counts`` (E,) rows each), one grouped
    matrix product per weight."""
    ends = counts.cumsum(0).to(torch.int32)
    product = lambda a, w: torch.nn.functional.grouped_mm(a, w, offs=ends)
    return product(_swiglu(product(xs, gate_up.transpose(1, 2))), down.transpose(1, 2))


def _looped_swiglu(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """:func:`_grouped_swiglu` as one product per expert (torch without a grouped product for
    this device)."""
    y = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            y[start:start + n] = _swiglu(xs[start:start + n] @ gate_up[e].T) @ down[e].T
        start += n
    return y


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
        h = _swiglu(torch.einsum("kfd,d->kf", gate_up[pick], flat[0]))  # (k, F)
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
    ``packs`` and ``layout`` the weight copies of :class:`StepWeights`.
    Returns the next-token logits (B, V) and each row's most likely token (B,), as
    ``argmax``: one vectorised reduction fused into the step, where torch's argmax on a CPU
    walks a row one logit at a time (9 µs for `tiny`'s 4,096 logits at batch 1; 71 µs for 32
    rows, blocked as :func:`~rxt_dist.inference.sampling.greedy_tokens` does)."""
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
    """:class:`SwiGLU` of x by the weight copies of :class:`StepWeights` (gate and up in one
    product)."""
    bias = None if ffn.gate.bias is None else torch.cat([ffn.gate.bias, ffn.up.bias])
    return _affine(_swiglu(_affine(x, weights["gate_up"], bias)), weights["down"], ffn.down.bias)


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


def _mark_capacity_dynamic(cache: KVCache) -> None:
    """Mark the cache's capacity dynamic before a call: one graph for every capacity. A mark
    stays on its tensor, so only tensors new since the last step are marked (32 µs a step for
    `nano`'s 12 otherwise; the check reads where torch keeps the marks, and marks again
    should that place move)."""
    for t in (*cache.keys, *cache.values):
        if 2 not in getattr(t, "_dynamo_dynamic_indices", ()):
            torch._dynamo.mark_dynamic(t, 2)


def _mark_batch_dynamic(ids: Tensor, cache: KVCache, memory: MemoryKV, slot_mask: Tensor | None) -> None:
    """Mark the batch dimension of every input dynamic before a call: traced first at some
    batch size, the step would otherwise be specialised to it and compiled again for the next
    size."""
    mark = torch._dynamo.mark_dynamic
    mark(ids, 0)
    mark(cache.lengths, 0)
    for t in (*cache.keys, *cache.values):
        mark(t, 0)
    for k, v in memory:
        mark(k, 0)
        mark(v, 0)
    if slot_mask is not None:
        mark(slot_mask, 0)


@functools.cache
def warn_if_scalar_kernels() -> bool:
    """Log a WARNING, once per process, where inductor would compile this x86 or ARM CPU's
    kernels without vector instructions, and return whether it would.

    Inductor vectorises its C++ kernels only after a test library built for the CPU's vector
    instructions loads in a child Python, which inherits this process's ``sys.path``; where that
    child fails (a file named like a standard module beside the script, a broken compiler) every
    kernel silently comes out scalar, the compiled steps several times slower
    (docs/BENCHMARKS.md, "Decoding")."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return False
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        scalar = not pick_vec_isa()
    except Exception:  # noqa: BLE001 - a private API that may move; the check is advice only
        return False
    if scalar:
        logger.warning("inductor found no usable vector instructions on this %s CPU: the compiled steps will run "
                       "scalar C++ kernels, several times slower. Its check loads a test library in a child Python "
                       "that inherits sys.path: look for a file named like a standard module (re.py, ctypes.py, ...) "
                       "in a folder on sys.path, or a C++ compiler that fails", platform.machine())
    return scalar


def _own_code(fn: Callable) -> Callable:
    """``fn`` on a copy of its code object with a name of its own. Dynamo keeps compiled graphs
    and their guards per code object, and what it has learnt about sizes per code *name* (file,
    line, name): with the lambdas shared, `tiny` compiled after `nano` in one process had every
    size that differs between them made dynamic — 44 more arguments to its batch-1 step, which
    took 0.75 ms where alone it takes 0.43 (docs/BENCHMARKS.md)."""
    code = fn.__code__
    code = code.replace(co_name=f"{code.co_name}_{next(_COMPILED)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_COMPILED = itertools.count()


def _compile(model: RxTModel, fn: Callable) -> Callable:
    """``fn`` through ``torch.compile`` (inductor) as the compiled steps need it.

    Sizes are constants but for the dimensions the calls mark dynamic (batch, capacity, prompt
    or interaction length). With ``dynamic=True`` every size was a symbol — the weights' too —
    and dynamo's duck sizing gave equal sizes one symbol: a model whose FFN width equalled the
    warm-up cache's capacity compiled again on its first longer answer. Constants also trace
    faster (cold compiles 16–27% shorter) and made `nano`'s batch-1 step 11–15% faster.

    On a CPU the graph's wrapper — the code that calls its ~100 kernels and products in turn —
    is C++ rather than Python (``cpp_wrapper``): 14–20% off a turn of `nano` and `debug` at
    batch 1, a cold compile about as long (`debug` −14%, `nano` +9%; docs/BENCHMARKS.md,
    "Decoding"). On a GPU the default wrapper stays (not measured there)."""
    cpu = model.embed.weight.device.type == "cpu"
    return torch.compile(_own_code(fn), dynamic=None, options={"cpp_wrapper": True} if cpu else None)


class CompiledDecoder:
    """The compiled :func:`prefill_step` and :func:`decode_step` of one model, and the way a
    :class:`KVCache` feeds them.

    Compiles on the first step of each new kind of shape (batch 1; any larger batch), which
    takes tens of seconds on a CPU; :meth:`warm_up` does that before the first request.

    A decoding step checks only its tensors' guards once its kind of call has been seen:
    dynamo's guards on everything else the step reads — the model's modules and constants, the
    weights' layout, some 1,500 checks for `nano` — cost ≈ 0.16 ms of a batch-1 step there
    (8%), most of it cache misses after the step has streamed its weights (docs/BENCHMARKS.md). The
    first call of each kind (batch 1 or more, with or without a memory mask, this weight
    layout, this many torch threads) runs every guard, compiling if needed; later calls of that
    kind run under ``skip_guard_eval_unsafe``, where dynamo still checks every input tensor's
    dtype, shape and strides and the guards that have told its graphs apart, and compiles when
    none matches. The step's graphs live on code objects of this decoder's own (:func:`_own_code`),
    so no other model's graph can be taken for its. Not checked again: process-wide state the
    call does not set itself (the grad mode it does: off) — an autocast region entered after a
    kind's first call, say, would leave the step decoding as it was compiled.
    """

    noun, verb = "decoding", "decoding"

    def __init__(self, model: RxTModel) -> None:
        if not isinstance(model, RxTModel):
            raise TypeError(f"compiled decoding is implemented for RxT models, not {type(model).__name__}")
        self.model = model
        self._lock = threading.Lock()
        self._weights = weights = StepWeights(model)
        step = lambda ids, lengths, keys, values, memory, mask, packs: decode_step(  # noqa: E731
            model, weights.layout, ids, lengths, keys, values, memory, mask, packs)
        # batch 1 and larger batches compile apart (batch 1 is specialised), each on a code
        # object of its own, so a step's graph is chosen by which function is called
        self._steps: dict[bool, StepFn] = {batched: _compile(model, step) for batched in (False, True)}
        self._checked: set[tuple] = set()
        self._prefill_fn: PrefillFn = _compile(
            model, lambda ids, lengths, stm, keys, values, mask, packs: prefill_step(
                model, weights.layout, ids, lengths, stm, keys, values, mask, packs))

    def refresh_weights(self) -> None:
        """Renew the step's weight copies if any weight has changed (:class:`StepWeights`);
        :meth:`prefill` does it, and a :class:`~rxt_dist.inference.DecodeBatch` whenever it
        admits rows without it."""
        with self._lock:
            self._weights.refresh()

    @torch.no_grad()
    def prefill(self, ids: Tensor, lengths: Tensor, stm: Tensor, memory_mask: Tensor | None,
                cache: KVCache) -> tuple[Tensor, MemoryKV]:
        """Prefill prompts ``ids`` (B, T) of ``lengths`` (B,) from ``stm`` (L, B, S, D) into
        the empty ``cache`` (advanced by ``lengths``); ``memory_mask`` (B, S) or None. Returns
        the logits of each prompt's next token (B, V) and the projected memory, as
        :func:`prefill_step`."""
        if cache.max_length():
            raise ValueError("the compiled prefill starts a turn: it needs an empty cache")
        B, T = ids.shape
        # room for the next token too: the step needs it, and a capacity never equal to the
        # prompt's length keeps one graph (the graph is traced with the two unequal)
        cache.reserve(T + 1)
        # an STM with autograd history (a learned initial STM) or other strides (a slice of a
        # batch's) would make a graph of its own
        stm = stm.detach().contiguous()
        mark = torch._dynamo.mark_dynamic
        mark(ids, 1)  # prompt lengths vary: one graph for all of them
        _mark_capacity_dynamic(cache)
        if B > 1:  # as :meth:`step`: every batch above 1 shares one graph. The cache's batch is
            # marked only here, as the step marks it: a mark left on a batch-1 cache would make
            # the step's batch-1 graph compile again for it
            for t in (ids, lengths, *cache.keys, *cache.values) + ((memory_mask,) if memory_mask is not None else ()):
                mark(t, 0)
            mark(stm, 1)
        with self._lock:
            self._weights.refresh()
            logits, memory = self._prefill_fn(ids, lengths, stm, cache.keys, cache.values, memory_mask,
                                               self._weights.packs)
        cache.advance(lengths)
        return logits, memory

    @torch.no_grad()
    def step(self, ids: Tensor, cache: KVCache, memory: MemoryKV,
             memory_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Decode ``ids`` (B, 1) after ``cache`` (advanced by one); returns the logits (B, V)
        and the greedy tokens (B,), their ``argmax``. The weights are as the last
        :meth:`prefill` or :meth:`refresh_weights` found them."""
        cache.reserve(cache.max_length() + 1)
        slot_mask = memory_mask[:, None, None, :] if memory_mask is not None else None  # (B, 1, 1, S)
        # One memory layout, so strides never make a new graph: a batch's memory is contiguous
        # already (DecodeBatch), the projection of a lone STM is a transposed view.
        memory = [(k.contiguous(), v.contiguous()) for k, v in memory]
        _mark_capacity_dynamic(cache)
        batched = ids.shape[0] > 1
        if batched:  # every batch above 1 shares one graph, whatever size came first
            _mark_batch_dynamic(ids, cache, memory, slot_mask)
        with self._lock:  # one compilation at a time
            kind = (batched, slot_mask is None, id(self._weights.layout), torch.get_num_threads())
            args = (ids, cache.lengths, cache.keys, cache.values, memory, slot_mask, self._weights.packs)
            if kind in self._checked:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    logits, greedy = self._steps[batched](*args)
            else:
                logits, greedy = self._steps[batched](*args)
                # kinds checked under another weight layout or thread count are checked again:
                # the guards they would skip are the ones that tell those graphs apart
                self._checked = {k for k in self._checked if k[2:] == kind[2:]} | {kind}
        cache.advance(1)
        return logits, greedy

    @torch.no_grad()
    def warm_up(self, batches: tuple[int, ...] = (1, 2)) -> None:
        """Compile the prefill and the step for these batch sizes now (on throwaway rows)."""
        model = self.model
        device = model.embed.weight.device
        if device.type == "cpu":
            warn_if_scalar_kernels()
        for batch in batches:
            stm = model.initial_stm(batch)
            ids = torch.zeros(batch, 5, dtype=torch.long, device=device)
            lengths = torch.tensor([5 - row % 2 for row in range(batch)], device=device)
            self.prefill(ids, lengths, stm, None, model.new_cache(batch))
            step_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)  # strides as a batch's tokens
            self.step(step_ids, model.new_cache(batch), model.project_memory(stm), None)


class CompiledMemoryUpdate:
    """The compiled :func:`consolidate_step` of one model: a batch of interactions merged into
    their STMs as :meth:`RxTModel.consolidate` does, fused by inductor. The batch and the
    interaction length are dynamic dimensions (batch 1 compiles apart); :meth:`warm_up`
    compiles before the first update."""

    noun, verb = "memory update", "consolidating"

    def __init__(self, model: RxTModel) -> None:
        if not isinstance(model, RxTModel):
            raise TypeError(f"the compiled memory update is implemented for RxT models, not {type(model).__name__}")
        self.model = model
        self._lock = threading.Lock()
        self._fn: Callable[[Tensor, Tensor, Tensor], Tensor] = _compile(
            model, lambda stm, ids, lengths: consolidate_step(model, stm, ids, lengths))

    @torch.no_grad()
    def __call__(self, stm: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """STM (L, B, S, D) and right-padded interactions ``ids`` (B, T) of ``lengths`` (B,)
        → the new STM (L, B, S, D)."""
        stm = stm.detach().contiguous()  # as in :meth:`CompiledDecoder.prefill`
        mark = torch._dynamo.mark_dynamic
        mark(ids, 1)
        if ids.shape[0] > 1:
            mark(ids, 0)
            mark(lengths, 0)
            mark(stm, 1)
        with self._lock:
            return self._fn(stm, ids, lengths)

    @torch.no_grad()
    def warm_up(self, batches: tuple[int, ...] = (1, 2)) -> None:
        """Compile for these batch sizes now (on throwaway interactions)."""
        device = self.model.embed.weight.device
        if device.type == "cpu":
            warn_if_scalar_kernels()
        for batch in batches:
            ids = torch.zeros(batch, 6, dtype=torch.long, device=device)
            lengths = torch.tensor([6 - row % 2 for row in range(batch)], device=device)
            self(self.model.initial_stm(batch), ids, lengths)


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


Compiled = CompiledDecoder | CompiledMemoryUpdate


def compiled_or_eager(model: RxTModel, batches: tuple[int, ...] = (1, 2),
                      kind: type[Compiled] = CompiledDecoder) -> Compiled | None:
    """``kind`` (the compiled prefill and decoding step, or the compiled memory update) of
    ``model``, compiled now for ``batches``; ``None`` — run it eagerly — with a WARNING naming
    the reason where it cannot be had here: a model it does not cover, or a machine where
    inductor cannot compile (it needs a C++ compiler on CPU). Answers are the same either way;
    only the speed differs."""
    try:
        compiled = kind(model)
        compiled.warm_up(batches)
    except Exception as exc:  # noqa: BLE001 - inductor's failures have many types; each means "eager"
        first_line = (str(exc).strip().splitlines() or [""])[0]  # inductor's messages run to pages
        logger.warning("compiled %s unavailable, %s eagerly: %s: %s", kind.noun, kind.verb, type(exc).__name__,
                       first_line)
        return None
    return compiled
