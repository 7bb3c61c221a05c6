"""Training configs: shipped files load, bad values fail early with a message saying what to change."""

import glob
import json
import os
import subprocess
import sys

import pytest

from rxt_dist.train import TrainConfig, check_resources, rxt_stages, stage_name
from rxt_dist.train.config import SMATStage
from rxt_dist.train.launcher import _model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_configs_are_shipped():
    names = {os.path.basename(p) for p in CONFIGS}
    assert any(n.startswith("cpu-") for n in names) and any(n.startswith("gpu-") for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_loads_and_builds_its_models(path):
    cfg = TrainConfig.from_file(path)
    for stage in ("joint_lm", "baseline"):
        model = _model_config(cfg, stage, vocab_size=4096)
        assert model["vocab_size"] >= 4096
    assert cfg.micro_batch("smat") >= 1


@pytest.mark.parametrize("data, words", [
    ({"stages": {"smat": {"batch_size": 30}}, "scaling": {"num_workers": 4}},
     ["stages.smat.batch_size=30", "num_workers × grad_accum = 4 × 1 = 4", "try 28"]),
    ({"deepspeed": {"zero_stage": 5}}, ["deepspeed.zero_stage=5"]),
    ({"deepspeed": {"precision": "fp16"}}, ["fp16", "use_gpu"]),
    ({"deepspeed": {"zero_stage": 0, "offload_optimizer": True}},
     ["deepspeed.offload_optimizer=true: needs zero_stage ≥ 1 (it is 0)", "set offload_optimizer=false"]),
    ({"scaling": {"num_workers": "two"}}, ["scaling.num_workers='two'", "integer"]),
    ({"scaling": {"compile": True}, "deepspeed": {"zero_stage": 3}},
     ["scaling.compile=true: needs deepspeed.zero_stage ≤ 2 (it is 3", "set scaling.compile=false"]),
    ({"optimizer": {"name": "muon"}}, ["optimizer.name=muon: needs deepspeed.zero_stage: 0 (it is 2"]),
    ({"optimizer": {"name": "lion"}}, ["optimizer.name"]),
    ({"stages": {"stage5": {}}}, ["unknown field(s) ['stage5']"]),
    ({"optimizer": {"betas": [0.9, 1.5]}}, ["optimizer.betas"]),
    ({"stages": {"joint_lm": {"mask_prob": 0}}}, ["stages.joint_lm", "mask_prob=0"]),
    ({"stages": {"smat": {"steps": 100, "recall_pair_steps": 100}}},
     ["stages.smat.recall_pair_steps=100: must be in [0, steps=100)"]),
    ({"stages": {"smat": {"batchsize": 8}}}, ["stages.smat: unknown field(s) ['batchsize']", "did you mean batch_size"]),
    ({"stages": {"smat": {"steps": 1.5}}}, ["stages.smat.steps=1.5: must be an integer"]),
    ({"stages": {"sft": {"lr": "fast"}}}, ["stages.sft.lr='fast': must be a number"]),
    ({"scaling": {"use_gpu": 1}}, ["scaling.use_gpu=1: must be true or false"]),
    ({"stages": {"memory_attention": {"jitter": -0.1}}}, ["stages.memory_attention.jitter=-0.1: must be ≥ 0"]),
    ({"optimizer": {"min_lr_ratio": 2}}, ["optimizer.min_lr_ratio=2: must be in [0, 1]"]),
    ({"model": {"overrides": 3}}, ["model.overrides=3: must be a mapping"]),
    ({"stages": 3}, ["stages=3: must be a mapping"]),
])
def test_bad_config_names_field_value_and_fix(data, words):
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(data, source="my.yaml")
    assert str(err.value).startswith("my.yaml: ")
    for w in words:
        assert w in str(err.value)


def test_every_error_is_one_line_naming_the_file():
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"data": {"max_turns": 0}, "stages": {"smat": {"bptt_turns": -1}}}, source="my.yaml")
    assert str(err.value).splitlines() == ["my.yaml: data.max_turns=0: must be ≥ 1",
                                           "my.yaml: stages.smat.bptt_turns=-1: must be ≥ 0"]


def test_yaml_quirks_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 1e-3\n  betas: [0.8, 0.9]\nfailure:\n")  # 1e-3 is a string in YAML 1.1
    cfg = TrainConfig.from_file(str(path), ["stages.smat.lr=2e-4", "stages.smat.steps=50"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.betas == (0.8, 0.9) and cfg.stages.smat.lr == 2e-4
    assert cfg.failure.max_failures == 2 and cfg.stages.smat.steps == 50


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_to_dict_is_json_and_round_trips(path):
    cfg = TrainConfig.from_file(path)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data == cfg.to_dict()
    assert TrainConfig.from_dict(data, source=path) == cfg


def test_stages_are_built_by_keyword_and_keep_their_field_docs():
    st = SMATStage(steps=10, batch_size=8)
    assert (st.steps, st.batch_size, st.recall_pair_steps) == (10, 8, 0)
    assert "Global batch per optimizer step" in SMATStage.model_fields["batch_size"].description
    with pytest.raises(ValueError, match="recall_pair_steps"):
        SMATStage(steps=10, recall_pair_steps=10)


def test_unknown_stage():
    assert stage_name(4) == "smat" and stage_name("1") == "joint_lm"
    with pytest.raises(ValueError, match="stage='5': unknown"):
        stage_name("5")


def test_more_workers_than_cpus_fails_before_any_worker_starts():
    cfg = TrainConfig.from_dict({"scaling": {"num_workers": 4, "cpus_per_worker": 1}}, source="c.yaml")
    with pytest.raises(ValueError, match=r"4 × 1 = 4 CPUs, but the cluster has 2; lower scaling.num_workers to 2"):
        check_resources(cfg, {"CPU": 2.0})
    check_resources(cfg, {"CPU": 8.0})


def test_compiled_layers_without_a_cpp_compiler_fail_before_any_worker_starts(monkeypatch):
    cfg = TrainConfig.from_dict({"scaling": {"compile": True}}, source="c.yaml")
    monkeypatch.setenv("CXX", "no-such-cxx")
    with pytest.raises(ValueError, match=r"c.yaml: scaling.compile=true .* 'no-such-cxx' .* set scaling.compile=false"):
        check_resources(cfg, {"CPU": 8.0})
    check_resources(TrainConfig.from_dict({"scaling": {"compile": False}}), {"CPU": 8.0})


def test_unknown_model_override_is_named():
    cfg = TrainConfig.from_dict({"model": {"preset": "debug", "overrides": {"stm": {"slots": 4}}}}, "c.yaml")
    with pytest.raises(ValueError, match=r"model.overrides.stm.slots: unknown model field"):
        _model_config(cfg, "smat", 512)
    cfg = TrainConfig.from_dict({"model": {"preset": "gigantic"}}, "c.yaml")
    with pytest.raises(ValueError, match="preset='gigantic'"):
        _model_config(cfg, "smat", 512)


def run_job(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "train.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_rejects_unknown_stage_and_bad_batch_without_starting_ray(dataset):
    cfg = os.path.join(ROOT, "configs", "cpu-debug.yaml")
    proc = run_job("--config", cfg, "--stage", "pretrain", "--set", f"data.url={dataset}")
    assert proc.returncode == 2 and "stage='pretrain': unknown" in proc.stderr
    proc = run_job("--config", cfg, "--stage", "smat", "--set", f"data.url={dataset}",
                   "--set", "stages.smat.batch_size=7")
    assert proc.returncode == 2 and "stages.smat.batch_size=7: must be divisible" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    proc = run_job("--config", cfg, "--stage", "sft", "--set", f"data.url={dataset}",
                   "--set", "run.storage=/nonexistent/nowhere")
    assert proc.returncode == 2 and "starts from stage joint_lm's model" in proc.stderr
    proc = run_job("--config", cfg, "--stage", "1", "--set", "data.url=/nonexistent/data")
    assert proc.returncode == 2 and "/nonexistent/data" in proc.stderr


def test_recall_pair_warmup_on_data_without_recall_metadata_names_the_fix(dataset_without_recall):
    from rxt_dist.train.launcher import _training_rows

    cfg = TrainConfig.from_dict({"data": {"url": dataset_without_recall}, "stages": {"smat": {"recall_pair_steps": 5}}},
                                source="c.yaml")
    with pytest.raises(ValueError, match=r"c.yaml: stages.smat.recall_pair_steps=5 needs the recall metadata.*"
                                         r"set stages.smat.recall_pair_steps=0"):
        _training_rows(cfg, "smat")


def test_data_too_small_for_one_micro_batch_per_worker_names_the_batch_size(dataset):
    from rxt_dist.train.launcher import _training_rows

    cfg = TrainConfig.from_dict({"data": {"url": dataset}, "stages": {"smat": {"batch_size": 512}}}, source="c.yaml")
    with pytest.raises(ValueError, match=r"c.yaml: .* has 160 training rows, 80 per worker and epoch .*fewer than "
                                         r"one micro-batch of 256 \(stages.smat.batch_size=512\)"):
        _training_rows(cfg, "smat")


def test_throughput_benchmark_measures_whole_conversations():
    from rxt_dist.train.throughput import Setting, _setting_config

    cfg = TrainConfig.from_file(os.path.join(ROOT, "configs", "cpu-tiny.yaml"),
                                ["stages.smat.recall_pair_steps=100"])
    assert cfg.stages.smat.curriculum_steps > 60  # the shipped curriculum outlasts the benchmark
    bench = _setting_config(cfg, "smat", Setting(2, 2), steps=60, window=15)
    st = bench.stages.smat
    assert st.steps == 60 and st.recall_pair_steps == 0 and st.curriculum_turns == 0


def test_a_full_run_trains_stages_1_to_3_only_when_stage_4_uses_them():
    cfg = TrainConfig.from_file(os.path.join(ROOT, "configs", "cpu-tiny.yaml"))
    assert cfg.stages.smat.start == "fresh" and rxt_stages(cfg) == ("smat",)
    cfg = TrainConfig.from_file(os.path.join(ROOT, "configs", "cpu-tiny.yaml"), ["stages.smat.start=previous"])
    assert rxt_stages(cfg) == ("joint_lm", "sft", "memory_attention", "smat")


def test_time_budget_is_refused_where_the_first_steps_are_shorter_than_the_rest():
    for field in ("curriculum_turns=2", "recall_pair_steps=50"):
        with pytest.raises(ValueError, match=f"time_budget_s=60.0: cannot be combined with {field}"):
            TrainConfig.from_dict({"stages": {"smat": {"steps": 200, "time_budget_s": 60, "curriculum_steps": 100,
                                                       field.split("=")[0]: int(field.split("=")[1])}}}, source="c.yaml")
    assert SMATStage(steps=200, time_budget_s=60).time_budget_s == 60
