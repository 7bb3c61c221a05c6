import subprocess
import sys


def test_summary_prints_parameter_counts_and_stm_shape():
    out = subprocess.run(
        [sys.executable, "-m", "rxt_dist.model", "--summary", "nano"],
        capture_output=True, text=True, check=True,
    ).stdout
    # 11,876,864 for the network + 6×256×128 learned initial STM + 6×256×128 slot identities
    # + 6×256 per-slot gate biases + 6×128 write-sink queries
    assert "12,272,384 total" in out
    assert "active per token" in out
    assert "6 × 256 × 128" in out
    assert "competitive_keep write with a sink, slot identities on queries" in out and "STM init      learned + noise 0.02" in out


def test_summary_of_unknown_preset_fails_clearly():
    proc = subprocess.run(
        [sys.executable, "-m", "rxt_dist.model", "--summary", "huge"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "preset='huge'" in proc.stderr
