"""The training data order: which rows each worker reads, and in which order, every epoch.

The order is a function of (seed, epoch, number of workers) and the shard list alone, so a run
resumed from a checkpoint at (epoch, micro-batch) reads exactly the rows an uninterrupted run
reads next. For every epoch:

1. the shard files are put in an order drawn from (seed, epoch) — manifest order when
   ``shuffle_buffer`` is 0;
2. the rows of that concatenation are shuffled within consecutive windows of ``shuffle_buffer``
   rows (0: not at all);
3. worker r of n takes the r-th of n equal contiguous slices (the last N mod n rows of the epoch
   are left out, as Ray Data's equal split did), so it reads about 1/n of the files.

Workers read their rows from the Parquet shards directly, through the dataset URL's fsspec
filesystem, each file once while its rows are needed. Ray Data's streaming split is not used
for training: it hands blocks to whichever worker asks first, which no seed makes repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from rxt_dist.data.reader import (
    ShardError,
    Validate,
    _conversation_text_batch,
    _open,
    _read,
    check_split,
    split_paths,
)
from rxt_dist.data.schema import CONVERSATIONS, TEXT, TEXT_SPLIT, read_manifest
from rxt_dist.data.storage import display, resolve

TEXT_VIEW_COLUMNS = ("query", "answer", "query_ids", "answer_ids")
"""What a conversation shard is read with to build its plain-text rows."""


@dataclass(frozen=True)
class TrainingShard:
    """One Parquet shard of the training rows."""

    path: str
    """Path on the dataset's filesystem (no protocol)."""
    rows: int
    text_view: bool = False
    """A conversation shard read as stage-1 text rows (``{ids}``, queries and answers in order)."""


@dataclass(frozen=True)
class TrainingRows:
    """The rows a stage trains on: shards in manifest order and the columns read from them.
    Plain data: the driver builds it, Ray ships it to the workers."""

    url: str
    """Dataset URL; its filesystem reads every file."""
    files: tuple[TrainingShard, ...]
    columns: tuple[str, ...]

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingRows:
        return cls(data["url"], tuple(TrainingShard(**f) for f in data["files"]), tuple(data["columns"]))


def training_rows(url: str, columns: Sequence[str], *, text: bool = False,
                  validate: Validate = "metadata") -> TrainingRows:
    """The ``train`` split's rows with ``columns``, every shard checked first (``validate`` as in
    :func:`rxt_dist.data.ray_dataset`). ``text``: the plain-text view of stage 1 — the
    conversations' text rows, then the documents of the ``text`` split — read with ``["ids"]``."""
    manifest = read_manifest(url)
    fs, paths, expected = split_paths(manifest, "train", CONVERSATIONS)
    check_split(fs, paths, expected, CONVERSATIONS, manifest, TEXT_VIEW_COLUMNS if text else columns, validate)
    files = [TrainingShard(p, n, text_view=text) for p, n in zip(paths, expected)]
    if text and TEXT_SPLIT in manifest.splits:
        fs, paths, expected = split_paths(manifest, TEXT_SPLIT, TEXT)
        check_split(fs, paths, expected, TEXT, manifest, columns, validate)
        files += [TrainingShard(p, n) for p, n in zip(paths, expected)]
    return TrainingRows(manifest.url, tuple(files), tuple(columns))


def epoch_order(rows_per_file: Sequence[int], seed: int, epoch: int, shuffle_buffer: int) -> np.ndarray:
    """Every row id (0-based over the files in manifest order) once, in epoch ``epoch``'s order."""
    total = int(sum(rows_per_file))
    if shuffle_buffer == 0:
        return np.arange(total)
    rng = np.random.default_rng([seed, epoch])
    starts = np.cumsum([0, *rows_per_file])
    order = np.concatenate([np.arange(starts[f], starts[f + 1]) for f in rng.permutation(len(rows_per_file))])
    window = np.arange(total) // shuffle_buffer
    return order[np.lexsort((rng.random(total), window))]


def worker_rows(rows: TrainingRows, seed: int, epoch: int, rank: int, world: int, shuffle_buffer: int) -> np.ndarray:
    """The row ids worker ``rank`` of ``world`` reads in epoch ``epoch``, in order (the same
    number on every worker)."""
    order = epoch_order([f.rows for f in rows.files], seed, epoch, shuffle_buffer)
    share = len(order) // world
    return order[rank * share:(rank + 1) * share]


def read_batches(rows: TrainingRows, ids: np.ndarray, batch_size: int) -> Iterator[dict[str, list]]:
    """The rows ``ids`` in order, ``batch_size`` at a time (a last partial batch is dropped), as
    columns of Python lists. A file is read once, when its first row is due, and let go after
    its last."""
    fs, _ = resolve(rows.url)
    starts = np.cumsum([0, *(f.rows for f in rows.files)])
    file_of = np.searchsorted(starts, ids, side="right") - 1
    last_use = np.full(len(rows.files), -1)
    np.maximum.at(last_use, file_of, np.arange(len(ids)))
    tables: dict[int, pa.Table] = {}
    for start in range(0, len(ids) - batch_size + 1, batch_size):
        files = file_of[start:start + batch_size]
        local = ids[start:start + batch_size] - starts[files]
        batch: dict[str, list] = {c: [None] * batch_size for c in rows.columns}
        for f in np.unique(files):
            if f not in tables:
                tables[f] = _read_file(fs, rows, rows.files[f])
            where = np.flatnonzero(files == f)
            part = tables[f].take(local[where]).to_pydict()
            for c in rows.columns:
                for i, value in zip(where, part[c]):
                    batch[c][i] = value
            if last_use[f] < start + batch_size:
                del tables[f]
        yield batch


def _read_file(fs: AbstractFileSystem, rows: TrainingRows, shard: TrainingShard) -> pa.Table:
    where = display(fs, shard.path)
    with _open(fs, shard.path) as pf:
        table = _read(pf, TEXT_VIEW_COLUMNS if shard.text_view else rows.columns, where)
    if table.num_rows != shard.rows:
        raise ShardError(f"{where}: has {table.num_rows} rows but the manifest says {shard.rows} (file replaced?)")
    if shard.text_view:
        table = _conversation_text_batch(table)
    return table.select(list(rows.columns))
