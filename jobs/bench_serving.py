"""Serving benchmark: S concurrent sessions × N turns against the Ray Serve app, over HTTP.

    python jobs/bench_serving.py --start                       # local Ray + the app of serve/config.yaml
                                                               # (make demo's model), S ∈ {1, 8, 32}, N = 32
    python jobs/bench_serving.py --start --model-dir random    # a random debug model: timing only
    python jobs/bench_serving.py --start --model-dir runs/curriculum/export
    python jobs/bench_serving.py --url http://127.0.0.1:8000   # an app already running (serve run serve/config.yaml)
    python jobs/bench_serving.py --start --sessions 2 --turns 3 --out /tmp/s.json --plot /tmp/s.png

Writes docs/bench/serving.json and docs/bench/serving.png by default and prints a table (see
docs/evaluation.md). Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from rxt_dist.eval.capacity import APP_BATCHING
from rxt_dist.eval.plots import plot_scaling
from rxt_dist.eval.report import write_json_atomic
from rxt_dist.eval.serving import ServingConfig, plot_serving, run_serving, summary_table
from rxt_dist.ports import free_port

APP_NAME = "rxt-bench"


RANDOM = "random"
"""``--model-dir random``: the random demo model (answers are noise; fine for timing)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running application (loopback only)")
    where.add_argument("--start", action="store_true",
                       help="start a private local Ray and the application of --config, stop them afterwards")
    p.add_argument("--config", default="serve/config.yaml",
                   help="Serve config whose args and deployments --start uses (default %(default)s)")
    p.add_argument("--model-dir", default=None,
                   help="with --start: serve this exported model (default: the config's model_dir, the "
                        f"model `make demo` exports); '{RANDOM}' serves a random debug model (timing only)")
    p.add_argument("--set", action="append", default=[], metavar="ARG=VALUE", dest="app_set",
                   help="with --start: override one of the config's application args (YAML value), "
                        "e.g. --set stream_interval_s=0.05 --set compile_decode=true")
    p.add_argument("--fixed-replicas", type=int, default=None, metavar="N",
                   help="with --start: N replicas of every deployment, autoscaling off (on a small machine a "
                        "replica started mid-level takes CPU from the level it measures)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels S")
    p.add_argument("--turns", type=int, default=32, help="turns N per session")
    p.add_argument("--rounds", type=int, default=1,
                   help="play each level this many times with fresh sessions and pool the statistics")
    p.add_argument("--query-words", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="answers of exactly --max-tokens past the model's end-of-answer token (the server's "
                        "ignore_eos), so that tokens/s measure the same work whatever the model answers "
                        "(default; --no-ignore-eos: the model's own lengths)")
    p.add_argument("--think-time-s", type=float, default=0.0,
                   help="pause between an answer's end and the session's next turn (default: none)")
    p.add_argument("--ramp-s", type=float, default=0.0,
                   help="spread the sessions' first turns over this many seconds (default: all at once)")
    p.add_argument("--warmup-turns", type=int, default=2)
    p.add_argument("--max-level-s", type=float, default=600.0, help="a level starts no new turn after this")
    p.add_argument("--request-timeout-s", type=float, default=120.0)
    p.add_argument("--model", default=None, help="model id to request (default: the server's)")
    p.add_argument("--api-key", default=os.environ.get("RXT_API_KEY"), help="bearer key (env RXT_API_KEY)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cooldown-s", type=float, default=0.0,
                   help="with --start: after the last level, keep sampling replicas this long with no "
                        "load (to see autoscaling remove what it added)")
    p.add_argument("--scaling-plot", default="",
                   help="with --start: PNG of replicas over time beside TTFT and update lag ('' for none)")
    p.add_argument("--out", default="docs/bench/serving.json")
    p.add_argument("--plot", default="docs/bench/serving.png", help="PNG path ('' for none)")
    return p.parse_args(argv)


def config(args: argparse.Namespace, url: str) -> ServingConfig:
    return ServingConfig(url=url, sessions=tuple(args.sessions), turns=args.turns, rounds=args.rounds,
                         query_words=args.query_words, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos,
                         think_time_s=args.think_time_s, ramp_s=args.ramp_s, warmup_turns=args.warmup_turns,
                         max_level_s=args.max_level_s, request_timeout_s=args.request_timeout_s,
                         model=args.model, api_key=args.api_key, seed=args.seed)


# -- --start: a private local Ray running the application -----------------------------------

def read_serve_config(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The first application's ``args`` and its ``deployments`` as ``deployment_options``."""
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    try:
        app = doc["applications"][0]
    except (TypeError, KeyError, IndexError):
        raise ValueError(f"{path}: no applications[0] in this Serve config") from None
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    return dict(app.get("args") or {}), options


def describe_model(model_dir: str, model_id: str, demo: bool) -> dict[str, Any]:
    """What is being served: the directory, its shape, and whether it is the random demo."""
    from rxt_dist.model import load_config

    cfg = load_config(model_dir)
    source = (f"random demo model (debug preset, init_std=0.5) at {model_dir}: timing only, answers are noise"
              if demo else f"model directory {model_dir}")
    return {"model_dir": model_dir, "model_source": source, "model_id": model_id, "random_demo_model": demo,
            "dim": cfg.dim, "layers": cfg.num_layers, "stm_slots": cfg.stm.num_slots, "vocab_size": cfg.vocab_size}


def replica_counts() -> dict[str, Any]:
    """Running replicas per deployment of the benchmark's application (autoscaling may add some)."""
    from ray import serve

    app = serve.status().applications[APP_NAME]
    return {"replicas": {name: {str(state): n for state, n in d.replica_states.items()}
                         for name, d in app.deployments.items()}}


STORE_COUNTERS = ("claims", "stm_sent", "stm_sent_bytes", "update_reads", "update_read_bytes")


def store_counters() -> dict[str, int]:
    """Turns claimed and STMs (and bytes) the session-store shards handed out, summed over
    the shards (cumulative)."""
    import ray

    from rxt_dist.serving.protocol import STORE_NAMESPACE, store_actor_shard

    shards = [ray.get_actor(a["name"], namespace=STORE_NAMESPACE)
              for a in ray.util.list_named_actors(all_namespaces=True)
              if a["namespace"] == STORE_NAMESPACE and store_actor_shard(a["name"]) is not None]
    stats = ray.get([shard.stats.remote() for shard in shards], timeout=30)
    return {name: sum(s[name] for s in stats) for name in STORE_COUNTERS}


def describe_server() -> dict[str, Any]:
    """After each level: the replicas and the store's cumulative counters."""
    return {**replica_counts(), "session_store": store_counters()}


def stm_locality(levels: list[dict[str, Any]], start: dict[str, int]) -> None:
    """Each level's ``stm_locality``: the share of its turns whose STM the Generator already
    held, and the STM bytes the store handed out per turn (from the counters' differences) —
    to the Generator and, for the memory update, to the MemoryUpdater."""
    before = start
    for level in levels:
        after = level["server_state"]["session_store"]
        claims = after["claims"] - before["claims"]
        sent = after["stm_sent"] - before["stm_sent"]
        level["stm_locality"] = {
            "turns_claimed": claims, "stm_reads": sent,
            "hit_rate": (claims - sent) / claims if claims else None,
            "stm_bytes_per_turn": (after["stm_sent_bytes"] - before["stm_sent_bytes"]) / claims if claims else None,
            "updater_stm_reads": after["update_reads"] - before["update_reads"],
            "updater_stm_bytes_per_turn":
                (after["update_read_bytes"] - before["update_read_bytes"]) / claims if claims else None,
        }
        before = after


class ReplicaSampler:
    """Samples :func:`replica_counts` every ``interval_s`` in a background thread: the
    replicas of each deployment over the run (what autoscaling did), with wall-clock times."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                replicas = replica_counts()["replicas"]
            except Exception as exc:  # a status call failing mid-run is recorded, not fatal
                self.samples.append({"at_unix": time.time(), "error": repr(exc), "running": {}})
            else:
                self.samples.append({"at_unix": time.time(), "replicas": replicas,
                                     "running": {n: s.get("RUNNING", 0) for n, s in replicas.items()}})
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ReplicaSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/healthz did not answer 200 within {timeout_s:.0f}s")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``ARG=VALUE`` strings → application args (values parsed as YAML: numbers, true/false)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected ARG=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def pinned(options: dict[str, dict[str, Any]], replicas: int) -> dict[str, dict[str, Any]]:
    """``deployment_options`` with ``replicas`` replicas of every deployment and no autoscaling."""
    return {name: {**{k: v for k, v in o.items() if k != "autoscaling_config"}, "num_replicas": replicas}
            for name, o in options.items()}


def pinned_cpus(options: dict[str, dict[str, Any]]) -> float:
    """The CPUs the replicas of :func:`pinned` ``options`` ask for (a deployment's own
    ``ray_actor_options`` where the options give none)."""
    from serve.generator import Generator
    from serve.ingress import Ingress
    from serve.updater import MemoryUpdater

    defaults = {d.name: d.ray_actor_options for d in (Generator, Ingress, MemoryUpdater)}
    return sum(o.get("num_replicas", 1) * (o.get("ray_actor_options") or defaults.get(name) or {}).get("num_cpus", 1)
               for name, o in options.items())


@contextlib.contextmanager
def local_app(config_path: str, model_dir: str | None, overrides: dict[str, Any] | None = None,
              replicas: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Start a private local Ray (never an existing cluster), run the application of
    ``config_path`` (its args updated with ``overrides``; with ``replicas``, that many of each
    deployment instead of its autoscaling) with sessions in a temporary directory, yield
    (url, server description); stop everything afterwards."""
    import ray
    from ray import serve

    from serve.app import build_app, resolve_args
    from serve.args import AppArgs
    from serve.ray_env import use_high_throughput_serve
    from serve.store import stop_session_stores

    app_args, options = read_serve_config(config_path)
    if replicas is not None:
        options = pinned(options, replicas)
    app_args.update(overrides or {})
    workdir = tempfile.mkdtemp(prefix="rxt-bench-serving-")
    if model_dir == RANDOM:
        app_args.update(model_dir=None, random_demo_model=True)
    elif model_dir is not None:
        app_args["model_dir"] = model_dir
    args = AppArgs.model_validate({**app_args, "store_url": f"{workdir}/sessions", "deployment_options": options})
    resolved, model_id = resolve_args(args)
    shown_args = {**{k: v for k, v in app_args.items() if k != "api_key"},
                  **{k: getattr(args, k) for k in APP_BATCHING},
                  "store_url": "(a temporary directory, removed afterwards)"}
    server = {"started_by_benchmark": True, "serve_config": config_path, "deployments": options,
              "app_args": shown_args, "stream_interval_s": args.stream_interval_s,
              "stream_chunks_per_s": args.stream_chunks_per_s,
              **describe_model(resolved.model_dir, model_id, demo=args.random_demo_model)}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_high_throughput_serve(drain_s=1)  # as the shipped cluster files run Serve
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        if replicas is not None:
            needed, available = pinned_cpus(options), ray.cluster_resources().get("CPU", 0.0)
            if needed > available:  # Serve would wait for ever for a replica that cannot start
                raise SystemExit(f"bench_serving: --fixed-replicas {replicas}: the deployments ask for {needed:g} "
                                 f"CPUs and this machine's Ray has {available:g}; use fewer replicas")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        yield url, server
    finally:
        serve.shutdown()
        stop_session_stores(resolved.store_url, resolved.store_shards)
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    args = parse_args(argv)
    command = shlex.join(["python", "jobs/bench_serving.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        config(args, args.url or "http://127.0.0.1:8000")  # bad options fail before anything starts
        overrides = parse_overrides(args.app_set)
        if overrides and not args.start:
            raise ValueError("--set changes the application --start runs; a running one (--url) keeps its args")
        if args.fixed_replicas is not None and (not args.start or args.fixed_replicas < 1):
            raise ValueError(f"--fixed-replicas {args.fixed_replicas}: a number ≥ 1 of replicas for the "
                             "application --start runs")
    except ValueError as exc:
        sys.exit(f"bench_serving: {exc}")
    with contextlib.ExitStack() as stack:
        sampler = None
        if args.start:
            url, server = stack.enter_context(local_app(args.config, args.model_dir, overrides, args.fixed_replicas))
            describe = describe_server
            sampler = stack.enter_context(ReplicaSampler())
            start = store_counters()
        else:
            url, server, describe = args.url, {"started_by_benchmark": False}, None
        report = run_serving(config(args, url), progress=True, command=command, server=server,
                             describe_server=describe)
        if sampler is not None:
            if args.cooldown_s > 0:
                print(f"no load for {args.cooldown_s:.0f}s, sampling replicas", flush=True)
                time.sleep(args.cooldown_s)
            sampler.__exit__(None, None, None)
            stm_locality(report["levels"], start)
            report["replicas_over_time"] = sampler.samples
            report["cooldown_s"] = args.cooldown_s
    write_json_atomic(args.out, report)
    if args.plot:
        plot_serving(report, args.plot)
    if args.scaling_plot and report.get("replicas_over_time"):
        plot_scaling(report, args.scaling_plot)
    print(summary_table(report), flush=True)
    for level in report["levels"]:
        if level.get("stm_locality", {}).get("turns_claimed"):
            loc = level["stm_locality"]
            print(f"S={level['sessions']}: STM found on the Generator for {loc['hit_rate']:.1%} of "
                  f"{loc['turns_claimed']} turns; {loc['stm_bytes_per_turn']:.0f} STM bytes per turn from the store; "
                  f"the MemoryUpdater read {loc['updater_stm_reads']} STMs "
                  f"({loc['updater_stm_bytes_per_turn']:.0f} bytes per turn)")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
