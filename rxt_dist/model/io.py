"""The model directory: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``), and
``complete.json`` written last.

Directories may live at any fsspec URL. Saving writes a temporary sibling directory, moves it
into place, and then writes the marker ``complete.json`` naming every file and its size. On a
local disk the move is one rename; on an object store it copies object by object, so a crash
can leave some files at the final name: only the marker says the directory is whole
(:func:`is_complete_dir`). Loading checks every file and names the one that is missing or does
not match.
"""

from __future__ import annotations

import json
import uuid
from pathlib import PurePosixPath

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from rxt_dist.model.config import ModelConfig, RxTConfig, config_from_dict
from rxt_dist.model.rxt import RxTModel
from rxt_dist.model.stateless import StatelessLM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
COMPLETE_FILE = "complete.json"
"""Written last by :func:`save_model_dir`: ``{"files": {name: size in bytes}}``."""

Model = RxTModel | StatelessLM


def build_model(cfg: ModelConfig) -> Model:
    """A freshly initialised model for ``cfg``."""
    return RxTModel(cfg) if isinstance(cfg, RxTConfig) else StatelessLM(cfg)


def _tied_keys(model: Model) -> set[str]:
    """Parameter names that alias another (tied heads) and are not stored twice."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.setdefault(id(tensor), name)
    return tied


def model_tensors(model: Model) -> dict[str, torch.Tensor]:
    """The tensors stored in ``model.safetensors`` (contiguous CPU copies, tied ones once)."""
    skip = _tied_keys(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in skip}


def save_model_dir(
    model: Model,
    url: str,
    tokenizer_json: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model`` (and the tokenizer's JSON text, when given) as a model directory at
    ``url``, replacing any directory already there; :func:`is_complete_dir` is true only once
    every file of the new one is in place."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    files = {CONFIG_FILE: model.cfg.to_json().encode(),
             WEIGHTS_FILE: st_save(model_tensors(model), metadata=metadata or {})}
    if tokenizer_json is not None:
        files[TOKENIZER_FILE] = tokenizer_json.encode()
    tmp = f"{root}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(tmp, exist_ok=True)
    try:
        for name, data in files.items():
            with fs.open(f"{tmp}/{name}", "wb") as f:
                f.write(data)
        _replace_dir(fs, tmp, root)
        _write_marker(fs, root, {name: len(data) for name, data in files.items()})
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise


def _replace_dir(fs, tmp: str, root: str) -> None:
    old = None
    if fs.exists(root):
        if fs.exists(f"{root}/{COMPLETE_FILE}"):
            fs.rm(f"{root}/{COMPLETE_FILE}")  # the old directory stops counting as complete first
        old = f"{root}.old-{uuid.uuid4().hex[:8]}"
        fs.mv(root, old, recursive=True)
    fs.mv(tmp, root, recursive=True)
    if old is not None:
        fs.rm(old, recursive=True)


def _write_marker(fs, root: str, sizes: dict[str, int]) -> None:
    with fs.open(f"{root}/{COMPLETE_FILE}", "w") as f:
        f.write(json.dumps({"files": sizes}, sort_keys=True))


def is_complete_dir(url: str) -> bool:
    """True when :func:`save_model_dir` finished writing ``url``: the marker ``complete.json``
    exists and names config.json, model.safetensors and every other file, each there with the
    size it was written with. An interrupted save (or a directory written another way) is not
    complete."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    marker = f"{root}/{COMPLETE_FILE}"
    if not fs.exists(marker):
        return False
    try:
        with fs.open(marker, "r") as f:
            sizes = json.loads(f.read())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False  # a marker cut short (a local disk that crashed mid-write) marks nothing
    if not isinstance(sizes, dict) or not {CONFIG_FILE, WEIGHTS_FILE} <= set(sizes):
        return False
    return all(fs.exists(f"{root}/{name}") and fs.size(f"{root}/{name}") == size for name, size in sizes.items())


def _read(fs, path: str, mode: str = "rb"):
    if not fs.exists(path):
        name = PurePosixPath(path).name
        raise FileNotFoundError(f"model directory {PurePosixPath(path).parent} has no {name}")
    with fs.open(path, mode) as f:
        return f.read()


def load_config(url: str) -> ModelConfig:
    """The model config stored in ``url/config.json``."""
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{CONFIG_FILE}"
    text = _read(fs, path, "r")
    try:
        return config_from_dict(json.loads(text))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid model config: {exc}") from exc


def load_model_dir(url: str, device: torch.device | str = "cpu") -> Model:
    """Load the model stored at ``url``; a missing file or a tensor that does not match the
    config raises an error naming it."""
    cfg = load_config(url)
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{WEIGHTS_FILE}"
    try:
        tensors = st_load(_read(fs, path))
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
    model = build_model(cfg)
    _load_checked(model, tensors, path)
    return model.to(device)


def _load_checked(model: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k not in _tied_keys(model)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match config.json: missing tensors {missing[:8]}"
            f"{'…' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
            f"{'…' if len(unexpected) > 8 else ''}"
        )
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"{path}: tensor {name} has shape {tuple(got.shape)} but config.json implies "
                f"{tuple(want.shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def load_tokenizer_json(url: str) -> str | None:
    """The text of ``url/tokenizer.json``, or None when the directory has none."""
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{TOKENIZER_FILE}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return f.read()


def load_tokenizer(url: str, vocab_size: int | None = None):
    """The ``tokenizers.Tokenizer`` stored in the model directory at ``url`` (None if it has
    none). Checks that the special tokens have the ids of :mod:`rxt_dist.tokens` and that the
    vocabulary fits the model's ``vocab_size``."""
    from tokenizers import Tokenizer

    from rxt_dist.tokens import SPECIAL_TOKENS

    text = load_tokenizer_json(url)
    if text is None:
        return None
    where = f"{url.rstrip('/')}/{TOKENIZER_FILE}"
    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own exception type
        raise ValueError(f"{where}: not a valid tokenizer: {exc}") from exc
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected_id:
            raise ValueError(f"{where}: special token {token} has id {tok.token_to_id(token)}, "
                             f"expected {expected_id}")
    if vocab_size is not None and tok.get_vocab_size() > vocab_size:
        raise ValueError(f"{where}: vocabulary of {tok.get_vocab_size()} tokens does not fit the "
                         f"model's vocab_size={vocab_size} in config.json")
    return tok
