"""The fault suite at full size: chaos (conversations while actors are killed) and the HTTP fuzz.

    python jobs/chaos.py                       # 32 sessions × 20 turns with faults, then 10,000 fuzz requests
    python jobs/chaos.py --sessions 64 --turns 40 --fuzz 0
    python jobs/chaos.py --no-faults --fuzz 0  # the control: the same conversations, nothing killed
    python jobs/chaos.py --out /tmp/chaos.json

Starts a private local Ray (never an existing cluster) and the serving app on the random demo
model (``debug`` preset) with sessions in a temporary directory, one replica per deployment
and two store shards. Writes a JSON report (faults injected and recovered, retries, the
verdict, the fuzz counts) and exits 1 when the verdict or the fuzz fails. See docs/serving.md,
"Fault suite".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

from rxt_dist.ports import free_port

log = logging.getLogger("chaos")

APP = "chaos"
SHARDS = 2
API_KEY = "chaos-key"
MODEL = "rxt-chaos"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=6)
    p.add_argument("--no-faults", action="store_true", help="play the conversations without killing anything")
    p.add_argument("--pause-s", type=float, nargs=2, default=(0.5, 3.0),
                   help="a fault comes this long (uniform) after the previous one recovered")
    p.add_argument("--faults-during-play", type=int, default=4,
                   help="hold the last turns until this many faults were injected (4: every kind once; 0: no pacing)")
    p.add_argument("--fuzz", type=int, default=10_000, help="fuzz requests after the chaos run (0: none)")
    p.add_argument("--fuzz-concurrency", type=int, default=32)
    p.add_argument("--decode-batch", type=int, default=1,
                   help="max_batch_size of the Generator (1: answers bit-equal to the in-process reference; "
                        "larger batches round differently and greedy answers drift after ~10 turns)")
    p.add_argument("--update-batch", type=int, default=1, help="update_batch_size of the MemoryUpdater (as above)")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--out", default=None, help="JSON report path (default: print only)")
    return p.parse_args(argv)


@contextlib.contextmanager
def local_app(workdir: str, cli: argparse.Namespace) -> Iterator[tuple[str, object]]:
    """A private Ray and the app on the demo model; yields (url, resolved AppArgs)."""
    import ray
    from ray import serve

    from rxt_dist.serving.demo import write_demo_model_dir
    from serve.app import build_app, resolve_args
    from serve.args import DEPLOYMENT_NAMES, AppArgs
    from serve.ray_env import use_high_throughput_serve

    fast = {"graceful_shutdown_timeout_s": 0.1, "graceful_shutdown_wait_loop_s": 0.1, "health_check_period_s": 1,
            "logging_config": {"enable_access_log": False, "log_level": "ERROR"}}
    # Short lease and staleness: a claim or a pending update left by a killed Ingress is
    # taken over within seconds instead of minutes.
    args = AppArgs(model_dir=write_demo_model_dir(f"{workdir}/model"), store_url=f"{workdir}/sessions",
                   store_shards=SHARDS, turn_lease_s=3, update_stale_s=2, update_wait_timeout_s=60,
                   default_max_tokens=cli.max_tokens, max_batch_size=cli.decode_batch,
                   update_batch_size=cli.update_batch, api_key=API_KEY, model_name=MODEL,
                   deployment_options={name: fast for name in DEPLOYMENT_NAMES})
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_high_throughput_serve(drain_s=1)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}", resolve_args(args)[0]
    finally:
        serve.shutdown()
        ray.shutdown()


def chaos(args: argparse.Namespace, url: str, app_args) -> dict:
    import torch

    from rxt_dist.chaos.client import ClientConfig, conversations
    from rxt_dist.chaos.inject import FaultInjector, replica_target, store_target
    from rxt_dist.chaos.run import fault_free_answers, run_chaos
    from rxt_dist.serving.demo import DEMO_TEXT
    from serve.args import DEPLOYMENT_NAMES
    from serve.store import STORE_NAMESPACE, store_actor_name

    words = sorted({w.strip(".,!?:").lower() for text in DEMO_TEXT for w in text.split()} - {""})
    texts = conversations(random.Random(args.seed), words, args.sessions, args.turns)
    started = time.monotonic()
    torch.set_num_threads(1)  # a tiny model: a second OpenMP thread only waits on a busy machine
    expected = fault_free_answers(app_args.model_dir, texts, args.max_tokens, app_args.initial_stm_seed)
    log.info("fault-free answers of %d conversations in %.1fs", len(texts), time.monotonic() - started)
    injector = None
    if not args.no_faults:
        shards = [store_actor_name(app_args.store_url, i, SHARDS) for i in range(SHARDS)]
        targets = [replica_target(APP, name, 1) for name in DEPLOYMENT_NAMES]
        targets.append(store_target(shards, STORE_NAMESPACE))
        injector = FaultInjector(targets, seed=args.seed, pause_s=tuple(args.pause_s))
    cfg = ClientConfig(url=url, model=MODEL, max_tokens=args.max_tokens, api_key=API_KEY)
    result = run_chaos(cfg, texts, expected, injector, seed=args.seed, faults_during_play=args.faults_during_play)
    return {"sessions": args.sessions, "turns": args.turns, **result.summary()}


def fuzz(args: argparse.Namespace, url: str) -> dict:
    from rxt_dist.chaos.fuzz import FuzzConfig, run_fuzz

    cfg = FuzzConfig(url=url, model=MODEL, api_key=API_KEY, requests=args.fuzz,
                     concurrency=args.fuzz_concurrency, seed=args.seed)
    return asyncio.run(run_fuzz(cfg)).summary()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    command = shlex.join(["python", "jobs/chaos.py", *(sys.argv[1:] if argv is None else argv)])
    from rxt_dist.eval.report import load_average, machine_info

    report: dict = {"command": command, "machine": machine_info()}
    workdir = tempfile.mkdtemp(prefix="rxt-chaos-")
    try:
        with local_app(workdir, args) as (url, app_args):
            if args.sessions and args.turns:
                report["chaos"] = chaos(args, url, app_args)
                print(json.dumps(report["chaos"], indent=1), flush=True)
            if args.fuzz:
                report["fuzz"] = fuzz(args, url)
                print(json.dumps(report["fuzz"], indent=1), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_after"] = load_average()
    if args.out:
        from rxt_dist.eval.report import write_json_atomic

        write_json_atomic(args.out, report)
    failed = [part for part in ("chaos", "fuzz") if part in report and not report[part]["verdict"]["ok"]]
    if failed:
        sys.exit(f"chaos: {' and '.join(failed)} failed (see the report)")


if __name__ == "__main__":
    main()
