"""The fault suite (fuzz part): thousands of generated bad requests against the real app.

Every request is invalid by construction (:mod:`rxt_dist.chaos.fuzz`): each answer must be a
4xx in OpenAI's error shape — no 5xx, no 2xx — and afterwards the server is healthy, answers a
turn, and no session changed. ``jobs/chaos.py --fuzz 10000`` runs the full size.
"""

import asyncio
import json
import os
import socket

import pytest
import ray
from ray import serve

from rxt_dist.chaos.fuzz import FuzzConfig, run_fuzz
from serve.app import build_app
from serve.args import DEPLOYMENT_NAMES, AppArgs

pytestmark = pytest.mark.timeout(300)

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", 2000))
KEY = "fuzz-key"
MODEL = "rxt-test"
FAST = {"graceful_shutdown_timeout_s": 0.1, "graceful_shutdown_wait_loop_s": 0.1,
        "ray_actor_options": {"num_cpus": 0}, "logging_config": {"enable_access_log": False, "log_level": "ERROR"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(model_dir, tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(model_dir=model_dir, store_url=str(tmp_path_factory.mktemp("fuzz") / "sessions"), api_key=KEY,
                   max_message_tokens=40, max_tokens_limit=50, default_max_tokens=8,
                   deployment_options={name: FAST for name in DEPLOYMENT_NAMES})
    serve.run(build_app(args), name="fuzz", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_bad_requests_get_4xx_and_change_nothing(url):
    result = asyncio.run(run_fuzz(FuzzConfig(url=url, model=MODEL, api_key=KEY, requests=REQUESTS, seed=14)))
    summary = result.summary()
    print(json.dumps(summary, indent=1))
    verdict = summary["verdict"]
    answered = sum(result.by_status.values())
    assert result.sent == REQUESTS and answered + result.oversized_cut == REQUESTS, verdict["transport_errors"]
    assert verdict["server_errors_5xx"] == 0, result.server_errors[:10]
    assert verdict["accepted_2xx"] == 0, result.accepted[:10]
    assert verdict["not_openai_error_shape"] == 0, result.bad_shape[:10]
    assert result.sessions_changed == []
    assert result.healthy_after and result.answers_after
    assert {"400", "401", "404", "413"} <= set(summary["by_status"])  # the defects reached each check
