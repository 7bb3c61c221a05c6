"""What a person running a training job reads: the stage's progress and results on the terminal,
Ray's own output in the run's ray.log (back on the terminal with --verbose), and a failed
stage's error with the path of that log."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RAY_NOISE = ("PlacementGroupCleaner", "DeprecationWarning", "core_worker.cc", "Started a local Ray instance")
"""Ray's output a newcomer saw on the terminal (and read as a crash) before it went to ray.log."""


def run_job(tmp_path, dataset, job: str, name: str, *extra: str) -> subprocess.CompletedProcess:
    """A training entry point on the debug config, output captured (a pipe: no bar)."""
    cmd = [sys.executable, f"jobs/{job}.py", "--config", "configs/cpu-debug.yaml",
           "--set", f"data.url={dataset}", "--set", f"run.storage={tmp_path / 'runs'}", "--set", f"run.name={name}",
           *extra]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RAY_AUTH_MODE": "disabled",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def train(tmp_path, dataset, name: str, *extra: str) -> subprocess.CompletedProcess:
    """A 4-step baseline stage on one worker."""
    return run_job(tmp_path, dataset, "train", name, "--stage", "baseline", "--set", "scaling.num_workers=1",
                   "--set", "stages.baseline.steps=4", "--set", "stages.baseline.batch_size=8",
                   "--set", "checkpoint.log_every_steps=2", *extra)


def ray_lines(output: str) -> list[str]:
    """Lines of Ray's own: forwarded actor/worker output and the noise listed above."""
    return [line for line in output.splitlines()
            if re.match(r"^(\x1b\[\d+m)?\((RayTrainWorker|TrainController|raylet|pid=)", line)
            or any(noise in line for noise in RAY_NOISE)]


def test_the_terminal_shows_progress_with_ray_output_under_verbose(tmp_path, dataset):
    proc = train(tmp_path, dataset, "verbose", "--verbose")
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, terminal[-3000:]
    # Progress: the stage, its steps, loss and throughput, as whole lines (a pipe gets no bar).
    assert re.search(r"\[baseline\] step 2/4 \(50%\) \| loss \d+\.\d+ .*\| [\d.]+k tok/s", proc.stderr), proc.stderr
    assert re.search(r"\[baseline\] step 4/4 \(100%\) \| loss \d+\.\d+ .*\| [\d.]+k tok/s", proc.stderr), proc.stderr
    assert re.search(r"\[baseline\] done: 4 steps, loss \d+\.\d+", proc.stderr)
    assert "\r" not in terminal
    assert '"step": 4' in proc.stdout  # the result
    # --verbose: Ray's own output stays on the terminal and no log file is named.
    assert any("Started a local Ray instance" in line for line in ray_lines(terminal)), terminal[-3000:]
    assert "Ray's own logs" not in terminal
    assert not (tmp_path / "runs" / "verbose" / "logs" / "ray.log").exists()


def test_without_verbose_ray_logs_go_to_the_run_and_a_failed_stage_says_where(tmp_path, dataset):
    # The worker dies at step 3, after the progress line of step 2.
    proc = train(tmp_path, dataset, "failing", "--set", "failure.fail_once_at_step=3",
                 "--set", "failure.max_failures=0")
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 1, terminal[-4000:]
    log = tmp_path / "runs" / "failing" / "logs" / "ray.log"
    assert f"Ray's own logs: {log}" in proc.stderr
    assert re.search(r"\[baseline\] step 2/4 \(50%\) \| loss \d+\.\d+", proc.stderr), proc.stderr
    assert "error: stage baseline failed" in proc.stderr, proc.stderr[-3000:]
    assert "The actor died unexpectedly" in proc.stderr  # Ray Train's account of the worker
    assert f"Ray's own logs, with every worker's output: {log}" in proc.stderr
    assert ray_lines(terminal) == []  # Ray's output, the raylet's report of the death included, is in the log
    held = log.read_text()
    assert "(RayTrainWorker pid=" in held and "(TrainController pid=" in held
    assert "Started a local Ray instance" in held
    assert "[baseline] step 2/4" in held  # the rank-0 worker's own lines are kept there too
    assert "exits abruptly at step 3" in held  # the failing worker's last words


def window(step: int, total: int, loss: float) -> dict:
    metrics = {"loss": loss, "ar": loss, "tokens_per_s": 12_300.0, "lr": 1e-3, "elapsed_s": 2.0 * step,
               "resumed_from_step": -1}
    return {"kind": "metrics", "step": step, "total": total, "metrics": metrics}


def test_the_bar_counts_steps_and_shows_loss_tokens_per_s_and_eta(capsys):
    from rxt_dist.train.progress import StageProgress

    shown = StageProgress("smat", 100, bar=True)
    shown.show({"kind": "note", "text": "[smat] 2 workers, 100 steps", "step": 0})
    shown.show(window(20, 100, 2.5))
    shown.show(window(40, 80, 2.0))  # a time budget fixed the step count at 80
    bar = shown._bar
    assert (bar.n, bar.total) == (40, 80)
    assert "loss 2.000, 12.3k tok/s" in str(bar)
    assert re.search(r"40/80 \[\d\d:\d\d<\d\d:\d\d", str(bar))  # elapsed < ETA
    bar.close()


def test_without_a_terminal_each_window_is_one_log_line(caplog):
    from rxt_dist.train.progress import StageProgress

    shown = StageProgress("smat", 100, bar=False)
    with caplog.at_level("INFO", logger="rxt_dist.train"):
        shown.show({"kind": "note", "text": "[smat] 2 workers, 100 steps", "step": 0})
        shown.show(window(50, 100, 2.5))
    assert shown._bar is None
    assert caplog.messages[0] == "[smat] 2 workers, 100 steps"
    assert caplog.messages[1] == ("[smat] step 50/100 (50%) | loss 2.500 | ar 2.500 | 12.3k tok/s | lr 1.0e-03 | "
                                  "eta 1m40s")
