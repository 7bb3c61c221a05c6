"""STM locality, Ray-free: the replica a session prefers, and a replica's STM cache."""

from collections import Counter

import pytest

from rxt_dist.serving.locality import StmCache, rank_by_affinity
from rxt_dist.serving.session_records import new_session_id

REPLICAS = ["r-a1", "r-b2", "r-c3", "r-d4"]
SESSIONS = [new_session_id() for _ in range(2000)]


def _first(session: str, replicas: list[str]) -> str:
    return rank_by_affinity(session, replicas, key=str)[0]


def test_every_caller_ranks_the_replicas_of_a_session_the_same_way():
    for session in SESSIONS[:50]:
        ranking = rank_by_affinity(session, REPLICAS, key=str)
        assert sorted(ranking) == sorted(REPLICAS)
        assert rank_by_affinity(session, list(reversed(REPLICAS)), key=str) == ranking


def test_sessions_spread_over_the_replicas():
    counts = Counter(_first(s, REPLICAS) for s in SESSIONS)
    assert set(counts) == set(REPLICAS)
    assert all(350 <= n <= 650 for n in counts.values()), counts  # 500 each expected


def test_a_replica_leaving_or_joining_moves_only_the_sessions_it_held_or_wins():
    before = {s: _first(s, REPLICAS) for s in SESSIONS}
    gone = "r-c3"
    after = {s: _first(s, [r for r in REPLICAS if r != gone]) for s in SESSIONS}
    assert {s for s in SESSIONS if before[s] != after[s]} == {s for s in SESSIONS if before[s] == gone}
    joined = {s: _first(s, REPLICAS + ["r-e5"]) for s in SESSIONS}
    moved = {s for s in SESSIONS if joined[s] != before[s]}
    assert all(joined[s] == "r-e5" for s in moved) and 250 <= len(moved) <= 550  # 400 expected


def test_cache_answers_only_the_version_and_digest_it_holds():
    cache = StmCache(capacity=4)
    cache.put("s", 3, "d3", "stm3")
    assert cache.version("s") == 3 and cache.version("t") is None
    assert cache.get("s", 3, "d3") == "stm3"
    # Another version, another computation of this version (lost its commit), another session.
    assert cache.get("s", 4, "d3") is None and cache.get("s", 3, "other") is None and cache.get("t", 0, "d3") is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 3)


def test_cache_keeps_the_newest_version_when_copies_arrive_out_of_order():
    cache = StmCache(capacity=4)
    cache.put("s", 5, "d5", "stm5")
    cache.put("s", 4, "d4", "stm4")  # a late copy of the version before
    assert cache.get("s", 5, "d5") == "stm5" and cache.get("s", 4, "d4") is None
    cache.put("s", 5, "d5b", "stm5b")  # the committed computation of version 5, read from the store
    assert cache.get("s", 5, "d5b") == "stm5b" and len(cache) == 1


def test_cache_drops_the_least_recently_used_session_first():
    cache = StmCache(capacity=2)
    cache.put("a", 0, "d", "A")
    cache.put("b", 0, "d", "B")
    assert cache.get("a", 0, "d") == "A"  # a is now the most recent
    cache.put("c", 0, "d", "C")
    assert cache.get("b", 0, "d") is None and cache.get("a", 0, "d") == "A" and cache.get("c", 0, "d") == "C"
    assert cache.stats.evictions == 1


def test_a_cache_of_capacity_zero_keeps_nothing_and_a_negative_one_is_refused():
    cache = StmCache(capacity=0)
    cache.put("s", 0, "d", "stm")
    assert cache.get("s", 0, "d") is None and len(cache) == 0
    with pytest.raises(ValueError, match="capacity=-1"):
        StmCache(capacity=-1)
