"""A turn's life cycle and the update batch without Ray: the real session store, decode loop
and model in this process, wired the way the Ingress and the MemoryUpdater wire them."""

import asyncio
import gc
import time
import weakref

import pytest
import torch

from rxt_dist.inference import SamplingParams
from rxt_dist.model import stm_from_bytes, stm_to_bytes
from rxt_dist.serving.api import ApiError, read_limited
from rxt_dist.serving.decode_loop import DecodeLoop
from rxt_dist.serving.event_stream import LastEvents
from rxt_dist.serving.protocol import stm_digest
from rxt_dist.serving.session_records import new_session_id
from rxt_dist.serving.sessions import SessionStore, StoreConfig
from rxt_dist.serving.turn import ClaimPolicy, Outcome, Turn, claim_session, complete, stream_events
from rxt_dist.serving.updates import _consolidate, apply_updates, recorded_turn
from tests.tolerances import KERNEL


class Server:
    """The pieces of one serving process: a store shard, a decode loop, the update path."""

    def __init__(self, reference, tmp_path, **store_kw) -> None:
        self.model, self.codec = reference.model, reference.codec
        self.store = SessionStore(StoreConfig(url=str(tmp_path), **store_kw))
        self.loop = DecodeLoop(self.model)
        self.tasks: set[asyncio.Task] = set()
        self.updates: list[dict] = []

    def call(self, method, *args):
        return getattr(self.store, method)(*args)

    def store_of(self, sid):
        return self.call

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def new_session(self, stm: torch.Tensor) -> str:
        sid = new_session_id()
        await self.store.create(sid, stm_to_bytes(stm), list(self.model.cfg.stm_shape))
        return sid

    async def start_turn(self, sid: str, text: str, max_tokens: int = 24, lease_s: float = 120.0,
                         query: list[int] | None = None) -> Turn:
        """Claim ``sid`` and start answering ``text`` (or the token ids ``query``)."""
        claim = await claim_session(self.call, sid, ClaimPolicy(), None, None, lambda v: None, self.spawn)
        query = self.codec.encode(text) if query is None else query
        memory = stm_from_bytes(claim["stm"], self.model.cfg.stm_shape)
        stream = self.loop.stream(query, memory, SamplingParams(max_new_tokens=max_tokens))
        return Turn(store=self.call, sid=sid, claim=claim, query_ids=query, stream=stream,
                    cancel_stream=lambda: self.spawn(stream.aclose()), spawn=self.spawn, lease_s=lease_s,
                    dispatch=lambda *_: self.spawn(self.apply(sid, claim["version"])))

    async def apply(self, sid: str, version: int) -> None:
        self.updates.extend(await apply_updates(self.model, [(sid, version)], self.store_of))

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def test_a_client_that_leaves_mid_answer_gets_the_tokens_produced_consolidated(reference, tmp_path):
    async def scenario():
        server = Server(reference, tmp_path)
        stm = reference.new_stm()
        sid = await server.new_session(stm[:, 0])
        turn = await server.start_turn(sid, "my name is ada")
        consumer = asyncio.ensure_future(_drain(stream_events(turn, server.codec, "m", 3, False), stop_after=2))
        await consumer  # the client read two events, then went away
        await server.settle()
        return server, sid, turn

    server, sid, turn = asyncio.run(scenario())
    info = asyncio.run(server.store.info(sid))["session"]
    assert info["turns"] == 1 and info["memory_version"] == 1 and not info["pending_update"]
    assert 0 < len(turn.answer) < 24
    expected = reference.consolidated(reference.new_stm(), "my name is ada", turn.answer)[:, 0]
    stored = stm_from_bytes(server.store._entries[sid].stm, reference.model.cfg.stm_shape)
    torch.testing.assert_close(stored, expected, **KERNEL)


def test_an_answered_turn_is_freed_without_the_cycle_collector(reference, tmp_path):
    """A turn's objects go as soon as it is done, by reference counting: none is left for
    Python's cycle collector, whose collections stop the whole Ingress while they run (a claim
    renewal task cancelled at the end of every turn had left a cycle through the turn)."""
    async def scenario():
        server = Server(reference, tmp_path)
        sid = await server.new_session(reference.new_stm()[:, 0])
        turn = await server.start_turn(sid, "hello")
        events = await _drain(stream_events(turn, server.codec, "m", 1, False))
        await server.settle()
        assert events[-1].endswith("[DONE]\n\n") and server.updates[-1]["status"] == "applied"
        return weakref.ref(turn)

    gc.collect()
    gc.disable()
    try:
        turn = asyncio.run(scenario())
        assert turn() is None
    finally:
        gc.enable()


async def _drain(events, stop_after=None):
    seen = []
    async for event in events:
        seen.append(event)
        if stop_after is not None and len(seen) >= stop_after:
            await events.aclose()  # what Starlette does when the client disconnects
            break
    return seen


def test_a_server_failure_mid_answer_leaves_memory_unchanged(reference, tmp_path):
    """The decode step fails (a token id the model does not have): a server-side failure,
    not a disconnect — nothing is recorded, the claim is released, the client sees an error
    event. (The Ingress used to treat every exception but two kinds as a disconnect and
    consolidated the partial turn.)"""
    async def scenario():
        server = Server(reference, tmp_path)
        sid = await server.new_session(reference.new_stm()[:, 0])
        turn = await server.start_turn(sid, "", query=[reference.model.cfg.vocab_size + 5])
        events = await _drain(stream_events(turn, server.codec, "m", 1, False))
        await server.settle()
        claim = await server.store.begin_turn(sid, "next", 0.0)
        return events, claim, server.updates

    events, claim, updates = asyncio.run(scenario())
    assert '"type": "server_error"' in events[-1] and "[DONE]" not in events[-1]
    assert claim["status"] == "ok" and claim["version"] == 0 and claim["turns"] == 0  # released, unchanged
    assert updates == []


def test_a_failure_of_a_whole_answer_releases_the_claim(reference, tmp_path):
    async def scenario():
        server = Server(reference, tmp_path)
        sid = await server.new_session(reference.new_stm()[:, 0])
        turn = await server.start_turn(sid, "", query=[reference.model.cfg.vocab_size + 1])
        with pytest.raises(ApiError) as err:
            await complete(turn, server.codec, "m", 1)
        await server.settle()
        return err.value, await server.store.begin_turn(sid, "next", 0.0)

    err, claim = asyncio.run(scenario())
    assert err.status == 500 and claim["status"] == "ok" and claim["turns"] == 0


def test_a_long_answer_keeps_its_session_past_the_turn_lease(reference, tmp_path):
    """A slow client reads an answer for longer than turn_lease_s: the claim is renewed while
    it streams, so nobody else takes the session and the turn is kept."""
    async def scenario():
        server = Server(reference, tmp_path, turn_lease_s=1.0)
        sid = await server.new_session(reference.new_stm()[:, 0])
        turn = await server.start_turn(sid, "tell me a story", max_tokens=8, lease_s=1.0)
        events = stream_events(turn, server.codec, "m", 4, False)
        seen, intruders, started = [], [], time.monotonic()
        await asyncio.sleep(0.6)  # a slow reader: late to start (the answer is produced meanwhile) …
        async for event in events:
            seen.append(event)
            await asyncio.sleep(0.5)  # … and slow to read each event (a whole answer is two: text, end)
            intruders.append((await server.store.begin_turn(sid, "intruder", 0.0))["status"])
        elapsed = time.monotonic() - started
        await server.settle()
        return seen, intruders, elapsed, (await server.store.info(sid))["session"]

    seen, intruders, elapsed, info = asyncio.run(scenario())
    assert seen[-1].endswith("data: [DONE]\n\n") and '"finish_reason": "length"' in seen[-1] and elapsed > 1.5
    # one write each: the role event with the first text, the end of the answer with the end of the body
    assert '"role": "assistant"' in seen[0] and seen[0].count("data: ") == 2 and '"content": ""' not in seen[1]
    assert isinstance(seen[-1], LastEvents) and not any(isinstance(e, LastEvents) for e in seen[:-1])
    # claimed while it streams; once recorded (before the finish chunk and [DONE], sent as one
    # write) its update is pending
    assert intruders == ["busy"] * (len(seen) - 1) + ["pending"]
    assert info["turns"] == 1 and info["memory_version"] == 1


def test_one_bad_update_does_not_fail_its_batch_and_can_be_dropped(reference, tmp_path):
    async def scenario():
        server = Server(reference, tmp_path)
        stm = reference.new_stm()[:, 0]
        good, bad = await server.new_session(stm), await server.new_session(stm)
        for sid, answer in ((good, [40, 41]), (bad, [reference.model.cfg.vocab_size + 3])):
            await server.store.begin_turn(sid, "l", 0.0)
            await server.store.finish_turn(sid, "l", 0, [30, 31], answer)
        inputs = [await server.store.update_input(sid, 0) for sid in (good, bad)]
        with pytest.raises(IndexError):  # consolidated together, the bad item fails the batch
            _consolidate(reference.model, [stm, stm], inputs)
        timings = {}
        results = await apply_updates(reference.model, [(good, 0), (bad, 0)], server.store_of, delay_s=0.05,
                                      timings=timings)
        with pytest.raises(ApiError) as refused:
            await claim_session(server.call, bad, ClaimPolicy(), None, None, lambda v: None, server.spawn)
        dropped = await server.store.drop_pending(bad)
        again = await claim_session(server.call, bad, ClaimPolicy(), None, None, lambda v: None, server.spawn)
        return results, refused.value, dropped, again, (await server.store.info(good))["session"], timings

    results, refused, dropped, again, good_info, timings = asyncio.run(scenario())
    # the batch's phases timed, the slowed commit (delay_s) in its own; the consolidation's own
    # wall and thread CPU on its worker thread within its phase
    phases = ("read", "consolidate", "commit")
    assert set(timings) == {"consolidate_run_s", "consolidate_cpu_s", *(f"{phase}_s" for phase in phases),
                            *(f"{phase}_{thread}_cpu_s" for phase in phases for thread in ("loop", "proc"))}
    assert min(timings.values()) >= 0
    assert timings["consolidate_cpu_s"] <= timings["consolidate_run_s"] * 1.05 + 1e-3
    # the consolidation ran on its own thread: the process's CPU in its phase holds it, the
    # event loop's does not; the slowed commit's sleep costs no CPU
    assert timings["consolidate_proc_cpu_s"] >= timings["consolidate_cpu_s"] * 0.95
    assert timings["consolidate_loop_cpu_s"] < timings["consolidate_cpu_s"]
    assert timings["commit_loop_cpu_s"] <= timings["commit_proc_cpu_s"] + 1e-3 < timings["commit_s"]
    assert timings["consolidate_run_s"] <= timings["consolidate_s"]
    assert timings["commit_s"] >= 0.05
    assert results[0]["status"] == "applied" and good_info["memory_version"] == 1
    assert results[1]["status"] == "failed" and "IndexError" in results[1]["error"]
    assert refused.status == 409 and refused.code == "memory_update_failed"
    assert "DELETE /v1/sessions/" in refused.message and "/pending" in refused.message
    assert dropped["status"] == "ok" and again["status"] == "ok" and again["version"] == 0


def test_an_update_sent_with_its_turn_and_a_kept_stm_reads_nothing_and_commits_the_same_memory(reference, tmp_path):
    """The MemoryUpdater keeps the STMs it computed; the Ingress sends the turn it recorded with
    the update. Then the store is not read, the new memory is the one a read would have given,
    and a turn recorded under another lease (or a kept STM of another digest) is never mixed in."""
    async def scenario():
        server = Server(reference, tmp_path)
        stm = stm_to_bytes(reference.new_stm()[:, 0])
        calls = []

        def store_of(sid):
            def call(method, *args):
                calls.append((sid, method))
                return server.call(method, *args)
            return call

        sids = [await server.new_session(reference.new_stm()[:, 0]) for _ in range(4)]
        for sid in sids:
            await server.store.begin_turn(sid, "l", 0.0)
            await server.store.finish_turn(sid, "l", 0, [30, 31, 32], [40, 41])
        read, kept, stale, other = sids
        turn = recorded_turn([30, 31, 32], [40, 41], "l", stm_digest(stm))
        known = {(sid, 0, stm_digest(stm)): stm for sid in sids if sid != other}
        await apply_updates(reference.model, [(read, 0)], store_of)
        results = await apply_updates(reference.model, [(kept, 0, turn), (stale, 0, {**turn, "lease": "x"}),
                                                        (other, 0, turn)], store_of, known=lambda *k: known.get(k))
        infos = [(await server.store.info(sid))["session"] for sid in sids]
        return results, calls, {sid: server.store._entries[sid].stm for sid in sids}, infos, sids

    results, calls, stms, infos, (read, kept, stale, other) = asyncio.run(scenario())
    assert [r["status"] for r in results] == ["applied", "conflict", "applied"]
    reads = {sid for sid, method in calls if method == "update_input"}
    assert reads == {read, other}  # the kept STMs were not read; a digest not kept was
    assert stms[kept] == stms[read] == stms[other]  # the same computation, the same bytes
    assert infos[2]["memory_version"] == 0 and infos[2]["pending_update"]  # another lease: left pending
    assert [i["memory_version"] for i in infos] == [1, 1, 0, 1]


def test_a_batch_commits_each_shard_in_one_call(reference, tmp_path):
    """The commits of a batch go to each shard in one call, and each item keeps its own answer."""
    async def scenario():
        shards = [Server(reference, tmp_path / "a"), Server(reference, tmp_path / "b")]
        owner, calls = {}, []
        for k, server in enumerate(shards):
            def call(method, *args, server=server, k=k):
                calls.append((k, method))
                return server.call(method, *args)
            for _ in range(2 + k):
                sid = await server.new_session(reference.new_stm()[:, 0])
                await server.store.begin_turn(sid, "l", 0.0)
                await server.store.finish_turn(sid, "l", 0, [30, 31], [40, 41])
                owner[sid] = call
        sids = list(owner)
        results = await apply_updates(reference.model, [(sid, 0) for sid in sids], owner.__getitem__)
        versions = [(await s.store.info(sid))["session"]["memory_version"] for s in shards for sid in sids
                    if sid in s.store._entries]
        return results, calls, versions

    results, calls, versions = asyncio.run(scenario())
    assert [r["status"] for r in results] == ["applied"] * 5 and versions == [1] * 5
    commits = [c for c in calls if c[1].startswith("commit")]
    assert sorted(commits) == [(0, "commit_updates"), (1, "commit_updates")]
    assert calls.count((0, "update_input")) == 2 and calls.count((1, "update_input")) == 3


def test_a_store_shard_whose_call_fails_loses_only_its_own_commits(reference, tmp_path):
    """A batch spans two shards and one of them cannot be called: its commits answer
    ``unavailable`` with the error (the dispatcher retries those), the other shard's apply."""
    async def scenario():
        shards = [Server(reference, tmp_path / "a"), Server(reference, tmp_path / "b")]
        owner = {}
        for k, server in enumerate(shards):
            def call(method, *args, server=server, k=k):
                if k == 1 and method == "commit_updates":
                    raise ConnectionError("shard 1 is gone")
                return server.call(method, *args)
            for _ in range(2):
                sid = await server.new_session(reference.new_stm()[:, 0])
                await server.store.begin_turn(sid, "l", 0.0)
                await server.store.finish_turn(sid, "l", 0, [30, 31], [40, 41])
                owner[sid] = call
        results = await apply_updates(reference.model, [(sid, 0) for sid in owner], owner.__getitem__)
        infos = [(await shards[k // 2].store.info(sid))["session"] for k, sid in enumerate(owner)]
        return results, infos

    results, infos = asyncio.run(scenario())
    assert [r["status"] for r in results] == ["applied", "applied", "unavailable", "unavailable"]
    assert all("shard 1 is gone" in r["error"] for r in results[2:])
    assert [i["memory_version"] for i in infos] == [1, 1, 0, 0]
    assert all(i["pending_update"] for i in infos[2:])  # still pending: a retry can apply it


def test_a_store_shard_of_an_older_version_gets_its_commits_one_by_one(reference, tmp_path):
    """Store shards are detached actors that outlive a redeploy: one started by a version
    without ``commit_updates`` still gets every commit of a batch, one call each."""
    async def scenario():
        server, calls = Server(reference, tmp_path), []

        def older_shard(method, *args):
            calls.append(method)
            if method == "commit_updates":
                raise AttributeError(f"'ActorHandle' object has no attribute '{method}'")
            return server.call(method, *args)

        sids = []
        for _ in range(3):
            sid = await server.new_session(reference.new_stm()[:, 0])
            await server.store.begin_turn(sid, "l", 0.0)
            await server.store.finish_turn(sid, "l", 0, [30, 31], [40, 41])
            sids.append(sid)
        results = await apply_updates(reference.model, [(sid, 0) for sid in sids], lambda sid: older_shard)
        return results, calls, [(await server.store.info(sid))["session"]["memory_version"] for sid in sids]

    results, calls, versions = asyncio.run(scenario())
    assert [r["status"] for r in results] == ["applied"] * 3 and versions == [1, 1, 1]
    assert calls.count("commit_updates") == 1 and calls.count("commit_update") == 3


def test_a_body_is_refused_as_soon_as_it_passes_the_limit():
    pulled = 0

    async def endless():
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 65536

    with pytest.raises(ApiError) as err:
        asyncio.run(read_limited(endless(), 4 * 2**20))
    assert err.value.status == 413 and pulled == 4 * 16 + 1
    assert asyncio.run(read_limited(_chunks(b"ab", b"cd"), 4)) == b"abcd"


async def _chunks(*parts):
    for part in parts:
        yield part



def test_a_response_nobody_reads_does_not_hold_its_session(reference, tmp_path):
    """The client left before the response started (its stream is never read): the claim is
    not renewed for ever, it expires after a lease."""
    async def scenario():
        server = Server(reference, tmp_path, turn_lease_s=0.6)
        sid = await server.new_session(reference.new_stm()[:, 0])
        turn = await server.start_turn(sid, "hello", lease_s=0.6)
        assert (await server.store.begin_turn(sid, "next", 0.0))["status"] == "busy"
        await asyncio.sleep(2.0)
        claim = await server.store.begin_turn(sid, "next", 0.0)
        turn.close(Outcome.FAILED)
        await server.settle()
        return claim

    claim = asyncio.run(scenario())
    assert claim["status"] == "ok" and claim["version"] == 0
