"""StateX for RxT: grow the Short-Term Memory of a trained model after training.

StateX (arXiv 2509.22630) expands the recurrent state of an already-trained model,
re-initialises the parameters that write into the expanded state, inherits everything else
and post-trains briefly. For RxT the state is the STM (L, S, D): the slots are a set, every
projection is independent of S, so growing S → S′ only has to grow the *slot-indexed*
parameters (the static gate's per-slot logit (S, 1) and the learned initial STM (L, S, D)).

Two modes (:class:`ExpansionConfig`):

``reinit`` (the StateX default)
    The memory attention of the chosen layers — its projections, norms and residual gate,
    everything under ``memory_attention.layers.{i}`` — is re-initialised with the project's
    initialisation (:func:`rxt_dist.model.init.init_weights`); the other layers keep theirs.
``inherit``
    Every parameter is kept; only the slot-indexed ones grow.

**Layers.** The STM is one rectangular (L, S, D) tensor that the decoder, the serving batcher
and the session store all rely on, so S′ applies to every layer. ``layers`` chooses which
layers get the StateX treatment: in ``reinit`` mode the layers whose memory attention is
rebuilt for the larger state (default: all). ``inherit`` changes no layer's parameters beyond
the slot-indexed rows, which every layer must grow, so it takes no layer subset.

**New slot-indexed rows.** New slot j (S ≤ j < S′) copies slot ``j mod S`` and adds Gaussian
noise of standard deviation ``noise × RMS(parameter)``: exact copies would receive identical
updates and gradients forever and could never diverge. Rows 0…S−1 are inherited bit for bit.
(With the ``normal``/``zeros`` STM initialisation and a non-static gate a model has no
slot-indexed parameter at all: new slots start like old ones, from the initial STM.)

The shared embedding, decoder, encoder and heads are always inherited bit for bit. The new
model directory keeps the tokenizer and records the expansion as JSON under the ``statex``
key of the safetensors metadata (:func:`read_expansion`).

Shape legend: L layers, S slots before, S′ slots after, D model dim.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
from torch import Tensor

from rxt_dist.model import RxTModel, config_from_dict, load_model_dir, save_model_dir
from rxt_dist.model.io import WEIGHTS_FILE, load_tokenizer_json

log = logging.getLogger(__name__)

EXPANSION_MODES = ("reinit", "inherit")
METADATA_KEY = "statex"
"""Key of the expansion record in the safetensors metadata of an expanded model."""
RECORD_FORMAT = "rxt-statex/1"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class ExpansionConfig:
    """How to grow the STM: to how many slots, which mode, which layers, how much noise."""

    slots: int | None = None
    """S′, the new number of slots per layer. Give this or ``factor``."""
    factor: float | None = None
    """S′ = round(S × factor), > 1. Give this or ``slots``."""
    mode: str = "reinit"
    """``reinit``: re-initialise the memory attention (and gate) of ``layers``; ``inherit``:
    keep every parameter and grow only the slot-indexed ones."""
    layers: tuple[int, ...] | None = None
    """``reinit`` only: the layers whose memory attention is re-initialised (None: all)."""
    noise: float = 0.02
    """Noise on each copied slot-indexed row, relative to the RMS of the parameter (> 0)."""
    seed: int = 0
    """Seed of the re-initialisation and of the noise."""

    def __post_init__(self) -> None:
        _require((self.slots is None) != (self.factor is None),
                 f"slots={self.slots}, factor={self.factor}: give exactly one of them "
                 "(slots=S′, or factor with S′ = round(S × factor))")
        if self.slots is not None:
            _require(isinstance(self.slots, int) and not isinstance(self.slots, bool) and self.slots >= 2,
                     f"slots={self.slots!r}: must be an integer ≥ 2 (the new slot count S′)")
        if self.factor is not None:
            _require(isinstance(self.factor, (int, float)) and not isinstance(self.factor, bool)
                     and self.factor > 1,
                     f"factor={self.factor!r}: must be a number > 1 (S′ = round(S × factor); "
                     "StateX only grows the STM)")
        _require(self.mode in EXPANSION_MODES, f"mode={self.mode!r}: must be one of {EXPANSION_MODES}")
        if self.layers is not None:
            self.layers = tuple(self.layers)
            _require(self.mode == "reinit",
                     f"layers={list(self.layers)}: only mode='reinit' takes a layer subset; 'inherit' "
                     "re-initialises nothing and every layer's slot-indexed rows must grow (the STM "
                     "has one slot count for all layers). Drop layers or use mode='reinit'")
            _require(len(self.layers) > 0, "layers=[]: name at least one layer, or None for all")
            _require(all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers),
                     f"layers={list(self.layers)}: must be layer indices ≥ 0")
            _require(len(set(self.layers)) == len(self.layers),
                     f"layers={list(self.layers)}: each layer at most once")
        _require(self.noise > 0, f"noise={self.noise}: must be > 0 so that copied slot rows are never "
                                 "exact copies (they could never diverge)")

    def target_slots(self, current: int) -> int:
        """S′ for a model with ``current`` slots; raises when that would not grow the STM."""
        target = self.slots if self.slots is not None else round(current * self.factor)
        what = f"slots={self.slots}" if self.slots is not None else f"factor={self.factor} (S′ = {target})"
        _require(target > current,
                 f"{what}: the model has S={current} slots; StateX grows the STM, S′ must be > {current}"
                 + (" — shrinking is not supported" if target < current else ""))
        return target

    def chosen_layers(self, num_layers: int) -> tuple[int, ...]:
        """Layers whose memory attention is re-initialised (none in ``inherit`` mode)."""
        if self.mode == "inherit":
            return ()
        if self.layers is None:
            return tuple(range(num_layers))
        bad = [i for i in self.layers if i >= num_layers]
        _require(not bad, f"layers={list(self.layers)}: {bad} out of range for a model with "
                          f"{num_layers} layers (valid: 0–{num_layers - 1})")
        return tuple(sorted(self.layers))


@dataclass
class Expansion:
    """An expanded model and the record of what was done to it."""

    model: RxTModel
    record: dict[str, Any] = field(default_factory=dict)


def expand_model(model: RxTModel, cfg: ExpansionConfig) -> Expansion:
    """Grow ``model``'s STM as ``cfg`` says; returns a new model (``model`` is not changed)."""
    if not isinstance(model, RxTModel):
        kind = getattr(getattr(model, "cfg", None), "model_type", type(model).__name__)
        raise ValueError(f"model is a {kind} model: it has no STM to expand (StateX needs an RxT model)")
    S, L = model.cfg.stm.num_slots, model.cfg.num_layers
    target = cfg.target_slots(S)
    reinit = cfg.chosen_layers(L)
    grown = _fresh_model(model, target, cfg.seed)
    old, new = model.state_dict(), grown.state_dict()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    tensors: dict[str, Tensor] = {}
    resized, reinitialised = [], []
    for name, fresh in new.items():
        if _in_layers(name, reinit):
            tensors[name] = fresh
            reinitialised.append(name)
        elif old[name].shape != fresh.shape:
            tensors[name] = _grow_rows(old[name], _slot_axis(name, old[name], fresh, S, target),
                                       target, cfg.noise, generator)
            resized.append(name)
        else:
            tensors[name] = old[name].clone()
    grown.load_state_dict(tensors)
    grown.train(model.training)
    record = {
        "format": RECORD_FORMAT,
        "mode": cfg.mode,
        "slots_before": S,
        "slots_after": target,
        "layers_reinitialised": list(reinit),
        "noise": cfg.noise,
        "seed": cfg.seed,
        "new_slot_source": f"slot j ≥ {S} copies slot j mod {S}, plus noise",
        "resized_tensors": resized,
        "reinitialised_tensors": reinitialised,
        "inherited_tensors": len(new) - len(resized) - len(reinitialised),
    }
    log.info("expanded STM %d → %d slots (%s; re-initialised layers %s; %d slot-indexed tensors grown)",
             S, target, cfg.mode, list(reinit) or "none", len(resized))
    return Expansion(grown, record)


def _fresh_model(model: RxTModel, slots: int, seed: int) -> RxTModel:
    """A model like ``model`` with ``slots`` slots, initialised by the project's init from
    ``seed`` without touching the caller's global RNG."""
    data = model.cfg.to_dict()
    data["stm"] = {**data["stm"], "num_slots": slots}
    cfg = config_from_dict(data)
    with torch.random.fork_rng(devices=[]):
        # Not ``seed`` itself: training seeds its init with small integers too, and a fresh
        # model drawn from the training seed would "re-initialise" to the very same weights.
        torch.manual_seed(zlib.crc32(f"statex/{seed}".encode()))
        fresh = RxTModel(cfg)
    ref = model.embed.weight
    return fresh.to(device=ref.device, dtype=ref.dtype)


def _in_layers(name: str, layers: tuple[int, ...]) -> bool:
    return any(name.startswith(f"memory_attention.layers.{i}.") for i in layers)


def _slot_axis(name: str, old: Tensor, new: Tensor, slots: int, target: int) -> int:
    """The one axis along which a slot-indexed tensor grows S → S′."""
    axes = [a for a, (o, n) in enumerate(zip(old.shape, new.shape)) if o != n]
    if len(axes) != 1 or old.shape[axes[0]] != slots or new.shape[axes[0]] != target:
        raise RuntimeError(f"tensor {name}: shape {tuple(old.shape)} → {tuple(new.shape)} is not a "
                           f"growth of one slot axis {slots} → {target}")
    return axes[0]


def _grow_rows(old: Tensor, axis: int, target: int, noise: float, generator: torch.Generator) -> Tensor:
    """``old`` with rows S…S′−1 appended along ``axis``: row j copies row j mod S, plus
    Gaussian noise of std ``noise × RMS(old)`` (``noise`` itself when ``old`` is all zeros)."""
    S = old.shape[axis]
    source = torch.arange(S, target) % S  # (S′ − S,)
    copies = old.index_select(axis, source.to(old.device))
    rms = old.float().pow(2).mean().sqrt().item()
    scale = noise * (rms if rms > 0 else 1.0)
    jitter = torch.randn(copies.shape, generator=generator, dtype=torch.float32) * scale
    return torch.cat([old, copies + jitter.to(copies)], dim=axis)


def expand_stm(
    model_or_dir: RxTModel | str,
    cfg: ExpansionConfig,
    out_url: str | None = None,
    tokenizer_json: str | None = None,
) -> Expansion:
    """Expand a model (or the model directory at a URL) and, with ``out_url``, write the result
    as a new model directory there (atomically), keeping the source directory's tokenizer and
    recording the expansion under the ``statex`` metadata key.

    Raises ``ValueError`` for a stateless model, a slot count that does not grow, a layer out of
    range, or ``out_url`` equal to the source directory.
    """
    source = model_or_dir if isinstance(model_or_dir, str) else None
    if source is not None:
        if out_url is not None and _same_dir(source, out_url):
            raise ValueError(f"out_url={out_url!r} is the source model directory: write the expanded "
                             "model to a new directory so the original stays available as a control")
        model = load_model_dir(source)
        if not isinstance(model, RxTModel):
            raise ValueError(f"model directory {source} holds a {model.cfg.model_type} model: it has no "
                             "STM to expand (StateX needs an RxT model)")
        if tokenizer_json is None:
            tokenizer_json = load_tokenizer_json(source)
    else:
        model = model_or_dir
    result = expand_model(model, cfg)
    result.record["source"] = source
    if out_url is not None:
        metadata = {METADATA_KEY: json.dumps(result.record, sort_keys=True)}
        save_model_dir(result.model, out_url, tokenizer_json, metadata)
        log.info("wrote expanded model to %s", out_url)
    return result


def _same_dir(a: str, b: str) -> bool:
    fa, pa = fsspec.core.url_to_fs(a)
    fb, pb = fsspec.core.url_to_fs(b)
    return type(fa) is type(fb) and pa.rstrip("/") == pb.rstrip("/")


def read_metadata(url: str) -> dict[str, str]:
    """The safetensors metadata of the model directory at ``url`` (only the header is read)."""
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{WEIGHTS_FILE}"
    if not fs.exists(path):
        raise FileNotFoundError(f"model directory {url} has no {WEIGHTS_FILE}")
    with fs.open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable safetensors header: {exc}") from exc
    return header.get("__metadata__") or {}


def read_expansion(url: str) -> dict[str, Any] | None:
    """The expansion record of the model directory at ``url``; None if it was not expanded."""
    text = read_metadata(url).get(METADATA_KEY)
    return json.loads(text) if text is not None else None


def config_summary(cfg: ExpansionConfig) -> dict[str, Any]:
    """``cfg`` as plain data (for reports)."""
    data = dataclasses.asdict(cfg)
    data["layers"] = None if cfg.layers is None else list(cfg.layers)
    return data


__all__ = ["EXPANSION_MODES", "METADATA_KEY", "Expansion", "ExpansionConfig", "config_summary",
           "expand_model", "expand_stm", "read_expansion", "read_metadata"]
