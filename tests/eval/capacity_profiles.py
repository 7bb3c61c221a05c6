"""Synthetic cost profiles shared by the capacity tests (no Ray, no model)."""

from __future__ import annotations

from rxt_dist.eval.capacity import CostProfile, ServingPath

STEP, PREFILL, CONSOLIDATE = 0.004, 0.010, 0.020


def profile(path: ServingPath | None = None, cv: float = 0.0, **tables) -> CostProfile:
    """A deterministic profile: flat costs unless a table is given."""
    return CostProfile(
        source="test", model={}, query_tokens=48, answer_tokens=8,
        decode_step_s=tables.get("decode_step_s", {1: STEP, 64: STEP}),
        prefill_s=tables.get("prefill_s", {1: PREFILL, 64: PREFILL}),
        prefill_length_s={16: 0.005, 48: 0.010, 256: 0.040},
        consolidate_s=tables.get("consolidate_s", {1: CONSOLIDATE, 64: CONSOLIDATE}),
        stm_bytes={"float32": 786_536, "bfloat16": 393_320},
        path=path or ServingPath(update_batch_wait_s=0.0, cores=1e9), timing_cv=cv)


def measured_like() -> CostProfile:
    """Shaped like this machine's profile: costs that grow with the batch, a serving path that
    costs more than the model, two shared cores."""
    path = ServingPath(client_s=0.009, proxy_s=0.017, ingress_s=0.032, store_op_s=0.003, generator_io_s=0.013,
                       updater_item_s=0.011, in_share=0.35, out_share=0.1, cores=2, other_load=0.5,
                       serial_share={"client": 0.5, "proxy": 0.5, "ingress": 0.6, "store": 0.9, "generator": 0.5,
                                     "updater": 0.6})
    return profile(path, decode_step_s={1: 0.0013, 8: 0.0024, 32: 0.0047, 64: 0.0074},
                   prefill_s={1: 0.006, 8: 0.034, 32: 0.13}, consolidate_s={1: 0.003, 16: 0.08})
