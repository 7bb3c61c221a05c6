import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from rxt_dist.model import (
    load_config,
    load_model_dir,
    load_tokenizer,
    save_model_dir,
    stm_from_bytes,
    stm_to_bytes,
)
from rxt_dist.tokens import SPECIAL_TOKENS


def small_tokenizer(specials=SPECIAL_TOKENS) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials))
    tok.train_from_iterator(["my pet is called rex .", "what is my pet called ?"] * 20, trainer)
    return tok


@pytest.mark.parametrize("which", ["rxt", "stateless"])
def test_save_load_round_trips_bit_for_bit(tmp_path, rxt, stateless, which):
    model = rxt if which == "rxt" else stateless
    save_model_dir(model, str(tmp_path / "m"))
    loaded = load_model_dir(str(tmp_path / "m"))
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["m"]  # no temporary left behind


def test_tied_head_stays_tied_after_load(tmp_path, rxt):
    save_model_dir(rxt, str(tmp_path / "m"))
    loaded = load_model_dir(str(tmp_path / "m"))
    assert loaded.cfg.tie_embeddings
    ids = torch.tensor([[10, 11, 12]])
    stm = rxt.initial_stm(1, torch.Generator().manual_seed(0))
    # Bit-for-bit weights through the same kernels: bit-for-bit logits.
    torch.testing.assert_close(loaded(ids, torch.tensor([3]), stm)[0], rxt(ids, torch.tensor([3]), stm)[0],
                               rtol=0, atol=0)


def test_save_replaces_existing_directory_atomically(tmp_path, rxt, stateless):
    save_model_dir(stateless, str(tmp_path / "m"))
    save_model_dir(rxt, str(tmp_path / "m"))
    assert load_config(str(tmp_path / "m")).model_type == "rxt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_model_dir_over_fsspec_memory_url(rxt):
    save_model_dir(rxt, "memory://models/debug")
    loaded = load_model_dir("memory://models/debug")
    assert torch.equal(loaded.embed.weight, rxt.embed.weight)


def test_missing_file_is_named(tmp_path, rxt):
    save_model_dir(rxt, str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_model_dir(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model_dir(str(tmp_path / "nowhere"))


def test_mismatched_weights_are_named(tmp_path, rxt):
    save_model_dir(rxt, str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["stm"]["num_slots"] = 16
    cfg["memory_attention"]["gate"]["kind"] = "static"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model.safetensors does not match config.json: missing tensors \[.*gate.logit"):
        load_model_dir(str(tmp_path / "m"))
    cfg["memory_attention"]["gate"]["kind"] = "linear"
    cfg["dim"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor \S+ has shape \(\d+, 32\) but config.json implies \(\d+, 64\)"):
        load_model_dir(str(tmp_path / "m"))


def test_corrupt_files_are_named(tmp_path, rxt):
    save_model_dir(rxt, str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model_dir(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json: not a valid model config"):
        load_config(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "rxt", "dim": 0}))
    with pytest.raises(ValueError, match="config.json: not a valid model config: dim=0"):
        load_config(str(tmp_path / "m"))


def test_tokenizer_is_saved_and_checked(tmp_path, rxt):
    tok = small_tokenizer()
    save_model_dir(rxt, str(tmp_path / "m"), tokenizer_json=tok.to_str())
    loaded = load_tokenizer(str(tmp_path / "m"), vocab_size=rxt.cfg.vocab_size)
    assert loaded.encode("my pet").ids == tok.encode("my pet").ids
    with pytest.raises(ValueError, match="does not fit the model's vocab_size=20"):
        load_tokenizer(str(tmp_path / "m"), vocab_size=20)
    wrong = small_tokenizer(specials=["[UNK]", "[PAD]", *SPECIAL_TOKENS[2:]])
    save_model_dir(rxt, str(tmp_path / "w"), tokenizer_json=wrong.to_str())
    with pytest.raises(ValueError, match=r"special token \[PAD\] has id 1, expected 0"):
        load_tokenizer(str(tmp_path / "w"))
    save_model_dir(rxt, str(tmp_path / "none"))
    assert load_tokenizer(str(tmp_path / "none")) is None


def test_stm_bytes_round_trip_and_errors(rxt):
    stm = rxt.initial_stm(2, torch.Generator().manual_seed(0))
    one = stm[:, 1]
    data = stm_to_bytes(one)
    assert torch.equal(stm_from_bytes(data, rxt.cfg.stm_shape), one)
    with pytest.raises(ValueError, match=r"shape \(2, 8, 32\) but the model expects \(2, 16, 32\)"):
        stm_from_bytes(data, (2, 16, 32))
    with pytest.raises(ValueError, match="STM bytes are not a stored STM"):
        stm_from_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"expected one conversation's \(L, S, D\)"):
        stm_to_bytes(stm)
