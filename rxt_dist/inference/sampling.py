"""Sampling settings and next-token selection: greedy, temperature, top-k, top-p, seeded.

Shape legend: B rows, V vocabulary.

Each row samples with its own ``torch.Generator`` seeded from its settings, so a
conversation draws the same tokens whether it is decoded alone or batched with others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    """How one answer is sampled."""

    max_new_tokens: int = 64
    """Most tokens generated (the end-of-answer token not counted)."""
    temperature: float = 0.0
    """0 → greedy; otherwise logits are divided by it before sampling."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1: all)."""
    seed: int | None = None
    """Seed of this answer's random stream (None: nondeterministic)."""
    ignore_eos: bool = False
    """Never choose the end-of-answer token: the answer runs to ``max_new_tokens`` (what a
    throughput benchmark asks for, so that every answer has the length it sets; vLLM's
    ``ignore_eos``)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be ≥ 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be ≥ 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be ≥ 0 (0 disables it)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self) -> torch.Generator | None:
        """A fresh random stream for one answer (None for greedy decoding)."""
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Temperature, top-k and top-p applied to one row of logits (V,)."""
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best one stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


_ARGMAX_BLOCK = 64
"""Width of the blocks :func:`greedy_tokens` reduces a row of logits in."""
_ARGMAX_BLOCKED_FROM = 16384
"""Logits (B·V) from which the blocked argmax pays on a CPU (measured, docs/BENCHMARKS.md)."""


def greedy_tokens(logits: Tensor) -> Tensor:
    """The first most likely token of each row of ``logits`` (B, V), as ``argmax(dim=-1)``.

    On a CPU torch's argmax walks a row one element at a time (about 10 ns each); for a batch it
    is faster to take the maximum of each block of 64 logits (a vectorised reduction), the first
    block holding the row's maximum, then the first maximum inside that block: the same index,
    ties and NaNs (which argmax takes as the maximum, as ``amax`` propagates them) included."""
    B, V = logits.shape
    if logits.device.type != "cpu" or B * V < _ARGMAX_BLOCKED_FROM or V % _ARGMAX_BLOCK:
        return logits.argmax(dim=-1)
    blocks = logits.reshape(B, V // _ARGMAX_BLOCK, _ARGMAX_BLOCK)
    block = blocks.amax(dim=-1).argmax(dim=-1)  # (B,)
    inner = blocks[torch.arange(B, device=logits.device), block].argmax(dim=-1)  # (B,)
    return block * _ARGMAX_BLOCK + inner


def sample_next(
    logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
    greedy: Tensor | None = None,
) -> Tensor:
    """Choose one token per row from ``logits`` (B, V). Returns (B,) token ids. ``greedy``:
    the rows' ``argmax`` where the caller has it already (the compiled step computes it)."""
    if all(p.greedy for p in params):
        return greedy if greedy is not None else greedy_tokens(logits)  # (B,): one call for the whole batch
    tokens = []
    for row, p, gen in zip(logits, params, generators):
        if p.greedy:
            tokens.append(int(row.argmax()))
            continue
        probs = filter_logits(row, p).softmax(dim=-1)
        tokens.append(int(torch.multinomial(probs.cpu(), 1, generator=gen)))
    return torch.tensor(tokens, dtype=torch.long, device=logits.device)
