"""Ports for local clusters and servers: free now, and out of the ranges other processes get."""

import socket

from rxt_dist import ports
from rxt_dist.ports import RAY_MAX_WORKER_PORT, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_port_is_free_and_outside_ray_worker_and_ephemeral_ranges(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 32768)
    for _ in range(20):
        port = free_port()
        assert RAY_MAX_WORKER_PORT < port < 32768
        assert _bindable(port)


def test_a_port_in_use_is_never_returned(monkeypatch):
    # A window of one port, held by a listening socket: the helper must fall back, not return it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "RAY_MAX_WORKER_PORT", taken - 1)
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: taken + 1)
        assert free_port() != taken


def test_without_room_above_ray_worker_ports_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 15000)
    assert _bindable(free_port())
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: None)
    assert _bindable(free_port())
