"""Expanded model directories: written atomically with the tokenizer and the expansion record,
loaded by the serving path unchanged, and the expand_stm job's flags and errors."""

import asyncio
import json
import re

import pytest
import torch

from jobs.expand_stm import main as expand_main
from rxt_dist.inference import SamplingParams, consolidate
from rxt_dist.memory.statex import ExpansionConfig, expand_stm, read_expansion
from rxt_dist.model import StatelessLM, from_name, load_model_dir, save_model_dir, stm_from_bytes, stm_to_bytes
from rxt_dist.model.io import load_tokenizer_json
from rxt_dist.serving.decode_loop import DecodeLoop
from rxt_dist.serving.demo import DEMO_TEXT, train_small_tokenizer

from .conftest import slotted_model


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    return train_small_tokenizer(DEMO_TEXT * 4, vocab_size=400).to_str()


@pytest.fixture
def source(tmp_path, tokenizer_json) -> str:
    url = str(tmp_path / "trained")
    save_model_dir(slotted_model(), url, tokenizer_json, metadata={"stage": "smat", "steps": "9"})
    return url


def test_expanded_directory_keeps_the_tokenizer_and_records_the_expansion(tmp_path, source, tokenizer_json):
    out = str(tmp_path / "expanded")
    expand_stm(source, ExpansionConfig(factor=2, mode="reinit", layers=[1], seed=5), out_url=out)
    model = load_model_dir(out)
    assert model.cfg.stm.num_slots == 16 and model.cfg.stm_shape == (2, 16, 32)
    assert load_tokenizer_json(out) == tokenizer_json
    record = read_expansion(out)
    assert record["mode"] == "reinit" and record["slots_before"] == 8 and record["slots_after"] == 16
    assert record["layers_reinitialised"] == [1] and record["seed"] == 5 and record["source"] == source
    assert read_expansion(source) is None
    original = load_model_dir(source)
    assert torch.equal(model.decoder[0].mem_attn.q_proj.weight, original.decoder[0].mem_attn.q_proj.weight)
    assert not any(p.name.startswith("expanded.tmp") for p in tmp_path.iterdir())  # renamed into place


def serve_one_turn(model, stored: bytes, query: list[int]) -> tuple[list[int], bytes]:
    """What the serving app does with a session's stored STM: the generator streams an answer
    from it (DecodeLoop), the updater consolidates the turn and stores the new STM."""
    stm = stm_from_bytes(stored, model.cfg.stm_shape)  # (L, S, D), shape checked against the model

    async def answer():
        tokens = []
        async for new, _ in DecodeLoop(model).stream(query, stm, SamplingParams(max_new_tokens=8)):
            tokens.extend(new)
        return tokens

    tokens = asyncio.run(answer())
    new = consolidate(model, stm[:, None], [query], [tokens])[:, 0]  # (L, S, D)
    return tokens, stm_to_bytes(new)


def test_the_serving_path_loads_an_expanded_model_directory_unchanged(tmp_path, source):
    out = str(tmp_path / "expanded")
    expand_stm(source, ExpansionConfig(slots=12, mode="inherit"), out_url=out)
    model = load_model_dir(out).eval()
    stored = stm_to_bytes(model.initial_stm(1)[:, 0])
    for query in ([30, 31, 32], [40, 41]):
        tokens, updated = serve_one_turn(model, stored, query)
        assert len(tokens) > 0
        assert stm_from_bytes(updated).shape == (2, 12, 32)
        assert updated != stored
        stored = updated
    old_session = stm_to_bytes(load_model_dir(source).initial_stm(1)[:, 0])  # (L, 8, D)
    with pytest.raises(ValueError, match=r"stored STM has shape \(2, 8, 32\) but the model expects \(2, 12, 32\)"):
        serve_one_turn(model, old_session, [30])


def test_writing_over_the_source_or_expanding_a_stateless_directory_is_refused(tmp_path, source):
    with pytest.raises(ValueError, match="is the source model directory"):
        expand_stm(source, ExpansionConfig(factor=2), out_url=source + "/")
    torch.manual_seed(0)
    stateless = str(tmp_path / "baseline")
    save_model_dir(StatelessLM(from_name("baseline-debug")), stateless)
    with pytest.raises(ValueError, match=f"model directory {stateless} holds a stateless model: it has no STM"):
        expand_stm(stateless, ExpansionConfig(factor=2), out_url=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_cli_expands_and_prints_the_record(tmp_path, source, capsys):
    out = str(tmp_path / "cli")
    assert expand_main([source, out, "--factor", "1.5", "--mode", "reinit", "--layers", "0", "--noise", "0.05"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == out and printed["slots_after"] == 12 and printed["layers_reinitialised"] == [0]
    assert read_expansion(out)["noise"] == 0.05
    assert load_model_dir(out).cfg.stm.num_slots == 12


@pytest.mark.parametrize("flags, message", [
    (["--factor", "0.5"], "factor=0.5: must be a number > 1"),
    (["--slots", "4"], "slots=4: the model has S=8 slots; StateX grows the STM"),
    (["--factor", "2", "--layers", "3"], r"layers=\[3\]: \[3\] out of range for a model with 2 layers"),
    (["--factor", "2", "--mode", "inherit", "--layers", "0"], "only mode='reinit' takes a layer subset"),
])
def test_cli_reports_bad_requests_without_writing(tmp_path, source, capsys, flags, message):
    out = tmp_path / "bad"
    assert expand_main([source, str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert "expand_stm: error:" in err
    assert re.search(message, err), err
    assert not out.exists()


def test_cli_refuses_to_replace_a_directory_without_overwrite(tmp_path, source, capsys):
    out = str(tmp_path / "twice")
    assert expand_main([source, out, "--slots", "10"]) == 0
    assert expand_main([source, out, "--slots", "12"]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert expand_main([source, out, "--slots", "12", "--overwrite"]) == 0
    assert load_model_dir(out).cfg.stm.num_slots == 12
