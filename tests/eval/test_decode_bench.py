"""The decode benchmark (jobs/bench_decode.py): the document it writes and its peer's shape."""

import json
import subprocess
import sys

import pytest

from rxt_dist.eval.decode import DecodeConfig, peer_config, ratios
from rxt_dist.model import from_name


def test_a_small_run_writes_every_key_the_benchmark_reports(tmp_path):
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [sys.executable, "jobs/bench_decode.py", "--presets", "debug", "--batches", "1", "2",
         "--modes", "eager", "--tokens", "4", "--repeats", "1", "--no-peer", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    eager = doc["rxt"]["debug"]["eager"]
    assert set(eager["tokens_per_s"]) == {"batch1", "batch2"} and eager["ms_per_token"]["batch1"] > 0
    # tokens/s at batch b is b tokens per step: the two figures describe the same steps
    assert abs(eager["tokens_per_s"]["batch2"] * eager["ms_per_step"]["batch2"] / 1000 - 2) < 1e-6
    assert doc["ratios"]["debug"]["eager_batch2_over_batch1_tokens_per_s"] > 0
    assert set(eager["prefill_ms"]) == {"batch1", "batch2"} and min(eager["prefill_ms"].values()) > 0
    assert doc["machine"]["logical_cpus"] >= 1 and "command" in doc


def test_the_peer_has_the_decoders_dimensions_and_the_active_ffn_width():
    cfg = from_name("nano")
    peer = peer_config(cfg)
    assert (peer.vocab_size, peer.dim, peer.num_layers) == (8192, 128, 6)
    assert (peer.attention.num_heads, peer.attention.kv_heads) == (8, 4)
    assert peer.ffn.kind == "dense" and peer.ffn.hidden_dim == 448 * 2  # top-2 of 448-wide experts


def test_ratios_compare_against_the_peer_and_batch_one():
    rxt = {"eager": {"ms_per_token": {"batch1": 2.0}, "tokens_per_s": {"batch1": 500.0, "batch32": 8000.0}}}
    r = ratios(rxt, {"ms_per_token": {"batch1": 4.0}})
    assert r == {"eager_ms_per_token_vs_peer_batch1": 0.5, "eager_batch32_over_batch1_tokens_per_s": 16.0}


@pytest.mark.parametrize("kwargs, field", [
    ({"modes": ["jit"]}, "mode 'jit'"), ({"batches": [0]}, r"batches=\[0\]"), ({"tokens": 1}, "tokens=1"),
])
def test_bad_settings_are_refused_with_the_field_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DecodeConfig(**kwargs)
