"""The MemoryUpdater's batcher: updates that arrive while a batch runs go together in the next."""

import asyncio

import pytest

from rxt_dist.serving.updates import UpdateBatcher


def test_items_arriving_during_a_batch_go_together_in_the_next_and_each_gets_its_result():
    batches: list[list[int]] = []

    async def apply(items):
        batches.append(list(items))
        await asyncio.sleep(0.2)  # a slow batch: the others arrive meanwhile
        return [i * 10 for i in items]

    async def main():
        batcher = UpdateBatcher(apply, max_size=3, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # the first batch is running
        later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5)]
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(main())
    assert first == 10 and later == [20, 30, 40, 50]
    assert batches == [[1], [2, 3, 4], [5]]  # at most max_size, in arrival order, one batch at a time


def test_the_batcher_times_the_wait_of_items_that_queued_behind_a_batch_from_its_end_to_their_start():
    wait_s = 0.05

    async def apply(items):
        await asyncio.sleep(0.3)
        return items

    async def main():
        batcher = UpdateBatcher(apply, max_size=8, wait_s=wait_s)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(wait_s + 0.02)  # the first batch is running
        await asyncio.gather(first, batcher.submit(2), batcher.submit(3))
        alone = dict(batcher.stats)
        await batcher.submit(4)  # after a batch that left nothing waiting: no gap
        return alone, batcher.stats

    alone, stats = asyncio.run(main())
    # from the first batch's end (not its start, 0.3 s before): the wait for company, little more
    assert alone["gaps"] == 1 and wait_s * 0.99 <= alone["gap_s"] < wait_s + 0.2
    assert stats == alone


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs():
    async def apply(items):
        await asyncio.sleep(0.05)
        if 0 in items:
            raise RuntimeError("bad batch")
        return items

    async def main():
        batcher = UpdateBatcher(apply, max_size=8, wait_s=0.01)
        bad = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
        return bad, await batcher.submit(2)

    bad, good = asyncio.run(main())
    assert [type(r) for r in bad] == [RuntimeError, RuntimeError] and good == 2


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="max_size=0"):
        UpdateBatcher(lambda items: items, max_size=0, wait_s=0.0)
