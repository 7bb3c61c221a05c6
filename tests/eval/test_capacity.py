"""The capacity model's profile tables and speed trace (no Ray, no model: synthetic profiles)."""

from __future__ import annotations

import math

import pytest

from rxt_dist.eval.capacity import CostProfile, ServingPath, monotone
from tests.eval.capacity_profiles import PREFILL, STEP, profile


def test_tables_are_made_monotone_and_checked():
    assert monotone({1: 5.0, 2: 9.0, 4: 3.0, 8: 4.0}) == {1: 3.0, 2: 3.0, 4: 3.0, 8: 4.0}
    p = profile()
    assert p.decode_step(0) == 0 and p.decode_step(100) == pytest.approx(STEP)
    assert p.prefill(1, 16) == pytest.approx(PREFILL * 0.5)
    with pytest.raises(ValueError, match="decode_step_s"):
        profile(decode_step_s={})
    with pytest.raises(ValueError, match="in_share"):
        ServingPath(in_share=0.8, out_share=0.5)
    assert CostProfile.from_dict(json_roundtrip(p.to_dict())) == p


def json_roundtrip(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def test_the_speed_trace_is_the_probes_pieces_against_their_typical_time():
    """A piece that took twice the typical time is the machine at half speed; slow and fast
    stretches balance in log terms; too few pieces say nothing."""
    from rxt_dist.eval.capacity import MIN_TRACE_PIECES, speed_trace

    pieces = [0.002] * 20 + [0.004, 0.001]  # geometric mean 0.002
    trace = speed_trace(pieces)
    assert trace[:20] == [1.0] * 20 and trace[20] == 0.5 and trace[21] == 2.0
    assert math.isclose(sum(math.log(x) for x in trace), 0.0, abs_tol=1e-3)
    assert speed_trace([0.002] * (MIN_TRACE_PIECES - 1)) == []
    assert speed_trace([0.0, None] * 20) == []  # nothing measured
