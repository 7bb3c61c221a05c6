"""The fault suite (chaos part): many conversations against the real app while its replicas
and store shards are killed at random moments.

One local Ray cluster and one application for the module, one replica per deployment (a kill
leaves the deployment with none until Serve replaces it) and two store shards. The client
retries as a real one would (5xx, dropped connections, 409 ``session_busy``), with one
Idempotency-Key per logical turn. The verdict: every session's memory version equals its
answered turns, each answer came from the memory version of its turn, and each answer equals
the in-process :class:`conftest.Reference` playing that conversation without faults.
``jobs/chaos.py`` runs the same at a larger size.
"""

import json
import os
import random
import socket

import pytest
import ray
from ray import serve

from rxt_dist.chaos.client import ClientConfig, conversations
from rxt_dist.chaos.inject import FaultInjector, replica_target, store_target
from rxt_dist.chaos.run import run_chaos
from serve.app import build_app
from serve.args import DEPLOYMENT_NAMES, AppArgs
from serve.store import STORE_NAMESPACE, store_actor_name

from .conftest import CORPUS

pytestmark = pytest.mark.timeout(400)

# 32 × 14 here (about a minute on 2 busy cores); jobs/chaos.py plays 32 × 20.
SESSIONS, TURNS = int(os.environ.get("CHAOS_SESSIONS", 32)), int(os.environ.get("CHAOS_TURNS", 14))
MAX_TOKENS = 6
SHARDS = 2
MODEL = "rxt-test"
FAST = {"graceful_shutdown_timeout_s": 0.1, "graceful_shutdown_wait_loop_s": 0.1,
        "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0},
        "logging_config": {"enable_access_log": False, "log_level": "ERROR"}}
WORDS = sorted({w.strip("?") for line in CORPUS for w in line.split()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(model_dir, tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # A claim held by a request that died with its Ingress is freed after turn_lease_s, and a
    # pending update whose dispatcher died is re-sent after update_stale_s: both short here.
    # Batches of one: a batch of 32 rounds differently from the reference's batch of one, and
    # over 20 turns those roundings change greedy answers even without faults (docs/serving.md).
    args = AppArgs(model_dir=model_dir, store_url=str(tmp_path_factory.mktemp("chaos") / "sessions"),
                   store_shards=SHARDS, turn_lease_s=3, update_stale_s=2, update_wait_timeout_s=60,
                   max_message_tokens=40, max_tokens_limit=50, default_max_tokens=MAX_TOKENS,
                   max_batch_size=1, update_batch_size=1,
                   deployment_options={name: FAST for name in DEPLOYMENT_NAMES})
    serve.run(build_app(args), name="chaos", route_prefix="/")
    yield f"http://127.0.0.1:{port}", args
    serve.shutdown()
    ray.shutdown()


def test_conversations_survive_killed_replicas_and_store_shards(app, reference):
    url, args = app
    texts = conversations(random.Random(14), WORDS, SESSIONS, TURNS)
    expected = [reference.conversation(t, MAX_TOKENS) for t in texts]
    shards = [store_actor_name(args.store_url, i, SHARDS) for i in range(SHARDS)]
    targets = [replica_target("chaos", name, 1) for name in DEPLOYMENT_NAMES]
    targets.append(store_target(shards, STORE_NAMESPACE))
    injector = FaultInjector(targets, seed=14, pause_s=(0.3, 2.0))
    cfg = ClientConfig(url=url, model=MODEL, max_tokens=MAX_TOKENS)
    result = run_chaos(cfg, texts, expected, injector)
    summary = result.summary()
    print(json.dumps(summary, indent=1))
    faults = summary["faults"]
    assert set(faults["by_kind"]) == {*DEPLOYMENT_NAMES, "store"}, faults  # every kind was hit
    assert faults["recovered"] == faults["injected"], summary["fault_log"]
    assert summary["verdict"]["retried_attempts"] > 0  # the faults did reach the clients
    verdict = result.verdict
    assert verdict.turns_checked == SESSIONS * TURNS, verdict.cases
    assert (verdict.lost, verdict.doubled) == (0, 0), verdict.cases
    assert verdict.ok, verdict.cases
