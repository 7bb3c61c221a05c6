"""Import real dialogue files into :class:`Conversation` (turn kind ``"unknown"``).

- JSONL: one conversation per line, ``{"turns": [{"query": ..., "answer": ...}, ...]}`` with an
  optional ``"id"``/``"conversation_id"``.
- YAML in the chatbot-corpus format: ``conversations:`` is a list of conversations, each a list
  of alternating lines (user, bot, user, bot, …); lines pair up into turns. A trailing unpaired
  line has no answer and is dropped (logged with its file and line).

Plain text for stage-1 pre-training is read with :func:`read_text_documents`.

Errors name the file and the line (JSONL: the line of the record; YAML: the line of the node).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import yaml

from rxt_dist.data.conversation import UNKNOWN, Conversation, Turn
from rxt_dist.data.storage import display, resolve

log = logging.getLogger(__name__)


class DialogueImportError(ValueError):
    """A dialogue file that cannot be imported; the message names the file and line."""


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
    """Conversations from a JSONL file (any fsspec URL); ids are ``<file stem>-<line>`` unless
    the record has ``"id"`` or ``"conversation_id"``."""
    text, where = _read_text(path)
    out = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DialogueImportError(f"{at}: invalid JSON ({e.msg} at column {e.colno})") from e
        conv = _jsonl_record(record, at, f"{_stem(where)}-{lineno}")
        if conv.conversation_id in seen:
            first = seen[conv.conversation_id]
            raise DialogueImportError(f"{at}: conversation id {conv.conversation_id!r} repeats line {first}")
        seen[conv.conversation_id] = lineno
        out.append(conv)
    if not out:
        raise DialogueImportError(f"{where}: no conversations (expected one JSON object per line)")
    return out


def _jsonl_record(record: object, at: str, default_id: str) -> Conversation:
    if not isinstance(record, dict):
        raise DialogueImportError(f'{at}: expected an object {{"turns": [...]}}, got {type(record).__name__}')
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DialogueImportError(f'{at}: "turns" must be a non-empty list of {{"query": ..., "answer": ...}}')
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DialogueImportError(f"{at}: turns[{i}] must be an object with query and answer")
        for key in ("query", "answer"):
            value = turn.get(key)
            if not isinstance(value, str):
                raise DialogueImportError(f'{at}: turns[{i}]["{key}"] must be a string, got {type(value).__name__}')
        out.append(Turn(turn["query"], turn["answer"], kind=UNKNOWN))
    cid = record.get("conversation_id", record.get("id", default_id))
    if not isinstance(cid, (str, int)):
        raise DialogueImportError(f"{at}: conversation id must be a string, got {type(cid).__name__}")
    return Conversation(str(cid), out)


def import_yaml(path: str) -> list[Conversation]:
    """Conversations from a chatbot-corpus YAML file (any fsspec URL); ids are
    ``<file stem>-<index>``."""
    text, where = _read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DialogueImportError(f"{where}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from e
    convs_node = _conversations_node(root, where)
    out = []
    for index, node in enumerate(convs_node.value):
        at = f"{where}:{node.start_mark.line + 1}"
        if not isinstance(node, yaml.SequenceNode):
            raise DialogueImportError(f"{at}: a conversation must be a list of lines")
        lines = [_line(item, where) for item in node.value]
        if len(lines) < 2:
            raise DialogueImportError(f"{at}: a conversation needs at least two lines (a query and its answer)")
        if len(lines) % 2:
            log.warning("%s:%d: unpaired last line dropped", where, node.value[-1].start_mark.line + 1)
        turns = [Turn(lines[i], lines[i + 1], kind=UNKNOWN) for i in range(0, len(lines) - 1, 2)]
        out.append(Conversation(f"{_stem(where)}-{index}", turns))
    if not out:
        raise DialogueImportError(f"{where}: 'conversations' is empty")
    return out


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
        raise DialogueImportError(f"{where}:{node.start_mark.line + 1}: each line of a conversation must be text")
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
