"""Checkpoints of the reference implementation rxlm: imported models compute what rxlm computes.

The parity tests install rxlm (with ``--no-deps``: its model code needs only torch,
``transformers<5`` and ``huggingface_hub<0.34``) into an isolated virtual environment, cached
under ~/.cache/rxt_dist-test-rxlm (or $RXT_RXLM_VENV_CACHE) keyed by rxlm's and Python's versions
and the place of this torch, so that none of its pins touch this project's environment. Its torch
is the one running here: a ``.pth`` file puts this environment's site-packages after its own,
so rxlm's pins win and torch (not installed there) is this very build — installing a second copy
took half of the module's minute. rxlm_reference.py then builds tiny random models there, saves
them with ``save_pretrained`` and writes reference outputs; this process imports the directories
and compares. Skipped only when pip cannot reach the package registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from rxt_dist.inference.engine import generate
from rxt_dist.inference.sampling import SamplingParams
from rxt_dist.model import load_model_dir, load_tokenizer
from rxt_dist.model.rxlm_import import (
    RXLM_VERSION,
    RxlmImportError,
    import_rxlm,
    remap_tokenizer_json,
    rxlm_to_rxt_config,
    vocab_permutation,
)
from rxt_dist.tokens import SPECIAL_TOKENS
from tests.tolerances import KERNEL

REFERENCE_SCRIPT = Path(__file__).with_name("rxlm_reference.py")
CASES = ("sqa_elementwise", "mha_static_tanh", "grouped_plain")
RXLM_DEPS = ("transformers<5", "huggingface_hub<0.34")


# -- the isolated rxlm environment ------------------------------------------------------------
TORCH_SITE = Path(torch.__file__).resolve().parent.parent
"""The site-packages this torch was imported from, which the rxlm environment reads after its own."""


def _venv_dir() -> Path:
    """The cached environment of this rxlm version for this torch: keyed by the path of the
    site-packages it reads torch from (its ``.pth`` names it), since checkouts come and go."""
    root = Path(os.environ.get("RXT_RXLM_VENV_CACHE", Path.home() / ".cache" / "rxt_dist-test-rxlm"))
    site = hashlib.sha1(str(TORCH_SITE).encode()).hexdigest()[:10]
    return root / f"rxlm{RXLM_VERSION}-py{sys.version_info.major}{sys.version_info.minor}-torch-{site}"


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "install", "-q", *args],
                          capture_output=True, text=True, timeout=1200)


def _registry_unreachable() -> str | None:
    """Why the package registry cannot be reached, or None when it answers."""
    index = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True).stdout.strip() or "https://pypi.org/simple"
    try:
        urllib.request.urlopen(f"{index.rstrip('/')}/rxlm/", timeout=20).close()
    except OSError as exc:
        return f"cannot reach the package registry {index} to install rxlm=={RXLM_VERSION}: {exc}"
    return None


def _build_venv(target: Path) -> Path:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(tmp)], check=True, capture_output=True)
    python = tmp / "bin" / "python"
    for args in (["--no-deps", f"rxlm=={RXLM_VERSION}"], list(RXLM_DEPS)):
        done = _pip(python, *args)
        if done.returncode != 0:
            reason = _registry_unreachable()
            if reason:
                pytest.skip(reason)
            pytest.fail(f"pip install {' '.join(args)} failed in {tmp}:\n{done.stderr[-3000:]}")
    # written after the installs, so pip installs every dependency of rxlm's pins in here
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "rxt_dist_torch.pth").write_text(f"{TORCH_SITE}\n")
    (tmp / ".complete").touch()
    if not (target / ".complete").exists():
        if target.exists():
            subprocess.run(["rm", "-rf", str(target)], check=True)
        tmp.rename(target)
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Directory with one sub-directory per case: the rxlm checkpoint and rxlm's outputs."""
    venv = _venv_dir()
    if not (venv / ".complete").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        _build_venv(venv)
    out = tmp_path_factory.mktemp("rxlm")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(venv / "bin" / "python"), str(REFERENCE_SCRIPT), str(out)], cwd=out,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"rxlm reference script failed:\n{done.stderr[-4000:]}"
    return out


# -- parity -----------------------------------------------------------------------------------
def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("case", CASES)
def test_imported_model_matches_rxlm(reference: Path, tmp_path: Path, case: str) -> None:
    """Same decoder logits for the same prompts and STM, same STM after a memory update, same
    greedy answer — fp32, KERNEL tolerance: the same maths through different kernels (rxlm's
    interleaved RoPE vs our half-split one on reordered rows, its fused GLU matmul vs our two)."""
    src = reference / case
    result = import_rxlm(str(src / "model"), str(tmp_path / "imported"))
    model = load_model_dir(str(tmp_path / "imported")).eval()
    ref = torch.load(src / "reference.pt")
    meta = json.loads((src / "reference.json").read_text())
    perm = torch.tensor(result.perm)  # perm[rxt_id] = rxlm_id
    new_of = torch.argsort(perm)  # new_of[rxlm_id] = rxt_id

    with torch.no_grad():
        lengths = ref["mask"].sum(dim=1)
        logits, _ = model(new_of[ref["ids"]], lengths, ref["stm0"])  # (B, T, V)
        diffs = []
        for b, n in enumerate(lengths.tolist()):
            want = ref["logits"][b, :n][:, perm]  # rxlm's logits in rxt_dist's vocabulary order
            diffs.append(_max_diff(logits[b, :n], want))
            torch.testing.assert_close(logits[b, :n], want, **KERNEL)

        stm1 = model.consolidate(ref["stm0"], new_of[ref["inter_ids"]], ref["inter_mask"].sum(dim=1))
        torch.testing.assert_close(stm1, ref["stm1"], **KERNEL)

    query = [int(new_of[t]) for t in meta["queries"][0]]
    answer = generate(model, [query], ref["stm1"][:, :1], SamplingParams(max_new_tokens=10))[0]
    assert [int(perm[t]) for t in answer] == meta["greedy"]
    print(f"\n{case}: max |Δ| logits {max(diffs):.2e} (|logit| ≤ {float(ref['logits'].abs().max()):.1f}), "
          f"STM {_max_diff(stm1, ref['stm1']):.2e} (|STM| ≤ {float(ref['stm1'].abs().max()):.1f}), "
          f"greedy answer of {len(answer)} tokens equal; rxlm's own interact(): {meta['interact']}")


# -- config mapping and refusals (no rxlm needed) ----------------------------------------------
def _rxlm_config(**changes) -> dict:
    comp = dict(num_layers=2, vocab_size=64, embed_dim=32, att_heads=4, ff_dim=48, stm_size=8,
                self_att_type="mha", cross_att_type="mha")
    cfg = {"decoder_config": dict(comp), "encoder_config": dict(comp, skip_memory_cross_attention=True),
           "memory_attention_config": dict(num_layers=2, embed_dim=32, att_heads=4, stm_size=8, att_type="mha",
                                           interlayer_att_type="mha"),
           "tokenizer_config": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, query_token_id=3,
                                    answer_token_id=4)}
    for path, value in changes.items():
        section, key = path.split("__")
        cfg[section][key] = value
    return cfg


def test_config_maps_rxlm_defaults() -> None:
    cfg = rxlm_to_rxt_config(_rxlm_config())
    assert cfg.memory_attention.variant == "self_interlayer"
    assert cfg.memory_attention.gate.kind == "none"  # use_gated_residual defaults to False
    assert cfg.decoder_attention.out_bias and cfg.decoder_ffn.bias and cfg.lm_head_bias
    assert not cfg.decoder_final_norm and not cfg.tie_embeddings
    assert cfg.norm_eps == torch.finfo(torch.float32).eps
    sqa = rxlm_to_rxt_config(_rxlm_config(decoder_config__self_att_type="sqa",
                                          decoder_config__att_query_groups=2, decoder_config__att_groups=1))
    assert (sqa.decoder_attention.query_heads, sqa.decoder_attention.kv_heads) == (2, 1)


@pytest.mark.parametrize("change, named", [
    ({"decoder_config__use_moe": True}, "decoder_config.use_moe"),
    ({"encoder_config__use_rms_norm": False}, "encoder_config.use_rms_norm"),
    ({"decoder_config__ff_activation": "gelu"}, "decoder_config.ff_activation"),
    ({"decoder_config__use_gated_attention": True}, "decoder_config.use_gated_attention"),
    ({"decoder_config__self_att_type": "sqa", "decoder_config__att_query_groups": 1,
      "decoder_config__att_groups": 2}, "reversed SQA"),
    ({"memory_attention_config__use_gated_residual": True,
      "memory_attention_config__residual_gate_type": "linear"}, "residual_gate_type='linear'"),
    ({"memory_attention_config__norm_type": "adaptive"}, "memory_attention_config.norm_type"),
    ({"memory_attention_config__num_groups": 2, "memory_attention_config__num_layers": 2}, None),
    ({"encoder_config__embed_dim": 64}, "embed_dim"),
])
def test_unrepresentable_options_are_refused_by_name(change: dict, named: str | None) -> None:
    cfg = _rxlm_config(**change)
    if named is None:  # num_groups only matters for the grouped variant
        cfg["memory_attention_variant"] = "grouped-self-interlayer"
        named = "memory_attention_config.num_groups=2"
    with pytest.raises(RxlmImportError, match=named.replace("(", r"\(").replace(".", r"\.")):
        rxlm_to_rxt_config(cfg)


def test_vocab_permutation_moves_only_what_it_must() -> None:
    perm = vocab_permutation(dict(pad_token_id=9, bos_token_id=0, eos_token_id=1, query_token_id=2,
                                  answer_token_id=3), 12, unk_id=8, mask_id=7)
    assert sorted(perm) == list(range(12))
    assert perm == [9, 8, 0, 1, 2, 3, 7, 6, 5, 4, 10, 11]  # 10 and 11 were not displaced: kept


def test_tokenizer_json_is_rewritten_for_the_new_ids() -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["hello", "[BOS]", "[EOS]", "[Q]", "[A]", "[PAD]", "world", "[UNK]", "[MASK]", "again"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(["[BOS]", "[EOS]", "[Q]", "[A]", "[PAD]", "[UNK]", "[MASK]"])
    perm = vocab_permutation(dict(pad_token_id=5, bos_token_id=1, eos_token_id=2, query_token_id=3,
                                  answer_token_id=4), len(words), unk_id=7, mask_id=8)
    names = {new: words[perm[new]] for new in range(7)}
    new = Tokenizer.from_str(remap_tokenizer_json(tok.to_str(), perm, names))
    for i, name in enumerate(SPECIAL_TOKENS):
        assert new.token_to_id(name) == i
    old_ids = tok.encode("hello world again").ids
    assert [perm[i] for i in new.encode("hello world again").ids] == old_ids


def test_tokenizer_of_an_imported_directory_loads(tmp_path: Path) -> None:
    """load_tokenizer's checks (special ids, vocabulary size) pass on a converted tokenizer."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    words = ["[PAD]", "[BOS]", "[EOS]", "[Q]", "[A]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(57)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    perm = vocab_permutation(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, query_token_id=3,
                                  answer_token_id=4), 64, unk_id=5, mask_id=6)
    text = remap_tokenizer_json(tok.to_str(), perm, {new: words[perm[new]] for new in range(7)})
    (tmp_path / "tokenizer.json").write_text(text)
    assert load_tokenizer(str(tmp_path), vocab_size=64).token_to_id("[MASK]") == 6
