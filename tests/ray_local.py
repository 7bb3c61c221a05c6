"""A private local Ray cluster for the Ray Train tests (shared by a test module)."""

import contextlib
import os
from collections.abc import Iterator

import ray

from rxt_dist.ports import free_port


@contextlib.contextmanager
def train_cluster(num_cpus: int = 2) -> Iterator[None]:
    """``ray.init`` of a fresh 2-CPU cluster with the dashboard, its address exported to every
    process of the cluster.

    Ray Train's controller starts a PlacementGroupCleaner that asks the state API — served by the
    dashboard — whether the controller is alive, and at the end of each fit waits up to 12 s for it
    to stop. Without a dashboard (or when the state API finds another cluster's address in
    /tmp/ray, as on a shared machine) that question hangs and every fit ended 10–12 s late.
    ``RAY_API_SERVER_ADDRESS`` names this cluster's dashboard; the raylet, and so every worker,
    inherits it from the environment of ``ray.init``.
    """
    port = free_port()
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved
