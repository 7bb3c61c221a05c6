"""What every evaluation report carries: the machine it ran on, its load, and atomic writes.

Benchmark figures mean little without the machine, the thread count and the load beside
them, so :func:`machine_info` gathers those once per run; :func:`write_json_atomic` and
:func:`write_bytes_atomic` write a report under a temporary name and rename it into place
last, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import uuid
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, core count, memory, OS and library versions, and the load right now."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_bytes": _total_memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": load_average(),
    }
    try:  # the installed version, without paying the import of the package
        info["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        info["transformers"] = None
    return info


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark since it started (``getrusage``)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024  # Linux reports KiB


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling renamed into place last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json_atomic(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON to ``path`` (temporary name, renamed last)."""
    return write_bytes_atomic(path, (json.dumps(report, indent=2) + "\n").encode())
