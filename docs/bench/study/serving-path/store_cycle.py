"""CPU per turn of one session-store shard's turn cycle, in-process (no Ray): 32 sessions, each
turn claimed (``begin_turn``), recorded with its transcript index move (``finish_turn``) and
committed (``commit_update``), files in a temporary local directory.

    PYTHONPATH=<checkout> python docs/bench/study/serving-path/store_cycle.py

(PYTHONPATH picks the checkout whose ``rxt_dist`` is timed: compare two commits from two
worktrees, runs interleaved, nothing else running.)
"""

import asyncio
import hashlib
import os
import tempfile
import time

from rxt_dist.serving import sessions
from rxt_dist.serving.session_records import new_session_id
from rxt_dist.serving.sessions import SessionStore, StoreConfig

SESSIONS, TURNS = 32, 46
STM_BYTES = 24_696  # the random debug model's STM as the serving benchmark stores it


def transcript(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


async def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        store = SessionStore(StoreConfig(url=root))
        stm = os.urandom(STM_BYTES)
        ids = [new_session_id() for _ in range(SESSIONS)]
        for sid in ids:
            await store.create(sid, stm, [2, 8, 32], transcript=transcript(sid, 0))
        version = dict.fromkeys(ids, 0)

        async def turn(sid: str, t: int) -> None:
            lease = f"lease-{t}"
            assert (await store.begin_turn(sid, lease, 5.0))["status"] == "ok"
            recorded = await store.finish_turn(sid, lease, version[sid], list(range(30)), list(range(32)),
                                               transcript=transcript(sid, t))
            assert recorded["status"] == "ok"
            assert (await store.commit_update(sid, version[sid], stm, lease))["status"] == "applied"
            version[sid] += 1

        cpu, wall = time.process_time(), time.perf_counter()
        for t in range(1, TURNS + 1):
            await asyncio.gather(*(turn(sid, t) for sid in ids))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = SESSIONS * TURNS
    print(f"{sessions.__file__}: {1000 * cpu / n:.2f} ms CPU per turn, {1000 * wall / n:.2f} ms wall, {n} turns")


if __name__ == "__main__":
    asyncio.run(main())
