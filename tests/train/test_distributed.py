"""Ray Train + DeepSpeed on a local 2-CPU cluster: equivalence across worker counts, ZeRO-3,
checkpoint/resume after a worker failure and after a relaunch."""

import dataclasses
import json
import os

import pytest
import torch

from rxt_dist.data import read_manifest
from rxt_dist.model import RxTModel, from_name, load_model_dir, save_model_dir
from rxt_dist.train import TrainConfig, export_url, run_stage
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


def test_one_worker_and_two_workers_zero2_take_the_same_first_step(tmp_path, small_data):
    one = config(tmp_path, small_data, "one", scaling={"num_workers": 1, "cpus_per_worker": 1},
                 deepspeed={"zero_stage": 0}, stages={"smat": {"steps": 1, "batch_size": 8}})
    two = config(tmp_path, small_data, "two", stages={"smat": {"steps": 1, "batch_size": 8}})
    start = seed_previous_stage(one)
    seed_previous_stage(two)
    run_stage(one, "smat")
    run_stage(two, "smat")
    a, b = load_model_dir(export_url(one, "smat")), load_model_dir(export_url(two, "smat"))
    moved = 0.0
    for (name, p0), pa, pb in zip(start.state_dict().items(), a.state_dict().values(), b.state_dict().values()):
        # 1 vs 2 workers sum gradients in another order. Adam's first step moves each weight by
        # about ±lr whatever its gradient's size, so those roundings show only where a gradient is
        # within rounding of Adam's eps (measured: ≤ 7e-7); a step in another direction (a wrong
        # shard, counts not all-reduced) moves a weight by up to 2·lr = 2e-2.
        torch.testing.assert_close(pb - p0, pa - p0, rtol=KERNEL["rtol"], atol=LR / 50, msg=name)
        moved = max(moved, (pa - p0).abs().max().item())
    assert moved > 5e-3  # the step did change the weights (lr 1e-2)


def test_optimizer_offload_takes_the_same_steps_as_zero2_without_it(tmp_path, small_data):
    # DeepSpeed refused torch's AdamW with offload_optimizer until the loop set
    # zero_force_ds_cpu_optimizer=false; two steps show the offloaded optimizer state carries over.
    stages = {"baseline": {"steps": 2, "batch_size": 8}}
    plain = config(tmp_path, small_data, "plain", stages=stages)
    offload = config(tmp_path, small_data, "offload", deepspeed={"offload_optimizer": True}, stages=stages)
    run_stage(plain, "baseline")
    run_stage(offload, "baseline")
    a, b = load_model_dir(export_url(plain, "baseline")), load_model_dir(export_url(offload, "baseline"))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        # Offload reduces and clips the gradients in CPU buffers of its own, in another order:
        # the same rounding argument (and bound) as one worker vs two above.
        torch.testing.assert_close(pb, pa, rtol=KERNEL["rtol"], atol=LR / 50, msg=name)
    log = [json.loads(line) for line in
           (tmp_path / "runs" / "offload" / "logs" / "baseline" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == [1, 2] and log[1]["loss"] < log[0]["loss"]


def test_zero3_trains_checkpoints_and_a_relaunch_resumes(tmp_path, small_data):
    cfg = config(tmp_path, small_data, "z3", deepspeed={"zero_stage": 3},
                 checkpoint={"every_steps": 1, "report_every_steps": 1},
                 stages={"baseline": {"steps": 1, "batch_size": 8}})
    first = run_stage(cfg, "baseline")
    assert first.metrics["step"] == 1 and first.metrics["resumed_from_step"] == -1
    ckpt_root = tmp_path / "runs" / "z3" / "checkpoints" / "z3-baseline"
    checkpoints = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert checkpoints and any("optim_states" in f.name for f in checkpoints[-1].rglob("*"))
    model = load_model_dir(export_url(cfg, "baseline"))
    assert model.cfg.num_layers == from_name("baseline-debug").num_layers
    longer = cfg.model_copy(deep=True)
    longer.stages.baseline.steps = 2
    again = run_stage(longer, "baseline")
    assert again.metrics["resumed_from_step"] == 1 and again.metrics["step"] == 2


def logged(tmp_path, name, stage):
    path = tmp_path / "runs" / name / "logs" / stage / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_resumed_after_a_worker_failure_or_a_relaunch_ends_with_the_uninterrupted_weights(tmp_path_factory):
    # 40 training conversations in 5 shards, 20 per worker and epoch: micro-batches of 4 rows,
    # 5 steps an epoch. The failure at step 5 sends the run back to the step-3 checkpoint, in the
    # middle of epoch 0; it then redoes steps 4-5 and goes on into epoch 1.
    data = make_dataset(tmp_path_factory.mktemp("d") / "data", 50, seed=5, shard_rows=8)
    tmp_path = tmp_path_factory.mktemp("runs")
    stages = {"baseline": {"steps": 7, "batch_size": 8}}
    checkpoints = {"every_steps": 3, "report_every_steps": 3}
    shuffled = {"shuffle_buffer": 16}
    whole = config(tmp_path, data, "whole", data=shuffled, checkpoint=checkpoints, stages=stages)
    broken = config(tmp_path, data, "broken", data=shuffled, checkpoint=checkpoints, stages=stages,
                    failure={"max_failures": 1, "fail_once_at_step": 5})
    run_stage(whole, "baseline")
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
    # The whole job dies at step 5 (no restart allowed) and is launched again: it resumes from
    # the step-3 checkpoint in storage.
    killed = config(tmp_path, data, "killed", data=shuffled, checkpoint=checkpoints, stages=stages,
                    failure={"max_failures": 0, "fail_once_at_step": 5})
    with pytest.raises(StageFailed):
        run_stage(killed, "baseline")
    assert run_stage(killed, "baseline").metrics["resumed_from_step"] == 3
    # Same rows, same order, same optimizer state: the final weights of both interrupted runs
    # are the uninterrupted run's, up to the rounding of a different reduction order.
    final = load_model_dir(export_url(whole, "baseline")).state_dict()
    for run in (broken, killed):
        for name, tensor in load_model_dir(export_url(run, "baseline")).state_dict().items():
            torch.testing.assert_close(tensor, final[name], **KERNEL, msg=lambda m, n=name: f"{n}: {m}")


def test_smat_recall_pair_warmup_then_whole_conversations(tmp_path, small_data):
    cfg = config(tmp_path, small_data, "pairs", stages={"smat": {"steps": 4, "batch_size": 8, "recall_pair_steps": 2}})
    seed_previous_stage(cfg)
    result = run_stage(cfg, "smat")
    assert result.metrics["step"] == 4
    log = tmp_path / "runs" / "pairs" / "logs" / "smat" / "metrics.jsonl"
    tokens = [0] + [json.loads(line)["tokens"] for line in log.read_text().splitlines()]
    per_step = [b - a for a, b in zip(tokens, tokens[1:])]
    # the same 8 conversations every step: two turns each while warming up, then all their turns
    assert per_step[0] == per_step[1] and per_step[2] == per_step[3]
    assert 0 < per_step[1] < per_step[2] / 1.5, per_step
