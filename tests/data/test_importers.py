"""Importing JSONL and chatbot-corpus YAML dialogue files."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from rxt_dist.data import DialogueImportError, import_jsonl, import_yaml, iter_conversations, prepare_dataset
from tests.data.conftest import small_config

GOOD_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
- - How are you?
  - I am fine.
  - What is your name?
  - I am a bot.
- - Odd one
  - answered
  - never answered
"""


def test_jsonl_import(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(
        '{"turns": [{"query": "hi", "answer": "hello"}, {"query": "bye", "answer": "see you"}]}\n'
        "\n"
        '{"id": "x7", "turns": [{"query": "what is 2+2?", "answer": "4"}]}\n'
    )
    convs = import_jsonl(str(path))
    assert [c.conversation_id for c in convs] == ["chats-1", "x7"]
    assert [(t.query, t.answer, t.kind) for t in convs[0].turns] == [("hi", "hello", "unknown"), ("bye", "see you", "unknown")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"turns": [{"query": "a", "answer": "b"}', r"chats.jsonl:2: invalid JSON"),
        ('["not", "an", "object"]', r"chats.jsonl:2: expected an object"),
        ('{"turns": []}', r'chats.jsonl:2: "turns" must be a non-empty list'),
        ('{"turns": [{"query": "a"}]}', r'chats.jsonl:2: turns\[0\]\["answer"\] must be a string, got NoneType'),
        ('{"turns": [{"query": 3, "answer": "b"}]}', r'chats.jsonl:2: turns\[0\]\["query"\] must be a string, got int'),
        ('{"id": "dup", "turns": [{"query": "a", "answer": "b"}]}', r"chats.jsonl:2: conversation id 'dup' repeats line 1"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"id": "dup", "turns": [{"query": "q", "answer": "a"}]}\n' + line + "\n")
    with pytest.raises(DialogueImportError, match=message):
        import_jsonl(str(path))


def test_yaml_import_pairs_alternating_lines(tmp_path, caplog):
    path = tmp_path / "greetings.yml"
    path.write_text(GOOD_YAML)
    with caplog.at_level(logging.WARNING):
        convs = import_yaml(str(path))
    assert [c.conversation_id for c in convs] == ["greetings-0", "greetings-1", "greetings-2"]
    assert [(t.query, t.answer) for t in convs[1].turns] == [("How are you?", "I am fine."), ("What is your name?", "I am a bot.")]
    assert [(t.query, t.answer) for t in convs[2].turns] == [("Odd one", "answered")]
    assert "greetings.yml:12: unpaired last line dropped" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("conversations:\n- - a\n  - [b, c\n", r"bad.yml:\d+: invalid YAML"),
        ("categories: [x]\n", r"bad.yml: no 'conversations' key"),
        ("- a\n- b\n", r"bad.yml: expected a mapping"),
        ("conversations: hello\n", r"bad.yml:1: 'conversations' must be a list"),
        ("conversations:\n- - a\n  - b\n- just text\n", r"bad.yml:4: a conversation must be a list"),
        ("conversations:\n- - a\n  - b\n- - only one\n", r"bad.yml:4: a conversation needs at least two lines"),
        ("conversations:\n- - a\n  - {k: v}\n", r"bad.yml:3: each line of a conversation must be text"),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(DialogueImportError, match=message):
        import_yaml(str(path))


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"turns": []}\n{"x": "caf\xe9"}\n')
    with pytest.raises(DialogueImportError, match="latin.jsonl:2: not UTF-8"):
        import_jsonl(str(path))
    with pytest.raises(FileNotFoundError, match="nope.yml: no such file"):
        import_yaml(str(tmp_path / "nope.yml"))


def test_imports_join_the_dataset(tmp_path):
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("".join(f'{{"turns": [{{"query": "q{i}", "answer": "a{i}"}}]}}\n' for i in range(20)))
    yml = tmp_path / "greetings.yml"
    yml.write_text(GOOD_YAML)
    out = str(tmp_path / "ds")
    cfg = dataclasses.replace(small_config(out), import_jsonl=(str(jsonl),), import_yaml=(str(yml),))
    m = prepare_dataset(cfg)
    assert sum(m.counts.values()) == 120 + 23 and m.sources["imported"] == 23
    imported = [c for s in ("train", "valid", "test") for c in iter_conversations(out, s) if c.turns[0].kind == "unknown"]
    assert sorted(c.conversation_id for c in imported) == sorted(
        [f"chats-{i}" for i in range(1, 21)] + [f"greetings-{i}" for i in range(3)]
    )
