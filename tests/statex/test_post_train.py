"""Post-training of an expanded model: the SMAT stage's ``init_model_url`` hook, checked on the
driver and in a short Ray Train run."""

import dataclasses
import os

import pytest
import torch

from rxt_dist.data import PrepareConfig, SyntheticConfig, prepare_dataset, read_manifest
from rxt_dist.memory.statex import ExpansionConfig, expand_stm
from rxt_dist.model import RxTModel, from_name, load_model_dir, save_model_dir
from rxt_dist.train import TrainConfig, export_url, prepare_job, run_stage
from tests.ray_local import train_cluster

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "dialogue")
    prepare_dataset(PrepareConfig(out=url, conversations=10, synthetic=SyntheticConfig.from_name("default", seed=3),
                                  vocab_size=512, valid_fraction=0.1, test_fraction=0.1))
    return url


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, data) -> tuple[str, str]:
    """A debug model as if trained (with a static per-slot gate) and its inherit-expansion to 16 slots."""
    root = tmp_path_factory.mktemp("models")
    base = from_name("debug")
    cfg = dataclasses.replace(base, vocab_size=read_manifest(data).vocab_size,
                              memory_attention=dataclasses.replace(base.memory_attention, gate=dataclasses.replace(
                                  base.memory_attention.gate, kind="static")))
    torch.manual_seed(1)
    original, grown = str(root / "original"), str(root / "expanded")
    save_model_dir(RxTModel(cfg), original)
    expand_stm(original, ExpansionConfig(factor=2, mode="inherit"), out_url=grown)
    return original, grown


def config(tmp_path, data, name, **smat) -> TrainConfig:
    return TrainConfig.from_dict({
        "run": {"name": name, "storage": str(tmp_path / "runs")},
        "data": {"url": data, "max_turns": 6, "max_interaction_tokens": 48, "shuffle_buffer": 0},
        "model": {"preset": "debug"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "deepspeed": {"zero_stage": 0},
        "optimizer": {"lr": 1e-2, "warmup_steps": 0},
        "checkpoint": {"every_steps": 100, "report_every_steps": 100, "log_every_steps": 1},
        "stages": {"smat": {"steps": 1, "batch_size": 8, **smat}},
    }, source=name)


def test_smat_starts_from_init_model_url_without_a_previous_stage(tmp_path, data, expanded):
    _, grown = expanded
    cfg = config(tmp_path, data, "hook", init_model_url=os.path.relpath(grown))
    job = prepare_job(cfg, "smat")
    assert job.init_model_url == grown  # absolute: workers may run elsewhere
    assert job.model_config is None
    assert job.export_url == export_url(cfg, "smat")


def test_without_the_hook_smat_still_needs_stage_3(tmp_path, data):
    with pytest.raises(ValueError, match="stage smat starts from stage memory_attention's model"):
        prepare_job(config(tmp_path, data, "plain"), "smat")


def test_a_bad_init_model_url_is_refused_on_the_driver(tmp_path, data):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"stages.smat.init_model_url='.*nowhere': not a model directory"):
        prepare_job(config(tmp_path, data, "bad", init_model_url=missing), "smat")
    with pytest.raises(ValueError, match="init_model_url='': give a model directory URL"):
        config(tmp_path, data, "empty", init_model_url="")


def test_the_hook_is_set_from_a_yaml_override(tmp_path, expanded):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  smat: {steps: 3, batch_size: 8}\n")
    cfg = TrainConfig.from_file(str(path), [f"stages.smat.init_model_url={expanded[1]}"])
    assert cfg.stages.smat.init_model_url == expanded[1]


def test_ray_train_post_trains_the_expanded_model_at_its_new_slot_count(tmp_path, data, expanded):
    _, grown = expanded
    cfg = config(tmp_path, data, "post", init_model_url=grown)
    with train_cluster():
        result = run_stage(cfg, "smat")
    before, after = load_model_dir(grown), load_model_dir(result.export_url)
    assert after.cfg.stm.num_slots == 16
    logit_before = before.memory_attention.layers[0].gate.logit
    logit_after = after.memory_attention.layers[0].gate.logit
    assert logit_after.shape == (16, 1)
    assert (logit_after - logit_before).abs().max() > 1e-3  # the per-slot gates were trained
    assert (after.decoder[0].mem_attn.q_proj.weight - before.decoder[0].mem_attn.q_proj.weight).abs().max() > 1e-3


def test_statex_job_gives_every_arm_the_same_recipe_but_its_start_and_run_name():
    from jobs.statex import arm_overrides, parse_args

    args = parse_args(["--config", "c.yaml", "--model", "m", "--data", "d", "--factor", "2", "--steps", "7",
                       "--lr", "0.001", "--set", "data.max_turns=16"])
    control, reinit = arm_overrides(args, "control", "m"), arm_overrides(args, "reinit", "x/expanded-reinit")
    differ = sorted(set(control) ^ set(reinit))
    assert differ == ["run.name=statex-control", "run.name=statex-reinit", "stages.smat.init_model_url=m",
                      "stages.smat.init_model_url=x/expanded-reinit"]
    assert {"stages.smat.steps=7", "stages.smat.lr=0.001", "data.max_turns=16", "data.url=d"} <= set(control)


def test_statex_post_training_with_the_shipped_tiny_config_is_a_valid_short_smat_run():
    # cpu-tiny opens stage 4 with a recall-pair warm-up longer than a post-training run; the
    # StateX recipe trains on whole conversations, so the short run must validate
    import os

    from jobs.statex import arm_overrides, parse_args
    from rxt_dist.train import TrainConfig

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = os.path.join(root, "configs", "cpu-tiny.yaml")
    args = parse_args(["--config", config, "--model", "m", "--data", "d", "--factor", "2", "--steps", "150"])
    cfg = TrainConfig.from_file(config, arm_overrides(args, "control", "m"))
    assert cfg.stages.smat.steps == 150 and cfg.stages.smat.recall_pair_steps == 0


def test_statex_job_refuses_a_model_whose_tokenizer_is_not_the_datas(tmp_path, data, expanded, capsys):
    from jobs.statex import main

    from rxt_dist.serving.demo import DEMO_TEXT, train_small_tokenizer

    other = str(tmp_path / "other")
    save_model_dir(load_model_dir(expanded[0]), other, train_small_tokenizer(DEMO_TEXT * 4, 400).to_str())
    code = main(["--config", "configs/cpu-debug.yaml", "--model", other, "--data", data, "--factor", "2",
                 "--steps", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "s.json")])
    assert code == 2
    assert "tokenizer.json differs from the dataset's tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
