"""Driver side: validate a stage against the cluster, build the TorchTrainer, run it.

Nothing here starts Ray: the entry points in ``jobs/`` call ``ray.init`` (a local cluster
by default, the cluster named by ``RAY_ADDRESS`` under ``ray job submit``) and then these
functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import fsspec

from rxt_dist.train.config import RXT_STAGES, STAGES, TrainConfig, stage_name
from rxt_dist.train.loop import StageJob, train_loop_per_worker

log = logging.getLogger("rxt_dist.train")

PREVIOUS = {"sft": "joint_lm", "memory_attention": "sft", "smat": "memory_attention"}
"""The stage whose export each stage starts from."""


@dataclass
class StageResult:
    """What a finished stage left behind."""

    stage: str
    export_url: str
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    """True when the stage was already complete and was not run again."""


def _is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def _local_path(url: str) -> str:
    return os.path.abspath(urlparse(url).path if url.startswith("file://") else url)


def run_root(cfg: TrainConfig) -> str:
    """``<storage>/<run name>``: checkpoints, exported models and (when local) logs."""
    base = _local_path(cfg.run.storage) if _is_local(cfg.run.storage) else cfg.run.storage.rstrip("/")
    return f"{base}/{cfg.run.name}"


def export_url(cfg: TrainConfig, stage: str) -> str:
    """Where ``stage``'s finished model directory is written."""
    return f"{run_root(cfg)}/models/{stage_name(stage)}"


def log_dir(cfg: TrainConfig) -> str:
    if cfg.run.log_dir:
        return os.path.abspath(cfg.run.log_dir)
    if _is_local(cfg.run.storage):
        return f"{run_root(cfg)}/logs"
    return os.path.abspath(f"runs/{cfg.run.name}/logs")


def stage_settings(cfg: TrainConfig, stage: str) -> dict[str, Any]:
    """What a stage's trained model depends on: the seed, the data, the model, the optimizer
    and DeepSpeed settings, the number of workers (it orders the data), and the settings of
    this stage and of the RxT stages it starts from. Recorded in the export's metadata, so a
    run that finds the stage already trained can tell whether it was trained this way."""
    dump = cfg.model_dump(mode="json")
    if stage == "baseline":
        model, stages = dump["baseline"], ["baseline"]
    else:
        model = dump["model"]
        fresh = stage == "smat" and cfg.stages.smat.start != "previous"
        stages = [stage] if fresh else list(RXT_STAGES[:RXT_STAGES.index(stage) + 1])
    return {"seed": dump["run"]["seed"], "data": dump["data"], "model": model, "optimizer": dump["optimizer"],
            "deepspeed": dump["deepspeed"], "num_workers": dump["scaling"]["num_workers"],
            "stages": {name: dump["stages"][name] for name in stages}}


def settings_changed(trained: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two :func:`stage_settings`."""
    changed = []
    for key in sorted(set(trained) | set(now)):
        a, b = trained.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += settings_changed(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changed


def check_trained_settings(cfg: TrainConfig, stage: str) -> None:
    """Raise ``ValueError`` naming what changed when the complete export of ``stage`` was
    trained with other settings than ``cfg``'s (exports from before the settings were recorded
    pass)."""
    from rxt_dist.memory import read_metadata

    url = export_url(cfg, stage)
    recorded = read_metadata(url).get("settings")
    if recorded is None:
        return
    changed = settings_changed(json.loads(recorded), stage_settings(cfg, stage))
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ValueError(f"stage {stage} of run {cfg.run.name!r} is already trained at {url}, with other settings "
                         f"({shown}): train it again from scratch (jobs/demo.py --fresh, or delete {run_root(cfg)}), "
                         "or give the new settings their own run (--set run.name=…)")


def is_complete(cfg: TrainConfig, stage: str) -> bool:
    """A stage is complete once its export is: every file written and the marker written last
    (:func:`rxt_dist.model.io.is_complete_dir`; an export cut short on an object store is not)."""
    from rxt_dist.model import is_complete_dir

    return is_complete_dir(export_url(cfg, stage))


def _storage(cfg: TrainConfig) -> tuple[str, Any]:
    """Ray Train storage path and filesystem for the run's checkpoints."""
    root = f"{run_root(cfg)}/checkpoints"
    scheme = urlparse(root).scheme
    if scheme in ("", "file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
        return root, None
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(root)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def check_resources(cfg: TrainConfig, resources: dict[str, float]) -> None:
    """Fail before any worker starts when the cluster cannot hold the workers, or when compiled
    layers on CPU would find no C++ compiler (looked for on this machine, as inductor does: $CXX,
    else g++)."""
    sc = cfg.scaling
    if sc.compile and not sc.use_gpu:
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            raise ValueError(f"{cfg.source}: scaling.compile=true builds C++ kernels on CPU, but the compiler "
                             f"{cxx!r} ($CXX, else g++) is not on PATH; install one or set scaling.compile=false")
    cpus = resources.get("CPU", 0.0)
    need = sc.num_workers * sc.cpus_per_worker
    if need > cpus:
        raise ValueError(
            f"{cfg.source}: scaling.num_workers × cpus_per_worker = {sc.num_workers} × "
            f"{sc.cpus_per_worker:g} = {need:g} CPUs, but the cluster has {cpus:g}; lower "
            f"scaling.num_workers to {max(1, int(cpus // sc.cpus_per_worker))} or cpus_per_worker"
        )
    gpus = resources.get("GPU", 0.0)
    if sc.use_gpu and sc.num_workers > gpus:
        raise ValueError(f"{cfg.source}: scaling.use_gpu with num_workers={sc.num_workers} needs "
                         f"{sc.num_workers} GPUs, the cluster has {gpus:g}")


def _model_config(cfg: TrainConfig, stage: str, vocab_size: int) -> dict[str, Any]:
    """The fresh model's config (preset + overrides, vocabulary from the data)."""
    from rxt_dist.model import config_from_dict, from_name

    section = cfg.baseline if stage == "baseline" else cfg.model
    where = "baseline" if stage == "baseline" else "model"
    try:
        data = from_name(section.preset).to_dict()
        _merge(data, section.overrides, f"{where}.overrides")
        data["vocab_size"] = max(vocab_size, int(section.overrides.get("vocab_size", 0)))
        return config_from_dict(data).to_dict()
    except ValueError as exc:
        raise ValueError(f"{cfg.source}: {where}: {exc}") from None


def _merge(base: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if key not in base:
            raise ValueError(f"{where}.{key}: unknown model field; known: {sorted(base)}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _merge(base[key], value, f"{where}.{key}")
        else:
            base[key] = value


def prepare_job(cfg: TrainConfig, stage: str) -> StageJob:
    """Everything the workers need, checked on the driver (data, previous stage, model)."""
    from rxt_dist.data import read_manifest
    from rxt_dist.model.io import load_tokenizer_json

    stage = stage_name(stage)
    manifest = read_manifest(cfg.data.url)
    if "train" not in manifest.splits:
        raise ValueError(f"{cfg.data.url}: the dataset has no 'train' split (it has {sorted(manifest.splits)})")
    init = _init_override(cfg, stage)
    if init is None and stage in PREVIOUS and not starts_fresh(cfg, stage):
        if not is_complete(cfg, PREVIOUS[stage]):
            raise ValueError(
                f"stage {stage} starts from stage {PREVIOUS[stage]}'s model, but "
                f"{export_url(cfg, PREVIOUS[stage])} does not exist: run stage {PREVIOUS[stage]} "
                "first (jobs/train.py) or the whole curriculum (jobs/curriculum.py)")
        init = export_url(cfg, PREVIOUS[stage])
    return StageJob(
        stage=stage,
        train=cfg.to_dict(),
        export_url=export_url(cfg, stage),
        log_dir=log_dir(cfg),
        tokenizer_json=load_tokenizer_json(cfg.data.url),
        init_model_url=init,
        model_config=None if init else _model_config(cfg, stage, manifest.vocab_size),
        rows=_training_rows(cfg, stage).to_dict(),
    )


def starts_fresh(cfg: TrainConfig, stage: str) -> bool:
    """Stage 4 with ``start: fresh`` begins from a new model, not from stage 3's export."""
    return stage == "smat" and cfg.stages.smat.start == "fresh"


def _init_override(cfg: TrainConfig, stage: str) -> str | None:
    """``stages.<stage>.init_model_url`` (SMAT only), checked to be a model directory."""
    url = getattr(cfg.stage(stage), "init_model_url", None)
    if url is None:
        return None
    fs, path = fsspec.core.url_to_fs(url)
    if not (fs.exists(f"{path}/config.json") and fs.exists(f"{path}/model.safetensors")):
        raise ValueError(f"{cfg.source}: stages.{stage}.init_model_url={url!r}: not a model directory "
                         "(needs config.json and model.safetensors)")
    return _local_path(url) if _is_local(url) else url  # workers may run in another directory


def _training_rows(cfg: TrainConfig, stage: str):
    """The train split's rows and columns ``stage`` reads, every shard checked on the driver."""
    from rxt_dist.data import training_rows

    if stage == "joint_lm" and cfg.stages.joint_lm.use_text:
        rows = training_rows(cfg.data.url, ["ids"], text=True)
    else:
        rows = training_rows(cfg.data.url, conversation_columns(cfg, stage))
    workers, micro = cfg.scaling.num_workers, cfg.micro_batch(stage)
    if rows.num_rows // workers < micro:
        raise ValueError(f"{cfg.source}: {cfg.data.url} has {rows.num_rows} training rows, "
                         f"{rows.num_rows // workers} per worker and epoch for scaling.num_workers={workers}: "
                         f"fewer than one micro-batch of {micro} (stages.{stage}.batch_size="
                         f"{cfg.stage(stage).batch_size}); lower the batch size or add data")
    return rows


def conversation_columns(cfg: TrainConfig, stage: str) -> list[str]:
    """The shard columns ``stage`` reads: ids, plus for stage 4 the recall metadata its warm-up
    and value loss need (required when asked for, read when present otherwise)."""
    columns = ["conversation_id", "query_ids", "answer_ids"]
    if stage != "smat":
        return columns
    from rxt_dist.train.batches import smat_metadata_columns

    return columns + smat_metadata_columns(cfg, _split_columns(cfg.data.url, "train"))


def _split_columns(url: str, split: str) -> set[str]:
    """Column names of a split's first shard (the reader checks every shard's schema)."""
    import pyarrow.parquet as pq

    from rxt_dist.data import read_manifest

    manifest = read_manifest(url)
    fs, _ = fsspec.core.url_to_fs(manifest.url)
    with fs.open(manifest.files(split)[0], "rb") as f:
        return set(pq.read_schema(f).names)


def build_trainer(cfg: TrainConfig, stage: str, progress: Any = None):
    """The ``TorchTrainer`` of one stage (not yet started); ``progress``: the driver's progress
    queue (:class:`~rxt_dist.train.progress.StageProgress`), which rank 0 sends its windows to."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    job = prepare_job(cfg, stage)
    storage_path, storage_fs = _storage(cfg)
    sc = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**job.to_dict(), "progress": progress},  # asdict would deep-copy the actor handle
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"{cfg.run.name}-{job.stage}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        ),
    ), job


class StageFailed(RuntimeError):
    """A stage did not finish: its workers failed (after ``failure.max_failures`` restarts) — the
    message then holds Ray Train's error, with the failing worker's — or it exported no model."""


def run_stage(cfg: TrainConfig, stage: str, skip_complete: bool = False, progress: bool = False) -> StageResult:
    """Train one stage to completion (resuming its latest checkpoint if any) and export it.

    ``progress``: show the stage's progress on the driver while it trains — a tqdm bar when
    stderr is a terminal, log lines otherwise (:mod:`rxt_dist.train.progress`).
    """
    import ray
    from ray.train import TrainingFailedError

    from rxt_dist.train.progress import StageProgress

    stage = stage_name(stage)
    if skip_complete and is_complete(cfg, stage):
        check_trained_settings(cfg, stage)
        log.info("[%s] already complete at %s: skipped", stage, export_url(cfg, stage))
        return StageResult(stage, export_url(cfg, stage), skipped=True)
    check_resources(cfg, ray.cluster_resources())
    log.info("[%s] starting %d Ray Train workers", stage, cfg.scaling.num_workers)
    with StageProgress(stage, cfg.stage(stage).steps) if progress else contextlib.nullcontext() as shown:
        trainer, job = build_trainer(cfg, stage, shown.queue if shown else None)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            raise StageFailed(f"stage {stage} failed: {exc}") from exc
    if result.error is not None:
        raise StageFailed(f"stage {stage} failed: {result.error}") from result.error
    if not is_complete(cfg, stage):
        raise StageFailed(f"stage {stage} finished but left no model at {job.export_url}")
    m = result.metrics or {}
    if "loss" in m:
        log.info("[%s] done: %s steps, loss %.3f, %.0fs of training", stage, m.get("step"), m["loss"],
                 m.get("elapsed_s", 0.0))
    return StageResult(stage, job.export_url, dict(m))


def rxt_stages(cfg: TrainConfig) -> tuple[str, ...]:
    """The RxT stages a full run trains: stages 1 → 4, or stage 4 alone when it starts fresh
    (its model would not use what stages 1–3 exported)."""
    return ("smat",) if cfg.stages.smat.start == "fresh" else RXT_STAGES


def run_curriculum(cfg: TrainConfig, stages: list[str] | None = None, progress: bool = False) -> list[StageResult]:
    """Stages 1 → 4 (or stage 4 alone, see :func:`rxt_stages`) and the baseline, in order,
    skipping those already complete; ``stages`` chooses explicitly; ``progress`` as in
    :func:`run_stage`."""
    if stages:
        chosen = [stage_name(s) for s in stages]
    else:
        chosen = [*rxt_stages(cfg), "baseline"]
        if chosen[0] == "smat":
            log.info("stages.smat.start is 'fresh': stage 4 trains from a new model, so stages 1-3 "
                     "are not run (set stages.smat.start=previous for the four-stage curriculum)")
    ordered = [s for s in STAGES if s in chosen]
    return [run_stage(cfg, s, skip_complete=True, progress=progress) for s in ordered]


__all__ = ["StageResult", "StageFailed", "run_stage", "run_curriculum", "rxt_stages", "build_trainer", "prepare_job",
           "export_url", "is_complete", "check_resources", "RXT_STAGES"]
