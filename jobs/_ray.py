"""Shared start-up of the training entry points: logging and Ray.

Under ``ray job submit`` (``RAY_ADDRESS`` set) the jobs join that cluster; otherwise they
start a local one — the embedded default — with this machine's CPUs.
"""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "ray.data", "ray.train", "deepspeed", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def init_ray() -> None:
    """Join the cluster in RAY_ADDRESS, or start a local one."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Workers inherit these: DeepSpeed's CPU accelerator and a stable op-build cache.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # address="local": always a fresh cluster of this process, never one that happens to
        # be running on the machine. The dashboard serves Ray Train's state API (and :8265);
        # its address is exported so every worker's state-API queries reach this cluster (Ray
        # Train's PlacementGroupCleaner otherwise hangs on them and each fit ends 10–12 s late).
        port = _dashboard_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False


def _dashboard_port(preferred: int = 8265) -> int:
    """8265 (Ray's default, what ``ray job submit`` and the docs use) when free, else any free port."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port for the Ray dashboard")
