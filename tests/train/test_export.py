"""A stage's export counts as complete only once every file and the marker written last are there
(object stores move a directory object by object, so some files can be in place without the rest)."""

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from rxt_dist.model import RxTModel, from_name, load_model_dir, save_model_dir
from rxt_dist.train import TrainConfig, export_url, is_complete

TOKENIZER = '{"stands in": "for tokenizer.json"}'


def run_config(storage):
    return TrainConfig.from_dict({"run": {"name": "r", "storage": storage}}, source="test")


@pytest.fixture
def memory_cfg(tmp_path):
    """A run on fsspec's in-memory store, whose directory move is copy + delete as on S3."""
    yield run_config(f"memory://export-{tmp_path.name}")
    if MemoryFileSystem().exists(f"/export-{tmp_path.name}"):
        MemoryFileSystem().rm(f"/export-{tmp_path.name}", recursive=True)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_finished_export_is_complete_and_loads(where, tmp_path, memory_cfg):
    cfg = memory_cfg if where == "memory" else run_config(str(tmp_path / "runs"))
    url = export_url(cfg, "smat")
    assert not is_complete(cfg, "smat")
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER)
    assert is_complete(cfg, "smat")
    assert load_model_dir(url).cfg == from_name("debug")


def test_an_export_cut_short_while_moving_into_place_is_not_complete(memory_cfg, monkeypatch):
    url = export_url(memory_cfg, "smat")
    copy_file = MemoryFileSystem.cp_file

    def lose_the_connection_at_the_tokenizer(self, path1, path2, **kwargs):
        if path2.endswith("tokenizer.json"):
            raise OSError("connection lost")
        return copy_file(self, path1, path2, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(MemoryFileSystem, "cp_file", lose_the_connection_at_the_tokenizer)
        with pytest.raises(OSError, match="connection lost"):
            save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER)
    fs, path = fsspec.core.url_to_fs(url)
    # the two files a check of "config.json and model.safetensors exist" looked at
    assert fs.exists(f"{path}/config.json") and fs.exists(f"{path}/model.safetensors")
    assert not is_complete(memory_cfg, "smat")
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER)  # the stage's rerun completes it
    assert is_complete(memory_cfg, "smat")


def test_an_export_missing_its_marker_or_with_a_file_cut_short_is_not_complete(tmp_path):
    cfg = run_config(str(tmp_path / "runs"))
    url = export_url(cfg, "baseline")
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER)
    weights = tmp_path / "runs" / "r" / "models" / "baseline" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert not is_complete(cfg, "baseline")
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER)
    (weights.parent / "complete.json").unlink()
    assert not is_complete(cfg, "baseline")


def test_a_stage_already_trained_with_other_settings_is_refused_with_what_changed(tmp_path):
    """A run that finds a stage trained skips it only if it was trained with the same settings:
    a new seed (or data, model, optimizer, stage settings) names what changed and the way out;
    settings that do not shape the model (checkpoints, another stage's) change nothing."""
    import json

    from rxt_dist.train import run_stage
    from rxt_dist.train.launcher import stage_settings

    storage = str(tmp_path / "runs")

    def cfg(**sets):
        return TrainConfig.from_dict({"run": {"name": "r", "storage": storage, "seed": sets.pop("seed", 0)},
                                      "stages": {"smat": {"start": "fresh"}, **sets}}, source="test")

    trained = cfg()
    url = export_url(trained, "smat")
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER,
                   {"stage": "smat", "settings": json.dumps(stage_settings(trained, "smat"))})
    assert run_stage(trained, "smat", skip_complete=True).skipped
    unrelated = TrainConfig.from_dict({**trained.model_dump(mode="json"), "checkpoint": {"every_steps": 7},
                                       "stages": {"smat": {"start": "fresh"}, "baseline": {"steps": 9}}}, source="test")
    assert run_stage(unrelated, "smat", skip_complete=True).skipped
    with pytest.raises(ValueError) as refused:
        run_stage(cfg(seed=2), "smat", skip_complete=True)
    assert "already trained" in str(refused.value) and "seed: 0 → 2" in str(refused.value)
    assert "--fresh" in str(refused.value) and "run.name" in str(refused.value)
    with pytest.raises(ValueError, match=r"stages\.smat\.steps: 100 → 5"):
        run_stage(cfg(smat={"start": "fresh", "steps": 5}), "smat", skip_complete=True)
    # an export from before the settings were recorded is taken as it is
    save_model_dir(RxTModel(from_name("debug")), url, TOKENIZER, {"stage": "smat"})
    assert run_stage(cfg(seed=2), "smat", skip_complete=True).skipped
