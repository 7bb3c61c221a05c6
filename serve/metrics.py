"""What a person operating the server watches, as Ray metrics (exported by each node's
Prometheus endpoint, ``ray_`` + the name below; Serve adds ``deployment``, ``replica`` and
``application`` tags). docs/serving.md lists them; infra/grafana-rxt.json charts them.

Store shards are plain Ray actors, not Serve deployments: they use :mod:`ray.util.metrics`
with a ``shard`` tag.
"""

import asyncio

from ray.serve.metrics import Counter, Gauge, Histogram
from ray.util import metrics as ray_metrics

LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter("rxt_requests", "Chat and session requests answered, by outcome code "
                                "('ok' or the error code)", tag_keys=("code",))
        self.waited = Counter("rxt_waited_for_update", "Turns that had to wait for the previous turn's "
                              "memory update before reading the memory")
        self.wait_s = Histogram("rxt_update_wait_seconds", "How long a turn waited for the previous update",
                                boundaries=LATENCY_BOUNDARIES)
        self.update_lag_s = Histogram("rxt_update_lag_seconds", "From the end of an answer to the commit of "
                                      "its memory update", boundaries=LATENCY_BOUNDARIES)

    def answered(self, code: str) -> None:
        self.requests.inc(tags={"code": code})

    def claimed(self, waited_s: float) -> None:
        if waited_s > 0:
            self.waited.inc()
            self.wait_s.observe(waited_s)


class GeneratorMetrics:
    """Tokens are counted here per streamed chunk and handed to Ray's counter when sampled
    (every 2 s): an increment of a Serve counter costs tens of microseconds, 2% of a
    Generator's CPU when made per chunk at 32 sessions (docs/BENCHMARKS.md)."""

    def __init__(self) -> None:
        self.tokens = Counter("rxt_generated_tokens", "Answer tokens generated (rate() is tokens/s; "
                              "counted every 2 s)")
        self.batch = Gauge("rxt_decode_batch_size", "Sequences in the decoding batch (sampled every 2 s)")
        self._unreported = 0

    def generated(self, tokens: int) -> None:
        self._unreported += tokens

    def sample(self, batch_size: int) -> None:
        self.batch.set(batch_size)
        if self._unreported:  # Ray's counters refuse an increment of 0
            self.tokens.inc(self._unreported)
            self._unreported = 0


class UpdaterMetrics:
    def __init__(self) -> None:
        self.updates = Counter("rxt_memory_updates", "Memory updates handled, by outcome", tag_keys=("status",))
        self.batch = Histogram("rxt_update_batch_size", "Updates consolidated per batch", boundaries=BATCH_BOUNDARIES)


class StoreMetrics:
    """Sampled from a shard every ``period_s`` (gauges) plus its counters' increments."""

    def __init__(self, shard: int) -> None:
        tags = {"shard": str(shard)}
        self.cached = ray_metrics.Gauge("rxt_sessions_cached", "Sessions a store shard holds in memory",
                                        tag_keys=("shard",))
        self.in_use = ray_metrics.Gauge("rxt_sessions_in_use", "Sessions claimed or waiting for an update",
                                        tag_keys=("shard",))
        self.pending = ray_metrics.Gauge("rxt_pending_updates", "Turns recorded whose memory update has not "
                                         "committed", tag_keys=("shard",))
        self.stored = ray_metrics.Gauge("rxt_sessions_stored", "Sessions a store shard keeps in storage "
                                        "(counted at its last sweep)", tag_keys=("shard",))
        self.evicted = ray_metrics.Counter("rxt_session_evictions", "Idle sessions dropped from a shard's memory",
                                           tag_keys=("shard",))
        self.expired = ray_metrics.Counter("rxt_sessions_expired", "Sessions deleted after their TTL",
                                           tag_keys=("shard",))
        for metric in (self.cached, self.in_use, self.pending, self.stored, self.evicted, self.expired):
            metric.set_default_tags(tags)
        self._seen = {"evicted": 0, "expired": 0}

    def sample(self, stats: dict) -> None:
        self.cached.set(stats["cached"])
        self.in_use.set(stats["in_use"])
        self.pending.set(stats["pending"])
        if stats["stored"] is not None:
            self.stored.set(stats["stored"])
        for name, counter in (("evicted", self.evicted), ("expired", self.expired)):
            if stats[name] > self._seen[name]:
                counter.inc(stats[name] - self._seen[name])
                self._seen[name] = stats[name]


async def sample_forever(sample, period_s: float = 2.0) -> None:
    """Call ``sample()`` every ``period_s`` (gauges of state that changes between requests)."""
    while True:
        sample()
        await asyncio.sleep(period_s)
