"""The weights the compiled decoding step multiplies by: copies laid out for its products,
packed into one flat tensor per dtype (:class:`StepWeights`), and the views the step takes of
them (:func:`unpack`).

Shape legend: L layers, D model dim, N query heads, Nkv key/value heads, H head dim, F FFN
hidden dim, E experts, V vocabulary.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from rxt_dist.model.layers import Block, MoE
from rxt_dist.model.rxt import RxTModel


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
