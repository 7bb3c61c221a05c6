"""A training job submitted with the Ray Jobs API to a `ray start --head` cluster completes."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from rxt_dist.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def head_node(tmp_path):
    """A real head node (GCS, raylet, dashboard with the job server) started like on a cluster;
    --block ties its processes to this one, so stopping it stops exactly this cluster."""
    dash = free_port()
    # No drain on SIGTERM: a test cluster has no traffic to hand over (Ray's default waits up to
    # 30 s). The state API address is this cluster's even where others run on the machine (see
    # tests/ray_local.py: Ray Train's controller asks it at the end of every fit).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}"}
    proc = subprocess.Popen(
        [os.path.join(BIN, "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{dash}/api/version", timeout=90)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        # SIGTERM to `ray start` alone: it stops its GCS, raylet and dashboard in order (~3 s).
        # Signalling the whole group at once killed the GCS first, and `ray start` then waited
        # 30 s for it to answer before giving up.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this cluster still running


def test_training_job_submitted_to_a_head_node_completes(head_node, tmp_path, dataset):
    address, env = head_node
    storage = tmp_path / "runs"
    cmd = [
        os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ROOT,
        "--runtime-env-json", '{"excludes": [".git", ".venv", "runs", ".cache", "docs"]}',
        "--", "python", "jobs/train.py", "--config", "configs/cpu-debug.yaml", "--stage", "baseline",
        "--set", f"data.url={dataset}", "--set", f"run.storage={storage}", "--set", "run.name=submitted",
        "--set", "stages.baseline.steps=3", "--set", "stages.baseline.batch_size=8",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    model_dir = storage / "submitted" / "models" / "baseline"
    assert (model_dir / "config.json").exists() and (model_dir / "model.safetensors").exists()
    assert '"step": 3' in proc.stdout
