"""Import real dialogue files into :class:`Conversation` (turn kind ``"unknown"``).

- JSONL: one conversation per line, ``{"turns": [{"query": ..., "answer": ...}, ...]}`` with an
  optional ``"id"``/``"conversation_id"``.
- YAML in the chatbot-corpus format: ``conversations:`` is a list of conversations, each a list
  of alternating lines (user, bot, user, bot, …); lines pair up into turns. A trailing unpaired
  line has no answer and is dropped (logged with its file and line).

Plain text for stage-1 pre-training is read with :func:`read_text_documents`.

Real corpora hold bad records (a conversation that is not a list, a turn without an answer).
:func:`read_jsonl` and :func:`read_yaml` skip them by default, with one warning each naming file and
line, and count them by :class:`SkipReason` in a :class:`FileImport`; ``strict=True`` stops at the
first. A file that cannot be read at all (missing, not UTF-8, not YAML, no ``conversations`` list,
no importable record) is an error either way. :func:`import_jsonl` and :func:`import_yaml` are the
strict versions that return the conversations alone.

Errors name the file and the line (JSONL: the line of the record; YAML: the line of the node).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import yaml

from rxt_dist.data.conversation import UNKNOWN, Conversation, Turn
from rxt_dist.data.storage import display, resolve

log = logging.getLogger(__name__)

# libyaml's parser where PyYAML was built with it: the same nodes and line marks, ~8x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DialogueImportError(ValueError):
    """A dialogue file that cannot be imported; the message names the file and line."""


class SkipReason(str, Enum):
    """Why a record was skipped: the keys of ``FileImport.skipped`` and of the manifest's
    ``sources.import.skipped``."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    NO_TURNS = "no_turns"
    BAD_TURN = "bad_turn"
    BAD_ID = "bad_id"
    REPEATED_ID = "repeated_id"
    NOT_A_LIST = "not_a_list"
    TOO_SHORT = "too_short"
    NON_TEXT_LINE = "non_text_line"


class RecordError(DialogueImportError):
    """One bad record; the rest of its file can still be imported."""

    def __init__(self, message: str, reason: SkipReason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class FileImport:
    """What one dialogue file gave: its conversations, and how many records it held and skipped."""

    source: str
    """The file as messages name it."""
    conversations: list[Conversation] = field(default_factory=list)
    """The imported conversations, in file order."""
    records: int = 0
    """Records read: conversations in a YAML file, non-blank lines in a JSONL file."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Skipped records by reason (a :class:`SkipReason` value)."""
    unpaired_lines: int = 0
    """YAML: last lines without an answer, dropped from conversations that were imported."""

    @property
    def imported(self) -> int:
        return len(self.conversations)

    def summary(self) -> dict:
        """The counts, as the manifest records them."""
        return {"file": self.source, "records": self.records, "imported": self.imported,
                "skipped": dict(self.skipped), "unpaired_lines_dropped": self.unpaired_lines}  # fmt: skip


def import_summary(files: Sequence[FileImport]) -> dict:
    """Totals over ``files`` and each file's counts (the manifest's ``sources.import``)."""
    skipped: Counter[str] = Counter()
    for f in files:
        skipped.update(f.skipped)
    return {
        "files": len(files),
        "records": sum(f.records for f in files),
        "imported": sum(f.imported for f in files),
        "skipped": dict(sorted(skipped.items())),
        "unpaired_lines_dropped": sum(f.unpaired_lines for f in files),
        "per_file": [f.summary() for f in files],
    }


def _add_record(result: FileImport, strict: bool, parse: Callable[..., Conversation], *args) -> Conversation | None:
    """Count one record and keep it, or skip it with a warning (``strict``: raise)."""
    result.records += 1
    try:
        conv = parse(*args)
    except RecordError as e:
        if strict:
            raise
        log.warning("%s; record skipped", e)
        result.skipped[e.reason.value] = result.skipped.get(e.reason.value, 0) + 1
        return None
    result.conversations.append(conv)
    return conv


def _check_not_empty(result: FileImport, empty: str) -> FileImport:
    if not result.records:
        raise DialogueImportError(f"{result.source}: {empty}")
    if not result.conversations:
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(result.skipped.items()))
        raise DialogueImportError(f"{result.source}: all {result.records} records skipped ({reasons})")
    return result


def _read_text(path: str) -> tuple[str, str]:
    fs, p = resolve(path)
    where = display(fs, p)
    if not fs.exists(p):
        raise FileNotFoundError(f"{where}: no such file")
    with fs.open(p, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8"), where
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DialogueImportError(f"{where}:{line}: not UTF-8 text ({e.reason})") from e


def _stem(where: str) -> str:
    name = where.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] or name


def import_jsonl(path: str) -> list[Conversation]:
    """Conversations from a JSONL file (any fsspec URL), stopping at the first bad record; ids are
    ``<file stem>-<line>`` unless the record has ``"id"`` or ``"conversation_id"``."""
    return read_jsonl(path, strict=True).conversations


def read_jsonl(path: str, *, strict: bool = False) -> FileImport:
    """A JSONL file's conversations and counts; bad records are skipped with a warning
    (``strict``: the first one raises :class:`DialogueImportError`)."""
    text, where = _read_text(path)
    result = FileImport(where)
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            _add_record(result, strict, _jsonl_line, line, where, lineno, seen)
    return _check_not_empty(result, "no conversations (expected one JSON object per line)")


def _jsonl_line(line: str, where: str, lineno: int, seen: dict[str, int]) -> Conversation:
    at = f"{where}:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{at}: invalid JSON ({e.msg} at column {e.colno})", SkipReason.INVALID_JSON) from e
    conv = _jsonl_record(record, at, f"{_stem(where)}-{lineno}")
    if conv.conversation_id in seen:
        first = seen[conv.conversation_id]
        raise RecordError(
            f"{at}: conversation id {conv.conversation_id!r} repeats line {first}", SkipReason.REPEATED_ID
        )
    seen[conv.conversation_id] = lineno
    return conv


def _jsonl_record(record: object, at: str, default_id: str) -> Conversation:
    if not isinstance(record, dict):
        raise RecordError(f'{at}: expected an object {{"turns": [...]}}, got {type(record).__name__}',
                          SkipReason.NOT_AN_OBJECT)  # fmt: skip
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f'{at}: "turns" must be a non-empty list of {{"query": ..., "answer": ...}}',
                          SkipReason.NO_TURNS)  # fmt: skip
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{at}: turns[{i}] must be an object with query and answer", SkipReason.BAD_TURN)
        for key in ("query", "answer"):
            value = turn.get(key)
            if not isinstance(value, str):
                message = f'{at}: turns[{i}]["{key}"] must be a string, got {type(value).__name__}'
                raise RecordError(message, SkipReason.BAD_TURN)
        out.append(Turn(turn["query"], turn["answer"], kind=UNKNOWN))
    cid = record.get("conversation_id", record.get("id", default_id))
    if not isinstance(cid, (str, int)):
        raise RecordError(f"{at}: conversation id must be a string, got {type(cid).__name__}", SkipReason.BAD_ID)
    return Conversation(str(cid), out)


def import_yaml(path: str) -> list[Conversation]:
    """Conversations from a chatbot-corpus YAML file (any fsspec URL), stopping at the first bad
    record; ids are ``<file stem>-<index>``."""
    return read_yaml(path, strict=True).conversations


def read_yaml(path: str, *, strict: bool = False) -> FileImport:
    """A chatbot-corpus YAML file's conversations and counts; bad records are skipped with a
    warning (``strict``: the first one raises :class:`DialogueImportError`). Ids are
    ``<file stem>-<index>`` with the record's index in the file, skipped records included."""
    text, where = _read_text(path)
    try:
        root = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DialogueImportError(f"{where}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from e
    result = FileImport(where)
    for index, node in enumerate(_conversations_node(root, where).value):
        conv = _add_record(result, strict, _yaml_record, node, where, f"{_stem(where)}-{index}")
        if conv is not None and len(node.value) % 2:
            result.unpaired_lines += 1
            log.warning("%s:%d: unpaired last line dropped", where, node.value[-1].start_mark.line + 1)
    return _check_not_empty(result, "'conversations' is empty")


def _yaml_record(node: yaml.Node, where: str, cid: str) -> Conversation:
    at = f"{where}:{node.start_mark.line + 1}"
    if not isinstance(node, yaml.SequenceNode):
        raise RecordError(f"{at}: a conversation must be a list of lines", SkipReason.NOT_A_LIST)
    lines = [_line(item, where) for item in node.value]
    if len(lines) < 2:
        raise RecordError(
            f"{at}: a conversation needs at least two lines (a query and its answer)", SkipReason.TOO_SHORT
        )
    return Conversation(cid, [Turn(lines[i], lines[i + 1], kind=UNKNOWN) for i in range(0, len(lines) - 1, 2)])


def _conversations_node(root: yaml.Node | None, where: str) -> yaml.SequenceNode:
    if not isinstance(root, yaml.MappingNode):
        raise DialogueImportError(f"{where}: expected a mapping with a 'conversations' list")
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "conversations":
            if not isinstance(value, yaml.SequenceNode):
                raise DialogueImportError(f"{where}:{value.start_mark.line + 1}: 'conversations' must be a list")
            return value
    raise DialogueImportError(f"{where}: no 'conversations' key")


def _line(node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        at = f"{where}:{node.start_mark.line + 1}"
        raise RecordError(f"{at}: each line of a conversation must be text", SkipReason.NON_TEXT_LINE)
    return node.value


def read_text_documents(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(source, document) pairs from plain-text files: documents are separated by blank lines,
    and the lines of one document are joined with spaces."""
    docs = []
    for path in paths:
        text, where = _read_text(path)
        paragraph: list[str] = []
        for line in [*text.splitlines(), ""]:
            if line.strip():
                paragraph.append(line.strip())
            elif paragraph:
                docs.append((where, " ".join(paragraph)))
                paragraph = []
    return docs
