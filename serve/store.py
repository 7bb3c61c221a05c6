"""The session store as Ray actors: one detached, named actor per shard.

Each shard is a :class:`rxt_dist.serving.SessionStore` running as an async Ray actor. The
actors are *named* (the name is derived from the store URL and the shard layout) so that
exactly one writer exists per shard in the whole cluster, whichever deployment replica
reaches it first; *detached*, so a redeploy of the application keeps their in-memory state;
and restarted by Ray when they die (``max_restarts=-1``) — a restarted shard reloads
sessions from storage on first use. :func:`stop_session_stores` ends them.
"""

import asyncio
import gc
import logging

import ray

from rxt_dist.serving.protocol import STORE_NAMESPACE, store_actor_name, transcript_shard
from rxt_dist.serving.session_records import shard_of
from rxt_dist.serving.sessions import SessionStore, StoreConfig
from serve.metrics import StoreMetrics, sample_forever

logger = logging.getLogger("ray.serve")

class StoreShard(SessionStore):
    """A :class:`SessionStore` as a Ray actor that also exports its gauges and counters."""

    def __init__(self, config: StoreConfig, shard: int = 0, num_shards: int = 1) -> None:
        super().__init__(config, shard, num_shards)
        self._metrics = StoreMetrics(shard)
        self._sampler: asyncio.Task | None = None
        # What the process holds once started (Ray, pyarrow, pandas, numpy: ~150,000 tracked
        # objects) lives as long as it does; frozen, the cycle collector stops walking it. Each
        # full collection had walked it all, 50–80 ms during which no claim or commit of this
        # shard's sessions was served (docs/BENCHMARKS.md, "Garbage collection in the serving
        # processes"). Serve does this for deployment replicas; a shard is a plain actor.
        gc.collect()
        gc.freeze()

    def _ensure_sweeper(self) -> None:
        super()._ensure_sweeper()
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(
                sample_forever(lambda: self._metrics.sample(self.snapshot())))


class StoreShards:
    """Handles to every shard of one session store, creating the actors on first use."""

    def __init__(self, config: StoreConfig, num_shards: int) -> None:
        if num_shards < 1:
            raise ValueError(f"store_shards={num_shards}: must be ≥ 1")
        self.config = config
        self.configured = []  # the shards' answers to reconfigure (the settings that changed)
        self.handles = [self._get_or_create(i, num_shards) for i in range(num_shards)]

    def _get_or_create(self, shard: int, num_shards: int):
        actor = ray.remote(StoreShard).options(
            name=store_actor_name(self.config.url, shard, num_shards),
            namespace=STORE_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
        )
        handle = actor.remote(self.config, shard, num_shards)
        # A detached shard outlives the deployment that created it: hand it this deployment's
        # settings (it logs the ones that changed). Calls from one handle run in order, so
        # every later call sees them.
        self.configured.append(handle.reconfigure.remote(self.config))
        return handle

    def for_session(self, session_id: str):
        """The actor owning ``session_id``."""
        return self.handles[shard_of(session_id, len(self.handles))]

    def for_transcript(self, transcript: str):
        """The actor indexing ``transcript`` (see :func:`~rxt_dist.serving.protocol.transcript_step`)."""
        return self.handles[transcript_shard(transcript, len(self.handles))]


def stop_session_stores(url: str, num_shards: int) -> int:
    """Kill the shard actors of the store at ``url`` (their sessions stay in storage and are
    reloaded by the next actors). Returns how many were running."""
    stopped = 0
    for shard in range(num_shards):
        try:
            actor = ray.get_actor(store_actor_name(url, shard, num_shards), namespace=STORE_NAMESPACE)
        except ValueError:
            continue
        ray.kill(actor, no_restart=True)
        stopped += 1
    return stopped
