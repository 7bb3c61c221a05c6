"""Distributed curriculum training on Ray Train with DeepSpeed ZeRO.

The library never starts Ray; ``jobs/train.py`` and ``jobs/curriculum.py`` do, then call
:func:`run_stage` / :func:`run_curriculum`.
"""

from rxt_dist.train.config import RXT_STAGES, STAGES, TrainConfig, stage_name
from rxt_dist.train.launcher import (
    StageFailed,
    StageResult,
    build_trainer,
    check_resources,
    export_url,
    is_complete,
    prepare_job,
    run_curriculum,
    run_stage,
    rxt_stages,
)

__all__ = [
    "RXT_STAGES", "STAGES", "TrainConfig", "stage_name", "StageFailed", "StageResult", "build_trainer",
    "check_resources", "export_url", "is_complete", "prepare_job", "run_curriculum", "run_stage",
    "rxt_stages",
]
