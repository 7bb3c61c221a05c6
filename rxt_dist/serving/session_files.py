"""Where a session store keeps its sessions: the storage layout and its file operations.

Layout under the store URL::

    <id>/meta.json                   the commit point, rewritten atomically
    <id>/stm-<version>.safetensors   written before the meta that names it; only the
                                     current version's is kept
    _transcripts/<hash>              transcript index: the session id standing at that hash

Every write goes to a temporary name and is renamed last, so a reader (or a shard restarted
after a crash) finds the old file or the new one, never half of one. Any fsspec URL works; a
local directory is written with ``os`` calls directly: the same operations without fsspec's
per-call path handling, which cost the store shard about a third of a millisecond per write
at the serving rate (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import os
import shutil

import fsspec
from fsspec.implementations.local import LocalFileSystem

from rxt_dist.data.storage import resolve, temp_name, write_bytes_atomic

META_FILE = "meta.json"
TRANSCRIPTS_DIR = "_transcripts"


class _FsspecFiles:
    """File operations through an fsspec filesystem (object stores, memory://, …)."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def write_atomic(self, path: str, data: bytes) -> None:
        write_bytes_atomic(self.fs, path, data)

    def read(self, path: str) -> bytes | None:
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return f.read()

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path)

    def remove_tree(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def names(self, path: str) -> list[str]:
        return [p.rstrip("/").rpartition("/")[2] for p in self.fs.ls(path, detail=False)]


class _LocalFiles:
    """The same operations on a local directory, with ``os`` calls."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def remove_tree(self, path: str) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass

    def names(self, path: str) -> list[str]:
        return os.listdir(path)


class SessionFiles:
    """One store's files: sessions' metas and STMs, and the transcript index entries.

    Plain blocking calls; the store runs them off its event loop. Raises ``OSError`` (or the
    filesystem's own error) when storage fails, ``ValueError`` when a stored record is not one.
    """

    def __init__(self, url: str) -> None:
        fs, self.root = resolve(url)
        self.local = isinstance(fs, LocalFileSystem)
        self.ops = _LocalFiles() if self.local else _FsspecFiles(fs)
        self.ops.makedirs(self.root)

    def session_dir(self, sid: str) -> str:
        return f"{self.root}/{sid}"

    def stm_path(self, sid: str, version: int) -> str:
        return f"{self.session_dir(sid)}/stm-{version:08d}.safetensors"

    def meta_path(self, sid: str) -> str:
        return f"{self.session_dir(sid)}/{META_FILE}"

    def link_path(self, transcript: str) -> str:
        return f"{self.root}/{TRANSCRIPTS_DIR}/{transcript}"

    def write_session(self, sid: str, version: int, meta_json: str, stm: bytes | None,
                      drop_version: int | None = None) -> None:
        """Write the STM of ``version`` (if given) then the meta that names it; drop the
        superseded STM of ``drop_version`` last."""
        self.ops.makedirs(self.session_dir(sid))
        if stm is not None:
            self.ops.write_atomic(self.stm_path(sid, version), stm)
        self.ops.write_atomic(self.meta_path(sid), meta_json.encode())
        if drop_version is not None:
            self.ops.remove(self.stm_path(sid, drop_version))

    def read_meta(self, sid: str) -> str | None:
        """The session's ``meta.json`` text (None when there is no such session)."""
        data = self.ops.read(self.meta_path(sid))
        return None if data is None else data.decode(errors="replace")  # not UTF-8: not a record, said by the parser

    def read_stm(self, sid: str, version: int) -> bytes:
        data = self.ops.read(self.stm_path(sid, version))
        if data is None:
            raise ValueError(f"{self.meta_path(sid)} names memory version {version} "
                             f"but {self.stm_path(sid, version)} is missing")
        return data

    def remove_session(self, sid: str) -> None:
        self.ops.remove_tree(self.session_dir(sid))

    def names(self) -> list[str]:
        """Every name directly under the root (session directories and the index's)."""
        return self.ops.names(self.root)

    def write_link(self, transcript: str, sid: str) -> None:
        self.ops.makedirs(f"{self.root}/{TRANSCRIPTS_DIR}")
        self.ops.write_atomic(self.link_path(transcript), sid.encode())

    def read_link(self, transcript: str) -> str | None:
        data = self.ops.read(self.link_path(transcript))
        return None if data is None else data.decode(errors="replace")

    def remove_link(self, transcript: str) -> None:
        self.ops.remove(self.link_path(transcript))
