"""Measuring a serving machine's cost profile (the input of the capacity model).

Three kinds of cost, each measured where it can be measured:

* **model costs** (:func:`profile_model`), in this process on the model that is served: one
  decoding step of B sequences (the continuous batch's step), the prefill of B new queries of
  T tokens (``DecodeBatch.admit``: STM projection + prompt + first token), and the
  consolidation of B interactions (``consolidate``: encoder + memory attention). Wall time
  and CPU time are both recorded: their ratio is how much the machine's other load slows a
  process down right now (:func:`slowdown`), which is what converts the serving path's CPU
  time into wall time;
* **session storage** (:func:`profile_storage`): writing and reading one session's STM the
  way the store does (temporary name + rename; whole-file read) on each storage tier
  available here;
* **the serving path** (:func:`process_cpu`, :func:`thread_cpu`, used by ``jobs/capacity.py
  profile``): the CPU time per turn of each process (and thread) of a running application
  (proxy, Ingress, Generator, MemoryUpdater, store shard), read from the OS while a short
  calibration workload plays (``rxt_dist.eval.calibrate`` turns it into the profile's path);
* **the machine's other load** (:func:`measure_environment`).

Shape legend: L layers, B sequences, S memory slots, D model dim, T tokens.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rxt_dist.inference import CompiledDecoder, CompiledMemoryUpdate, DecodeBatch, SamplingParams, consolidate
from rxt_dist.model import RxTModel, stm_to_bytes
from rxt_dist.tokens import NUM_SPECIAL, prompt_ids

NO_STOP = -1
"""An end-of-answer id no token has: every profiled sequence keeps decoding."""
BATCHES = (1, 2, 4, 8, 16, 32, 64)
"""Batch sizes the model costs are measured at: powers of two from 1 to 64."""


def _timed(fn: Callable[[], Any], repeats: int, min_time_s: float, spread: list[float] | None = None
           ) -> tuple[float, float]:
    """Median wall time and median CPU time (this process) of ``fn`` over at least ``repeats``
    runs (more for cheap calls, until ``min_time_s`` is spent, at most 50); appends the wall
    times' coefficient of variation to ``spread`` when given."""
    walls, cpus = [], []
    spent = 0.0
    while len(walls) < repeats or (spent < min_time_s and len(walls) < 50):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        walls.append(wall)
        cpus.append(cpu)
        spent += wall
    if spread is not None and len(walls) > 1:
        spread.append(statistics.stdev(walls) / statistics.mean(walls))
    return statistics.median(walls), statistics.median(cpus)


def _queries(model: RxTModel, batch: int, tokens: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    high = model.cfg.vocab_size
    return [torch.randint(NUM_SPECIAL, high, (tokens,), generator=g).tolist() for _ in range(batch)]


@torch.no_grad()
def profile_model(model: RxTModel, query_tokens: int = 48, answer_tokens: int = 32,
                  batches: Sequence[int] = BATCHES, lengths: Sequence[int] = (16, 64, 256),
                  repeats: int = 3, min_time_s: float = 0.2, seed: int = 0,
                  compiled: CompiledDecoder | None = None,
                  compiled_update: CompiledMemoryUpdate | None = None) -> dict[str, Any]:
    """Wall and CPU seconds of the served model's three operations (module docstring).

    ``decode_step_s[B]`` is one step of B sequences whose cache holds the prompt and half an
    answer; ``prefill_s[B]`` admits B queries of ``query_tokens``; ``prefill_length_s[T]``
    admits one query of T tokens; ``consolidate_s[B]`` consolidates B interactions of
    ``query_tokens + answer_tokens`` tokens; ``timing_cv`` is the median coefficient of
    variation of the repeated wall times (how much one call's time varies on this machine).
    With ``compiled``, prefills and decoding steps go through it, as a Generator with
    ``compile_decode`` runs them; with ``compiled_update``, consolidations, as a MemoryUpdater
    with ``compile_update`` runs them."""
    model.eval()
    out: dict[str, Any] = {"decode_step_s": {}, "prefill_s": {}, "prefill_length_s": {}, "consolidate_s": {},
                           "cpu_s": {"decode_step": {}, "prefill": {}, "consolidate": {}}}
    sampling = SamplingParams(max_new_tokens=10**6)
    spread: list[float] = []
    for b in batches:
        prompts = [prompt_ids(q) for q in _queries(model, b, query_tokens, seed + b)]
        stm = model.initial_stm(b, torch.Generator().manual_seed(seed))  # (L, B, S, D)

        def admit(b: int = b, prompts: list = prompts, stm: torch.Tensor = stm) -> DecodeBatch:
            batch = DecodeBatch(model, eos_id=NO_STOP, compiled=compiled)
            batch.admit(list(range(b)), prompts, [sampling] * b, stm=stm)
            return batch

        wall, cpu = _timed(admit, repeats, min_time_s, spread)
        out["prefill_s"][b], out["cpu_s"]["prefill"][b] = wall, cpu
        batch = admit()
        for _ in range(answer_tokens // 2):
            batch.step()
        wall, cpu = _timed(batch.step, repeats, min_time_s, spread)
        out["decode_step_s"][b], out["cpu_s"]["decode_step"][b] = wall, cpu
        queries = [q[: query_tokens] for q in _queries(model, b, query_tokens, seed + 1000 + b)]
        answers = [q[: answer_tokens] for q in _queries(model, b, answer_tokens, seed + 2000 + b)]
        wall, cpu = _timed(lambda s=stm, q=queries, a=answers: consolidate(model, s, q, a, compiled_update),
                           repeats, min_time_s, spread)
        out["consolidate_s"][b], out["cpu_s"]["consolidate"][b] = wall, cpu
    stm1 = model.initial_stm(1, torch.Generator().manual_seed(seed))
    for t in lengths:
        prompt = [prompt_ids(_queries(model, 1, t, seed + 3000 + t)[0])]
        out["prefill_length_s"][t] = _timed(
            lambda p=prompt: DecodeBatch(model, eos_id=NO_STOP, compiled=compiled).admit([0], p, [sampling], stm=stm1),
            repeats, min_time_s)[0]
    out["timing_cv"] = statistics.median(spread) if spread else 0.0
    return out


def slowdown(model_profile: dict[str, Any]) -> float:
    """Wall time over CPU time of the profiled model operations: ≥ 1, and larger the more the
    machine's other load takes this process's core away."""
    wall = sum(sum(model_profile[k].values()) for k in ("decode_step_s", "prefill_s", "consolidate_s"))
    cpu = sum(sum(v.values()) for v in model_profile["cpu_s"].values())
    return max(1.0, wall / cpu) if cpu > 0 else 1.0


# -- the machine's other load, right now --------------------------------------------------------

_SPINNER = """
import sys, time
seconds, chunk = float(sys.argv[1]), float(sys.argv[2])
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    w0, c0 = time.perf_counter(), time.process_time()
    while time.process_time() - c0 < chunk:
        pass
    print(f"{time.perf_counter() - w0:.6f} {time.process_time() - c0:.6f}", flush=True)
"""


def measure_environment(seconds: float = 3.0, chunk_s: float = 0.005) -> dict[str, Any]:
    """How much of a core a busy thread gets on this machine right now, and how often the
    machine stops for it: a separate process (no GIL shared with the caller) burns CPU in
    ``chunk_s`` pieces for ``seconds`` and times each piece. ``slowdown`` is wall over CPU time
    of all pieces; a piece whose wall time exceeds its CPU time by more than
    ``STALL_THRESHOLD_S`` is a stall of that length. Run it while the serving application is
    idle: it measures the other programs' load, which the simulation adds to its own."""
    import subprocess
    import sys

    from rxt_dist.eval.capacity import STALL_THRESHOLD_S

    out = subprocess.run([sys.executable, "-c", _SPINNER, str(seconds), str(chunk_s)], capture_output=True,
                         text=True, check=True).stdout
    pieces = [tuple(map(float, line.split())) for line in out.splitlines() if line.strip()]
    wall, cpu = sum(w for w, _ in pieces), sum(c for _, c in pieces)
    stalls = [w - c for w, c in pieces if w - c > STALL_THRESHOLD_S]
    slow = [w / c for w, c in pieces if c > 0 and w - c <= STALL_THRESHOLD_S]
    return {"slowdown": wall / cpu if cpu else 1.0,
            "slowdown_without_stalls": (sum(slow) / len(slow)) if slow else 1.0,
            "stalls": {"rate_per_s": len(stalls) / wall if wall else 0.0, "durations_s": stalls,
                       "stalled_share": sum(stalls) / wall if wall else 0.0},
            "seconds": wall}


_PROBE = """
import json, select, sys, time
def work():
    for i in range(150):
        s = json.dumps({"id": i, "text": "word " * 8, "v": [i, i + 1, i + 2]})
        json.loads(s)
        "".join(sorted(s))
for _ in range(20):
    work()
print("ready", flush=True)
while not select.select([sys.stdin], [], [], float(sys.argv[1]))[0]:  # until stdin closes
    c0 = time.process_time()
    work()
    print(f"{time.process_time() - c0:.7f}", flush=True)
"""


class SpeedProbe:
    """How fast this machine works right now, read *while* something else runs: a process of
    its own does a fixed piece of Python work (JSON and string operations, ~3 ms) every
    ``period_s`` and times it in CPU seconds. The spin loop of :func:`measure_environment` only
    sees time taken away from a process; this sees the machine getting less done per CPU
    second (other tenants in shared caches or on a sibling thread), which moves the serving
    processes' CPU per turn by ±20% from minute to minute on a VM. ``median_s``: the piece's
    median CPU time over the ``with`` block (None until it ends, or if no piece ran); ``pieces``
    each piece's, in order.
    At the default period it takes ~3% of one core."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.pieces: list[float] = []
        self.median_s: float | None = None

    def __enter__(self) -> SpeedProbe:
        import subprocess
        import sys
        import threading

        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(self.period_s)], stdout=subprocess.PIPE,
                                      stdin=subprocess.PIPE, text=True)
        ready = self._proc.stdout.readline().strip()
        if ready != "ready":
            self._proc.kill()
            raise RuntimeError(f"the speed probe did not start (it said {ready!r})")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip():
                self.pieces.append(float(line))

    def __exit__(self, *exc) -> None:
        import subprocess

        self._proc.stdin.close()  # the probe stops at its next piece
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a stuck probe must not hold the benchmark
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        self.median_s = statistics.median(self.pieces) if self.pieces else None

    def rounded_pieces(self) -> list[float]:
        """Every piece's CPU seconds in the order they ran (µs resolution, for a report):
        the machine's speed over time (:func:`rxt_dist.eval.capacity.speed_trace`)."""
        return [round(x, 6) for x in self.pieces]


# -- session storage tiers --------------------------------------------------------------------

def stm_bytes(model: RxTModel) -> dict[str, int]:
    """Stored bytes of one session's STM (``stm_to_bytes``: safetensors header included), by
    dtype."""
    stm = model.initial_stm(1)[:, 0]  # (L, S, D)
    return {name: len(stm_to_bytes(stm.to(dtype))) for name, dtype in
            (("float32", torch.float32), ("bfloat16", torch.bfloat16))}


def _fs_roundtrip(root: str, data: bytes, repeats: int) -> dict[str, float]:
    """Median write and read of ``data`` through the session store's own file operations
    (a temporary name, then the rename)."""
    from rxt_dist.serving.session_files import SessionFiles

    ops = SessionFiles(root).ops
    path = f"{root}/stm.safetensors"
    write_s = _timed(lambda: ops.write_atomic(path, data), repeats, 0.1)[0]
    read_s = _timed(lambda: ops.read(path), repeats, 0.1)[0]
    return {"write_s": write_s, "read_s": read_s, "bytes": len(data)}


def profile_storage(sizes: dict[str, int], repeats: int = 20, disk_dir: str | None = None) -> dict[str, Any]:
    """Write/read seconds of one STM of each size on the tiers available on this machine:
    ``memory`` (a copy into the store actor's dict — the in-memory cache), ``local_disk``
    (the store's writes to a local directory, page cache, no fsync — what the store does) and
    ``local_disk_fsync`` (the same with fsync: a write that survives a power cut).
    Object storage (S3/GCS) is not reachable here; its figures are assumptions
    (``rxt_dist.eval.capacity.ASSUMED_OBJECT_STORE``)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rxt-capacity-", dir=disk_dir) as root:
        for name, size in sizes.items():
            data = os.urandom(size)
            cache: dict[str, bytes] = {}
            mem_w = _timed(lambda c=cache, d=data: c.__setitem__("s", bytes(bytearray(d))), repeats, 0.05)[0]
            mem_r = _timed(lambda c=cache: bytes(bytearray(c["s"])), repeats, 0.05)[0]
            disk = _fs_roundtrip(f"{root}/{name}", data, repeats)
            sync_path = f"{root}/{name}/sync.bin"
            sync_w = _timed(lambda d=data, f=sync_path: _write_fsync(f, d), max(5, repeats // 4), 0.05)[0]
            out[name] = {"bytes": size,
                         "memory": {"write_s": mem_w, "read_s": mem_r},
                         "local_disk": {"write_s": disk["write_s"], "read_s": disk["read_s"]},
                         "local_disk_fsync": {"write_s": sync_w, "read_s": disk["read_s"]}}
    return out


def _write_fsync(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- the serving path: CPU time of each process of a running application ----------------------

PROCESS_ROLES = {"ProxyActor": "proxy", "bin/haproxy": "proxy", ":Ingress": "ingress",
                 ":Generator": "generator", ":MemoryUpdater": "updater", "StoreShard": "store",
                 "SessionStore": "store"}
"""Substrings of a Ray worker's process title → the role it plays in the serving graph."""


def serving_processes(root_pid: int) -> dict[str, list[int]]:
    """PIDs of the serving graph's processes under ``root_pid`` (this cluster's raylet), by
    role; other Ray clusters on the same machine are not descendants and are never counted."""
    import psutil

    roles: dict[str, list[int]] = {}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for needle, role in PROCESS_ROLES.items():
            if needle in title:
                roles.setdefault(role, []).append(proc.pid)
    return roles


def process_cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes."""
    return {role: sum(threads.values()) for role, threads in thread_cpu(pids).items()}


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far, every core summed (psutil's ``cpu_times``):
    ``busy_s``, running anything (user, nice, system, interrupts); ``steal_s``, wanted by this
    VM and given by the hypervisor to another guest; ``at_s``, the monotonic clock then. The
    machine is the one ``/proc/stat`` describes: in a container, its host."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return {"busy_s": busy, "steal_s": getattr(t, "steal", 0.0), "at_s": time.monotonic()}


def machine_cores(before: dict[str, float], after: dict[str, float], ours_s: float) -> dict[str, float]:
    """Cores in use on average between two :func:`machine_cpu` readings: ``busy``, all of them;
    ``ours``, those of ``ours_s`` CPU seconds measured on our own processes meanwhile; ``other``,
    the rest (Ray's own daemons, the speed probe, anything else on the machine); ``steal``."""
    wall = max(after["at_s"] - before["at_s"], 1e-9)
    busy = (after["busy_s"] - before["busy_s"]) / wall
    return {"wall_s": wall, "busy": busy, "ours": ours_s / wall, "other": busy - ours_s / wall,
            "steal": (after["steal_s"] - before["steal_s"]) / wall}


def thread_cpu(pids: dict[str, list[int]]) -> dict[str, dict[tuple[int, int], float]]:
    """CPU seconds used so far by every thread of each role's processes, by (pid, thread id):
    on Linux the scheduler's own account in nanoseconds (``/proc/<pid>/task/<tid>/schedstat``),
    elsewhere the clock ticks psutil reads (10 ms steps per thread: over a few seconds of a
    process with a handful of busy threads that alone moves a role's CPU per turn by several
    percent)."""
    return {role: {key: cpu for key, (cpu, _) in threads.items()} for role, threads in thread_sched(pids).items()}


def thread_sched(pids: dict[str, list[int]]) -> dict[str, dict[tuple[int, int], tuple[float, float]]]:
    """Per role, every thread's CPU seconds so far and its seconds waiting for a core so far (the
    run queue's delay; 0.0 where the scheduler's account is not readable), by (pid, thread id)."""
    out: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    for role, group in pids.items():
        threads: dict[tuple[int, int], tuple[float, float]] = {}
        for pid in group:
            threads.update(_threads_sched(pid))
        out[role] = threads
    return out


def _threads_sched(pid: int) -> dict[tuple[int, int], tuple[float, float]]:
    import psutil

    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # gone, or no /proc (not Linux): psutil's ticks
        tids = None
    if tids is not None:
        out = {}
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    fields = f.read().split()
                out[(pid, int(tid))] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
        if out or not os.path.exists(f"/proc/{pid}"):
            return out
    try:
        return {(pid, t.id): (t.user_time + t.system_time, 0.0) for t in psutil.Process(pid).threads()}
    except psutil.NoSuchProcess:
        return {}


def busiest_threads(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per role, its busiest thread between two :func:`thread_sched` readings (the one that did
    the most CPU: an event loop): the seconds it ran (``cpu_s``) and the seconds it waited for
    a core (``wait_s``) — together, how long it had work."""
    out = {}
    for role, threads in after.items():
        then = before.get(role, {})
        deltas = [(cpu - then.get(key, (0.0, 0.0))[0], wait - then.get(key, (0.0, 0.0))[1])
                  for key, (cpu, wait) in threads.items()]
        if deltas:
            cpu, wait = max(deltas)
            out[role] = {"cpu_s": cpu, "wait_s": wait}
    return out


def serial_shares(before: dict[str, dict], after: dict[str, dict]) -> dict[str, float]:
    """Per role, the share of its CPU time that its busiest thread did between two
    :func:`thread_cpu` readings: work one thread must do one piece after another (an event
    loop), against what Ray's own threads do alongside."""
    out = {}
    for role, threads in after.items():
        deltas = [cpu - before.get(role, {}).get(key, 0.0) for key, cpu in threads.items()]
        total = sum(deltas)
        out[role] = max(deltas) / total if total > 0 else 1.0
    return out
