import asyncio
import json
import time

import pytest

from rxt_dist.serving.protocol import (
    stm_digest,
    store_actor_name,
    store_actor_shard,
    transcript_shard,
    transcript_start,
    transcript_step,
)
from rxt_dist.serving.session_records import is_session_id, new_session_id, shard_of
from rxt_dist.serving.sessions import SessionStore, StoreConfig

SHAPE = [2, 4, 8]


def run(coro):
    return asyncio.run(coro)


def store_at(path, **kw) -> SessionStore:
    return SessionStore(StoreConfig(url=str(path), **kw))


async def session_with_pending_update(store: SessionStore) -> str:
    """A new session with one turn recorded (under lease "a") and its memory update pending."""
    sid = new_session_id()
    await store.create(sid, b"s", SHAPE)
    await store.begin_turn(sid, "a", 1.0)
    await store.finish_turn(sid, "a", 0, [1], [2])
    return sid


def test_session_ids_are_random_128_bit_and_shard_evenly():
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(is_session_id(s) and len(s) == len("sess_") + 32 for s in ids)
    for bad in ("sess_../../etc/passwd", "sess_" + "g" * 32, "", "SESS_" + "a" * 32, "sess_" + "a" * 31):
        assert not is_session_id(bad)
    counts = [0] * 4
    for s in ids:
        counts[shard_of(s, 4)] += 1
    assert min(counts) > 400


def test_a_store_actors_name_tells_its_shard_and_no_other_actor_passes_for_one():
    names = [store_actor_name("file:///tmp/s", shard, 4) for shard in range(4)]
    assert [store_actor_shard(n) for n in names] == [0, 1, 2, 3]
    assert len(set(names)) == 4 and store_actor_name("file:///tmp/other", 0, 4) != names[0]
    assert store_actor_name("file:///tmp/s", 0, 2) != names[0]  # another layout, another actor
    for other in ("SERVE_CONTROLLER_ACTOR", "rxt-session-store-", "rxt-session-store-abc-1-to-2",
                  "rxt-session-store-abc-x-of-2"):
        assert store_actor_shard(other) is None


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


def test_a_claim_without_the_stm_and_the_stm_read_by_version(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"stm0", SHAPE)
        claim = await store.begin_turn(sid, "a", 1.0, with_stm=False)
        assert claim["status"] == "ok" and claim["version"] == 0 and claim["stm"] is None
        assert store.snapshot()["stm_sent"] == 0 and store.snapshot()["claims"] == 1
        assert claim["stm_digest"] == stm_digest(b"stm0")
        assert await store.read_stm(sid, 0) == {"status": "ok", "stm": b"stm0", "stm_shape": SHAPE,
                                                "stm_digest": stm_digest(b"stm0")}
        assert (store.snapshot()["stm_sent"], store.snapshot()["stm_sent_bytes"]) == (1, 4)
        await store.finish_turn(sid, "a", 0, [1], [2])
        await store.commit_update(sid, 0, b"stm1")
        # Only the version the session stands at is read; an older one is refused, never mixed up.
        assert await store.read_stm(sid, 0) == {"status": "conflict", "version": 1}
        assert (await store.read_stm(sid, 1))["stm"] == b"stm1"
        assert (await store.begin_turn(sid, "b", 1.0))["stm_digest"] == stm_digest(b"stm1")
        assert (await store.read_stm(new_session_id(), 0))["status"] == "not_found"
        await store.delete(sid)
        assert (await store.read_stm(sid, 1))["status"] == "not_found"
    run(scenario())


def test_a_waiting_turn_starts_from_the_update_it_waited_for(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"stm0", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        await store.finish_turn(sid, "a", 0, [1], [2])
        recorded = time.time()
        await asyncio.sleep(0.05)  # the next turn comes a while after this one was recorded
        waiter = asyncio.create_task(store.begin_turn(sid, "b", 5.0))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        stamped = time.time()
        await store.commit_update(sid, 0, b"stm1")
        released = time.time()
        claim = await asyncio.wait_for(waiter, 1.0)
        assert claim["status"] == "ok" and claim["version"] == 1 and claim["stm"] == b"stm1"
        # the claim says when it arrived and when the turn it waited for was recorded
        assert claim["waited_for_recorded_at"] <= recorded and recorded + 0.05 <= claim["arrived_at"] <= stamped
        # the store counts the wait's two ends: the waiting turn's arrival after the turn before
        # was recorded, and the commit's time to the release (its write)
        counts = store.snapshot()
        assert counts["claims_waited"] == 1 and counts["commits"] == 1
        assert 0.05 <= counts["claim_pending_age_s"] <= 0.1 + (time.time() - recorded)
        assert claim["committed"] >= stamped and 0 < counts["commit_write_s"] <= released - stamped
        # of that, the write on its worker thread: no more than all of it, its CPU no more than its wall
        assert 0 < counts["commit_persist_s"] <= counts["commit_write_s"]
        assert 0 <= counts["commit_persist_cpu_s"] <= counts["commit_persist_s"] + 1e-3
        again = await store.begin_turn(sid, "b", 1.0)  # the same lease again, nothing pending: not counted
        assert store.snapshot()["claims_waited"] == 1 and again["waited_for_recorded_at"] is None
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
        sid = await session_with_pending_update(store)
        waiter = asyncio.create_task(store.begin_turn(sid, "b", 5.0))
        await asyncio.sleep(0.05)
        assert (await store.delete(sid))["status"] == "ok"
        assert (await asyncio.wait_for(waiter, 1.0))["status"] == "not_found"
        assert not (tmp_path / sid).exists()
        for result in (await store.info(sid), await store.begin_turn(sid, "c", 0.1),
                       await store.commit_update(sid, 0, b"x"), await store.delete(sid)):
            assert result["status"] == "not_found"
    run(scenario())


def test_an_update_committed_while_its_session_is_being_deleted_is_refused_and_writes_nothing(tmp_path):
    # The memory update of a turn can arrive while the client deletes the session: it must
    # neither write into the directory being removed (the delete then failed with an OSError)
    # nor bring the session back.
    async def scenario():
        store = store_at(tmp_path)
        sid = await session_with_pending_update(store)
        remove = store.files.remove_session
        store.files.remove_session = lambda s: (time.sleep(0.3), remove(s))  # a slow storage backend
        deleting = asyncio.create_task(store.delete(sid))
        await asyncio.sleep(0.05)  # the delete holds the session and is removing its files
        assert (await store.commit_update(sid, 0, b"stm1"))["status"] == "not_found"
        assert (await store.info(sid))["status"] == "not_found"
        assert (await deleting)["status"] == "ok"
        assert not (tmp_path / sid).exists()
        assert (await SessionStore(store.config).info(sid))["status"] == "not_found"
    run(scenario())


@pytest.mark.parametrize("cached", [True, False], ids=["in-memory", "only-in-storage"])
def test_a_turn_arriving_while_its_expired_session_is_removed_finds_it_gone(tmp_path, cached):
    # The sweeper removes an expired session's files while its user comes back: the turn finds
    # the session gone, and the session is expired (counted, and taken off the shard's count of
    # stored sessions) once — loading it again meanwhile expired it a second time.
    async def scenario():
        store = store_at(tmp_path, session_ttl_s=0.2, sweep_interval_s=3600)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        if not cached:
            store = store_at(tmp_path, session_ttl_s=0.2, sweep_interval_s=3600)
        await asyncio.sleep(0.3)
        remove = store.files.remove_session
        store.files.remove_session = lambda s: (time.sleep(0.3), remove(s))  # a slow storage backend
        sweeping = asyncio.create_task(store.sweep())
        await asyncio.sleep(0.05)  # the sweeper is removing the session's files
        assert (await store.begin_turn(sid, "late", 1.0))["status"] == "not_found"
        assert await sweeping == 1
        assert store.expired == 1  # counted once
        assert not (tmp_path / sid).exists()
        assert (await store.info(sid))["status"] == "not_found"
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


def test_idle_sessions_expire_from_memory_and_storage(tmp_path):
    async def scenario():
        store = store_at(tmp_path, session_ttl_s=0.3)
        kept, idle = new_session_id(), new_session_id()
        created = await store.create(idle, b"s", SHAPE)
        expires = created["session"]["expires_at"]
        assert expires == pytest.approx(time.time() + 0.3, abs=0.2)  # visible in the record
        await store.create(kept, b"s", SHAPE)
        await store.begin_turn(kept, "a", 1.0)
        await store.finish_turn(kept, "a", 0, [1], [2])  # pending: in use, never expires
        await asyncio.sleep(0.4)
        assert (await store.info(idle))["status"] == "not_found"
        assert not (tmp_path / idle).exists()
        assert (await store.info(kept))["status"] == "ok"
        # A fresh shard that never loaded them finds the expired ones in storage.
        later = [new_session_id() for _ in range(3)]
        for sid in later:
            await store.create(sid, b"s", SHAPE)
        await asyncio.sleep(0.4)
        assert await store_at(tmp_path, session_ttl_s=0.3).sweep() == 3
        assert not any((tmp_path / sid).exists() for sid in later) and (tmp_path / kept).exists()
    run(scenario())


def test_a_shard_at_its_cap_refuses_new_sessions_until_some_expire(tmp_path):
    async def scenario():
        store = store_at(tmp_path, max_sessions=2, session_ttl_s=0.3)
        for _ in range(2):
            assert (await store.create(new_session_id(), b"s", SHAPE))["status"] == "ok"
        assert (await store.create(new_session_id(), b"s", SHAPE))["status"] == "full"
        await asyncio.sleep(0.4)
        assert (await store.create(new_session_id(), b"s", SHAPE))["status"] == "ok"
    run(scenario())


def test_a_session_in_use_is_never_evicted_nor_loaded_twice(tmp_path):
    """cache_sessions=1 with one session claimed: claiming a second would need the room of a
    session in use. It used to be loaded, evicted at once, and loaded again by a concurrent
    request — two claims on one session."""
    async def scenario():
        store = store_at(tmp_path, cache_sessions=1)
        a, b = new_session_id(), new_session_id()
        await store.create(a, b"s", SHAPE)
        await store.create(b, b"s", SHAPE)
        assert (await store.begin_turn(a, "la", 1.0))["status"] == "ok"
        assert (await store.begin_turn(b, "lb1", 1.0))["status"] == "full"
        assert (await store.begin_turn(b, "lb2", 1.0))["status"] == "full"
        assert (await store.begin_turn(a, "other", 0.0))["status"] == "busy"  # still the one copy
        await store.finish_turn(a, "la", 0, [1], [2])
        await store.commit_update(a, 0, b"s1")
        assert (await store.begin_turn(b, "lb1", 1.0))["status"] == "ok"
        assert (await store.begin_turn(b, "lb2", 0.0))["status"] == "busy"
    run(scenario())


def test_a_failed_write_leaves_the_session_as_it_was(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        saved = tmp_path / "saved"
        (tmp_path / sid).rename(saved)
        (tmp_path / sid).write_text("not a directory")  # every write under it now fails
        with pytest.raises(OSError):
            await store.finish_turn(sid, "a", 0, [1], [2])
        info = (await store.info(sid))["session"]
        assert info["turns"] == 0 and not info["pending_update"] and info["memory_version"] == 0
        assert (await store.begin_turn(sid, "b", 0.0))["status"] == "busy"  # still claimed by "a"
        (tmp_path / sid).unlink()
        saved.rename(tmp_path / sid)
        assert (await store.finish_turn(sid, "a", 0, [1], [2]))["status"] == "ok"
        assert (await store.info(sid))["session"]["turns"] == 1
    run(scenario())


def test_commits_sent_together_answer_each_on_its_own(tmp_path):
    """A MemoryUpdater's batch commits a shard's sessions in one call: each commit is the
    compare-and-set it is alone, and one whose write fails leaves the others applied."""
    async def scenario():
        store = store_at(tmp_path)
        applies, retried, lost, broken = [await session_with_pending_update(store) for _ in range(4)]
        await store.commit_update(retried, 0, b"first")
        gone = new_session_id()
        saved = tmp_path / "saved"
        (tmp_path / broken).rename(saved)
        (tmp_path / broken).write_text("not a directory")  # its writes fail
        answers = await store.commit_updates([(applies, 0, b"new", "a"), (retried, 0, b"again", None),
                                              (lost, 0, b"x", "another lease"), (broken, 0, b"y", None),
                                              (gone, 0, b"z", None)])
        (tmp_path / broken).unlink()
        saved.rename(tmp_path / broken)
        infos = [(await store.info(sid))["session"] for sid in (applies, retried, lost, broken)]
        return answers, infos, (await store.read_stm(applies, 1))["stm"]

    answers, infos, stm = run(scenario())
    assert [a["status"] for a in answers] == ["applied", "already_applied", "conflict", "unavailable", "not_found"]
    assert "OSError" in answers[3]["error"] or "Error" in answers[3]["error"]
    assert [i["memory_version"] for i in infos] == [1, 1, 0, 0] and stm == b"new"
    assert [i["pending_update"] for i in infos] == [False, False, True, True]  # the failed write changed nothing


def test_a_session_answers_only_the_key_that_created_it(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE, owner="alice")
        for result in (await store.info(sid, "bob"), await store.begin_turn(sid, "l", 0.0, "bob"),
                       await store.delete(sid, "bob"), await store.drop_pending(sid, "bob"),
                       await store.info(sid)):
            assert result["status"] == "not_found"
        assert (await store.begin_turn(sid, "l", 0.0, "alice"))["status"] == "ok"
        assert (await store.delete(sid, "alice"))["status"] == "ok"
    run(scenario())


def test_a_repeated_idempotency_key_replays_the_recorded_answer(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sid, "a", 1.0, idempotency_key="k1")
        await store.finish_turn(sid, "a", 0, [1], [7, 8], idempotency_key="k1", finish_reason="length")
        # The retry arrives while the update is pending, and again after it committed.
        replay = await store.begin_turn(sid, "b", 0.0, idempotency_key="k1")
        assert replay == {"status": "replay", "version": 0, "answer_ids": [7, 8], "finish_reason": "length",
                          "update_pending": True}
        await store.commit_update(sid, 0, b"s1")
        fresh = store_at(tmp_path)  # the record survives a restart
        assert (await fresh.begin_turn(sid, "c", 0.0, idempotency_key="k1"))["status"] == "replay"
        claim = await fresh.begin_turn(sid, "c", 0.0, idempotency_key="k2")
        assert claim["status"] == "ok" and claim["version"] == 1
        assert (await fresh.info(sid))["session"]["turns"] == 1
    run(scenario())


def test_a_streaming_answer_keeps_its_claim_by_renewing_it(tmp_path):
    async def scenario():
        store = store_at(tmp_path, turn_lease_s=1.0)
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE)
        await store.begin_turn(sid, "a", 1.0)
        for _ in range(4):  # 1.6 s of answering, well past one lease
            await asyncio.sleep(0.4)
            assert (await store.renew(sid, "a"))["status"] == "ok"
            assert (await store.begin_turn(sid, "b", 0.0))["status"] == "busy"
        assert (await store.finish_turn(sid, "a", 0, [1], [2]))["status"] == "ok"
        assert (await store.renew(sid, "a"))["status"] == "lost_lease"  # released by the record
    run(scenario())


def test_an_update_that_cannot_apply_is_reported_and_can_be_dropped(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        sid = await session_with_pending_update(store)
        assert (await store.drop_pending(sid))["status"] == "pending"  # may still apply: refused
        waiter = asyncio.create_task(store.begin_turn(sid, "b", 5.0))
        await asyncio.sleep(0.05)
        assert (await store.fail_update(sid, 0, "token id 9999 out of range"))["status"] == "ok"
        failed = await asyncio.wait_for(waiter, 1.0)
        assert failed["status"] == "update_failed" and "out of range" in failed["error"]
        assert (await store.info(sid))["session"]["update_error"] == "token id 9999 out of range"
        assert (await store.update_input(sid, 0))["status"] == "failed"
        dropped = await store.drop_pending(sid)
        assert dropped["status"] == "ok" and dropped["session"]["turns"] == 0
        claim = await store.begin_turn(sid, "b", 0.0)
        assert claim["status"] == "ok" and claim["version"] == 0 and claim["stm"] == b"s"
    run(scenario())


def test_a_running_shard_takes_new_settings(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        changed = await store.reconfigure(StoreConfig(url=str(tmp_path), cache_sessions=8, turn_lease_s=5))
        assert changed == ["cache_sessions", "turn_lease_s"] and store.config.cache_sessions == 8
        with pytest.raises(ValueError, match="this shard stores sessions at"):
            await store.reconfigure(StoreConfig(url=str(tmp_path / "other")))
    run(scenario())


def test_a_session_continues_only_from_the_transcript_it_stands_at(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        t0 = transcript_start("alice", "be brief")
        t1 = transcript_step(t0, "my name is ada", "hello ada")
        assert t1 != transcript_step(t0, "my name is ada", "hello ada ") != transcript_start("bob", "be brief")
        sid = new_session_id()
        await store.create(sid, b"s", SHAPE, transcript=t0)
        await store.link(t0, sid)
        assert (await store.lookup(t0)) == {"status": "ok", "session_id": sid}
        claim = await store.begin_turn(sid, "a", 0.0, expect_transcript=t0)
        assert claim["status"] == "ok" and claim["transcript"] == t0
        finished = await store.finish_turn(sid, "a", 0, [1], [2], transcript=t1)
        # One shard owns every index entry: recording the turn moved the session's entry.
        assert finished["indexed"] == {"linked": True, "unlinked": True}
        assert (await store.lookup(t1))["session_id"] == sid and (await store.lookup(t0))["status"] == "not_found"
        # The old transcript no longer continues it; the new one does, and waits for the update.
        assert (await store.begin_turn(sid, "b", 0.0, expect_transcript=t0))["status"] == "diverged"
        assert (await store.begin_turn(sid, "b", 0.0, expect_transcript=t1))["status"] == "pending"
        await store.link(t1, sid)  # moving it again (a retried call) changes nothing
        await store.unlink(t0, sid)
        fresh = store_at(tmp_path)  # the index is in storage
        assert (await fresh.lookup(t0))["status"] == "not_found"
        assert (await fresh.lookup(t1))["session_id"] == sid
        assert (await fresh.unlink(t1, new_session_id())) and (await fresh.lookup(t1))["session_id"] == sid
    run(scenario())


def test_recording_a_turn_moves_only_the_index_entries_its_shard_owns(tmp_path):
    async def scenario():
        t0 = transcript_start(None, None)
        steps = [transcript_step(t0, f"turn {i}", "ok") for i in range(40)]
        t1 = next(t for t in steps if transcript_shard(t, 2) != transcript_shard(t0, 2))
        sid = new_session_id()
        home = transcript_shard(t0, 2)  # this shard indexes t0, the other one t1
        store = SessionStore(StoreConfig(url=str(tmp_path)), home, 2)
        await store.create(sid, b"s", SHAPE, transcript=t0)
        await store.link(t0, sid)
        await store.begin_turn(sid, "a", 0.0)
        finished = await store.finish_turn(sid, "a", 0, [1], [2], transcript=t1)
        assert finished["status"] == "ok" and finished["indexed"] == {"linked": False, "unlinked": True}
        assert (await store.lookup(t0))["status"] == "not_found"
        other = SessionStore(StoreConfig(url=str(tmp_path)), 1 - home, 2)
        assert (await other.lookup(t1))["status"] == "not_found"  # left to the caller
    run(scenario())


def test_updates_pending_too_long_are_listed_for_a_new_dispatch(tmp_path):
    async def scenario():
        store = store_at(tmp_path)
        old, new = new_session_id(), new_session_id()
        for sid in (old, new):
            await store.create(sid, b"s", SHAPE)
            await store.begin_turn(sid, "a", 0.0)
            await store.finish_turn(sid, "a", 0, [1], [2])
            await asyncio.sleep(0.3) if sid == old else None
        assert await store.stale_pending(0.25) == [(old, 0)]
        fresh = store_at(tmp_path)  # a restarted shard finds them in storage at its sweep
        await fresh.sweep()
        assert sorted(await fresh.stale_pending(0.0)) == sorted([(old, 0), (new, 0)])
    run(scenario())


@pytest.mark.parametrize("garbage", [b"\xff\xfe not utf-8", b'{"id": "x"}'], ids=["bytes", "json"])
def test_a_damaged_session_record_is_refused_naming_its_file(tmp_path, garbage):
    async def scenario():
        sid = new_session_id()
        await store_at(tmp_path).create(sid, b"s", SHAPE)
        (tmp_path / sid / "meta.json").write_bytes(garbage)
        with pytest.raises(ValueError, match=rf"{sid}/meta.json: not a session record"):
            await store_at(tmp_path).info(sid)  # a fresh shard reads it from storage
    run(scenario())
