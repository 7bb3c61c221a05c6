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
    """Per-layer keys/values (B, Nkv, C, H) plus per-row valid lengths (B,).

    Writes go in place into preallocated tensors (capacity doubles when full). The lengths
    are kept on the host too: when every row holds the same number of positions — always at
    batch 1, and whenever a batch was admitted together — a write is a plain slice copy and
    the decoder needs no mask for a one-token step.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], lengths: Tensor) -> None:
        self.keys = keys
        self.values = values
        self.lengths = lengths
        self.host_lengths: list[int] = lengths.tolist()
        self._write_index: tuple[int, Tensor] | None = None

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
    ) -> KVCache:
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

    @property
    def uniform_length(self) -> int | None:
        """The number of cached positions when every row holds the same, else None."""
        lens = self.host_lengths
        if not lens:
            return None
        first = lens[0]
        return first if all(n == first for n in lens) else None

    def max_length(self) -> int:
        return max(self.host_lengths, default=0)

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` positions per row (doubling, so growth is amortised)."""
        capacity = max(self.capacity, 1)
        while capacity < needed:
            capacity *= 2
        pad = capacity - self.capacity
        if pad:
            grow = lambda t: torch.nn.functional.pad(t, (0, 0, 0, pad))
            self.keys = [grow(k) for k in self.keys]
            self.values = [grow(v) for v in self.values]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write T new keys/values (B, Nkv, T, H) of ``layer`` after each row's cached
        positions, in place; return the layer's keys/values up to the longest row
        (B, Nkv, K, H)."""
        T = k.shape[2]
        start = self.uniform_length
        end = (start if start is not None else self.max_length()) + T
        self.reserve(end)
        keys, values = self.keys[layer], self.values[layer]
        if start is not None:
            keys[:, :, start:end].copy_(k)
            values[:, :, start:end].copy_(v)
        else:
            index = self._index(T, k)
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
        return keys[:, :, :end], values[:, :, :end]

    def _index(self, T: int, like: Tensor) -> Tensor:
        """Where each row's T new positions go (B, Nkv, T, H), built once per step."""
        if self._write_index is None or self._write_index[0] != T:
            index = self.lengths[:, None] + torch.arange(T, device=like.device)[None]  # (B, T)
            self._write_index = (T, index[:, None, :, None].expand_as(like))
        return self._write_index[1]

    def advance(self, new_lens: Tensor | int) -> None:
        """Mark ``new_lens`` (B,) — or the same int for every row — more positions of each
        row as valid (after all layers ran)."""
        if isinstance(new_lens, int):
            self.host_lengths = [n + new_lens for n in self.host_lengths]
        else:
            self.host_lengths = [n + d for n, d in zip(self.host_lengths, new_lens.tolist())]
        self.lengths = self.lengths + new_lens
        self._write_index = None

    def select(self, rows: Sequence[int] | Tensor) -> KVCache:
        """A cache holding only ``rows``, in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        return KVCache(
            [k.index_select(0, idx) for k in self.keys],
            [v.index_select(0, idx) for v in self.values],
            self.lengths.index_select(0, idx),
        )

    def clone(self) -> KVCache:
        """An independent copy (later writes to either leave the other unchanged)."""
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.lengths.clone())

    @staticmethod
    def cat(caches: Sequence[KVCache]) -> KVCache:
        """Stack the rows of several caches (capacities are padded to the largest)."""
        capacity = max(c.capacity for c in caches)
        for c in caches:
            c.reserve(capacity)
        num_layers = len(caches[0].keys)
        return KVCache(
            [torch.cat([c.keys[i] for c in caches]) for i in range(num_layers)],
            [torch.cat([c.values[i] for c in caches]) for i in range(num_layers)],
            torch.cat([c.lengths for c in caches]),
        )

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
