"""Library log records inside Serve replicas: ``rxt_dist.*`` loggers write where the
replica's own ``ray.serve`` logger writes (the replica's log file), at INFO."""

import logging


def route_library_logs() -> None:
    """Give the ``rxt_dist`` logger the handlers Ray Serve set up for this replica (once)."""
    serve_logger, library = logging.getLogger("ray.serve"), logging.getLogger("rxt_dist")
    for handler in serve_logger.handlers:
        if handler not in library.handlers:
            library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False  # the handlers above already write it; not twice through root
