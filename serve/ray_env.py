"""The Ray Serve mode this application runs in: Serve's high-throughput mode.

Environment variables of the Ray cluster (Ray ≥ 2.56), read by Serve's controller, proxy and
replicas when they start — so they belong in the environment of ``ray start`` / ``serve run``
(infra/ sets them), not in the application's config:

* ``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy (the C load balancer, shipped with Ray) takes the
  HTTP port instead of Serve's Python proxy, and forwards each request straight to an
  Ingress replica's own HTTP server.
* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: calls between deployments over gRPC, user code and
  request routers on the replica's own event loop (no thread hop per call); it would also buffer
  request logs, which ``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1`` undoes.

Measured on this project's app (docs/BENCHMARKS.md, "Serve's high-throughput mode"): about a
third less CPU per turn and about 1.5× the turns per second at 32 sessions. Any of these
variables already set (e.g. ``RAY_SERVE_ENABLE_HA_PROXY=0``) is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Serve reads the variables when imported: this module must not import it
    from ray.serve.handle import DeploymentHandle

HIGH_THROUGHPUT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                   "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"}
"""The cluster environment of Serve's high-throughput mode, except that a replica's log lines
reach its log file as they are written (the mode buffers 1,000 of them, so an operator would see
a disconnect or a slow request minutes late on a quiet replica)."""

DRAIN_VARIABLE = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def use_high_throughput_serve(drain_s: float | None = None,
                              environ: MutableMapping[str, str] = os.environ) -> None:
    """Put Serve's high-throughput mode into ``environ`` — call it before ``ray.init`` starts a
    local cluster, whose processes inherit it. ``drain_s``: how long an Ingress replica keeps
    serving after it is told to stop (Serve's default, 30 s, suits a rolling update; a local
    benchmark or test that shuts everything down at once does not need it)."""
    for name, value in HIGH_THROUGHPUT.items():
        environ.setdefault(name, value)
    if drain_s is not None:
        if drain_s < 0:
            raise ValueError(f"drain_s={drain_s}: must be ≥ 0 seconds")
        environ.setdefault(DRAIN_VARIABLE, f"{drain_s:g}")


def with_serve_transport(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` sending its calls as Serve in this process sends them by default: over gRPC in
    the high-throughput mode, as Ray actor calls otherwise.

    A handle keeps the transport of the process that made it, and the handles a deployment's
    constructor receives are made where the application is built: a driver that imported Serve
    before the mode's variables were in its environment (a benchmark, a test, a notebook) hands
    every replica handles that make Ray actor calls although the cluster runs gRPC — a fifth fewer
    tokens/s at 32 sessions (docs/BENCHMARKS.md). Called in a replica's constructor, it gives the
    transport of the cluster the replica runs in."""
    try:
        from ray.serve._private.constants import RAY_SERVE_USE_GRPC_BY_DEFAULT
    except ImportError:  # a Ray without the setting: keep what the handle says
        return handle
    return handle.options(_by_reference=not RAY_SERVE_USE_GRPC_BY_DEFAULT)
