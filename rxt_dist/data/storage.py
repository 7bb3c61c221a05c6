"""fsspec helpers: one place that turns a URL into (filesystem, path) and writes atomically."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import IO

import fsspec
from fsspec import AbstractFileSystem


def resolve(url: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path without protocol) for any fsspec URL or local path."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/") or path


def join(path: str, *parts: str) -> str:
    """``path/part/…`` (fsspec paths always use ``/``)."""
    return "/".join([path.rstrip("/"), *parts])


def display(fs: AbstractFileSystem, path: str) -> str:
    """The path as a user would type it (``memory://x``, ``s3://b/k``, ``/tmp/x``): used in errors."""
    proto = _protocol(fs)
    if proto in ("file", "local"):
        return path
    if proto == "memory":  # fsspec roots memory paths at "/"; show what the user typed
        return "memory://" + path.lstrip("/")
    return fs.unstrip_protocol(path)


def _protocol(fs: AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto if isinstance(proto, str) else proto[0]


def temp_name(path: str) -> str:
    """A temporary sibling of ``path``: same folder, hidden, unique per call."""
    head, _, tail = path.rpartition("/")
    return f"{head}/.tmp-{uuid.uuid4().hex[:12]}-{tail}"


def write_atomic(fs: AbstractFileSystem, path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` to a temporary name and rename it to ``path`` only once
    the write finished; on any error the temporary file is removed and ``path`` is untouched."""
    tmp = temp_name(path)
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """:func:`write_atomic` for a bytes payload."""
    write_atomic(fs, path, lambda f: f.write(data))
