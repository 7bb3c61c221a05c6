"""The simulation's shared CPU and processes, rxt_dist/eval/des.py (no Ray, no model: synthetic jobs)."""

from __future__ import annotations

import dataclasses

import pytest

from rxt_dist.eval.capacity import ServingPath


def test_a_process_runs_its_serial_share_one_job_after_another_and_shares_the_cpu():
    from rxt_dist.eval.des import Server, Sim

    sim = Sim(seed=0, cv=0.0)
    done: dict[str, float] = {}
    serial, alongside, shared = Server(sim, serial=1.0), Server(sim, serial=0.0), Server(sim, serial=1.0, fixed=0.5)
    for name, server in (("s1", serial), ("s2", serial), ("a1", alongside), ("a2", alongside),
                         ("f1", shared), ("f2", shared)):
        server.do(0.010, lambda n=name: done.setdefault(n, sim.now))
    sim.run()
    assert done["s1"] == pytest.approx(0.010) and done["s2"] == pytest.approx(0.020)
    assert done["a1"] == pytest.approx(0.010) and done["a2"] == pytest.approx(0.010)
    # the second job arrives while the first is in the process: half its work is shared
    assert done["f2"] == pytest.approx(0.010 + 0.010 * (0.5 + 0.5 / 2))

    one_core = Sim(seed=0, cv=0.0, speed=ServingPath(cores=1, other_load=0.0).speed)
    ends: list[float] = []
    for _ in range(2):
        Server(one_core, serial=0.0).do(0.010, lambda: ends.append(one_core.now))
    one_core.run()
    assert ends == pytest.approx([0.020, 0.020])  # two busy jobs on one core: each at half speed


def test_the_cpu_favours_short_pieces_over_the_models_work_by_their_weight():
    """With ``wake_weight`` W a piece of a serving process shares a core W : 1 with a hog (the
    decoding thread), never faster than alone; equal weights share equally; two cores give each
    of two jobs one."""
    from rxt_dist.eval.des import Sim

    def ends(weight: float, cores: float, hogs: int, pieces: int) -> tuple[list[float], list[float]]:
        sim = Sim(seed=0, cv=0.0, speed=ServingPath(cores=cores, other_load=0.0).speed, wake_weight=weight)
        hog_ends: list[float] = []
        piece_ends: list[float] = []
        for _ in range(hogs):
            sim.cpu.run(0.010, lambda: hog_ends.append(sim.now), hog=True)
        for _ in range(pieces):
            sim.cpu.run(0.010, lambda: piece_ends.append(sim.now))
        sim.run()
        return hog_ends, piece_ends

    hog, piece = ends(3.0, cores=1, hogs=1, pieces=1)
    assert piece == pytest.approx([0.010 / 0.75]) and hog == pytest.approx([0.020])  # 3 : 1, then alone
    hog, piece = ends(1.0, cores=1, hogs=1, pieces=1)
    assert piece == pytest.approx([0.020]) and hog == pytest.approx([0.020])
    hog, piece = ends(1000.0, cores=2, hogs=1, pieces=1)
    assert piece == pytest.approx([0.010]) and hog == pytest.approx([0.010])  # a core each: no one waits
    hog, piece = ends(1000.0, cores=2, hogs=2, pieces=2)
    assert piece == pytest.approx([0.010, 0.010], rel=1e-2) and hog == pytest.approx([0.020, 0.020], rel=1e-2)


def test_jobs_of_one_turn_share_no_wake_up_and_jobs_of_two_turns_do():
    """``fixed_share`` is a sharing between turns: a stream's chunks (jobs of one turn in the
    process at once) each cost their whole work; a second turn's job shares the wake-up."""
    from rxt_dist.eval.des import Server, Sim

    done: dict[str, float] = {}
    for name, owners in (("one turn", ("t", "t")), ("two turns", ("t", "u"))):
        sim = Sim(seed=0, cv=0.0)
        server = Server(sim, serial=1.0, fixed=0.5)
        for owner in owners:
            server.do(0.010, lambda n=name: done.__setitem__(n, sim.now), owner)
        sim.run()
    assert done["one turn"] == pytest.approx(0.020)
    assert done["two turns"] == pytest.approx(0.010 + 0.010 * (0.5 + 0.5 / 2))


def test_the_machines_speed_slows_every_job_alike_from_the_moment_it_changes():
    from rxt_dist.eval.des import Sim

    sim = Sim(seed=0, cv=0.0)
    done: dict[str, float] = {}
    sim.cpu.run(0.010, lambda: done.__setitem__("a", sim.now))
    sim.after(0.004, lambda: sim.cpu.set_machine_speed(0.5))  # 4 ms at full speed, then half
    sim.run()
    assert done["a"] == pytest.approx(0.004 + 0.006 / 0.5)
    with pytest.raises(ValueError, match="machine speed 0"):
        sim.cpu.set_machine_speed(0)


def test_a_thread_woken_while_every_core_is_taken_waits_for_one():
    """``Sim.wake``: with a core free a woken thread starts at once; with every core taken it
    waits (exponential, of mean ``ServingPath.wake_wait`` for the jobs running) before its work
    shares the CPU; jobs reaching a process while it wakes queue behind the first, in order.
    Without a wait (``wake_wait_s`` 0) nothing changes."""
    from rxt_dist.eval.des import Server, Sim

    path = ServingPath(cores=1, other_load=0.0, wake_wait_s=0.002)
    assert path.wake_wait(0) == 0.0  # the woken thread alone: a core is free
    assert path.wake_wait(1) == pytest.approx(0.002) and path.wake_wait(3) == pytest.approx(0.006)
    assert ServingPath(cores=2, wake_wait_s=0.002).wake_wait(1) == 0.0
    with pytest.raises(ValueError, match="wake_wait_s=-0.001"):
        ServingPath(wake_wait_s=-0.001)

    def served(wait_s: float, hogs: int, seed: int = 0) -> tuple[list[str], float, Sim]:
        sim = Sim(seed=seed, cv=0.0, speed=dataclasses.replace(path, wake_wait_s=wait_s).speed,
                  wake_wait=dataclasses.replace(path, wake_wait_s=wait_s).wake_wait)
        for _ in range(hogs):
            sim.cpu.run(1.0, lambda: None, hog=True)
        order: list[str] = []
        server = Server(sim, serial=1.0)
        for name in ("a", "b"):
            server.do(0.001, lambda n=name: order.append(n) or order.append(f"{n}@{sim.now:.6f}"))
        sim.run(until=0.5)
        return order, sim.wake_waited_s, sim

    order, waited, sim = served(0.002, hogs=0)
    assert order[::2] == ["a", "b"] and waited == 0.0 and order[1] == "a@0.001000"  # a core free: no wait
    order, waited, sim = served(0.0, hogs=1)
    assert waited == 0.0 and order[1] == "a@0.002000"  # processor sharing alone: a starts at once, at half speed
    waits = []
    for seed in range(200):
        order, waited, sim = served(0.002, hogs=1, seed=seed)
        assert order[::2] == ["a", "b"] and sim.wakes == 1  # one wake-up; b queued behind a
        assert float(order[1].split("@")[1]) == pytest.approx(waited + 0.002, abs=1e-6)  # then at half speed
        waits.append(waited)
    assert sum(waits) / len(waits) == pytest.approx(0.002, rel=0.2)  # the mean wait: one thread beyond one core


def test_a_process_counts_the_time_its_event_loop_had_work_and_the_work_it_did():
    """``Server.loop_s`` runs from the first piece's arrival (its wake-up's wait for a core
    included) until the queue runs dry; ``loop_work_s`` holds the serial pieces' own work, so
    what lies between is the wait for a core — as a real thread's CPU time and run-queue
    wait read (``profile.busiest_threads``). Work done alongside counts in neither."""
    from rxt_dist.eval.des import Server, Sim

    alone = Sim(seed=0, cv=0.0)
    server = Server(alone, serial=0.5)
    for _ in range(2):
        server.do(0.010)  # 5 ms on the loop each, one after the other; 5 ms alongside each
    alone.run()
    assert server.loop_s == pytest.approx(0.010) and server.loop_work_s == pytest.approx(0.010)

    path = ServingPath(cores=1, other_load=0.0, wake_wait_s=0.002)
    shared = Sim(seed=3, cv=0.0, speed=path.speed, wake_wait=path.wake_wait)
    shared.cpu.run(1.0, lambda: None, hog=True)  # a model thread takes the only core
    server = Server(shared, serial=1.0)
    server.do(0.010)
    shared.run(until=0.5)
    # woken with the core taken: it waited for it, then ran at half speed beside the model
    assert server.loop_work_s == pytest.approx(0.010)
    assert server.loop_s == pytest.approx(shared.wake_waited_s + 0.020) and shared.wake_waited_s > 0
    server.do(0.002)  # a second busy spell adds its own time, not the idle gap between
    shared.run(until=0.9)
    assert server.loop_work_s == pytest.approx(0.012)
    assert server.loop_s > shared.wake_waited_s + 0.020 and server.loop_s < 0.1
