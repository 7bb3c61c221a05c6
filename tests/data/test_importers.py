"""Importing JSONL and chatbot-corpus YAML dialogue files."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from rxt_dist.data import (
    DialogueImportError,
    import_jsonl,
    import_yaml,
    iter_conversations,
    prepare_dataset,
    read_jsonl,
    read_yaml,
)
from tests.data.conftest import small_config
from tests.data.real_corpus import MALFORMED, english_files, expected_counts

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
    ("line", "message", "reason"),
    [
        ('{"turns": [{"query": "a", "answer": "b"}', r"chats.jsonl:2: invalid JSON", "invalid_json"),
        ('["not", "an", "object"]', r"chats.jsonl:2: expected an object", "not_an_object"),
        ('{"turns": []}', r'chats.jsonl:2: "turns" must be a non-empty list', "no_turns"),
        ('{"turns": [{"query": "a"}]}', r'chats.jsonl:2: turns\[0\]\["answer"\] must be a string, got NoneType', "bad_turn"),
        ('{"turns": [{"query": 3, "answer": "b"}]}', r'chats.jsonl:2: turns\[0\]\["query"\] must be a string, got int', "bad_turn"),
        ('{"id": [1], "turns": [{"query": "a", "answer": "b"}]}', r"chats.jsonl:2: conversation id must be a string", "bad_id"),
        ('{"id": "dup", "turns": [{"query": "a", "answer": "b"}]}', r"chats.jsonl:2: conversation id 'dup' repeats line 1", "repeated_id"),
    ],
)  # fmt: skip
def test_bad_jsonl_record_is_skipped_or_stops_a_strict_import(tmp_path, caplog, line, message, reason):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"id": "dup", "turns": [{"query": "q", "answer": "a"}]}\n' + line + "\n")
    with pytest.raises(DialogueImportError, match=message):
        import_jsonl(str(path))
    with pytest.raises(DialogueImportError, match=message):
        read_jsonl(str(path), strict=True)
    with caplog.at_level(logging.WARNING):
        result = read_jsonl(str(path))
    assert [c.conversation_id for c in result.conversations] == ["dup"]
    assert (result.records, result.imported, result.skipped) == (2, 1, {reason: 1})
    assert re.search(message + ".*; record skipped", caplog.text)


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
        ("conversations: []\n", r"bad.yml: 'conversations' is empty"),
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


BAD_RECORDS_YAML = """\
conversations:
- - Hello
  - Hi there!
- just text
- - only one
- - a
  - ~
- - How are you?
  - fine
  - and you?
"""


def test_bad_yaml_records_are_skipped_with_file_and_line(tmp_path, caplog):
    path = tmp_path / "mixed.yml"
    path.write_text(BAD_RECORDS_YAML)
    with caplog.at_level(logging.WARNING):
        result = read_yaml(str(path))
    # ids keep the record's index in the file, so a skip does not renumber the records after it
    assert [c.conversation_id for c in result.conversations] == ["mixed-0", "mixed-4"]
    assert (result.records, result.imported, result.unpaired_lines) == (5, 2, 1)
    assert result.skipped == {"not_a_list": 1, "too_short": 1, "non_text_line": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"{path}:4: a conversation must be a list of lines; record skipped",
        f"{path}:5: a conversation needs at least two lines (a query and its answer); record skipped",
        f"{path}:7: each line of a conversation must be text; record skipped",
        f"{path}:10: unpaired last line dropped",
    ]
    with pytest.raises(DialogueImportError, match="mixed.yml:4: a conversation must be a list"):
        read_yaml(str(path), strict=True)


def test_a_file_whose_records_are_all_bad_is_an_error(tmp_path):
    path = tmp_path / "junk.yml"
    path.write_text("conversations:\n- just text\n- - only one\n")
    with pytest.raises(DialogueImportError, match=r"junk.yml: all 2 records skipped \(not_a_list 1, too_short 1\)"):
        read_yaml(str(path))


def test_every_english_chatterbot_file_imports_with_the_counts_it_holds(caplog):
    totals = {"records": 0, "skipped": 0}
    with caplog.at_level(logging.WARNING):
        for path in english_files():
            result, expected = read_yaml(path), expected_counts(path)
            assert result.summary() == {"file": path, **{k: v for k, v in expected.items() if k != "turns"}}
            assert sum(len(c.turns) for c in result.conversations) == expected["turns"]
            totals["records"] += result.records
            totals["skipped"] += sum(result.skipped.values())
    skips = [r.getMessage() for r in caplog.records if "record skipped" in r.getMessage()]
    assert len(skips) == totals["skipped"] >= 1
    assert any(m.endswith(f"/english/{MALFORMED}; record skipped") for m in skips)
    with pytest.raises(DialogueImportError, match=MALFORMED):
        import_yaml(next(p for p in english_files() if p.endswith("/trivia.yml")))


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
    report = m.sources["import"]
    totals = {"files": 2, "records": 23, "imported": 23, "skipped": {}, "unpaired_lines_dropped": 1}
    assert {k: report[k] for k in totals} == totals
    assert [(f["file"], f["imported"]) for f in report["per_file"]] == [(str(jsonl), 20), (str(yml), 3)]
    imported = [c for s in ("train", "valid", "test") for c in iter_conversations(out, s) if c.turns[0].kind == "unknown"]
    assert sorted(c.conversation_id for c in imported) == sorted(
        [f"chats-{i}" for i in range(1, 21)] + [f"greetings-{i}" for i in range(3)]
    )
