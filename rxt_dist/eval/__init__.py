"""Evaluation: the latency benchmark and the quality evaluation (see docs/evaluation.md)."""

from rxt_dist.eval.latency import SYSTEMS, LatencyConfig, latency_document, run_latency
from rxt_dist.eval.quality import (
    QUALITY_SYSTEMS,
    QualityConfig,
    QualityReport,
    SystemQuality,
    evaluate_conversations,
    evaluate_models,
    recall_exact_match,
)

__all__ = [
    "QUALITY_SYSTEMS", "SYSTEMS", "LatencyConfig", "QualityConfig", "QualityReport", "SystemQuality",
    "evaluate_conversations", "evaluate_models", "latency_document", "recall_exact_match", "run_latency",
]
