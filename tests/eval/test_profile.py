"""The profile's readings of the machine and its processes, rxt_dist/eval/profile.py (no Ray, no model)."""

from __future__ import annotations

import os
import threading
import time

import pytest


def test_every_serving_process_has_a_role():
    """The profile reads each role's CPU from the Ray workers' process titles (``ray::<class>``)."""
    from rxt_dist.eval.profile import PROCESS_ROLES
    from serve.store import StoreShard

    for cls in ("Ingress", "Generator", "MemoryUpdater", StoreShard.__name__):
        assert any(needle in f"ray::{cls}.method" for needle in PROCESS_ROLES), cls


def test_the_speed_probe_times_its_pieces_while_the_block_runs_and_then_stops():
    from rxt_dist.eval.profile import SpeedProbe

    with SpeedProbe(period_s=0.02) as probe:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # some work of this process meanwhile
            sum(i * i for i in range(1000))
    assert len(probe.pieces) >= 5
    assert all(0 < piece < 1.0 for piece in probe.pieces)
    assert min(probe.pieces) <= probe.median_s <= max(probe.pieces)
    assert probe._proc.poll() is not None  # the probe process has ended


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat"),
                    reason="the scheduler's per-thread account (Linux /proc) is not available")
def test_thread_cpu_reads_the_schedulers_nanoseconds_not_clock_ticks():
    """A few milliseconds of one thread's work show up in ``thread_cpu`` as what the thread's
    own CPU clock says (clock ticks would read 0 or 10 ms), under its (pid, thread id)."""
    from rxt_dist.eval.profile import process_cpu, thread_cpu

    key, pids = (os.getpid(), threading.get_native_id()), {"here": [os.getpid()]}
    thread_cpu(pids)  # its imports done once
    reads = []
    for _ in range(5):
        outer0 = time.thread_time()
        before = thread_cpu(pids)["here"][key]
        inner0 = time.thread_time()
        while time.thread_time() < inner0 + 0.003:
            pass
        inner = time.thread_time() - inner0
        read = thread_cpu(pids)["here"][key] - before
        outer = time.thread_time() - outer0
        # at least the spin, at most the spin and the two readings' own work
        assert inner - 1e-4 <= read <= outer + 1e-4, (inner, read, outer)
        reads.append(read)
    assert any(abs(r / 0.01 - round(r / 0.01)) > 0.05 for r in reads), reads  # not whole ticks
    assert process_cpu(pids)["here"] >= thread_cpu(pids)["here"][key]


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/schedstat")
                    or not hasattr(os, "sched_setaffinity"),
                    reason="the scheduler's per-thread account (Linux /proc) is not available")
def test_the_busiest_thread_reads_its_cpu_and_its_wait_for_a_core():
    """A thread that spins on a core another process spins on too runs about half the time and
    waits for the core the other half: ``busiest_threads`` picks it over this process's idle
    threads and reads both, together all of the wall time (it always had work)."""
    import subprocess
    import sys

    from rxt_dist.eval.profile import busiest_threads, thread_sched

    core = min(os.sched_getaffinity(0))
    rival = subprocess.Popen([sys.executable, "-c", f"import os, time\nos.sched_setaffinity(0, {{{core}}})\n"
                              "t = time.monotonic()\nwhile time.monotonic() < t + 5: pass"])
    result: dict = {}

    def spin() -> None:
        os.sched_setaffinity(0, {core})  # this thread only
        time.sleep(0.3)  # the rival has started spinning
        pids = {"here": [os.getpid()]}
        before, t0 = thread_sched(pids), time.monotonic()
        while time.monotonic() < t0 + 0.6:
            pass
        result.update(busiest_threads(before, thread_sched(pids))["here"], wall_s=time.monotonic() - t0)

    try:
        worker = threading.Thread(target=spin)
        worker.start()
        worker.join()
    finally:
        rival.kill()
        rival.wait()
    assert result["cpu_s"] + result["wait_s"] == pytest.approx(result["wall_s"], rel=0.1), result
    assert 0.2 < result["cpu_s"] / result["wall_s"] < 0.8 and result["wait_s"] > 0.2 * result["wall_s"], result


def test_the_machines_cores_hold_our_own_work_and_split_off_the_rest():
    """Half a second of this thread spinning reads as up to one core of ours, inside the
    machine's busy cores (which also hold whatever else ran), the rest counted as other."""
    from rxt_dist.eval.profile import machine_cores, machine_cpu

    before, ours0 = machine_cpu(), time.thread_time()
    while time.thread_time() < ours0 + 0.5:
        pass
    after, ours = machine_cpu(), time.thread_time() - ours0
    cores = machine_cores(before, after, ours)
    assert cores["ours"] == pytest.approx(ours / cores["wall_s"]) and cores["ours"] <= 1.05, cores  # one thread
    assert cores["busy"] >= cores["ours"] - 0.1, cores  # the machine's account in 10 ms ticks
    assert cores["other"] == pytest.approx(cores["busy"] - cores["ours"])
    assert cores["steal"] >= 0 and cores["wall_s"] >= ours
