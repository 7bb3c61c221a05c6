"""A mixture of experts' feed-forward products for many rows at once, as the compiled steps run
them (:mod:`rxt_dist.inference.steps`): the rows sorted by the expert they chose, each expert
multiplying only its own rows (:func:`routed_experts`), through one operator of this project's
(:func:`grouped_swiglu`) that the compiler calls as it is.

Shape legend: B rows, D model dim, F an expert's hidden dim, E experts, k experts per row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def routed_experts(flat: Tensor, chosen: Tensor, weights: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """The top-k SwiGLU experts of rows ``flat`` (B, D): row b goes through experts
    ``chosen[b]`` (k,) with ``weights[b]`` (k,); stacked weights as
    :class:`~rxt_dist.inference.step_weights.StepWeights` holds them. Returns (B, D), each
    row's contributions added in expert order as :meth:`MoE._routed` does.

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


def swiglu(gate_up: Tensor) -> Tensor:
    """SiLU(gate) · up of the two halves of ``gate_up`` (…, 2F): (…, F)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _grouped_swiglu(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """SwiGLU experts of rows ``xs`` grouped by expert (``counts`` (E,) rows each), one grouped
    matrix product per weight."""
    ends = counts.cumsum(0).to(torch.int32)
    product = lambda a, w: torch.nn.functional.grouped_mm(a, w, offs=ends)
    return product(swiglu(product(xs, gate_up.transpose(1, 2))), down.transpose(1, 2))


def _looped_swiglu(xs: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """:func:`_grouped_swiglu` as one product per expert (torch without a grouped product for
    this device)."""
    y = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            y[start:start + n] = swiglu(xs[start:start + n] @ gate_up[e].T) @ down[e].T
        start += n
    return y
