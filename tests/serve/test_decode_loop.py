import asyncio
import time

import pytest
import torch

from rxt_dist.inference import SamplingParams, generate
from rxt_dist.serving.decode_loop import DecodeLoop

QUERIES = [[30, 31, 32], [40, 41, 42, 43, 44], [50], [60, 61]]
GREEDY = SamplingParams(max_new_tokens=12)


def memories(model, n):
    return model.initial_stm(n, torch.Generator().manual_seed(3)) * 25  # (L, n, S, D), well apart


async def collect(loop, query, stm, params=GREEDY, stop_after=None):
    tokens, reason = [], None
    stream = loop.stream(query, stm, params)
    async for new, finish in stream:
        tokens.extend(new)
        reason = finish
        if stop_after is not None and len(tokens) >= stop_after:
            await stream.aclose()
            break
    return tokens, reason


def alone(model, query, stm, params=GREEDY):
    return generate(model, [query], stm[:, None], params)[0]


def test_concurrent_requests_decode_together_and_match_each_alone(reference):
    model = reference.model
    stm = memories(model, len(QUERIES))

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8)
        results = await asyncio.gather(*(collect(loop, q, stm[:, i]) for i, q in enumerate(QUERIES)))
        return loop, results

    loop, results = asyncio.run(scenario())
    for i, (tokens, reason) in enumerate(results):
        assert tokens == alone(model, QUERIES[i], stm[:, i])
        assert reason in ("stop", "length")
    assert loop.stats.max_rows == len(QUERIES)  # all four were in one batch
    assert len({tuple(t) for t, _ in results}) == len(QUERIES)
    # the counters the capacity check reads: every step and every admission is an iteration's,
    # whose rows add up; the worker thread's CPU within its wall, that within what the loop awaited
    stats = loop.stats
    assert stats.steps <= stats.iterations <= stats.steps + stats.admitted
    assert stats.rows >= sum(len(t) for t, _ in results) - len(QUERIES)
    assert 0 < stats.tick_cpu_s <= stats.tick_s * 1.05 + 1e-3 and stats.tick_s <= stats.iteration_s
    # the two hops between the event loop and the worker thread lie within what the loop awaited, beside the tick
    assert 0 < stats.dispatch_s and 0 < stats.resume_s
    assert stats.dispatch_s + stats.tick_s + stats.resume_s <= stats.iteration_s


def test_a_request_joining_a_running_batch_is_unaffected(reference):
    model = reference.model
    stm = memories(model, 2)
    long = SamplingParams(max_new_tokens=40)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8)
        first = asyncio.create_task(collect(loop, QUERIES[0], stm[:, 0], long))
        await asyncio.sleep(0.05)  # the first is mid-answer when the second arrives
        second = await collect(loop, QUERIES[1], stm[:, 1], long)
        return await first, second

    (first, _), (second, _) = asyncio.run(scenario())
    assert first == alone(model, QUERIES[0], stm[:, 0], long)
    assert second == alone(model, QUERIES[1], stm[:, 1], long)


def test_a_closed_stream_leaves_the_batch_and_the_others_go_on(reference):
    model = reference.model
    stm = memories(model, 2)
    long = SamplingParams(max_new_tokens=60)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=2)
        stays = asyncio.create_task(collect(loop, QUERIES[1], stm[:, 1], long))
        leaves = await collect(loop, QUERIES[0], stm[:, 0], long, stop_after=2)
        kept = await stays
        await asyncio.sleep(0.05)  # let the loop go idle
        return loop, leaves, kept

    loop, (left, _), (kept, _) = asyncio.run(scenario())
    assert len(left) >= 2 and left == alone(model, QUERIES[0], stm[:, 0], long)[:len(left)]
    assert kept == alone(model, QUERIES[1], stm[:, 1], long)
    assert loop.stats.cancelled == 1 and len(loop.batch) == 0


def test_requests_beyond_the_batch_size_wait_their_turn(reference):
    model = reference.model
    stm = memories(model, len(QUERIES))

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=2)
        return loop, await asyncio.gather(*(collect(loop, q, stm[:, i]) for i, q in enumerate(QUERIES)))

    loop, results = asyncio.run(scenario())
    assert loop.stats.max_rows == 2
    assert [t for t, _ in results] == [alone(model, q, stm[:, i]) for i, q in enumerate(QUERIES)]


def test_a_request_that_leaves_while_waiting_for_a_slot_is_never_decoded(reference):
    """Batch full: the second request waits; its client leaves; it must not be admitted later
    and decode to max_tokens for nobody (the cancellation used to be dropped)."""
    model = reference.model
    stm = memories(model, 2)
    long = SamplingParams(max_new_tokens=40)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=1)
        first = asyncio.create_task(collect(loop, QUERIES[0], stm[:, 0], long))
        while loop.stats.admitted < 1:
            await asyncio.sleep(0.001)
        waiting = loop.stream(QUERIES[1], stm[:, 1], long)
        second = asyncio.create_task(anext(waiting))  # joins the waiting list
        while not loop.waiting:
            await asyncio.sleep(0.001)
        assert len(loop.batch) == 1 and loop.stats.admitted == 1  # the first still decodes
        second.cancel()  # the client goes away while its request waits for a slot
        await asyncio.gather(second, return_exceptions=True)
        await waiting.aclose()
        await first
        for _ in range(20):  # let the loop run a few more ticks
            await asyncio.sleep(0.01)
        return loop

    loop = asyncio.run(scenario())
    assert loop.stats.admitted == 1 and loop.stats.cancelled == 1
    assert not loop.waiting and len(loop.batch) == 0


def test_stream_interval_groups_later_tokens_but_sends_the_first_at_once(reference):
    """A time-sliced stream: the first token goes out alone, the rest in few messages; the
    tokens are those of an unsliced answer."""
    model = reference.model
    stm = memories(model, 1)
    params = SamplingParams(max_new_tokens=30)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8, stream_interval_s=0.5)
        return [item async for item in loop.stream(QUERIES[0], stm[:, 0], params)]

    items = asyncio.run(scenario())
    tokens = [t for new, _ in items for t in new]
    assert tokens == alone(model, QUERIES[0], stm[:, 0], params)
    assert len(items[0][0]) == 1 and items[-1][1] in ("stop", "length")
    assert len(tokens) > 10 and len(items) <= len(tokens) // 3


def test_the_end_of_an_answer_is_never_held_for_its_chunk_time(reference):
    """With a chunk time far longer than the answer, the stream sends the first token at once
    and every later token in one last chunk as soon as decoding ends — not a chunk time later."""
    model = reference.model
    stm = memories(model, 1)
    params = SamplingParams(max_new_tokens=30)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8, stream_interval_s=60.0)
        started = time.perf_counter()
        items = [item async for item in loop.stream(QUERIES[0], stm[:, 0], params)]
        return items, time.perf_counter() - started

    items, seconds = asyncio.run(scenario())
    tokens = [t for new, _ in items for t in new]
    assert tokens == alone(model, QUERIES[0], stm[:, 0], params)
    assert len(items) == 2 and len(items[0][0]) == 1 and items[-1][1] in ("stop", "length")
    assert seconds < 30


def test_a_chunk_budget_stretches_the_interval_of_many_streams_and_changes_no_token(reference):
    """``stream_chunks_per_s``: a replica's open answers share that many chunks a second. Four
    answers at 8 chunks a second send one chunk per 0.5 s each — after the first token, which
    never waits — and their tokens are those each gets alone."""
    model = reference.model
    stm = memories(model, 4)
    params = SamplingParams(max_new_tokens=30)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8, stream_interval_s=0.0, stream_chunks_per_s=8.0)
        assert loop.interval_s() == 0.0  # no stream open
        async def answer(i):
            return [item async for item in loop.stream(QUERIES[i], stm[:, i], params)]

        return await asyncio.gather(*(answer(i) for i in range(4))), loop

    items, loop = asyncio.run(scenario())
    for i, answer in enumerate(items):
        tokens = [t for new, _ in answer for t in new]
        assert tokens == alone(model, QUERIES[i], stm[:, i], params)
        assert len(answer[0][0]) == 1 and len(tokens) > 10 and len(answer) <= len(tokens) // 3
    with pytest.raises(ValueError, match="stream_chunks_per_s"):
        DecodeLoop(model, stream_chunks_per_s=-1)


def test_a_negative_stream_interval_is_refused(reference):
    import pytest

    with pytest.raises(ValueError, match="stream_interval_s"):
        DecodeLoop(reference.model, stream_interval_s=-1)


def test_the_loop_decodes_through_the_compiled_step_as_eagerly(compiled_debug):
    """``compile_decode``: the serving loop runs the compiled step in its worker thread and
    every concurrent answer equals the eager one alone (the suite's shared compiled ``debug``
    model: the same configuration as the served one, compiled once)."""
    model, compiled = compiled_debug
    stm = memories(model, len(QUERIES))

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8, compiled=compiled)
        return await asyncio.gather(*(collect(loop, q, stm[:, i]) for i, q in enumerate(QUERIES)))

    for i, (tokens, _) in enumerate(asyncio.run(scenario())):
        assert tokens == alone(model, QUERIES[i], stm[:, i])


def test_a_failed_step_fails_the_answers_in_it_with_the_error_and_the_loop_goes_on(reference):
    """A decoding step that raises ends every answer it held with ``decoding failed: …`` at
    once, even one waiting for its chunk time, and the next request is answered as alone."""
    model = reference.model
    stm = memories(model, 2)

    async def scenario():
        loop = DecodeLoop(model, max_batch_size=8, stream_interval_s=60.0)
        stream = loop.stream(QUERIES[0], stm[:, 0], SamplingParams(max_new_tokens=30))
        first = await anext(stream)  # the first token; the rest wait for the chunk time
        loop.batch.step = lambda: (_ for _ in ()).throw(RuntimeError("out of memory"))
        started = time.perf_counter()
        with pytest.raises(RuntimeError, match="decoding failed: out of memory"):
            await anext(stream)
        failed_after = time.perf_counter() - started
        assert loop.healthy and len(loop.batch) == 0  # the failed batch was replaced
        return first, failed_after, await collect(loop, QUERIES[1], stm[:, 1])

    first, failed_after, (tokens, _) = asyncio.run(scenario())
    assert len(first[0]) == 1 and failed_after < 30
    assert tokens == alone(model, QUERIES[1], stm[:, 1])
