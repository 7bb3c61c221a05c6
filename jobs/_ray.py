"""Shared start-up of the training entry points: logging and Ray.

Under ``ray job submit`` (``RAY_ADDRESS`` set) the jobs join that cluster; otherwise they
start a local one — the embedded default — with this machine's CPUs.

Ray's own output — its loggers, its Python warnings, and the stdout/stderr of its actors and
workers that ``log_to_driver`` forwards — is written to a log file of the run rather than the
terminal (:func:`ray_session`), where a newcomer reads a worker's routine warning or the
controller's shutdown traceback as a crash. The terminal shows the stages' progress and
results; ``--verbose`` puts Ray's output back on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

RAY_LOG = "ray.log"
"""Ray's output, in the run's log directory (``runs/<name>/logs/ray.log``)."""

log = logging.getLogger("rxt_dist.jobs")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "ray.data", "ray.train", "deepspeed", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def ray_session(log_dir: str, verbose: bool = False) -> Iterator[str | None]:
    """Ray for the length of the block (shut down after it, so nothing of it outlives the
    training). Unless ``verbose``, Ray's output goes to ``<log_dir>/ray.log`` — whose path is
    yielded, for error messages — and one line says so."""
    path = None if verbose else os.path.join(log_dir, RAY_LOG)
    if path is not None:
        log.info("Ray's own logs: %s (--verbose shows them here)", _shown(path))
    init_ray(path)
    try:
        yield path
    finally:
        import ray

        ray.shutdown()


def init_ray(log_file: str | None = None) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local one; with ``log_file``, Ray's output
    goes there instead of the terminal."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Workers inherit these: DeepSpeed's CPU accelerator and a stable op-build cache.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(".cache/torch_extensions"))
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if ray.is_initialized():
        return
    sink = _RaySink(log_file) if log_file else None
    if sink:
        sink.route_loggers()
        sink.route_worker_output()
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
    if sink:
        sink.route_loggers()  # loggers that ray.init and Ray Data configured


class _RaySink:
    """Ray's output → one log file: the ``ray.*`` loggers, warnings raised in Ray's modules, and
    the forwarded output of Ray's processes."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.stream = self.handler.stream
        self._lock = threading.Lock()
        self._route_warnings()

    def route_loggers(self) -> None:
        """Every configured ``ray`` logger writes to the file instead of the console."""
        loggers = [logging.getLogger("ray")] + [
            logger for name, logger in logging.root.manager.loggerDict.items()
            if name.startswith("ray.") and isinstance(logger, logging.Logger)]
        for logger in loggers:
            consoles = [h for h in logger.handlers if _is_console(h)]
            for handler in consoles:
                logger.removeHandler(handler)
            if (consoles or logger.name == "ray") and self.handler not in logger.handlers:
                logger.addHandler(self.handler)
        logging.getLogger("ray").setLevel(logging.INFO)  # the file has room for what the terminal had not

    def route_worker_output(self) -> None:
        """Replace the driver's printer of Ray's processes' output — forwarded by
        ``log_to_driver``, and the raylet's error messages — with one writing to the file. Ray has
        no public hook for this; on a Ray without this printer the output stays on the terminal,
        as with ``--verbose``. Called before ``ray.init``, which binds the printer."""
        try:
            import ray._private.worker as ray_worker
        except ImportError:
            ray_worker = None
        if not all(hasattr(ray_worker, f) for f in ("print_to_stdstream", "filter_autoscaler_events")):
            log.warning("this Ray cannot send its workers' output to a file: it stays on the terminal")
            return
        self._autoscaler_events = ray_worker.filter_autoscaler_events
        ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: self._write_batch(data)

    def _write_batch(self, data: dict) -> None:
        name = data.get("actor_name") or data.get("task_name") or ""
        ip = f", ip={data['ip']}" if data.get("ip") and data.get("ip") != data.get("localhost") else ""
        prefix = f"({name + ' ' if name else ''}pid={data.get('pid')}{ip}) "
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status table every 5 s: Ray prints only its events
            lines = self._autoscaler_events(lines)
        with self._lock:  # two of Ray's threads print: forwarded output and the raylet's errors
            self.stream.write("".join(prefix + line + "\n" for line in lines))
            self.stream.flush()

    def _route_warnings(self) -> None:
        import ray

        shown = warnings.showwarning
        ray_dir = os.path.dirname(ray.__file__)

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if str(filename).startswith(ray_dir):
                self.stream.write(warnings.formatwarning(message, category, filename, lineno, line))
                self.stream.flush()
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning


def _is_console(handler: logging.Handler) -> bool:
    if type(handler).__name__ == "PlainRayHandler":
        return True
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
        and getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (shorter to read)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


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


def report_failure(exc: Exception, ray_log: str | None) -> int:
    """A failed stage on the terminal: its error (Ray Train's, with the failing worker's
    traceback) and where Ray's logs are; the exit status."""
    print(f"error: {exc}", file=sys.stderr)
    if ray_log:
        print(f"Ray's own logs, with every worker's output: {_shown(ray_log)}", file=sys.stderr)
    return 1
