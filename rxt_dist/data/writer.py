"""Writing a dataset folder: tokenizer, Parquet shards, manifest — atomically, manifest last."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from tokenizers import Tokenizer

from rxt_dist.data.conversation import RECALL, TURN_KINDS, Conversation
from rxt_dist.data.schema import (
    CONVERSATION_SCHEMA,
    CONVERSATIONS,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    TEXT,
    TEXT_SCHEMA,
    TEXT_SPLIT,
    TURN_ID_COLUMNS,
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
    min_shards: int = 4,
    generator: dict | None = None,
    sources: dict | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Write a dataset folder at ``url`` (any fsspec URL) and return its manifest.

    Writes ``tokenizer.json``, ``<split>/part-NNNNN.parquet`` (one conversation per row, at most
    ``shard_rows`` rows per shard, and at least ``min_shards`` shards per split when it has that
    many rows, so Ray can hand each training worker its own shards), the ``text`` split when ``extra_text`` (pairs of source name
    and document) is given, and ``manifest.json`` last. Every file goes to a temporary name first
    and is renamed when complete, so an interrupted write leaves no manifest, and a manifest never
    lists a partial shard. Token ids are computed here from the text with ``tokenizer``; ids
    already on the turns are ignored. ``progress(rows)`` is called after each shard.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows={shard_rows}: must be ≥ 1")
    if min_shards < 1:
        raise ValueError(f"min_shards={min_shards}: must be ≥ 1")
    codec = tokenizer if isinstance(tokenizer, TextCodec) else TextCodec(tokenizer)
    _check_inputs(conversations_by_split, extra_text)
    fs, root = resolve(url)
    old_splits = _prepare_folder(fs, root, overwrite)

    sha = save_tokenizer(codec.tokenizer, url)
    ids = encode_texts(codec, _all_texts(conversations_by_split, extra_text))
    splits: dict[str, SplitInfo] = {}
    for split, convs in conversations_by_split.items():
        step = _rows_per_shard(len(convs), shard_rows, min_shards)
        tables = (_conversation_table(convs[i : i + step], ids) for i in range(0, len(convs), step))
        turns = sum(len(c.turns) for c in convs)
        splits[split] = _write_split(fs, root, split, CONVERSATIONS, tables, turns, progress)
    if extra_text:
        step = _rows_per_shard(len(extra_text), shard_rows, min_shards)
        tables = (_text_table(extra_text[i : i + step], ids) for i in range(0, len(extra_text), step))
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


def _rows_per_shard(rows: int, shard_rows: int, min_shards: int) -> int:
    return max(1, min(shard_rows, -(-rows // min_shards)))


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


def _ids_array(flat: list[int], offsets: list[int]) -> pa.ListArray:
    values = pa.array(np.asarray(flat, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=pa.list_(pa.int32()))


class _Columns:
    """Accumulates one shard's per-turn values in flat lists (fast to turn into Arrow arrays)."""

    def __init__(self) -> None:
        self.turn_offsets = [0]
        self.ids: dict[str, tuple[list[int], list[int]]] = {c: ([], [0]) for c in TURN_ID_COLUMNS}
        self.lists: dict[str, list] = {
            name: [] for name in CONVERSATION_SCHEMA.names if name not in ("conversation_id", "num_turns", *TURN_ID_COLUMNS)
        }

    def add_ids(self, column: str, ids: list[int]) -> None:
        flat, offsets = self.ids[column]
        flat.extend(ids)
        offsets.append(len(flat))


def _conversation_table(convs: Sequence[Conversation], ids: Mapping[str, list[int]]) -> pa.Table:
    cols = _Columns()
    lists = cols.lists
    for c in convs:
        for t in c.turns:
            answer_ids = ids[t.answer]
            cols.add_ids("query_ids", ids[t.query])
            cols.add_ids("answer_ids", answer_ids)
            lists["query"].append(t.query)
            lists["answer"].append(t.answer)
            lists["kind"].append(t.kind)
            lists["fact"].append(t.fact)
            lists["value"].append(t.value)
            r = t.recall
            if r is None:
                stated, distance, held, updated, start, length = -1, -1, -1, False, -1, 0
            else:
                gold = ids[r.gold]
                start = find_last(answer_ids, gold)
                if start < 0:
                    raise ValueError(
                        f"conversation {c.conversation_id!r}: recall gold {r.gold!r} does not occur in its answer "
                        f"{t.answer!r} as whole tokens"
                    )
                stated, distance, held, updated, length = r.stated_turn, r.distance, r.facts_held, r.updated, len(gold)
            for name, v in zip(
                ("recall_stated_turn", "recall_distance", "recall_facts_held", "recall_updated"),
                (stated, distance, held, updated),
            ):
                lists[name].append(v)
            lists["recall_gold_start"].append(start)
            lists["recall_gold_len"].append(length)
        cols.turn_offsets.append(len(lists["query"]))
    offsets = pa.array(cols.turn_offsets, pa.int32())
    arrays = {
        "conversation_id": pa.array([c.conversation_id for c in convs], pa.string()),
        "num_turns": pa.array([len(c.turns) for c in convs], pa.int32()),
    }
    for name in TURN_ID_COLUMNS:
        inner = _ids_array(*cols.ids[name])
        arrays[name] = pa.ListArray.from_arrays(offsets, inner, type=CONVERSATION_SCHEMA.field(name).type)
    for name, values in lists.items():
        field_type = CONVERSATION_SCHEMA.field(name).type
        arrays[name] = pa.ListArray.from_arrays(offsets, pa.array(values, field_type.value_type), type=field_type)
    return pa.Table.from_arrays([arrays[n] for n in CONVERSATION_SCHEMA.names], schema=CONVERSATION_SCHEMA)


def _text_table(docs: Sequence[tuple[str, str]], ids: Mapping[str, list[int]]) -> pa.Table:
    flat: list[int] = []
    offsets = [0]
    for _, text in docs:
        flat.extend(ids[text])
        offsets.append(len(flat))
    return pa.Table.from_arrays(
        [pa.array([t for _, t in docs], pa.string()), _ids_array(flat, offsets), pa.array([s for s, _ in docs], pa.string())],
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
