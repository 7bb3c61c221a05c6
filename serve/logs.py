"""Library log records inside Serve replicas: ``rxt_dist.*`` loggers write where the
replica's own ``ray.serve`` logger writes (the replica's log file), at INFO."""

import logging

INTERNAL_LOGGING = {"enable_access_log": False}
"""The Generator's and the MemoryUpdater's logging: no access line per call. Their calls come
from the Ingress (which logs each HTTP request) and from each other, two or three per turn;
with lines written at once (serve/ray_env.py) the access log took 4% of a Generator's CPU at
32 sessions (docs/BENCHMARKS.md). Warnings and errors are logged as before; a deployment's
``logging_config`` in the Serve config turns the lines back on."""


def route_library_logs() -> None:
    """Give the ``rxt_dist`` logger the handlers Ray Serve set up for this replica (once)."""
    serve_logger, library = logging.getLogger("ray.serve"), logging.getLogger("rxt_dist")
    for handler in serve_logger.handlers:
        if handler not in library.handlers:
            library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False  # the handlers above already write it; not twice through root
