"""The deployment plan, daily users, storage traffic and bounds (no Ray, no model: synthetic profiles)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rxt_dist.eval.capacity import Workload, bounds, storage_traffic
from rxt_dist.eval.plan import Usage, daily_users_workload, plan, simulate_share
from tests.eval.capacity_profiles import measured_like, profile


def test_plan_meets_the_slo_in_simulation_with_the_fewest_generators():
    p = measured_like()
    w = Workload(sessions=400, think_time_s=2.0, answer_tokens=16, turns=3)
    out = plan(p, w, slo_ttft_p99_s=0.25)
    assert out["feasible"]
    assert out["ttft_p99_s"] <= 0.25
    assert simulate_share(p, w, out["generators"])["ttft_p99_s"] <= 0.25
    if out["generators"] > 1:
        fewer = simulate_share(p, w, out["generators"] - 1)
        assert fewer["ttft_p99_s"] > 0.25 or max(fewer["busy"]["generator_occupancy"]) > 0.7


def test_plan_refuses_an_slo_below_one_unloaded_query():
    out = plan(measured_like(), Workload(sessions=10, think_time_s=1.0), slo_ttft_p99_s=0.001)
    assert not out["feasible"] and "alone" in out["reason"]


def test_storage_traffic_counts_writes_and_ray_bytes():
    t = storage_traffic(profile(), turns_per_s=100.0, stored_sessions=1000)
    assert t["write_ops_per_s"] == 300 and t["delete_ops_per_s"] == 100
    assert t["ray_object_store_bytes_per_turn"] == 4 * 786_536  # above Ray's inline limit
    small = dataclasses.replace(profile(), stm_bytes={"float32": 32_888})
    assert storage_traffic(small, 1.0, 1)["ray_object_store_bytes_per_turn"] == 0


def test_daily_users_become_concurrent_sessions_by_littles_law():
    w = daily_users_workload(86_400, Usage(conversations_per_user=1, turns=10, think_time_s=9.0, peak_to_mean=1.0),
                             answer_s=1.0)
    assert w.sessions == 100  # 86,400 conversations/day × 100 s each / 86,400 s
    assert bounds(profile(), w)["turns_per_s"] == pytest.approx(w.sessions / (9.0 + bounds(profile(), w)["answer_unloaded_s"]))
    assert math.isfinite(bounds(profile(), w)["max_tokens_per_s_per_generator"])
