"""CPU a Ray actor call costs the process that makes it (its Python side and Ray's own threads):
2,000 calls submitted from an asyncio loop to an async actor on a local one-node cluster, the
caller's process CPU around the submissions, each kind twice.

    python docs/bench/study/serving-path/actor_call_cost.py

The kinds: a recorded turn's arguments as the Ingress sends them (``finish_turn``: ids, lease,
version, the query's and the answer's 32 token ids as lists), the same ids as bytes, and no
arguments to speak of.
"""

import array
import asyncio
import time

import ray

CALLS = 2000


@ray.remote(num_cpus=0)
class Receiver:
    async def finish_turn(self, sid, lease, version, query, answer, key=None, reason="stop", transcript=None):
        return {"status": "ok"}


async def main() -> None:
    receiver = Receiver.remote()
    await receiver.finish_turn.remote("s", "l", 0, [], [])
    sid, lease, transcript = "sess_" + "a" * 32, "l" * 32, "t" * 64
    query, answer = list(range(1000, 1032)), list(range(2000, 2032))
    kinds = {
        "lists": lambda: receiver.finish_turn.remote(sid, lease, 3, query, answer, None, "stop", transcript),
        "bytes": lambda: receiver.finish_turn.remote(sid, lease, 3, array.array("i", query).tobytes(),
                                                     array.array("i", answer).tobytes(), None, "stop", transcript),
        "no arguments": lambda: receiver.finish_turn.remote("s", "l", 0, [], []),
    }
    for name, call in kinds.items():
        for _ in range(2):
            started = time.process_time()
            refs = [call() for _ in range(CALLS)]
            spent = time.process_time() - started
            await asyncio.gather(*refs)
            print(f"{name:>12}: {1e6 * spent / CALLS:4.0f} µs of the caller's CPU per call")


if __name__ == "__main__":
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    asyncio.run(main())
