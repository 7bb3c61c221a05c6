"""jobs/prepare_data.py: flags reach the library, bad values fail with the field named, a real
corpus imports with its bad record skipped, and log lines never share a line with the bar."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from jobs.prepare_data import main, parse_args
from rxt_dist.data import SyntheticConfig, iter_conversations, read_manifest
from tests.data.real_corpus import MALFORMED, english_files, expected_counts

ROOT = Path(__file__).resolve().parents[2]
BAR = re.compile(r"\d+%\||\brow/s\b|\d+row \[")  # a fragment of a tqdm bar: "37%|", "row/s]", "0row ["
LOG = re.compile(r"\b(INFO|WARNING|ERROR) rxt_dist\.")


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    main(["--out", str(out), "--conversations", "300", "--seed", "5", "--min-turns", "3", "--max-turns", "5",
          "--vocab-size", "2000", "--valid-fraction", "0.1", "--test-fraction", "0.1", "--shard-rows", "100"])  # fmt: skip
    m = read_manifest(str(out))
    assert m.counts == {"train": 240, "valid": 30, "test": 30}
    assert [f.rows for f in m.splits["train"].files] == [100, 100, 40]
    assert SyntheticConfig.from_dict(m.generator) == SyntheticConfig(seed=5, min_turns=3, max_turns=5)
    assert m.generator["conversations"] == 300
    assert {len(c.turns) for c in iter_conversations(str(out), "valid")} <= {3, 4, 5}
    assert (out / "tokenizer.json").exists() and json.loads((out / "manifest.json").read_text())["vocab_size"] <= 2000
    assert "wrote" in capsys.readouterr().out


def test_cli_options_map_to_the_config():
    cfg = parse_args(["--out", "x", "--preset", "capacity", "--owners", "2", "--attributes", "name", "pet",
                      "--p-update", "0", "--extra-text", "a.txt", "b.txt", "--import-jsonl", "c.jsonl"])  # fmt: skip
    assert cfg.synthetic == SyntheticConfig.from_name("capacity", owners=2, attributes=("name", "pet"), p_update=0.0)
    assert cfg.extra_text == ("a.txt", "b.txt") and cfg.import_jsonl == ("c.jsonl",)
    cfg = parse_args(["--out", "x", "--value-space", "closed", "--heldout-value-share", "0.3",
                      "--seen-value-share", "0.1"])  # fmt: skip
    assert cfg.synthetic == SyntheticConfig(value_space="closed", heldout_value_share=0.3, seen_value_share=0.1)
    assert parse_args(["--out", "x", "--preset", "debug"]).synthetic.value_space == "open"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-turns", "0"], "min_turns=0"),
        (["--valid-fraction", "0.6", "--test-fraction", "0.5"], "valid_fraction \\+ test_fraction"),
        (["--conversations", "0"], "conversations=0 and nothing to import"),
        (["--preset", "huge"], "preset 'huge'"),
        (["--value-space", "half"], "value_space='half': use 'open' or 'closed'"),
        (["--heldout-value-share", "1"], r"heldout_value_share=1.0: must be in \(0, 1\)"),
        (["--vocab-size", "400"], "vocab_size=400: the open value space needs"),
    ],
)
def test_cli_bad_values_exit_with_the_field(flags, message):
    with pytest.raises(SystemExit, match=message):
        main(["--out", "memory://never", *flags])


def _import_english(out: Path, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "prepare_data.py"), "--out", str(out), "--conversations", "0",
            "--vocab-size", "1000", *flags, "--import-yaml", *english_files()]  # fmt: skip


def test_real_corpus_imports_with_bad_records_skipped_and_counted(tmp_path):
    # stdout and stderr into one pipe, as `2>&1 | tee log` or a Ray job log gets them
    run = subprocess.run(_import_english(tmp_path / "ds"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    lines = run.stdout.splitlines()
    assert "\r" not in run.stdout, "a progress bar was drawn into a pipe"
    assert all(LOG.match(line) or line.startswith("wrote ") for line in lines), "\n".join(lines)
    assert any(line.endswith(f"/english/{MALFORMED}; record skipped") for line in lines)

    expected = {path: expected_counts(path) for path in english_files()}
    report = read_manifest(str(tmp_path / "ds")).sources["import"]
    assert [f["file"] for f in report["per_file"]] == list(expected)
    for f in report["per_file"]:
        assert f == {"file": f["file"], **{k: v for k, v in expected[f["file"]].items() if k != "turns"}}
    records = sum(e["records"] for e in expected.values())
    imported = sum(e["imported"] for e in expected.values())
    assert (report["files"], report["records"], report["imported"]) == (len(expected), records, imported)
    assert report["skipped"] == {"not_a_list": records - imported} and records > imported
    m = read_manifest(str(tmp_path / "ds"))
    assert sum(m.counts.values()) == imported
    assert sum(s.turns for s in m.splits.values()) == sum(e["turns"] for e in expected.values())
    skipped = records - imported
    summary = f"imports: {len(expected)} files, {records} records read, {imported} imported, {skipped} skipped"
    assert any(summary in line for line in lines)


def test_strict_stops_at_the_first_bad_record_and_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(SystemExit, match=f"prepare_data: .*/english/{re.escape(MALFORMED)}$"):
        main(_import_english(out, "--strict")[2:])
    assert not (out / "manifest.json").exists()


def _run_in_terminal(args: list[str]) -> str:
    """Run ``args`` with stdout and stderr on a 120-column pseudo-terminal; what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=ROOT, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0, b"".join(chunks)[-3000:]
    return b"".join(chunks).decode()


def _screen_lines(raw: str) -> list[str]:
    """The lines a terminal shows: a carriage return moves back to column 0 and overwrites."""
    shown = []
    for line in raw.split("\n"):
        cells: list[str] = []
        for part in line.split("\r"):
            cells[: len(part)] = part
        shown.append("".join(cells).rstrip())
    return shown


def test_on_a_terminal_log_lines_and_the_bar_keep_apart(tmp_path):
    shown = _screen_lines(_run_in_terminal(_import_english(tmp_path / "ds")))
    assert any(BAR.search(line) for line in shown), "no progress bar on a terminal"
    mixed = [line for line in shown if BAR.search(line) and LOG.search(line)]
    assert not mixed
    assert any(line.endswith(f"/english/{MALFORMED}; record skipped") and LOG.match(line) for line in shown)
