import asyncio
import json
import time

import pytest

from rxt_dist.serving.sessions import (
    SessionStore,
    StoreConfig,
    is_session_id,
    new_session_id,
    shard_of,
)

SHAPE = [2, 4, 8]


def run(coro):
    return asyncio.run(coro)


def store_at(path, **kw) -> SessionStore:
    return SessionStore(StoreConfig(url=str(path), **kw))


def test_session_ids_are_random_128_bit_and_shard_evenly():
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(is_session_id(s) and len(s) == len("sess_") + 32 for s in ids)
    for bad in ("sess_../../etc/passwd", "sess_" + "g" * 32, "", "SESS_" + "a" * 32, "sess_" + "a" * 31):
        assert not is_session_id(bad)
    counts = [0] * 4
    for s in ids:
        counts[shard_of(s, 4)] += 1
    assert min(counts) > 400


def test_turn_cycle_versions_and_compare_and_set(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        assert (await store.create(sid, b"stm0", SHAPE))["session"]["memory_version"] == 0
        claim = await store.begin_turn(sid, "a", 1.0)
        assert claim["status"] == "ok" and claim["stm"] == b"stm0" and claim["version"] == 0
        assert (await store.begin_turn(sid, "b", 0.1))["status"] == "busy"  # one turn at a time
        assert (await store.finish_turn(sid, "a", 0, [10], [11]))["status"] == "ok"
        info = (await store.info(sid))["session"]
        assert info["pending_update"] and info["turns"] == 1 and info["memory_version"] == 0
        # The next turn may not read version 0 while its update is pending.
        waited = await store.begin_turn(sid, "b", 0.05)
        assert waited["status"] == "pending" and waited["base_version"] == 0
        update = await store.update_input(sid, 0)
        assert update["stm"] == b"stm0" and update["query_ids"] == [10] and update["answer_ids"] == [11]
        assert (await store.commit_update(sid, 0, b"stm1"))["status"] == "applied"
        # A retried update of the same turn changes nothing.
        assert (await store.commit_update(sid, 0, b"other"))["status"] == "already_applied"
        assert (await store.update_input(sid, 0))["status"] == "applied"
        claim = await store.begin_turn(sid, "b", 0.05)
        assert claim["version"] == 1 and claim["stm"] == b"stm1"
        # An update of a version with nothing pending is refused, not applied.
        assert (await store.commit_update(sid, 1, b"bogus"))["status"] == "conflict"
    run(scenario())


def test_a_waiting_turn_starts_from_the_update_it_waited_for(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"stm0", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        await store.finish_turn(sid, "a", 0, [1], [2])
        waiter = asyncio.create_task(store.begin_turn(sid, "b", 5.0))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await store.commit_update(sid, 0, b"stm1")
        claim = await asyncio.wait_for(waiter, 1.0)
        assert claim["status"] == "ok" and claim["version"] == 1 and claim["stm"] == b"stm1"
    run(scenario())


def test_a_repeated_finish_turn_is_recorded_once(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        assert (await store.finish_turn(sid, "a", 0, [1], [2]))["status"] == "ok"
        assert (await store.finish_turn(sid, "a", 0, [1], [2]))["status"] == "ok"
        assert (await store.info(sid))["session"]["turns"] == 1
        assert (await store.finish_turn(sid, "other", 0, [1], [2]))["status"] == "lost_lease"
    run(scenario())


def test_sessions_and_pending_updates_survive_a_restart(tmp_path):
    async def before():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"stm0", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        await store.finish_turn(sid, "a", 0, [1], [2])
        await store.commit_update(sid, 0, b"stm1")
        await store.begin_turn(sid, "b", 1.0)
        await store.finish_turn(sid, "b", 1, [3], [4])  # left pending: the process "dies" here
        return sid

    sid = run(before())
    files = sorted(p.name for p in (tmp_path / sid).iterdir())
    assert files == ["meta.json", "stm-00000001.safetensors"]  # superseded STMs are dropped
    assert json.loads((tmp_path / sid / "meta.json").read_text())["pending"]["base_version"] == 1

    async def after():
        store = store_at(tmp_path)  # a fresh shard over the same storage
        info = (await store.info(sid))["session"]
        assert info == {**info, "turns": 2, "memory_version": 1, "pending_update": True}
        update = await store.update_input(sid, 1)
        assert update["stm"] == b"stm1" and update["query_ids"] == [3]
        assert (await store.commit_update(sid, 1, b"stm2"))["status"] == "applied"
        assert (await store.begin_turn(sid, "c", 0.1))["stm"] == b"stm2"
    run(after())


def test_any_fsspec_url_works(tmp_path):
    async def scenario():
        store = SessionStore(StoreConfig(url=f"memory://rxt-store-{time.time_ns()}"))
        sid = new_session_id()
        await store.create(sid, b"m0", SHAPE)
        fresh = SessionStore(store.config)
        assert (await fresh.begin_turn(sid, "a", 0.1))["stm"] == b"m0"
    run(scenario())


def test_deleted_sessions_are_gone_for_waiters_and_storage(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        await store.finish_turn(sid, "a", 0, [1], [2])
        waiter = asyncio.create_task(store.begin_turn(sid, "b", 5.0))
        await asyncio.sleep(0.05)
        assert (await store.delete(sid))["status"] == "ok"
        assert (await asyncio.wait_for(waiter, 1.0))["status"] == "not_found"
        assert not (tmp_path / sid).exists()
        for result in (await store.info(sid), await store.begin_turn(sid, "c", 0.1),
                       await store.commit_update(sid, 0, b"x"), await store.delete(sid)):
            assert result["status"] == "not_found"
    run(scenario())


def test_an_abandoned_claim_expires(tmp_path):
    async def scenario():
        store = store_at(tmp_path, turn_lease_s=0.2)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        assert (await store.begin_turn(sid, "dead", 1.0))["status"] == "ok"
        assert (await store.begin_turn(sid, "b", 0.0))["status"] == "busy"
        await asyncio.sleep(0.3)
        assert (await store.begin_turn(sid, "b", 0.0))["status"] == "ok"
        # The late owner cannot record a turn over the new claim.
        assert (await store.finish_turn(sid, "dead", 0, [1], [2]))["status"] == "lost_lease"
    run(scenario())


def test_only_settled_sessions_are_evicted_from_memory(tmp_path):
    async def scenario():
        store = store_at(tmp_path, cache_sessions=2)
        sids = [new_session_id() for _ in range(4)]
        for sid in sids:
            await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sids[0], "a", 1.0)
        await store.finish_turn(sids[0], "a", 0, [1], [2])  # pending: must stay in memory
        for sid in sids[1:]:
            await store.info(sid)
        assert sids[0] in store._entries and len(store._entries) <= 3
        assert (await store.info(sids[1]))["session"]["memory_version"] == 0  # reloaded from disk
    run(scenario())


def test_store_config_is_validated():
    with pytest.raises(ValueError, match="cache_sessions=0: must be ≥ 1"):
        StoreConfig(url="x", cache_sessions=0)
    with pytest.raises(ValueError, match="turn_lease_s=0"):
        StoreConfig(url="x", turn_lease_s=0)
