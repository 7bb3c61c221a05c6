"""What the session store reports about update timing: how long a claim waited for a pending
update, and when each memory version was committed (the serving benchmark's lag and waited
share are built from these; the HTTP headers carrying them are tested in
tests/eval/test_serving_bench.py)."""

import asyncio
import json
import time

from rxt_dist.serving.session_records import SessionMeta, new_session_id
from rxt_dist.serving.sessions import SessionStore, StoreConfig

SHAPE = [2, 4, 8]


def test_a_claim_reports_how_long_it_waited_for_the_pending_update(tmp_path):
    async def scenario():
        store = SessionStore(StoreConfig(url=str(tmp_path)))
        sid = new_session_id()
        await store.create(sid, b"stm0", SHAPE)
        first = await store.begin_turn(sid, "a", 1.0)
        assert first["status"] == "ok" and first["waited_s"] == 0.0  # nothing was pending
        await store.finish_turn(sid, "a", 0, [10], [11])

        async def commit_later():
            await asyncio.sleep(0.3)
            return await store.commit_update(sid, 0, b"stm1")

        committer = asyncio.create_task(commit_later())
        second = await store.begin_turn(sid, "b", 5.0)
        await committer
        assert second["status"] == "ok" and second["version"] == 1
        assert 0.25 <= second["waited_s"] < 5.0
        await store.finish_turn(sid, "b", 1, [12], [13])
        timed_out = await store.begin_turn(sid, "c", 0.1)  # a wait that ends without the commit
        assert timed_out["status"] == "pending" and 0.1 <= timed_out["waited_s"] < 1.0

    asyncio.run(scenario())


def test_each_version_records_when_it_was_committed(tmp_path):
    async def scenario():
        store = SessionStore(StoreConfig(url=str(tmp_path)))
        sid = new_session_id()
        before = time.time()
        created = (await store.create(sid, b"stm0", SHAPE))["session"]
        assert before <= created["memory_committed_at"] <= time.time()
        claim = await store.begin_turn(sid, "a", 1.0)
        assert claim["committed"] == created["memory_committed_at"]
        await store.finish_turn(sid, "a", 0, [10], [11])
        await asyncio.sleep(0.05)
        answered = time.time()
        pending = (await store.info(sid))["session"]
        assert pending["pending_update"] and pending["memory_committed_at"] == created["memory_committed_at"]
        await store.commit_update(sid, 0, b"stm1")
        settled = (await store.info(sid))["session"]
        assert settled["memory_version"] == 1 and answered <= settled["memory_committed_at"] <= time.time()
        assert (await store.begin_turn(sid, "b", 1.0))["committed"] == settled["memory_committed_at"]
        # The commit time is stored: a new store (a restarted shard) reads it back.
        reloaded = SessionStore(StoreConfig(url=str(tmp_path)))
        assert (await reloaded.info(sid))["session"]["memory_committed_at"] == settled["memory_committed_at"]

    asyncio.run(scenario())


def test_a_record_written_before_commit_times_were_kept_still_loads(tmp_path):
    meta = SessionMeta(id=new_session_id(), created=1.0, updated=2.0, stm_shape=SHAPE, version=3, turns=3)
    old = json.loads(meta.to_json())
    del old["committed"]
    loaded = SessionMeta.from_json(json.dumps(old))
    assert loaded.version == 3 and loaded.public()["memory_committed_at"] is None
