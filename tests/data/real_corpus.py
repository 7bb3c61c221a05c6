"""The English files of the installed ``chatterbot-corpus`` package (a dev dependency), and what
they hold counted independently of the importer: ``yaml.load`` with the safe loader, no line numbers."""

from __future__ import annotations

import importlib
import importlib.resources
from collections import Counter
from pathlib import Path

import pytest
import yaml

# The one malformed record of chatterbot-corpus 1.3.3 (issue 15): a question written as `- text`
# instead of `- - text`, so its answer folds into the question and the record is a string.
MALFORMED = "trivia.yml:35: a conversation must be a list of lines"


def english_files() -> list[str]:
    """The package's English ``*.yml`` files, found through its import path."""
    try:
        importlib.import_module("chatterbot_corpus")
    except ImportError:
        pytest.fail("chatterbot-corpus is not installed: pip install -e '.[dev]'")
    folder = Path(str(importlib.resources.files("chatterbot_corpus") / "data" / "english"))
    files = sorted(str(p) for p in folder.glob("*.yml"))
    assert files, f"{folder}: no .yml files"
    return files


def expected_counts(path: str) -> dict:
    """Records, importable records, skipped records by reason, unpaired last lines and turns in
    one chatbot-corpus file, by the format's rules (a record is a list of ≥ 2 text lines)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    records = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)["conversations"]
    skipped: Counter[str] = Counter()
    imported = unpaired = turns = 0
    for record in records:
        if not isinstance(record, list):
            skipped["not_a_list"] += 1
        elif any(line is None or isinstance(line, (list, dict)) for line in record):
            skipped["non_text_line"] += 1
        elif len(record) < 2:
            skipped["too_short"] += 1
        else:
            imported += 1
            unpaired += len(record) % 2
            turns += len(record) // 2
    return {"records": len(records), "imported": imported, "skipped": dict(skipped),
            "unpaired_lines_dropped": unpaired, "turns": turns}  # fmt: skip
