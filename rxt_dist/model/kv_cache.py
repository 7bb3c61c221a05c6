"""Self-attention key/value cache for a batch of sequences of different lengths.

Shape legend: B rows (sequences), Nkv key/value heads, C capacity, K keys, H head dim.

Row b holds ``lengths[b]`` valid positions, left-aligned; positions past that are garbage
that attention masks out (and the next write overwrites). Rows can be selected and
concatenated, which is what lets a serving loop admit and retire sequences between steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys/values (B, Nkv, C, H) plus per-row valid lengths (B,)."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], lengths: Tensor) -> None:
        self.keys = keys
        self.values = values
        self.lengths = lengths

    @classmethod
    def empty(
        cls,
        num_layers: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int = 64,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "KVCache":
        shape = (batch, kv_heads, capacity, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(keys, values, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _grow(self, needed: int) -> None:
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        pad = capacity - self.capacity
        if pad:
            grow = lambda t: torch.nn.functional.pad(t, (0, 0, 0, pad))  # noqa: E731
            self.keys = [grow(k) for k in self.keys]
            self.values = [grow(v) for v in self.values]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write T new keys/values (B, Nkv, T, H) of ``layer`` after each row's cached
        positions; return the layer's keys/values up to the longest row (B, Nkv, K, H)."""
        T = k.shape[2]
        end = int(self.lengths.max()) + T
        self._grow(end)
        index = (self.lengths[:, None] + torch.arange(T, device=k.device)[None])  # (B, T)
        index = index[:, None, :, None].expand_as(k)  # (B, Nkv, T, H)
        self.keys[layer] = self.keys[layer].scatter(2, index, k)
        self.values[layer] = self.values[layer].scatter(2, index, v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new_lens: Tensor) -> None:
        """Mark ``new_lens`` (B,) more positions of each row as valid (after all layers ran)."""
        self.lengths = self.lengths + new_lens

    def select(self, rows: Sequence[int] | Tensor) -> "KVCache":
        """A cache holding only ``rows``, in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        return KVCache(
            [k.index_select(0, idx) for k in self.keys],
            [v.index_select(0, idx) for v in self.values],
            self.lengths.index_select(0, idx),
        )

    @staticmethod
    def cat(caches: Sequence["KVCache"]) -> "KVCache":
        """Stack the rows of several caches (capacities are padded to the largest)."""
        capacity = max(c.capacity for c in caches)
        for c in caches:
            c._grow(capacity)
        num_layers = len(caches[0].keys)
        return KVCache(
            [torch.cat([c.keys[i] for c in caches]) for i in range(num_layers)],
            [torch.cat([c.values[i] for c in caches]) for i in range(num_layers)],
            torch.cat([c.lengths for c in caches]),
        )

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
