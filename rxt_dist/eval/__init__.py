"""Evaluation: the latency benchmark and the quality evaluation (see docs/evaluation.md)."""

from rxt_dist.eval.latency import SYSTEMS, LatencyConfig, run_latency

__all__ = ["SYSTEMS", "LatencyConfig", "run_latency"]
