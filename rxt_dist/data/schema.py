"""The on-disk format: shard columns, their types, and ``manifest.json`` (see docs/data.md).

A dataset folder (any fsspec URL) holds::

    manifest.json                 written last; lists every shard with its row count
    tokenizer.json                the tokenizer the token ids belong to
    <split>/part-00000.parquet    one conversation per row (splits train/valid/test)
    text/part-00000.parquet       optional: external plain text for stage-1 pre-training
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from rxt_dist.data.storage import display, join, resolve, write_bytes_atomic

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONVERSATIONS = "conversations"
"""Split kind: one conversation per row."""
TEXT = "text"
"""Split kind: one plain-text document per row."""
TEXT_SPLIT = "text"
"""Name of the split that holds external text (``prepare_data.py --extra-text``)."""

ID_TYPE = pa.int32()

CONVERSATION_SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("num_turns", pa.int32()),
        ("query", pa.list_(pa.string())),
        ("answer", pa.list_(pa.string())),
        ("query_ids", pa.list_(pa.list_(ID_TYPE))),
        ("answer_ids", pa.list_(pa.list_(ID_TYPE))),
        ("kind", pa.list_(pa.string())),
        ("fact", pa.list_(pa.string())),
        ("value", pa.list_(pa.string())),
        ("recall_stated_turn", pa.list_(pa.int32())),
        ("recall_distance", pa.list_(pa.int32())),
        ("recall_facts_held", pa.list_(pa.int32())),
        ("recall_updated", pa.list_(pa.bool_())),
        ("recall_mentioned_turn", pa.list_(pa.int32())),
        ("recall_gold_start", pa.list_(pa.int32())),
        ("recall_gold_len", pa.list_(pa.int32())),
        ("recall_seen", pa.list_(pa.bool_())),
        ("value_start", pa.list_(pa.int32())),
        ("value_len", pa.list_(pa.int32())),
    ]
)
"""What :func:`rxt_dist.data.write_shards` writes for a conversation split."""

TEXT_SCHEMA = pa.schema([("text", pa.string()), ("ids", pa.list_(ID_TYPE)), ("source", pa.string())])
"""What :func:`rxt_dist.data.write_shards` writes for the text split."""


def _list_of(inner: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    return lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and inner(t.value_type)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_is_int = pa.types.is_integer
_is_ids = _list_of(_is_int)
_is_turn_ids = _list_of(_is_ids)


@dataclass(frozen=True)
class Column:
    """A column a reader knows: its type test, the type it names in errors, whether required."""

    check: Callable[[pa.DataType], bool]
    expected: str
    required: bool = False


_STR_LIST = Column(_list_of(_is_str), "list<string>")
_INT_LIST = Column(_list_of(_is_int), "list<int32>")

CONVERSATION_COLUMNS: dict[str, Column] = {
    "conversation_id": Column(_is_str, "string", required=True),
    "query_ids": Column(_is_turn_ids, "list<list<int32>> (any integer type)", required=True),
    "answer_ids": Column(_is_turn_ids, "list<list<int32>> (any integer type)", required=True),
    "num_turns": Column(_is_int, "int32"),
    "query": _STR_LIST,
    "answer": _STR_LIST,
    "kind": _STR_LIST,
    "fact": _STR_LIST,
    "value": _STR_LIST,
    "recall_stated_turn": _INT_LIST,
    "recall_distance": _INT_LIST,
    "recall_facts_held": _INT_LIST,
    "recall_updated": Column(_list_of(pa.types.is_boolean), "list<bool>"),
    "recall_mentioned_turn": _INT_LIST,
    "recall_gold_start": _INT_LIST,
    "recall_gold_len": _INT_LIST,
    "recall_seen": Column(_list_of(pa.types.is_boolean), "list<bool>"),
    "value_start": _INT_LIST,
    "value_len": _INT_LIST,
}
OPTIONAL_RECALL_COLUMNS = ("recall_seen",)
"""Recall columns added later: a dataset written before them reads with their default
(``recall_seen`` absent: every gold value was seen in training, as in the closed value space)."""
RECALL_COLUMNS = tuple(c for c in CONVERSATION_COLUMNS if c.startswith("recall_") and c not in OPTIONAL_RECALL_COLUMNS)
"""Present all together or not at all; a recall turn has ``recall_stated_turn ≥ 0``."""
PER_TURN_COLUMNS = tuple(c for c in CONVERSATION_COLUMNS if c not in ("conversation_id", "num_turns"))
TURN_ID_COLUMNS = ("query_ids", "answer_ids")

TEXT_COLUMNS: dict[str, Column] = {
    "ids": Column(_is_ids, "list<int32> (any integer type)", required=True),
    "text": Column(_is_str, "string"),
    "source": Column(_is_str, "string"),
}


def columns_for(kind: str) -> dict[str, Column]:
    return CONVERSATION_COLUMNS if kind == CONVERSATIONS else TEXT_COLUMNS


@dataclass(frozen=True)
class ShardFile:
    """One shard: its path relative to the dataset folder and its row count."""

    path: str
    rows: int


@dataclass(frozen=True)
class SplitInfo:
    """One split: its kind (``conversations`` or ``text``), totals and shards."""

    kind: str
    rows: int
    turns: int
    files: tuple[ShardFile, ...]


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``: what a dataset holds and how it was made."""

    schema_version: int
    vocab_size: int
    """Number of tokens in ``tokenizer.json``; every stored id is below it."""
    tokenizer_sha256: str
    splits: dict[str, SplitInfo]
    generator: dict | None = None
    """The :class:`SyntheticConfig` settings (``None`` when nothing was generated)."""
    sources: dict = field(default_factory=dict)
    """Where rows came from: ``{"synthetic": n, "jsonl": [...], "yaml": [...], "extra_text": [...]}``."""
    tokenizer_file: str = "tokenizer.json"
    url: str = ""
    """The dataset folder it was read from (not stored)."""

    @property
    def counts(self) -> dict[str, int]:
        """Rows per split."""
        return {name: s.rows for name, s in self.splits.items()}

    def files(self, split: str) -> list[str]:
        """Full paths (without protocol) of the shards of ``split``, in order."""
        info = self.split(split)
        _, root = resolve(self.url)
        return [join(root, f.path) for f in info.files]

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise KeyError(f"{self.url}: no split {name!r} in the manifest; it has {sorted(self.splits)}")
        return self.splits[name]

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("url")
        d["format"] = "rxt_dist.dialogue"
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version={version!r}; this rxt_dist reads version {SCHEMA_VERSION}")
        try:
            splits = {
                name: SplitInfo(
                    kind=s["kind"],
                    rows=int(s["rows"]),
                    turns=int(s.get("turns", 0)),
                    files=tuple(ShardFile(str(f["path"]), int(f["rows"])) for f in s["files"]),
                )
                for name, s in d["splits"].items()
            }
            return cls(
                schema_version=version,
                vocab_size=int(d["vocab_size"]),
                tokenizer_sha256=str(d.get("tokenizer_sha256", "")),
                splits=splits,
                generator=d.get("generator"),
                sources=d.get("sources", {}),
                tokenizer_file=d.get("tokenizer_file", "tokenizer.json"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: malformed manifest ({type(e).__name__}: {e}); see docs/data.md") from e


def read_manifest(url: str) -> Manifest:
    """Read ``URL/manifest.json``. A missing manifest means no dataset, or an interrupted write."""
    fs, root = resolve(url)
    path = join(root, MANIFEST_FILE)
    where = display(fs, path)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{where}: manifest missing — not a dataset folder, or its write was interrupted "
            "(run jobs/prepare_data.py again, or rxt_dist.data.index_shards for shards you wrote yourself)"
        )
    with fs.open(path, "rb") as f:
        text = f.read().decode()
    m = Manifest.from_json(text, where)
    for name, s in m.splits.items():
        if s.kind not in (CONVERSATIONS, TEXT):
            raise ValueError(f"{where}: split {name!r} has kind {s.kind!r}; expected {CONVERSATIONS!r} or {TEXT!r}")
    return dataclasses.replace(m, url=display(fs, root))


def write_manifest(url: str, manifest: Manifest) -> None:
    """Write ``URL/manifest.json`` atomically (the last step of every dataset write)."""
    fs, root = resolve(url)
    write_bytes_atomic(fs, join(root, MANIFEST_FILE), manifest.to_json().encode())
