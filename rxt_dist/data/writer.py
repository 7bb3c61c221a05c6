"""Writing a dataset folder: tokenizer, Parquet shards, manifest — atomically, manifest last."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from tokenizers import Tokenizer

from rxt_dist.data.conversation import RECALL, TURN_KINDS, Conversation, Turn
from rxt_dist.data.schema import (
    CONVERSATION_SCHEMA,
    CONVERSATIONS,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TEXT,
    TEXT_SCHEMA,
    TEXT_SPLIT,
    Manifest,
    ShardFile,
    SplitInfo,
    read_manifest,
    write_manifest,
)
from rxt_dist.data.reader import validate_split_files
from rxt_dist.data.storage import display, join, resolve, write_atomic
from rxt_dist.data.tokenizer import (
    TOKENIZER_FILE,
    TextCodec,
    encode_texts,
    find_last,
    load_tokenizer,
    save_tokenizer,
)

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
_SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PART = re.compile(r"^part-\d{5}\.parquet$")
_ROW_GROUP_ROWS = 512  # finer statistics and reads than one group per shard


def write_shards(
    url: str,
    conversations_by_split: Mapping[str, Sequence[Conversation]],
    tokenizer: Tokenizer | TextCodec,
    *,
    extra_text: Sequence[tuple[str, str]] = (),
    shard_rows: int = 2048,
    generator: dict | None = None,
    sources: dict | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Write a dataset folder at ``url`` (any fsspec URL) and return its manifest.

    Writes ``tokenizer.json``, ``<split>/part-NNNNN.parquet`` (one conversation per row, at most
    ``shard_rows`` rows per shard), the ``text`` split when ``extra_text`` (pairs of source name
    and document) is given, and ``manifest.json`` last. Every file goes to a temporary name first
    and is renamed when complete, so an interrupted write leaves no manifest, and a manifest never
    lists a partial shard. Token ids are computed here from the text with ``tokenizer``; ids
    already on the turns are ignored. ``progress(rows)`` is called after each shard.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows={shard_rows}: must be ≥ 1")
    codec = tokenizer if isinstance(tokenizer, TextCodec) else TextCodec(tokenizer)
    _check_inputs(conversations_by_split, extra_text)
    fs, root = resolve(url)
    old_splits = _prepare_folder(fs, root, overwrite)

    sha = save_tokenizer(codec.tokenizer, url)
    ids = encode_texts(codec, _all_texts(conversations_by_split, extra_text))
    splits: dict[str, SplitInfo] = {}
    for split, convs in conversations_by_split.items():
        tables = (_conversation_table(convs[i : i + shard_rows], ids) for i in range(0, len(convs), shard_rows))
        turns = sum(len(c.turns) for c in convs)
        splits[split] = _write_split(fs, root, split, CONVERSATIONS, tables, turns, progress)
    if extra_text:
        tables = (_text_table(extra_text[i : i + shard_rows], ids) for i in range(0, len(extra_text), shard_rows))
        splits[TEXT_SPLIT] = _write_split(fs, root, TEXT_SPLIT, TEXT, tables, 0, progress)

    _remove_stale(fs, root, splits, old_splits)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        vocab_size=codec.vocab_size,
        tokenizer_sha256=sha,
        splits=splits,
        generator=generator,
        sources=sources or {},
    )
    write_manifest(url, manifest)
    log.info("wrote %s: %s", display(fs, root), manifest.counts)
    return read_manifest(url)


def _check_inputs(conversations_by_split: Mapping[str, Sequence[Conversation]], extra_text) -> None:
    for split, convs in conversations_by_split.items():
        if not _SPLIT_NAME.match(split) or split == TEXT_SPLIT:
            raise ValueError(
                f"split name {split!r}: use lowercase letters, digits, '-' or '_' (and not {TEXT_SPLIT!r}, "
                "which holds extra text)"
            )
        for c in convs:
            if not c.turns:
                raise ValueError(f"conversation {c.conversation_id!r} in split {split!r}: has no turns")
            for i, t in enumerate(c.turns):
                if t.kind not in TURN_KINDS:
                    raise ValueError(
                        f"conversation {c.conversation_id!r} turn {i}: kind={t.kind!r}; must be one of {TURN_KINDS}"
                    )
                if (t.kind == RECALL) != (t.recall is not None):
                    raise ValueError(
                        f"conversation {c.conversation_id!r} turn {i}: kind={t.kind!r} but recall info "
                        f"is {'missing' if t.recall is None else 'set'}; recall info goes with kind 'recall' only"
                    )
    for j, doc in enumerate(extra_text):
        if not (isinstance(doc, tuple) and len(doc) == 2 and all(isinstance(x, str) for x in doc)):
            raise ValueError(f"extra_text[{j}]: expected a (source, text) pair of strings, got {type(doc).__name__}")


def _prepare_folder(fs: AbstractFileSystem, root: str, overwrite: bool) -> dict[str, SplitInfo]:
    """Refuse to clobber a dataset unless asked; when overwriting, drop the old manifest first so
    the folder is never described by a manifest while its shards change. Returns the old splits."""
    manifest = join(root, MANIFEST_FILE)
    if not fs.exists(manifest):
        fs.makedirs(root, exist_ok=True)
        return {}
    if not overwrite:
        raise FileExistsError(f"{display(fs, root)}: already holds a dataset (pass overwrite=True / --overwrite)")
    try:
        old = read_manifest(display(fs, root)).splits
    except ValueError:
        old = {}
    fs.rm(manifest)
    return old


def _all_texts(conversations_by_split: Mapping[str, Sequence[Conversation]], extra_text):
    for convs in conversations_by_split.values():
        for c in convs:
            for t in c.turns:
                yield t.query
                yield t.answer
                if t.recall is not None:
                    yield t.recall.gold
                if t.value:
                    yield t.value
    for _, text in extra_text:
        yield text


def _write_split(fs, root, split, kind, tables, turns, progress) -> SplitInfo:
    fs.makedirs(join(root, split), exist_ok=True)
    files = []
    for i, table in enumerate(tables):
        rel = f"{split}/part-{i:05d}.parquet"
        _write_table(fs, join(root, rel), table)
        files.append(ShardFile(rel, table.num_rows))
        if progress is not None:
            progress(table.num_rows)
    return SplitInfo(kind=kind, rows=sum(f.rows for f in files), turns=turns, files=tuple(files))


def _write_table(fs: AbstractFileSystem, path: str, table: pa.Table) -> None:
    write_atomic(fs, path, lambda f: pq.write_table(table, f, compression="zstd", row_group_size=_ROW_GROUP_ROWS))


def _remove_stale(fs, root, splits: Mapping[str, SplitInfo], old_splits: Mapping[str, SplitInfo]) -> None:
    """Delete shards a previous write left that the new manifest does not list."""
    keep = {f.path for s in splits.values() for f in s.files}
    for split in set(splits) | set(old_splits):
        folder = join(root, split)
        if not fs.exists(folder):
            continue
        for path in fs.ls(folder, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if (_PART.match(name) or name.startswith(".tmp-")) and f"{split}/{name}" not in keep:
                fs.rm(path)


def _ids_array(lists: Sequence[list[int]]) -> pa.ListArray:
    """list<int32> from Python lists, built from one flat buffer and offsets."""
    lengths = np.fromiter(map(len, lists), dtype=np.int32, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=pa.list_(pa.int32()))


_NO_RECALL = (-1, -1, -1, False, -1, -1, 0, False)
_RECALL_FIELDS = ("recall_stated_turn", "recall_distance", "recall_facts_held", "recall_updated",
                  "recall_mentioned_turn", "recall_gold_start", "recall_gold_len", "recall_seen")  # fmt: skip


def _recall_row(conv: Conversation, t: Turn, ids: Mapping[str, list[int]]) -> tuple:
    r = t.recall
    if r is None:
        return _NO_RECALL
    gold = ids[r.gold]
    start = find_last(ids[t.answer], gold)
    if start < 0:
        raise ValueError(
            f"conversation {conv.conversation_id!r}: recall gold {r.gold!r} does not occur in its answer "
            f"{t.answer!r} as whole tokens"
        )
    return (r.stated_turn, r.distance, r.facts_held, r.updated, r.mentioned_turn, start, len(gold), r.seen)


def _value_span(t: Turn, ids: Mapping[str, list[int]]) -> tuple[int, int]:
    """Where the turn's value sits in its answer (the last occurrence): (start, length), or
    (-1, 0) when the turn states no value or its answer does not repeat it."""
    if not t.value:
        return -1, 0
    value = ids[t.value]
    start = find_last(ids[t.answer], value)
    return (start, len(value)) if start >= 0 else (-1, 0)


def _conversation_table(convs: Sequence[Conversation], ids: Mapping[str, list[int]]) -> pa.Table:
    """One shard: per-turn values gathered in flat lists, then cut into rows by turn offsets."""
    turns = [t for c in convs for t in c.turns]
    offsets = np.zeros(len(convs) + 1, dtype=np.int32)
    np.cumsum([len(c.turns) for c in convs], out=offsets[1:])
    query_ids = [ids[t.query] for t in turns]
    answer_ids = [ids[t.answer] for t in turns]
    recall = [_recall_row(c, t, ids) for c in convs for t in c.turns]
    per_turn: dict[str, pa.Array] = {
        "query": pa.array([t.query for t in turns], pa.string()),
        "answer": pa.array([t.answer for t in turns], pa.string()),
        "query_ids": _ids_array(query_ids),
        "answer_ids": _ids_array(answer_ids),
        "kind": pa.array([t.kind for t in turns], pa.string()),
        "fact": pa.array([t.fact for t in turns], pa.string()),
        "value": pa.array([t.value for t in turns], pa.string()),
    }
    for name, column in zip(_RECALL_FIELDS, zip(*recall)):
        per_turn[name] = pa.array(column, CONVERSATION_SCHEMA.field(name).type.value_type)
    spans = [_value_span(t, ids) for t in turns]
    per_turn["value_start"] = pa.array([a for a, _ in spans], pa.int32())
    per_turn["value_len"] = pa.array([b for _, b in spans], pa.int32())
    turn_offsets = pa.array(offsets)
    arrays = {
        "conversation_id": pa.array([c.conversation_id for c in convs], pa.string()),
        "num_turns": pa.array(np.diff(offsets)),
    }
    for name, values in per_turn.items():
        arrays[name] = pa.ListArray.from_arrays(turn_offsets, values, type=CONVERSATION_SCHEMA.field(name).type)
    return pa.Table.from_arrays([arrays[n] for n in CONVERSATION_SCHEMA.names], schema=CONVERSATION_SCHEMA)


def _text_table(docs: Sequence[tuple[str, str]], ids: Mapping[str, list[int]]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([t for _, t in docs], pa.string()),
            _ids_array([ids[t] for _, t in docs]),
            pa.array([s for s, _ in docs], pa.string()),
        ],
        schema=TEXT_SCHEMA,
    )


def index_shards(url: str, *, overwrite: bool = False) -> Manifest:
    """Write ``manifest.json`` for shards written by your own code (see docs/data.md).

    Every folder ``URL/<split>/`` with ``*.parquet`` files becomes a split (``URL/text/`` a text
    split); ``URL/tokenizer.json`` gives the vocabulary size. Shards are validated as a reader
    would (schema, empty files, token ids) before the manifest is written.
    """
    fs, root = resolve(url)
    if fs.exists(join(root, MANIFEST_FILE)) and not overwrite:
        raise FileExistsError(f"{display(fs, join(root, MANIFEST_FILE))}: exists (pass overwrite=True)")
    codec = TextCodec(load_tokenizer(url))
    splits = {}
    for folder in sorted(fs.ls(root, detail=False)):
        split = folder.rstrip("/").rsplit("/", 1)[-1]
        if not fs.isdir(folder) or split.startswith("."):
            continue
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False) if p.endswith(".parquet"))
        names = [n for n in names if not n.startswith(".")]
        if not names:
            continue
        kind = TEXT if split == TEXT_SPLIT else CONVERSATIONS
        rows, turns = validate_split_files(fs, [join(folder, n) for n in names], kind, codec.vocab_size)
        files = tuple(ShardFile(f"{split}/{n}", r) for n, r in zip(names, rows))
        splits[split] = SplitInfo(kind=kind, rows=sum(rows), turns=turns, files=files)
    if not splits:
        raise ValueError(f"{display(fs, root)}: no <split>/*.parquet shards found")
    with fs.open(join(root, TOKENIZER_FILE), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    manifest = Manifest(SCHEMA_VERSION, codec.vocab_size, sha, splits, sources={"indexed": True})
    write_manifest(url, manifest)
    return read_manifest(url)
