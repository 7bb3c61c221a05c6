"""The serving benchmark against a real application: local Ray Serve, real HTTP, the random
demo model. The updater is slowed by ``UPDATE_DELAY_S`` so that a turn sent right after the
previous answer always has to wait for its update: that makes the waited share and the lag
predictable enough to assert. No test asserts a benchmark figure beyond that."""

import asyncio
import json
import os
import time

import httpx
import pytest
import ray
from ray import serve

from jobs.bench_serving import main as bench_main
from jobs.bench_serving import pinned, pinned_cpus, read_serve_config
from rxt_dist.eval.serving import ServingClient, ServingConfig, is_loopback_url
from rxt_dist.ports import free_port
from rxt_dist.serving.demo import write_demo_model_dir
from serve.app import build_app
from serve.args import DEPLOYMENT_NAMES, AppArgs
from serve.ray_env import use_high_throughput_serve

pytestmark = pytest.mark.timeout(300)

UPDATE_DELAY_S = 0.5
# Quick to stop and to notice a dead replica; no per-request access log lines on the driver.
FAST = {"graceful_shutdown_timeout_s": 0.1, "graceful_shutdown_wait_loop_s": 0.1,
        "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0},
        "logging_config": {"enable_access_log": False}}
MODEL = "bench-test"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_high_throughput_serve(drain_s=0.5)
    root = tmp_path_factory.mktemp("serving-bench")
    model_dir = write_demo_model_dir(str(root / "model"))
    # address="local": a private cluster even when another one runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(model_dir=model_dir, model_name=MODEL, store_url=str(root / "sessions"),
                   update_delay_s=UPDATE_DELAY_S, update_wait_timeout_s=60,
                   deployment_options={name: FAST for name in DEPLOYMENT_NAMES})
    serve.run(build_app(args), name="bench", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/healthz", trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the application did not become healthy"
        time.sleep(0.2)
    yield base, root / "sessions"
    serve.shutdown()
    ray.shutdown()


def _stream(http: httpx.Client, sid: str, text: str) -> tuple[httpx.Headers, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 6,
            "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"x-session-id": sid}) as r:
        assert r.status_code == 200, r.read()
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
        return r.headers, time.time()


def test_responses_report_the_wait_for_the_update_and_its_commit_time(app):
    url, _ = app
    http = httpx.Client(base_url=url, timeout=60, trust_env=False)
    created = http.post("/v1/sessions")
    sid = created.headers["x-session-id"]
    first, ended = _stream(http, sid, "my name is ada")
    assert first["x-memory-version"] == "0" and float(first["x-waited-for-update-ms"]) == 0.0
    # The header has microseconds (rounding ≤ 0.5 µs); the session record, the full float.
    assert float(first["x-memory-committed-at"]) == pytest.approx(created.json()["memory_committed_at"], abs=1e-6)
    # Sent right away: the (slowed) update of turn 1 is pending, so this turn waits for it…
    sent = time.time()
    second, _ = _stream(http, sid, "what is my name?")
    assert second["x-memory-version"] == "1"
    # The store's clock splits the time between the turns: turn 1 recorded before its end was
    # read, this claim's arrival after this request was sent (one machine, one clock)
    recorded, arrived = float(second["x-waited-for-turn-recorded-at"]), float(second["x-claim-arrived-at"])
    assert recorded <= ended <= sent <= arrived < sent + 30
    assert "x-waited-for-turn-recorded-at" not in first and float(first["x-claim-arrived-at"]) < ended
    assert UPDATE_DELAY_S * 0.6 <= float(second["x-waited-for-update-ms"]) / 1e3 < 30
    # …and reads version 1, committed after turn 1's answer had ended.
    committed = float(second["x-memory-committed-at"])
    assert ended + UPDATE_DELAY_S * 0.8 <= committed <= time.time()
    deadline = time.monotonic() + 30
    while (info := http.get(f"/v1/sessions/{sid}").json())["pending_update"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert info["memory_version"] == 2 and info["memory_committed_at"] > committed
    # A turn after the update settled waits for nothing; non-streamed answers carry the headers too.
    r = http.post("/v1/chat/completions", headers={"x-session-id": sid},
                  json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert r.status_code == 200 and float(r.headers["x-waited-for-update-ms"]) == 0.0
    assert float(r.headers["x-memory-committed-at"]) == pytest.approx(info["memory_committed_at"], abs=1e-6)


def test_the_benchmark_runs_against_the_app_and_reports_every_field(app, tmp_path):
    url, store = app
    def sessions_in(store):  # the session records ("_transcripts", the index, appears with the first session)
        return sorted(p.name for p in store.iterdir() if not p.name.startswith("_"))

    sessions_before = sessions_in(store)
    out, plot = tmp_path / "serving.json", tmp_path / "serving.png"
    sessions, rounds, turns, max_tokens = 2, 2, 3, 8
    played = sessions * rounds  # conversations, each of `turns` turns
    bench_main(["--url", url, "--sessions", str(sessions), "--rounds", str(rounds), "--turns", str(turns),
                "--query-words", "6", "--max-tokens", str(max_tokens), "--warmup-turns", "1",
                "--out", str(out), "--plot", str(plot)])
    report = json.loads(out.read_text())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["benchmark"] == "serving" and report["command"].startswith("python jobs/bench_serving.py --url")
    assert report["machine"]["logical_cpus"] >= 1 and len(report["machine"]["load_average"]) == 3
    assert report["server"]["model_id"] == MODEL
    (level,) = report["levels"]
    assert (level["sessions"], level["rounds"], level["turns_played"]) == (sessions, rounds, turns)
    assert (level["requests_ok"], level["errors"], level["truncated"]) == (played * turns, {}, False)
    pt = level["per_turn"]
    assert pt["turn"] == [1, 2, 3]
    for p50, p99, own in zip(pt["ttft_p50_s"], pt["ttft_p99_s"], pt["ttft_excluding_wait_p50_s"]):
        assert 0 < own <= p50 <= p99 < 60
    # Every turn after the first was sent as the previous answer ended, while its update (slowed
    # by UPDATE_DELAY_S) was still running: exactly those waited.
    assert pt["waited_share"] == [0.0, 1.0, 1.0]
    assert level["waited"]["share"] == pytest.approx(2 / 3) and level["waited"]["requests_waited"] == played * 2
    assert level["waited"]["p50_ms"] >= UPDATE_DELAY_S * 0.6 * 1e3
    # A lag for every turn, the last one's from the session record; none shorter than the delay.
    assert level["update_lag"]["count"] == played * turns
    assert all(len(v) == played for v in level["samples"]["update_lag_s"])
    assert UPDATE_DELAY_S * 0.8 <= level["update_lag"]["min_s"] <= level["update_lag"]["p50_s"] < 30
    # Between turns: every request's way to the store, and the way out of each turn whose next
    # turn waited for its update (the first two of each conversation)
    ways = level["between_turns"]
    assert ways["way_in"]["count"] == played * turns and ways["way_out"]["count"] == played * 2
    for way in ways.values():
        assert 0 <= way["min_s"] <= way["p50_s"] <= way["max_s"] < 30 and way["min_s"] <= way["mean_s"] <= way["max_s"]
    tokens = [t for v in level["samples"]["completion_tokens"] for t in v]
    assert len(tokens) == played * turns and all(1 <= t <= max_tokens for t in tokens)
    assert level["tokens"]["completion_total"] == sum(tokens) and level["tokens"]["prompt_per_turn_mean"] > 3
    assert level["throughput"]["aggregate_tokens_per_s"] > 0
    assert level["throughput"]["per_session_tokens_per_s"]["count"] == played
    assert 0 < level["answer"]["p50_s"] and level["ttft"]["ratio_last_first"] > 0
    target = report["targets"]["levels"]["2"]
    assert target["update_lag_below_median_answer_met"] == (level["update_lag"]["p50_s"] < level["answer"]["p50_s"])
    assert report["targets"]["met"] is None  # the level (S=8) was not run
    assert len(level["load_average_before"]) == 3
    # Each session's last update (slowed by UPDATE_DELAY_S) was pending at the first poll: at least
    # two polls each; the warm-up's session polled too.
    assert level["session_polls"] >= 2 * played and report["session_polls"] > level["session_polls"]
    assert sessions_in(store) == sessions_before  # it deleted its sessions


def test_a_session_polls_cost_is_read_on_a_session_of_its_own(app):
    """The capacity profile's reading of a session poll (``GET /v1/sessions/{id}``): each serving
    process's CPU per poll — the Ingress's and the client's always some — and the polls' median
    wall time; the session it polled is gone afterwards."""
    from rxt_dist.eval.app_readings import session_poll_costs
    from rxt_dist.eval.profile import serving_processes

    url, store = app
    before = sorted(p.name for p in store.iterdir() if not p.name.startswith("_"))
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    assert {"proxy", "ingress", "store"} <= set(pids)
    costs = session_poll_costs(url, pids, dict.fromkeys([*pids, "client"], 0.0), polls=60)
    assert costs["polls"] == 60 and 0 < costs["wall_p50_s"] < 1
    assert set(costs["cpu_s"]) == {*pids, "client"}
    assert costs["cpu_s"]["ingress"] > 0 and costs["cpu_s"]["client"] > 0
    assert all(0 <= v < costs["wall_p50_s"] * 5 for v in costs["cpu_s"].values())
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith("_")) == before


def test_the_client_reports_failed_turns_and_calls_by_what_the_server_said(app):
    url, _ = app

    async def play():
        async with ServingClient(ServingConfig(url=url, model=MODEL), connections=2) as client:
            sid = await client.create_session()
            ok = await client.turn(sid, 1, "my name is ada")
            unknown = await client.turn("no-such-session", 1, "hello")
            with pytest.raises(RuntimeError, match=r"GET /v1/sessions/no-such-session answered 404: .*does not exist"):
                await client.session("no-such-session")
            await client.delete_session(sid)
            await client.delete_session(sid)  # already gone: not an error
            return ok, unknown

    ok, unknown = asyncio.run(play())
    assert ok.ok and ok.error is None and ok.version == 0 and ok.completion_tokens >= 1 and ok.chunks >= 1
    assert 0 < ok.ttft_s <= ok.answer_s
    assert (unknown.ok, unknown.error) == (False, "404 session_not_found")

    async def refused():  # nothing listens on this port
        async with ServingClient(ServingConfig(url=f"http://127.0.0.1:{free_port()}", model=MODEL), 1) as client:
            return await client.turn("sid", 1, "hello")

    lost = asyncio.run(refused())
    assert not lost.ok and lost.error.startswith("Client") and lost.ttft_s is None


def test_bad_options_are_refused_with_the_field_and_value():
    with pytest.raises(ValueError, match=r"url='http://example.com:8000'.*this machine"):
        ServingConfig(url="http://example.com:8000")
    with pytest.raises(ValueError, match=r"sessions=\[1, 0\]"):
        ServingConfig(sessions=(1, 0))
    with pytest.raises(ValueError, match=r"turns=0"):
        ServingConfig(turns=0)
    with pytest.raises(ValueError, match=r"rounds=0"):
        ServingConfig(rounds=0)
    with pytest.raises(ValueError, match=r"think_time_s=-1"):
        ServingConfig(think_time_s=-1)
    assert is_loopback_url("http://localhost:8000") and is_loopback_url("http://[::1]:8000")
    assert not is_loopback_url("http://10.0.0.1:8000")


def test_start_reads_the_shipped_serve_config():
    args, options = read_serve_config("serve/config.yaml")
    AppArgs.model_validate({**args, "deployment_options": options})
    assert set(options) == set(DEPLOYMENT_NAMES)
    fixed = pinned(options, 1)  # --fixed-replicas 1
    AppArgs.model_validate({**args, "deployment_options": fixed})
    assert all(o["num_replicas"] == 1 and "autoscaling_config" not in o for o in fixed.values())
    assert fixed["Generator"]["max_ongoing_requests"] == options["Generator"]["max_ongoing_requests"]
    # what the pinned replicas ask of Ray, checked before starting (2 × 0.5 + 2 × 0.5 + 2 × 0.1)
    assert pinned_cpus(pinned(options, 2)) == pytest.approx(2.2)


@pytest.mark.parametrize("argv", [["--url", "http://127.0.0.1:8000", "--fixed-replicas", "1"],
                                  ["--start", "--fixed-replicas", "0"]])
def test_fixed_replicas_needs_an_app_the_benchmark_starts(argv):
    with pytest.raises(SystemExit, match="--fixed-replicas"):
        bench_main(argv)
