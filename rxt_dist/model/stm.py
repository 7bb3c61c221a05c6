"""The Short-Term Memory as a value: split, stack and (de)serialise one conversation's STM.

Shape legend: L layers, B conversations, S slots, D model dim. A batched STM is (L, B, S, D);
one conversation's STM is (L, S, D). A fresh STM comes from :meth:`RxTModel.initial_stm`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

STM_FORMAT = "rxt-stm/1"


def split_stm(stm: Tensor) -> list[Tensor]:
    """(L, B, S, D) → B tensors (L, S, D), one per conversation."""
    return [stm[:, b] for b in range(stm.shape[1])]


def stack_stm(stms: Sequence[Tensor]) -> Tensor:
    """B tensors (L, S, D) → (L, B, S, D)."""
    return torch.stack(list(stms), dim=1)


def stm_to_bytes(stm: Tensor) -> bytes:
    """Serialise one conversation's STM (L, S, D) (safetensors with a format tag)."""
    if stm.dim() != 3:
        raise ValueError(f"stm has shape {tuple(stm.shape)}: expected one conversation's (L, S, D)")
    return st_save({"stm": stm.detach().cpu().contiguous()}, metadata={"format": STM_FORMAT})


def stm_from_bytes(data: bytes, expected_shape: tuple[int, int, int] | None = None) -> Tensor:
    """Parse bytes written by :func:`stm_to_bytes`; check the shape when one is expected."""
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"STM bytes are not a stored STM ({len(data)} bytes): {exc}") from exc
    if set(tensors) != {"stm"}:
        raise ValueError(f"STM bytes hold tensors {sorted(tensors)}: expected exactly 'stm'")
    stm = tensors["stm"]
    if expected_shape is not None and tuple(stm.shape) != tuple(expected_shape):
        raise ValueError(
            f"stored STM has shape {tuple(stm.shape)} but the model expects {tuple(expected_shape)} "
            "(L, S, D): it was written by a model with a different memory size"
        )
    return stm
