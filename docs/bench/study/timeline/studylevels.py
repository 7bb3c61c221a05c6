"""What the study scripts share: each level of a stored (profile, benchmark) pair simulated as
``jobs/capacity.py compare`` does (the benchmark's streaming settings, the profile moved to the
level's measured environment). Usage from a script: ``for lv, out in simulated_levels(argv, reset)``;
``reset`` runs right before each level's simulation (clear what the script's hooks collect)."""
import dataclasses
import json
import os
from collections.abc import Callable, Iterator

from rxt_dist.eval.capacity import CostProfile
from rxt_dist.eval.simcheck import simulate_level, speed_ratio


SPEED_FROM = os.environ.get("SPEED_FROM") or None
"""Scale each level's profile by this reading of the machine's speed (``probe``, ``store``,
``replay``), as ``compare --speed-from``; unset: none, the default of ``compare`` since
2026-12-04 night (the studies before it ran with ``probe``)."""


def simulated_levels(argv: list[str], reset: Callable[[], None] = lambda: None) -> Iterator[tuple[dict, dict]]:
    """(measured level, simulated figures) per level; argv: [PROFILE.json, SERVING.json]."""
    prof = CostProfile.from_file(argv[0])
    with open(argv[1], encoding="utf-8") as f:
        bench = json.load(f)
    srv = bench.get("server", {})
    prof = dataclasses.replace(prof, path=dataclasses.replace(
        prof.path, stream_interval_s=srv.get("stream_interval_s", 0.0),
        stream_chunks_per_s=srv.get("stream_chunks_per_s", 0.0)))
    for lv in bench["levels"]:
        env = lv.get("environment")
        speed = speed_ratio(prof, env, SPEED_FROM) if SPEED_FROM else 1.0
        here = prof.in_environment(env["slowdown"], env["stalls"], speed) if env else prof
        reset()
        yield lv, simulate_level(here, lv, settle_poll_s=bench.get("config", {}).get("poll_interval_s", 0.0))
