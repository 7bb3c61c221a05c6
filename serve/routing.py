"""Session-keyed routing: a session's calls go to the replica that holds its STM.

Used as the Generator's and the MemoryUpdater's request router (``request_router_config`` on
their deployments). It runs in every process that calls them (the Ingress for answers and
updates, the MemoryUpdater for the STMs it sends ahead), and all of them rank the running
replicas the same way for a session
(:func:`rxt_dist.serving.locality.rank_by_affinity`). Serve sends a call to the first replica
of the ranking that accepts it; a replica at ``max_ongoing_requests`` passes the call on to the
next, where its STM is a miss read from the store — load is never refused for locality's sake.
A call without a ``session`` keyword is routed like Serve's default: two random replicas, the
shorter queue first.
"""

from __future__ import annotations

import random

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from rxt_dist.serving.locality import rank_by_affinity


class SessionAffinityRouter(RequestRouter):
    """Ranks the replicas by their rendezvous weight for the call's ``session`` keyword."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # When no replica of this ranking accepts the call, Serve tries again after a
            # backoff; without this flag it would try again at once, in a busy loop.
            pending_request.routing_context.should_backoff = True
        session = pending_request.kwargs.get("session") if pending_request is not None else None
        if not isinstance(session, str) or len(candidate_replicas) == 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        ranked = rank_by_affinity(session, candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[ranked[0]], ranked[1:]]


SESSION_AFFINITY = RequestRouterConfig(request_router_class="serve.routing:SessionAffinityRouter")
"""The Generator's and the MemoryUpdater's ``request_router_config``."""
