"""Memory health: are the slots of an STM layer distinct, and how much does each update write?

Shape legend: L layers, B conversations, S memory slots, D model dim.

A collapsed memory has every slot of a layer holding (nearly) the same vector: its mean
pairwise slot cosine is ≈ 1 and its effective rank ≈ 1, and it can hold about one thing. The
three statistics here are logged by training stages 3 and 4 and reported by the quality
evaluation for held-out conversations:

``slot_cosine``
    Mean cosine similarity over the S·(S−1) ordered pairs of distinct slots of a layer.
``effective_rank``
    ``exp(H(p))`` with ``p`` the singular values of the layer's (S, D) slot matrix divided by
    their sum (Roy & Vetterli's effective rank): 1 for one direction, S for S orthogonal
    slots of equal norm.
``gate_openness``
    The mean of the residual gate G of an update (0: the update keeps the old memory, 1: it
    replaces it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def slot_cosine(stm: Tensor) -> Tensor:
    """Mean pairwise cosine between distinct slots: STM (L, B, S, D) → (L, B)."""
    S = stm.shape[2]
    if S < 2:
        return stm.new_ones(stm.shape[:2])
    unit = torch.nn.functional.normalize(stm.float(), dim=-1)  # (L, B, S, D)
    gram = unit @ unit.transpose(-1, -2)  # (L, B, S, S)
    off_diagonal = gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1)  # (L, B)
    return off_diagonal / (S * (S - 1))


def effective_rank(stm: Tensor) -> Tensor:
    """Effective rank of each layer's slot matrix: STM (L, B, S, D) → (L, B), in [1, min(S, D)]."""
    sv = torch.linalg.svdvals(stm.float())  # (L, B, min(S, D))
    p = sv / sv.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(dim=-1)  # (L, B)
    return entropy.exp()


@dataclass
class MemoryHealth:
    """Per-layer sums of the statistics over many STMs (and updates), for a mean at the end."""

    cosine: list[float] = field(default_factory=list)
    rank: list[float] = field(default_factory=list)
    states: int = 0
    gate: list[float] = field(default_factory=list)
    updates: int = 0

    def add_state(self, stm: Tensor) -> None:
        """Count the slots of STM (L, B, S, D) (B conversations at some turn)."""
        cos = slot_cosine(stm).sum(dim=1).tolist()  # (L,)
        rank = effective_rank(stm).sum(dim=1).tolist()
        self.cosine = _add(self.cosine, cos)
        self.rank = _add(self.rank, rank)
        self.states += stm.shape[1]

    def add_gates(self, openness: Tensor | None) -> None:
        """Count the gate openness (L, B) of B updates (None: the gate kind has no gate)."""
        if openness is None:
            return
        self.gate = _add(self.gate, openness.float().sum(dim=1).tolist())
        self.updates += openness.shape[1]

    def merge(self, other: MemoryHealth) -> None:
        """Add the sums of ``other`` (the same statistics over other STMs) to these."""
        self.cosine = _add(self.cosine, other.cosine)
        self.rank = _add(self.rank, other.rank)
        self.gate = _add(self.gate, other.gate)
        self.states += other.states
        self.updates += other.updates

    def to_dict(self) -> dict[str, list[float] | int | None]:
        """``{"slot_cosine": [per layer], "effective_rank": [...], "gate_openness": [...] | None,
        "states": n, "updates": n}`` — means over everything added."""
        mean = lambda xs, n: [x / n for x in xs] if n else None  # noqa: E731
        return {
            "slot_cosine": mean(self.cosine, self.states),
            "effective_rank": mean(self.rank, self.states),
            "gate_openness": mean(self.gate, self.updates),
            "states": self.states,
            "updates": self.updates,
        }

    def metrics(self, prefix: str = "mem") -> dict[str, float]:
        """Flat scalars for training metrics: ``mem_cos_l0``, ``mem_rank_l0``, ``mem_gate_l0``, …"""
        out: dict[str, float] = {}
        d = self.to_dict()
        for key, short in (("slot_cosine", "cos"), ("effective_rank", "rank"), ("gate_openness", "gate")):
            for i, v in enumerate(d[key] or []):
                out[f"{prefix}_{short}_l{i}"] = v
        return out


def _add(acc: list[float], values: list[float]) -> list[float]:
    return [a + v for a, v in zip(acc, values, strict=True)] if acc and values else list(acc or values)
