"""A free TCP port that no other process on this machine will be handed in the meantime.

The usual trick — bind port 0, read the port, close the socket — returns a port from the
kernel's ephemeral range, and the next process that binds port 0 may be given the same one
before its intended owner binds it. A local Ray cluster starts a dozen processes that do exactly
that (GCS, raylet, object manager, agents), so a dashboard or HTTP port chosen that way is now
and then taken before the dashboard or proxy starts ("address already in use", seen in CI).
A port from above Ray's worker-port range and below the kernel's ephemeral range is never handed
out by either, so once it binds here it stays free for its owner.
"""

from __future__ import annotations

import random
import socket

RAY_MAX_WORKER_PORT = 19999  # Ray's default ``max_worker_port``: workers bind ports up to here
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_ATTEMPTS = 200


def _ephemeral_low() -> int | None:
    """The lowest port the kernel hands out for port 0, or None where that is not readable."""
    try:
        with open(EPHEMERAL_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _binds(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _any_free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that binds on ``host`` now and lies outside the ranges other processes are handed.

    Falls back to a kernel-chosen port where the ephemeral range leaves no room above Ray's worker
    ports (or is not readable, as off Linux).
    """
    low = _ephemeral_low()
    if low is None or low <= RAY_MAX_WORKER_PORT + 1:
        return _any_free_port(host)
    rng = random.Random()
    for _ in range(_ATTEMPTS):
        port = rng.randrange(RAY_MAX_WORKER_PORT + 1, low)
        if _binds(port, host):
            return port
    return _any_free_port(host)
