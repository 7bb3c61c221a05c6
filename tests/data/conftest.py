"""Shared fixtures of the data tests: a small dataset written once per module."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rxt_dist.data import PrepareConfig, SyntheticConfig, prepare_dataset, read_manifest
from rxt_dist.data.storage import resolve

_memory_ids = itertools.count()


def small_config(out: str, **changes) -> PrepareConfig:
    """120 short conversations (train 96 / valid 12 / test 12), 8 rows per shard."""
    synthetic = SyntheticConfig.from_name("debug", seed=7)
    kw = dict(out=out, conversations=120, synthetic=synthetic, vocab_size=1024, shard_rows=8,
              valid_fraction=0.1, test_fraction=0.1)  # fmt: skip
    kw.update(changes)
    return PrepareConfig(**kw)


@pytest.fixture
def memory_url() -> str:
    """A fresh memory:// folder (the memory filesystem is process-global: use unique names)."""
    url = f"memory://rxt-test-{next(_memory_ids)}"
    yield url
    fs, path = resolve(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def small_dataset(memory_url: str) -> str:
    """A written small dataset at a memory:// URL."""
    prepare_dataset(small_config(memory_url))
    return memory_url


def rewrite_shard(url: str, split: str, index: int, change: Callable[[pa.Table], pa.Table]) -> str:
    """Replace shard ``index`` of ``split`` with ``change(table)``; returns the shard's file name."""
    manifest = read_manifest(url)
    fs, _ = resolve(url)
    path = manifest.files(split)[index]
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    with fs.open(path, "wb") as f:
        pq.write_table(change(table), f)
    return path.rsplit("/", 1)[-1]


def set_token(table: pa.Table, column: str, row: int, turn: int, pos: int, value: int) -> pa.Table:
    """``table`` with one token id replaced (ids written as int64, as plain pyarrow would)."""
    rows = table[column].to_pylist()
    rows[row][turn][pos] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, column, pa.array(rows, pa.list_(pa.list_(pa.int64()))))
