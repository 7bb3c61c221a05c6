"""jobs/prepare_data.py: flags reach the library, bad values fail with the field named."""

from __future__ import annotations

import json

import pytest

from jobs.prepare_data import main, parse_args
from rxt_dist.data import SyntheticConfig, iter_conversations, read_manifest


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
