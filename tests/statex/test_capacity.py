"""The capacity study: probe sweeps, per-model report, tables, plot and input checks."""

import dataclasses
import json

import pytest
import torch

from rxt_dist.data import PrepareConfig, SyntheticConfig, TextCodec, load_tokenizer, prepare_dataset, read_manifest
from rxt_dist.memory.capacity import (
    CapacityConfig,
    capacity_tables,
    evaluate_capacity_models,
    plot_capacity,
    probe_conversations,
)
from rxt_dist.memory.statex import ExpansionConfig, expand_stm
from rxt_dist.model import RxTModel, from_name, save_model_dir
from rxt_dist.serving.demo import DEMO_TEXT, train_small_tokenizer

SMALL = dict(facts=(1, 4), recalls=3, distances=(1, 3, 6), distance_facts=4, conversations=3, batch_size=4,
             max_new_tokens=6)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("cap") / "data")
    prepare_dataset(PrepareConfig(out=url, conversations=30, synthetic=SyntheticConfig.from_name("capacity"),
                                  vocab_size=512, valid_fraction=0.1, test_fraction=0.1))
    return url


@pytest.fixture(scope="module")
def models(tmp_path_factory, data) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    cfg = dataclasses.replace(from_name("debug"), vocab_size=read_manifest(data).vocab_size, init_std=0.5)
    torch.manual_seed(0)
    original, grown = str(root / "original"), str(root / "inherit")
    with open(f"{data}/tokenizer.json") as f:
        save_model_dir(RxTModel(cfg), original, f.read())
    expand_stm(original, ExpansionConfig(factor=2, mode="inherit"), out_url=grown)
    return {"original": original, "inherit": grown}


def test_probe_sweeps_hold_the_requested_facts_and_distances(data):
    probes = probe_conversations(CapacityConfig(**SMALL), TextCodec(load_tokenizer(data)))
    facts = [t.recall for c in probes["facts"] for _, t in c.recall_turns]
    assert sorted({r.facts_held for r in facts}) == [1, 4]
    assert len(facts) == 3 * 1 + 3 * 3  # min(recalls, f) recalls per conversation
    dist = [t.recall for c in probes["distance"] for _, t in c.recall_turns]
    assert sorted(r.distance for r in dist) == [1, 1, 1, 3, 3, 3, 6, 6, 6]
    assert {r.facts_held for r in dist} == {4}
    assert all(t.query_ids and t.answer_ids for c in probes["facts"] for t in c.turns)


def test_report_has_every_model_and_sweep_point(tmp_path, data, models):
    report = evaluate_capacity_models(models, TextCodec(load_tokenizer(data)), CapacityConfig(**SMALL))
    assert list(report["models"]) == ["original", "inherit"]
    assert report["models"]["inherit"]["stm_slots"] == 16 and report["models"]["original"]["stm_slots"] == 8
    for m in report["models"].values():
        facts, dist = m["results"]["facts"], m["results"]["distance"]
        assert {k: v["count"] for k, v in facts.items()} == {"1": 3, "4": 9}
        assert {k: v["count"] for k, v in dist.items()} == {"1": 3, "3": 3, "6": 3}
        assert all(0 <= v["exact_match"] <= 1 and 0 <= v["value_accuracy"] <= 1 for v in [*facts.values(), *dist.values()])
    json.dumps(report)  # plain data, ready for docs/bench/statex.json
    table = capacity_tables(report)
    assert "| recall EM by facts held | 1 | 4 |" in table
    assert "| inherit (S=16) |" in table and "| (recall turns) | 3 | 3 | 3 |" in table
    plot_capacity(report, str(tmp_path / "cap.png"))
    assert (tmp_path / "cap.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_trained_on_other_token_ids_is_refused(tmp_path, data, models):
    other = str(tmp_path / "other")
    cfg = dataclasses.replace(from_name("debug"), vocab_size=read_manifest(data).vocab_size)
    save_model_dir(RxTModel(cfg), other, train_small_tokenizer(DEMO_TEXT * 4, vocab_size=400).to_str())
    with pytest.raises(ValueError, match="tokenizer.json differs from the dataset's tokenizer"):
        evaluate_capacity_models({"other": other}, TextCodec(load_tokenizer(data)), CapacityConfig(**SMALL))


@pytest.mark.parametrize("kwargs, message", [
    ({"facts": (1, 33)}, r"facts=\[33\]: the 'capacity' corpus has 32 fact keys"),
    ({"facts": ()}, r"facts=\[\]: must be a non-empty list"),
    ({"distances": (0, 2)}, r"distances=\[0, 2\]: must be a non-empty list of integers ≥ 1"),
    ({"conversations": 0}, r"conversations=0: must be ≥ 1"),
    ({"corpus_preset": "default", "facts": (9,)}, r"facts=\[9\]: the 'default' corpus has 8 fact keys"),
])
def test_bad_capacity_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CapacityConfig(**kwargs)


def test_memory_study_probe_measures_saved_models_in_the_corpus_phrasing(tmp_path, data, models, capsys):
    from jobs.memory_study import main

    out = tmp_path / "probe.json"
    assert main(["--data", data, "--probe", f"m={models['original']}", "--probe-conversations", "2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["corpus_preset"] == "default" and report["config"]["distance_facts"] == 5
    assert report["command"].endswith("--probe-conversations 2 --out " + str(out))
    facts = report["models"]["m"]["results"]["facts"]
    assert list(facts) == ["1", "2", "3", "4", "5", "6"]
    assert [facts[k]["count"] for k in ("1", "2", "5")] == [2, 4, 6]  # min(3, f) recalls × 2 conversations
    assert list(report["models"]["m"]["results"]["distance"]) == ["1", "3", "5"]
    assert "| m (S=8) |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--data", data, "--probe", models["original"], "--out", str(out)])
    assert "expected NAME=DIR" in capsys.readouterr().err
