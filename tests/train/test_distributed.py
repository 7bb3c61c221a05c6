"""Ray Train + DeepSpeed on a local 2-CPU cluster: the same steps with one worker or two and with
the optimizer offloaded; checkpoint/resume after a worker failure and after a relaunch at ZeRO-3."""

import dataclasses
import json
import os

import pytest
import torch

from rxt_dist.data import read_manifest
from rxt_dist.memory import read_metadata
from rxt_dist.model import RxTModel, from_name, load_model_dir, save_model_dir
from rxt_dist.train import TrainConfig, export_url, run_curriculum, run_stage
from rxt_dist.train.launcher import StageFailed

from tests.ray_local import train_cluster
from tests.tolerances import KERNEL

from .conftest import make_dataset

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

LR = 1e-2


@pytest.fixture(scope="module", autouse=True)
def cluster():
    with train_cluster():
        yield


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    # 10 conversations → 8 in train: one global batch of 8 is the whole training split.
    return make_dataset(tmp_path_factory.mktemp("d") / "data", 10, seed=3)


def config(tmp_path, data_url, name, **sections):
    base = {
        "run": {"name": name, "storage": str(tmp_path / "runs"), "seed": 0},
        "data": {"url": data_url, "max_turns": 8, "max_interaction_tokens": 48, "shuffle_buffer": 0},
        "model": {"preset": "debug"},
        "baseline": {"preset": "baseline-debug"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "deepspeed": {"zero_stage": 2},
        "optimizer": {"lr": LR, "warmup_steps": 0},
        "checkpoint": {"every_steps": 100, "report_every_steps": 100, "log_every_steps": 1},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainConfig.from_dict(base, source=name)


def seed_previous_stage(cfg, stage="memory_attention"):
    """Stand in for the stage before SMAT: a fresh debug model at its export location."""
    vocab = read_manifest(cfg.data.url).vocab_size
    torch.manual_seed(1)
    model = RxTModel(dataclasses.replace(from_name("debug"), vocab_size=vocab))
    save_model_dir(model, export_url(cfg, stage))
    return model


def logged(tmp_path, name, stage):
    path = tmp_path / "runs" / name / "logs" / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_worker_and_two_workers_zero2_offloaded_take_the_same_steps_recall_pairs_first(tmp_path, small_data):
    # Four SMAT steps on the same 8 conversations (the whole training split): two on their
    # fact→recall pairs, then two on whole conversations. The two workers also offload the
    # optimizer: DeepSpeed refused torch's AdamW with offload_optimizer until the loop set
    # zero_force_ds_cpu_optimizer=false, and the offloaded state must carry over from step to step.
    stages = {"smat": {"steps": 4, "batch_size": 8, "recall_pair_steps": 2}}
    one = config(tmp_path, small_data, "one", scaling={"num_workers": 1, "cpus_per_worker": 1},
                 deepspeed={"zero_stage": 0}, stages=stages)
    two = config(tmp_path, small_data, "two", deepspeed={"offload_optimizer": True}, stages=stages)
    start = seed_previous_stage(one)
    seed_previous_stage(two)
    assert run_stage(one, "smat").metrics["step"] == 4
    assert run_stage(two, "smat").metrics["step"] == 4
    # Launched again, a finished stage is skipped (no workers start; the export stays).
    exported = (tmp_path / "runs" / "two" / "models" / "smat" / "model.safetensors").stat().st_mtime_ns
    (again,) = run_curriculum(two, ["smat"])
    assert again.skipped and again.export_url == export_url(two, "smat") and again.metrics == {}
    # skipped because it was trained with these very settings (the export records them)
    assert json.loads(read_metadata(export_url(two, "smat"))["settings"])["num_workers"] == 2
    assert (tmp_path / "runs" / "two" / "models" / "smat" / "model.safetensors").stat().st_mtime_ns == exported
    a, b = load_model_dir(export_url(one, "smat")), load_model_dir(export_url(two, "smat"))
    moved = 0.0
    for (name, p0), pa, pb in zip(start.state_dict().items(), a.state_dict().values(), b.state_dict().values()):
        # 1 vs 2 workers sum gradients in another order (offload reduces and clips them in CPU
        # buffers of its own, in another order again). Adam moves each weight by about ±lr a
        # step whatever its gradient's size, so those roundings show only where a gradient is
        # within rounding of Adam's eps (measured: ≤ 7e-7 after one step, ≤ 3e-6 after four); a
        # step in another direction (a wrong shard, counts not all-reduced) moves a weight by up
        # to 2·lr = 2e-2.
        torch.testing.assert_close(pb - p0, pa - p0, rtol=KERNEL["rtol"], atol=LR / 50, msg=name)
        moved = max(moved, (pa - p0).abs().max().item())
    assert moved > 5e-3  # the steps did change the weights (lr 1e-2)
    tokens = {name: [0] + [m["tokens"] for m in logged(tmp_path, name, "smat")] for name in ("one", "two")}
    assert tokens["one"] == tokens["two"]  # the same rows, whatever the number of workers
    per_step = [b - a for a, b in zip(tokens["two"], tokens["two"][1:])]
    # the same 8 conversations every step: two turns each while warming up, then all their turns
    assert per_step[0] == per_step[1] and per_step[2] == per_step[3]
    assert 0 < per_step[1] < per_step[2] / 1.5, per_step


def seven_steps(tmp_path, data, name, **sections):
    """A 7-step ZeRO-2 baseline run on shuffled rows, checkpointed every 3 steps (``sections``
    add to it): the runs the uninterrupted one below is compared with."""
    return config(tmp_path, data, name, data={"shuffle_buffer": 16},
                  checkpoint={"every_steps": 3, "report_every_steps": 3},
                  stages={"baseline": {"steps": 7, "batch_size": 8}}, **sections)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 7-step ZeRO-2 baseline run that nothing interrupts, which the runs below must match.
    40 training conversations in 5 shards, 20 per worker and epoch: micro-batches of 4 rows,
    5 steps an epoch."""
    data = make_dataset(tmp_path_factory.mktemp("d") / "data", 50, seed=5, shard_rows=8)
    tmp_path = tmp_path_factory.mktemp("runs")
    whole = seven_steps(tmp_path, data, "whole")
    result = run_stage(whole, "baseline")
    assert result.metrics["step"] == 7 and result.metrics["resumed_from_step"] == -1
    return tmp_path, data, whole


def test_a_run_resumed_after_a_worker_failure_or_a_zero3_relaunch_ends_with_the_uninterrupted_weights(uninterrupted):
    # The failure at step 5 sends the run back to the step-3 checkpoint, in the middle of epoch 0;
    # it then redoes steps 4-5 and goes on into epoch 1.
    tmp_path, data, whole = uninterrupted
    broken = seven_steps(tmp_path, data, "broken", failure={"max_failures": 1, "fail_once_at_step": 5})
    result = run_stage(broken, "baseline")
    assert result.metrics["step"] == 7 and result.metrics["resumed_from_step"] == 3
    expected, got = logged(tmp_path, "whole", "baseline"), logged(tmp_path, "broken", "baseline")
    # The first attempt logged 1-4 and died at 5; the restart redid 4 and 5.
    assert [m["step"] for m in got] == [1, 2, 3, 4, 4, 5, 6, 7]
    last = {m["step"]: m for m in got}  # after the restart
    for m in expected:
        # Tokens seen so far: an exact count, which other rows would change.
        assert last[m["step"]]["tokens"] == m["tokens"], m["step"]
        # The same rows through the same weights: the same loss but for rounding.
        assert last[m["step"]]["loss"] == pytest.approx(m["loss"], rel=KERNEL["rtol"], abs=KERNEL["atol"])
    assert [m["epoch"] for m in expected] == [0, 0, 0, 0, 0, 1, 1]  # epoch 1 began after the 5th step
    # The whole job, at ZeRO-3 (parameters partitioned too), dies at step 5 (no restart allowed)
    # and is launched again: it resumes from the step-3 checkpoint in storage.
    killed = seven_steps(tmp_path, data, "killed", deepspeed={"zero_stage": 3},
                         failure={"max_failures": 0, "fail_once_at_step": 5})
    with pytest.raises(StageFailed):
        run_stage(killed, "baseline")
    ckpt_root = tmp_path / "runs" / "killed" / "checkpoints" / "killed-baseline"
    checkpoints = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert checkpoints and any("optim_states" in f.name for f in checkpoints[-1].rglob("*"))
    assert run_stage(killed, "baseline").metrics["resumed_from_step"] == 3
    # Same rows, same order, same optimizer state: the final weights of both interrupted runs
    # are the uninterrupted run's, up to the rounding of a different reduction order (ZeRO-3
    # reduces and clips in partitions: the bound of one worker vs two above).
    final = load_model_dir(export_url(whole, "baseline")).state_dict()
    for run, tol in ((broken, KERNEL), (killed, {"rtol": KERNEL["rtol"], "atol": LR / 50})):
        model = load_model_dir(export_url(run, "baseline"))
        assert model.cfg.num_layers == from_name("baseline-debug").num_layers
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, final[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
