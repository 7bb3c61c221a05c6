"""Reading a dataset folder: validation, a single-process iterator, and Ray Data datasets.

Every problem with a shard is an error that names the file (and the row, 0-based, where one
row is at fault); nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from rxt_dist.data.conversation import TURN_KINDS, UNKNOWN, Conversation, RecallInfo, Turn
from rxt_dist.data.schema import (
    CONVERSATIONS,
    OPTIONAL_RECALL_COLUMNS,
    PER_TURN_COLUMNS,
    RECALL_COLUMNS,
    TEXT,
    TEXT_SPLIT,
    TURN_ID_COLUMNS,
    Manifest,
    columns_for,
    read_manifest,
)
from rxt_dist.data.storage import display, resolve
from rxt_dist.data.tokenizer import TextCodec, load_tokenizer

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

Validate = Literal["metadata", "full", "none"]


class ShardError(ValueError):
    """A shard that cannot be used; the message names the file (and row)."""


# ---------------------------------------------------------------- file-level checks


@contextlib.contextmanager
def _open(fs: AbstractFileSystem, path: str) -> Iterator[pq.ParquetFile]:
    """The shard at ``path`` as a ParquetFile; a missing or non-Parquet file is an error naming it."""
    where = display(fs, path)
    if not fs.exists(path):
        raise FileNotFoundError(f"{where}: shard listed in the manifest is missing")
    with fs.open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise ShardError(f"{where}: not a readable Parquet file ({e})") from e
        yield pf


def check_schema(schema: pa.Schema, kind: str, where: str) -> None:
    """Required columns present; every known column of the expected type."""
    columns = columns_for(kind)
    names = set(schema.names)
    for name, col in columns.items():
        if name not in names:
            if col.required:
                raise ShardError(f"{where}: missing column {name!r} (expected {col.expected}); see docs/data.md")
            continue
        t = schema.field(name).type
        if not col.check(t):
            raise ShardError(f"{where}: column {name!r} has type {t}, expected {col.expected}")
    if kind == CONVERSATIONS:
        present = [c for c in RECALL_COLUMNS if c in names]
        if present and len(present) != len(RECALL_COLUMNS):
            missing = [c for c in RECALL_COLUMNS if c not in names]
            raise ShardError(f"{where}: has {present[0]!r} but misses {missing}; recall columns go together")
        extra = [c for c in OPTIONAL_RECALL_COLUMNS if c in names]
        if extra and not present:
            raise ShardError(f"{where}: has {extra[0]!r} but none of {list(RECALL_COLUMNS)}; it belongs to them")


def _stats_in_range(pf: pq.ParquetFile, id_columns: Sequence[str], vocab_size: int) -> bool:
    """True when Parquet statistics prove every id in ``id_columns`` lies in [0, vocab_size)."""
    md = pf.metadata
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for ci in range(group.num_columns):
            col = group.column(ci)
            if col.path_in_schema.split(".")[0] not in id_columns:
                continue
            st = col.statistics
            if st is None or not st.has_min_max:
                if group.num_rows and col.num_values:
                    return False
                continue
            if st.min < 0 or st.max >= vocab_size:
                return False
    return True


def _check_file(
    fs: AbstractFileSystem, path: str, kind: str, vocab_size: int, expected_rows: int | None, validate: Validate
) -> tuple[int, int]:
    """Check one shard; return (rows, turns). ``metadata`` reads the footer only, unless the
    statistics cannot prove the ids are in range; then (and with ``full``) the data is read."""
    where = display(fs, path)
    with _open(fs, path) as pf:
        schema = pf.schema_arrow
        check_schema(schema, kind, where)
        rows = pf.metadata.num_rows
        if rows == 0:
            raise ShardError(f"{where}: empty shard (0 rows)")
        if expected_rows is not None and rows != expected_rows:
            raise ShardError(f"{where}: has {rows} rows but the manifest says {expected_rows} (file replaced?)")
        id_columns = TURN_ID_COLUMNS if kind == CONVERSATIONS else ("ids",)
        if validate == "metadata":
            if _stats_in_range(pf, id_columns, vocab_size):
                return rows, -1
            log.info("%s: statistics do not prove the token ids in range; checking every row", where)
        present = [c for c in columns_for(kind) if c in schema.names]
        table = _read(pf, present, where)
    return rows, check_table(table, kind, vocab_size, where)


def _read(pf: pq.ParquetFile, columns: Sequence[str], where: str) -> pa.Table:
    try:
        return pf.read(columns=list(columns))
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{where}: unreadable Parquet data ({e})") from e


def validate_split_files(
    fs: AbstractFileSystem,
    paths: Sequence[str],
    kind: str,
    vocab_size: int,
    expected_rows: Sequence[int] | None = None,
    validate: Validate = "full",
) -> tuple[list[int], int]:
    """Check every shard of a split; return (rows per file, total turns, or -1 if not counted)."""
    rows, turns = [], 0
    for i, path in enumerate(paths):
        r, t = _check_file(fs, path, kind, vocab_size, None if expected_rows is None else expected_rows[i], validate)
        rows.append(r)
        turns = -1 if turns < 0 or t < 0 else turns + t
    return rows, turns


# ---------------------------------------------------------------- row-level checks


def _first_bad_row(mask: np.ndarray, parents: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """(row, path of parent indices…, leaf) of the first True in ``mask``, walking up ``parents``."""
    leaf = int(np.flatnonzero(mask)[0])
    idx = leaf
    chain = []
    for p in parents:
        idx = int(p[idx])
        chain.append(idx)
    return chain[-1], chain[0], leaf


def _row_label(table: pa.Table, row: int) -> str:
    if "conversation_id" in table.column_names:
        return f"row {row} (conversation_id={table['conversation_id'][row].as_py()!r})"
    return f"row {row}"


def _check_turn_ids(table: pa.Table, column: str, vocab_size: int, where: str) -> None:
    col = table[column].combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{where}: {_row_label(table, row)}: column {column!r} is null")
    turns = pc.list_flatten(col)
    turn_row = pc.list_parent_indices(col).to_numpy()
    if turns.null_count:
        t = int(np.flatnonzero(turns.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(turn_row[t])
        raise ShardError(f"{where}: {_row_label(table, row)}: column {column!r} has a null turn")
    leaf = pc.list_flatten(turns)
    leaf_turn = pc.list_parent_indices(turns).to_numpy()
    if leaf.null_count:
        row, _, _ = _first_bad_row(leaf.is_null().to_numpy(zero_copy_only=False), [leaf_turn, turn_row])
        raise ShardError(f"{where}: {_row_label(table, row)}: column {column!r} has a null token id")
    values = leaf.to_numpy()
    mask = (values < 0) | (values >= vocab_size)
    if mask.any():
        row, turn, i = _first_bad_row(mask, [leaf_turn, turn_row])
        first_turn = int(np.searchsorted(turn_row, row))
        raise ShardError(
            f"{where}: {_row_label(table, row)}: column {column!r} turn {turn - first_turn}: token id "
            f"{int(values[i])} outside the vocabulary [0, {vocab_size}) of the manifest"
        )


def _check_text_ids(table: pa.Table, vocab_size: int, where: str) -> None:
    col = table["ids"].combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{where}: row {row}: column 'ids' is null")
    leaf = pc.list_flatten(col)
    parent = pc.list_parent_indices(col).to_numpy()
    if leaf.null_count:
        row, _, _ = _first_bad_row(leaf.is_null().to_numpy(zero_copy_only=False), [parent])
        raise ShardError(f"{where}: row {row}: column 'ids' has a null token id")
    values = leaf.to_numpy()
    mask = (values < 0) | (values >= vocab_size)
    if mask.any():
        row, _, i = _first_bad_row(mask, [parent])
        raise ShardError(
            f"{where}: row {row}: column 'ids' has token id {int(values[i])} outside the vocabulary [0, {vocab_size})"
        )


def _check_turn_counts(table: pa.Table, where: str) -> int:
    """Every per-turn column has one entry per turn; every row has a turn. Returns total turns."""
    n = pc.list_value_length(table["query_ids"]).to_numpy(zero_copy_only=False)
    if (n == 0).any():
        row = int(np.flatnonzero(n == 0)[0])
        raise ShardError(f"{where}: {_row_label(table, row)}: conversation has no turns")
    for name in PER_TURN_COLUMNS:
        if name == "query_ids" or name not in table.column_names:
            continue
        m = pc.list_value_length(table[name]).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(m != n)
        if bad.size:
            row = int(bad[0])
            raise ShardError(
                f"{where}: {_row_label(table, row)}: column {name!r} has {m[row]} entries for {n[row]} turns"
            )
    if "num_turns" in table.column_names:
        bad = np.flatnonzero(table["num_turns"].to_numpy(zero_copy_only=False) != n)
        if bad.size:
            raise ShardError(f"{where}: {_row_label(table, int(bad[0]))}: num_turns disagrees with query_ids")
    return int(n.sum())


def check_table(table: pa.Table, kind: str, vocab_size: int, where: str) -> int:
    """Row-level checks of one shard's data; returns its number of turns (0 for text)."""
    if kind == TEXT:
        _check_text_ids(table, vocab_size, where)
        return 0
    if table["conversation_id"].null_count:
        row = int(np.flatnonzero(table["conversation_id"].is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{where}: row {row}: conversation_id is null")
    turns = _check_turn_counts(table, where)
    for column in TURN_ID_COLUMNS:
        _check_turn_ids(table, column, vocab_size, where)
    if "kind" in table.column_names:
        kinds = pc.list_flatten(table["kind"])
        bad = pc.invert(pc.fill_null(pc.is_in(kinds, pa.array(TURN_KINDS)), False)).to_numpy(zero_copy_only=False)
        if bad.any():
            parent = pc.list_parent_indices(table["kind"]).to_numpy()
            row, _, i = _first_bad_row(bad, [parent])
            raise ShardError(
                f"{where}: {_row_label(table, row)}: kind {kinds[i].as_py()!r} is not one of {TURN_KINDS}"
            )
    return turns


# ---------------------------------------------------------------- single-process iterator


def split_paths(manifest: Manifest, split: str, kind: str) -> tuple[AbstractFileSystem, list[str], list[int]]:
    """(filesystem, shard paths, rows per shard) of ``split``, which must hold ``kind``."""
    info = manifest.split(split)
    if info.kind != kind:
        raise ValueError(f"{manifest.url}: split {split!r} holds {info.kind}, not {kind}")
    fs, _ = resolve(manifest.url)
    return fs, manifest.files(split), [f.rows for f in info.files]


def iter_conversations(url: str, split: str = "train", *, validate: bool = True) -> Iterator[Conversation]:
    """Every conversation of ``split``, in shard order, in one process (any fsspec URL,
    ``memory://`` included). Each shard is checked in full before its rows are yielded."""
    manifest = read_manifest(url)
    fs, paths, expected = split_paths(manifest, split, CONVERSATIONS)
    codec: TextCodec | None = None
    for path, rows in zip(paths, expected):
        where = display(fs, path)
        with _open(fs, path) as pf:
            schema = pf.schema_arrow
            check_schema(schema, CONVERSATIONS, where)
            present = [c for c in columns_for(CONVERSATIONS) if c in schema.names]
            table = _read(pf, present, where)
        if table.num_rows == 0:
            raise ShardError(f"{where}: empty shard (0 rows)")
        if validate:
            if table.num_rows != rows:
                raise ShardError(f"{where}: has {table.num_rows} rows but the manifest says {rows} (file replaced?)")
            check_table(table, CONVERSATIONS, manifest.vocab_size, where)
        if "query" not in table.column_names and codec is None:
            codec = TextCodec(load_tokenizer(url))
        yield from _conversations(table, codec, where)


def _conversations(table: pa.Table, codec: TextCodec | None, where: str) -> Iterator[Conversation]:
    cols = {name: table[name].to_pylist() for name in table.column_names}
    for row, cid in enumerate(cols["conversation_id"]):
        q_ids, a_ids = cols["query_ids"][row], cols["answer_ids"][row]
        n = len(q_ids)
        queries = cols["query"][row] if "query" in cols else [codec.decode(ids) for ids in q_ids]
        answers = cols["answer"][row] if "answer" in cols else [codec.decode(ids) for ids in a_ids]
        kinds = cols["kind"][row] if "kind" in cols else [UNKNOWN] * n
        facts = cols["fact"][row] if "fact" in cols else [None] * n
        values = cols["value"][row] if "value" in cols else [None] * n
        turns = []
        for i in range(n):
            recall = _recall_info(cols, row, i, facts[i], values[i], a_ids[i], f"{where}: row {row} turn {i}")
            turns.append(Turn(queries[i], answers[i], q_ids[i], a_ids[i], kinds[i], recall, facts[i], values[i]))
        yield Conversation(cid, turns)


def _recall_info(cols: dict, row: int, i: int, fact, value, answer_ids: list[int], where: str) -> RecallInfo | None:
    if "recall_stated_turn" not in cols or cols["recall_stated_turn"][row][i] < 0:
        return None
    stated = cols["recall_stated_turn"][row][i]
    distance = cols["recall_distance"][row][i]
    start, length = cols["recall_gold_start"][row][i], cols["recall_gold_len"][row][i]
    mentioned = cols["recall_mentioned_turn"][row][i]
    if not (stated < i and distance == i - stated and mentioned < i):
        raise ShardError(
            f"{where}: recall_stated_turn={stated}, recall_distance={distance}, recall_mentioned_turn="
            f"{mentioned} do not fit turn {i} (need stated < turn, distance = turn - stated, mentioned < turn)"
        )
    if not (0 <= start and start + length <= len(answer_ids)):
        raise ShardError(f"{where}: recall gold span [{start}, {start + length}) outside the answer")
    return RecallInfo(
        fact=fact or "",
        stated_turn=stated,
        distance=distance,
        gold=value or "",
        facts_held=cols["recall_facts_held"][row][i],
        updated=bool(cols["recall_updated"][row][i]),
        mentioned_turn=mentioned,
        seen=bool(cols["recall_seen"][row][i]) if "recall_seen" in cols else True,
        gold_ids=answer_ids[start : start + length],
        gold_start=start,
    )


def iter_text(url: str, split: str = "train", *, include_extra: bool = True) -> Iterator[tuple[str, list[int]]]:
    """The plain-text view in one process: (text, ids) per conversation of ``split``, then, for
    ``train`` with ``include_extra``, every document of the ``text`` split."""
    for conv in iter_conversations(url, split):
        yield conv.text(), conv.token_ids()
    manifest = read_manifest(url)
    if include_extra and split == "train" and TEXT_SPLIT in manifest.splits:
        fs, paths, expected = split_paths(manifest, TEXT_SPLIT, TEXT)
        for path, rows in zip(paths, expected):
            where = display(fs, path)
            _check_file(fs, path, TEXT, manifest.vocab_size, rows, "full")
            with _open(fs, path) as pf:
                table = _read(pf, ["text", "ids"], where)
            yield from zip(table["text"].to_pylist(), table["ids"].to_pylist())


# ---------------------------------------------------------------- Ray Data


def ray_dataset(
    url: str,
    split: str = "train",
    *,
    columns: Sequence[str] | None = None,
    validate: Validate = "metadata",
    shuffle_files: bool = False,
) -> ray.data.Dataset:
    """A Ray Dataset of ``split``: one conversation per row, read with ``read_parquet`` through
    the URL's fsspec filesystem (so not ``memory://``: Ray's read tasks run in other processes).

    Before the dataset is built every shard is checked on the driver (``validate``): with
    ``"metadata"`` its footer (schema, row count, id statistics; the data itself is read only
    when the statistics cannot prove the ids are in range), with ``"full"`` all of its rows.
    Columns: all by default, or ``columns`` (e.g. ``["conversation_id", "query_ids",
    "answer_ids"]``). Give each training worker its part with ``streaming_split`` or
    ``ray.train.get_dataset_shard``.
    """
    manifest = read_manifest(url)
    fs, paths, expected = split_paths(manifest, split, CONVERSATIONS)
    return _read_parquet(fs, paths, expected, CONVERSATIONS, manifest, columns, validate, shuffle_files)


def _read_parquet(fs, paths, expected, kind, manifest, columns, validate, shuffle_files) -> ray.data.Dataset:
    import ray.data

    check_split(fs, paths, expected, kind, manifest, columns, validate)
    ds = ray.data.read_parquet(paths, filesystem=fs, shuffle="files" if shuffle_files else None)
    return ds if columns is None else ds.select_columns(list(columns))


def check_split(fs, paths, expected, kind, manifest, columns, validate: Validate) -> None:
    """What a reader of a split checks before reading it: shards there, each one valid to the
    level ``validate`` asks, and ``columns`` (None: all) present in the first."""
    if validate not in ("metadata", "full", "none"):
        raise ValueError(f"validate={validate!r}: use 'metadata', 'full' or 'none'")
    if not paths:
        raise ValueError(f"{manifest.url}: the split has no shards (0 rows)")
    if validate != "none":
        validate_split_files(fs, paths, kind, manifest.vocab_size, expected, validate)
    if columns is not None:
        with _open(fs, paths[0]) as pf:
            names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ShardError(f"{display(fs, paths[0])}: no column {missing} (it has {names})")


def ray_text_dataset(
    url: str, split: str = "train", *, include_extra: bool = True, validate: Validate = "metadata"
) -> ray.data.Dataset:
    """The plain-text view for stage-1 pre-training: rows ``{text, ids, source}``, one per
    conversation of ``split`` (its queries and answers in order, no special tokens), plus, for
    ``train`` with ``include_extra``, the documents of the ``text`` split (``--extra-text``).
    Needs the ``query``/``answer`` text columns."""
    manifest = read_manifest(url)
    fs, paths, expected = split_paths(manifest, split, CONVERSATIONS)
    cols = ["query", "answer", "query_ids", "answer_ids"]
    ds = _read_parquet(fs, paths, expected, CONVERSATIONS, manifest, cols, validate, False)
    ds = ds.map_batches(_conversation_text_batch, batch_format="pyarrow")
    if include_extra and split == "train" and TEXT_SPLIT in manifest.splits:
        fs, paths, expected = split_paths(manifest, TEXT_SPLIT, TEXT)
        extra = _read_parquet(fs, paths, expected, TEXT, manifest, ["text", "ids", "source"], validate, False)
        ds = ds.union(extra)
    return ds


def _conversation_text_batch(batch: pa.Table) -> pa.Table:
    """Conversation rows → text rows (queries and answers interleaved)."""
    texts, ids = [], []
    for q, a, qi, ai in zip(*(batch[c].to_pylist() for c in ("query", "answer", "query_ids", "answer_ids"))):
        texts.append(" ".join(s for pair in zip(q, a) for s in pair))
        row: list[int] = []
        for x, y in zip(qi, ai):
            row += x
            row += y
        ids.append(row)
    return pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "ids": pa.array(ids, pa.list_(pa.int32())),
            "source": pa.array(["conversation"] * len(texts), pa.string()),
        }
    )
