"""The serving application end to end: real Ray Serve on a local cluster, real HTTP.

One cluster and two applications for the whole module: ``main`` (route ``/``) and ``slow``
(route ``/slow``: the updater sleeps ``UPDATE_DELAY_S`` before each commit, one of two API
keys is required, and sessions are spread over two store shards). Every answer is compared with the
same model answering the conversation alone in this process (:class:`conftest.Reference`,
greedy decoding).
"""

import io
import json
import os
import threading
import time

import httpx
import openai
import psutil
import pytest
import ray
from ray import serve
from ray.serve import RunTarget

from rxt_dist.ports import free_port
from rxt_dist.serving.client import main as chat_main
from rxt_dist.serving.session_records import is_session_id
from rxt_dist.serving.sessions import StoreConfig
from serve.app import build_app
from serve.args import DEPLOYMENT_NAMES, AppArgs
from serve.ray_env import use_high_throughput_serve, with_serve_transport
from serve.store import StoreShards, stop_session_stores

pytestmark = pytest.mark.timeout(300)

MAX_TOKENS = 12
KEY = "test-key"
OTHER_KEY = "another-tenant-key"
UPDATE_DELAY_S = 2.0
MODEL = "rxt-test"  # the model directory's name
# Quick to stop and to notice a dead replica; no per-request access log lines on the driver.
FAST = {"graceful_shutdown_timeout_s": 0.1, "graceful_shutdown_wait_loop_s": 0.1,
        "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0},
        "logging_config": {"enable_access_log": False}}
A = ["my name is ada", "what is my name?", "tell me a story"]
B = ["the cat sat on the mat", "where do i live?", "remember my favourite colour is green"]


def app_args(model_dir: str, store_url: str, **changes) -> AppArgs:
    return AppArgs(model_dir=model_dir, store_url=store_url, max_message_tokens=40, max_tokens_limit=200,
                   default_max_tokens=MAX_TOKENS, update_wait_timeout_s=60, update_stale_s=5,
                   deployment_options={name: FAST for name in DEPLOYMENT_NAMES},
                   # one event per token: the disconnect tests count tokens by the events they read
                   **{"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0, **changes})


class Server:
    """HTTP helpers for one application of the test cluster."""

    def __init__(self, url: str, prefix: str = "", key: str | None = None) -> None:
        self.url, self.prefix = url, prefix
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url + prefix, timeout=120, headers=headers)

    def chat(self, text: str, sid: str | None = None, **fields) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}],
                "max_tokens": MAX_TOKENS, "temperature": 0, **fields}
        return self.http.post("/v1/chat/completions", json=body,
                              headers={"x-session-id": sid} if sid else {})

    def answer(self, text: str, sid: str | None = None) -> tuple[str, str]:
        """Non-streamed turn → (answer, session id)."""
        r = self.chat(text, sid)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"], r.headers["x-session-id"]

    def stream(self, text: str, sid: str | None = None, **fields) -> tuple[str, str, list]:
        """Streamed turn → (answer, session id, parsed events)."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}],
                "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True, **fields}
        with self.http.stream("POST", "/v1/chat/completions", json=body,
                              headers={"x-session-id": sid} if sid else {}) as r:
            assert r.status_code == 200, r.read()
            events = [_event(line) for line in r.iter_lines() if line.startswith("data: ")]
        deltas = [e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]]
        return "".join(deltas), r.headers["x-session-id"], events

    def session(self, sid: str) -> dict:
        r = self.http.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        return r.json()

    def settled(self, sid: str, timeout_s: float = 60) -> dict:
        """The session once no turn is being answered and no update is pending."""
        deadline = time.monotonic() + timeout_s
        while (info := self.session(sid))["pending_update"] or info["answering"]:
            assert time.monotonic() < deadline, f"update of {sid} still pending: {info}"
            time.sleep(0.05)
        return info

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the application did not become healthy"
            time.sleep(0.2)


def _event(line: str):
    data = line[len("data: "):]
    return data if data == "[DONE]" else json.loads(data)


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def cluster(model_dir, tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # metrics on the endpoint within ~1 s
    use_high_throughput_serve(drain_s=0.5)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=METRICS_PORT)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    root = tmp_path_factory.mktemp("serve")
    (root / "keys").write_text(f"# tenants\n{KEY}\n{OTHER_KEY}  # the second one\n")
    args = {"main": app_args(model_dir, str(root / "sessions")),
            "slow": app_args(model_dir, str(root / "slow-sessions"), update_delay_s=UPDATE_DELAY_S,
                             api_keys_file=str(root / "keys"), store_shards=2)}
    serve.run_many([RunTarget(build_app(args["main"]), "main", "/"),
                    RunTarget(build_app(args["slow"]), "slow", "/slow")])
    url = f"http://127.0.0.1:{port}"
    Server(url).wait_healthy()
    Server(url, "/slow").wait_healthy()
    yield url, args
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def main(cluster) -> Server:
    return Server(cluster[0])


@pytest.fixture(scope="module")
def slow(cluster) -> Server:
    return Server(cluster[0], "/slow", key=KEY)


# ---- answers --------------------------------------------------------------------------------

def test_a_first_answer_is_the_models_answer(main, reference):
    assert main.http.get("/healthz").json()["status"] == "ok"
    assert [m["id"] for m in main.http.get("/v1/models").json()["data"]] == [MODEL]
    r = main.chat(A[0])
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == reference.conversation(A[:1], MAX_TOKENS)[0]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS
    assert is_session_id(r.headers["x-session-id"]) and r.headers["x-memory-version"] == "0"
    # vLLM's ignore_eos reaches the decoding loop (this random model never ends an answer early,
    # so the answer is the same; tests/model/test_compiled.py has one that would)
    fixed = main.chat(A[0], ignore_eos=True).json()
    assert fixed["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    assert fixed["usage"]["completion_tokens"] == MAX_TOKENS


def test_a_streamed_answer_equals_the_whole_answer(main, reference):
    text, sid, events = main.stream(B[0], stream_options={"include_usage": True})
    assert text == reference.conversation(B[:1], MAX_TOKENS)[0]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum(1 for e in events[1:-3] if e["choices"][0]["delta"].get("content")) >= 2  # really streamed
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"]["completion_tokens"] == MAX_TOKENS
    assert events[-1] == "[DONE]"
    assert is_session_id(sid)


def test_two_sessions_interleaved_get_what_each_gets_alone(main, reference):
    got = {"A": [], "B": []}
    sids = {"A": None, "B": None}
    for turn in range(3):
        text, sids["A"], _ = main.stream(A[turn], sids["A"])  # one streamed,
        got["A"].append(text)
        text, sids["B"] = main.answer(B[turn], sids["B"])  # one not
        got["B"].append(text)
    assert got["A"] == reference.conversation(A, MAX_TOKENS)
    assert got["B"] == reference.conversation(B, MAX_TOKENS)
    # The memory matters: a fresh session asked A's second question answers differently.
    assert got["A"][1] != reference.conversation(A[1:2], MAX_TOKENS)[0]
    for sid in sids.values():
        info = main.settled(sid)
        assert (info["turns"], info["memory_version"]) == (3, 3)


def test_concurrent_requests_are_decoded_together(main, reference):
    texts = [A[0], B[0], A[2], B[2]]
    answers = [None] * len(texts)
    length = 60  # long enough that the four answers overlap in time

    def ask(i):
        r = main.chat(texts[i], max_tokens=length)
        answers[i] = r.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [reference.conversation([t], length)[0] for t in texts]
    stats = serve.get_deployment_handle("Generator", "main").stats.remote().result()
    assert stats["max_rows"] >= 2


def test_a_turn_finds_the_memory_the_updater_sent_ahead_and_a_miss_reads_the_store(main, reference):
    generator = serve.get_deployment_handle("Generator", "main")

    def stm_stats() -> dict:
        return generator.stats.remote().result()["stm"]

    before = stm_stats()
    first, sid = main.answer(A[0])
    assert main.settled(sid)["memory_version"] == 1
    deadline = time.monotonic() + 30
    while generator.stats.remote(session=sid).result()["stm_version"] != 1:  # sent ahead, on its way
        assert time.monotonic() < deadline, "the updater did not send the new STM to the session's Generator"
        time.sleep(0.05)
    updater = serve.get_deployment_handle("MemoryUpdater", "main")
    updates_before = updater.stats.remote().result()["stm"]
    second, _ = main.answer(A[1], sid)
    after = stm_stats()
    assert [first, second] == reference.conversation(A[:2], MAX_TOKENS)
    # Turn 1 read the new session's STM from the store; turn 2 found version 1 on the replica.
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    stm_bytes = after["fetched_bytes"] - before["fetched_bytes"]
    assert stm_bytes > 0 and after["pushed_bytes"] - before["pushed_bytes"] >= stm_bytes
    # Turn 2's update started from the STM the updater computed for turn 1: no store read.
    assert main.settled(sid)["memory_version"] == 2
    updates_after = updater.stats.remote().result()["stm"]
    assert updates_after["hits"] - updates_before["hits"] == 1 and updates_after["misses"] == updates_before["misses"]


def test_the_openai_client_holds_a_conversation(main, reference):
    client = openai.OpenAI(base_url=main.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": A[0]}], max_tokens=MAX_TOKENS, temperature=0)
    sid = raw.headers["x-session-id"]
    first = raw.parse().choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": A[1]}], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, extra_headers={"x-session-id": sid})
    second = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert [first, second] == reference.conversation(A[:2], MAX_TOKENS)


OPENAI_TURNS = 70


def test_a_stateless_openai_client_continues_its_session_for_70_turns(main, reference):
    """The openai SDK as people use it: no session header, the whole history resent every
    turn. Each turn continues the same session with one consolidation (no re-migration, no
    turn limit: main allows 64 migrated turns, fewer than these 70), and the answers are those
    of the same conversation held with x-session-id."""
    client = openai.OpenAI(base_url=main.url + "/v1", api_key="unused", max_retries=0)
    updater = serve.get_deployment_handle("MemoryUpdater", app_name="main")
    texts = [(A + B)[i % 6] for i in range(OPENAI_TURNS)]
    messages, sids, ttft, applied = [{"role": "system", "content": "you remember names"}], [], [], []
    for text in texts:
        messages.append({"role": "user", "content": text})
        before = updater.stats.remote().result()["applied"]
        started = time.perf_counter()
        with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True) as r:
            sids.append(r.headers["x-session-id"])
            answer = ""
            for chunk in r.parse():
                if chunk.choices and chunk.choices[0].delta.content and not answer:
                    ttft.append(time.perf_counter() - started)
                answer += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        messages.append({"role": "assistant", "content": answer})
        info = main.settled(sids[-1])
        applied.append(updater.stats.remote().result()["applied"] - before)
        assert info["memory_version"] == info["turns"] == len(sids), info
    assert len(set(sids)) == 1
    # one consolidation per turn, never the history again (the first window may also hold
    # the last update of the test before)
    assert applied[1:] == [1] * (OPENAI_TURNS - 1) and applied[0] >= 1
    stm = reference.new_stm(system="you remember names")
    expected = []
    for text in texts:
        answer, _, stm = reference.turn(stm, text, MAX_TOKENS)
        expected.append(answer)
    assert [m["content"] for m in messages[2::2]] == expected
    print(f"TTFT turns 1-10 median {1e3 * sorted(ttft[:10])[5]:.1f} ms, "
          f"last 10 median {1e3 * sorted(ttft[-10:])[5]:.1f} ms")
    # An edited earlier message diverges: a new session, migrated from the edited history.
    edited = [messages[0], {"role": "user", "content": "my name is bob"}, *messages[2:5],
              {"role": "user", "content": A[1]}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=edited, max_tokens=MAX_TOKENS,
                                                           temperature=0)
    assert raw.headers["x-session-id"] != sids[0]
    assert main.session(sids[0])["turns"] == OPENAI_TURNS  # the original is untouched


def test_a_stateless_client_migrates_its_history_into_a_new_session(main, reference):
    messages = [{"role": "system", "content": "you remember names"},
                {"role": "user", "content": A[0]}, {"role": "assistant", "content": "hello ada"},
                {"role": "user", "content": A[1]}]
    r = main.http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages,
                                                     "max_tokens": MAX_TOKENS, "temperature": 0})
    assert r.status_code == 200, r.text
    stm = reference.new_stm(system="you remember names", history=[(A[0], "hello ada")])
    assert r.json()["choices"][0]["message"]["content"] == reference.turn(stm, A[1], MAX_TOKENS)[0]
    info = main.settled(r.headers["x-session-id"])
    assert (info["turns"], info["memory_version"]) == (2, 1)


def test_sessions_api_create_read_delete(main, reference):
    r = main.http.post("/v1/sessions", json={"system": "you remember names"})
    assert r.status_code == 201
    sid = r.headers["x-session-id"]
    assert r.json() == {**r.json(), "id": sid, "turns": 0, "memory_version": 0, "pending_update": False}
    answer, _ = main.answer(A[0], sid)
    assert answer == reference.turn(reference.new_stm(system="you remember names"), A[0], MAX_TOKENS)[0]
    assert main.http.delete(f"/v1/sessions/{sid}").json() == {"id": sid, "object": "session.deleted", "deleted": True}
    for r in (main.http.get(f"/v1/sessions/{sid}"), main.chat(A[1], sid), main.http.delete(f"/v1/sessions/{sid}")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_a_second_request_on_a_busy_session_gets_409(main):
    _, sid = main.answer(A[0])
    main.settled(sid)
    body = {"model": MODEL, "messages": [{"role": "user", "content": A[1]}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    with main.http.stream("POST", "/v1/chat/completions", json=body, headers={"x-session-id": sid}) as first:
        lines = first.iter_lines()
        next(line for line in lines if '"content"' in line and '"role"' not in line)  # mid-answer now
        assert main.session(sid)["answering"]
        second = main.chat(A[2], sid)
        assert second.status_code == 409 and second.json()["error"]["code"] == "session_busy"
        assert second.headers["retry-after"] == "1"
        assert [line for line in lines if line][-1] == "data: [DONE]"
    info = main.settled(sid)
    assert (info["turns"], info["memory_version"]) == (2, 2)  # the refused request left no trace


def test_a_client_that_disconnects_mid_answer_gets_the_part_produced_consolidated(main, reference):
    body = {"model": MODEL, "messages": [{"role": "user", "content": A[0]}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    received = 0
    with main.http.stream("POST", "/v1/chat/completions", json=body) as r:
        sid = r.headers["x-session-id"]
        for line in r.iter_lines():
            received += '"content"' in line and '"role"' not in line
            if received == 3:
                break  # leaving the block closes the connection mid-answer
    info = main.settled(sid)
    assert (info["turns"], info["memory_version"]) == (1, 1)
    answer, _ = main.answer(A[1], sid)
    # Which prefix of the answer went into memory? The next answer tells: it is the answer
    # after consolidating the first k tokens, for a k short of the full 200.
    stm0 = reference.new_stm()
    _, full_ids, _ = reference.turn(stm0, A[0], 200)
    assert len(full_ids) == 200

    def next_answer_after(k: int) -> str:
        return reference.turn(reference.consolidated(stm0, A[0], full_ids[:k]), A[1], MAX_TOKENS)[0]

    # a strict prefix (the answer was cut short) of at least what the client read; on a loaded
    # machine the Generator may run far ahead of the Ingress noticing the disconnect
    if not any(next_answer_after(k) == answer for k in range(received, 200)):
        whole = next_answer_after(200) == answer
        pytest.fail("the next answer matches no consolidation of a truncated first answer"
                    + (" (it matches the whole answer: the disconnect came too late to cut it)" if whole else ""))


# ---- bad input ------------------------------------------------------------------------------

def _chat_body(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


BAD_REQUESTS = {
    "malformed json": ("POST", "/v1/chat/completions", {}, b'{"model": ', 400, "invalid_json"),
    "not utf-8": ("POST", "/v1/chat/completions", {}, b"\xff\xfe{}", 400, "invalid_json"),
    "body is a list": ("POST", "/v1/chat/completions", {}, b"[]", 400, "model_type"),
    "missing messages": ("POST", "/v1/chat/completions", {}, b'{"model": "rxt-test"}', 400, "missing"),
    "missing model": ("POST", "/v1/chat/completions", {}, b'{"messages": []}', 400, None),
    "max_tokens a string": ("POST", "/v1/chat/completions", {}, _chat_body(max_tokens="5"), 400, "int_type"),
    "stream not a bool": ("POST", "/v1/chat/completions", {}, _chat_body(stream="yes"), 400, "bool_type"),
    "messages not a list": ("POST", "/v1/chat/completions", {}, _chat_body(messages={"a": 1}), 400, "list_type"),
    "empty message": ("POST", "/v1/chat/completions", {},
                      _chat_body(messages=[{"role": "user", "content": ""}]), 400, "invalid_value"),
    "over-long message": ("POST", "/v1/chat/completions", {},
                          _chat_body(messages=[{"role": "user", "content": "ada " * 60}]), 400,
                          "context_length_exceeded"),
    "max_tokens 0": ("POST", "/v1/chat/completions", {}, _chat_body(max_tokens=0), 400, "invalid_value"),
    "max_tokens too big": ("POST", "/v1/chat/completions", {}, _chat_body(max_tokens=201), 400, "invalid_value"),
    "unknown session": ("POST", "/v1/chat/completions", {"x-session-id": "sess_" + "0" * 32},
                        _chat_body(), 404, "session_not_found"),
    "malformed session id": ("POST", "/v1/chat/completions", {"x-session-id": "../../etc"},
                             _chat_body(), 404, "session_not_found"),
    "unknown model": ("POST", "/v1/chat/completions", {}, _chat_body(model="gpt-9"), 404, "model_not_found"),
    "get unknown session": ("GET", "/v1/sessions/sess_" + "1" * 32, {}, None, 404, "session_not_found"),
    "delete unknown session": ("DELETE", "/v1/sessions/nope", {}, None, 404, "session_not_found"),
    "system prompt not a string": ("POST", "/v1/sessions", {}, b'{"system": 5}', 400, "string_type"),
    "body too large": ("POST", "/v1/chat/completions", {}, b" " * (4 * 2**20 + 1), 413, "request_too_large"),
    "unknown route": ("GET", "/v1/nothing", {}, None, 404, "not_found"),
    "wrong method": ("GET", "/v1/chat/completions", {}, None, 405, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_in_openais_error_shape(main, case):
    method, path, headers, content, status, code = BAD_REQUESTS[case]
    r = main.http.request(method, path, headers={"content-type": "application/json", **headers}, content=content)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    assert main.http.get("/healthz").status_code == 200


# ---- the slowed updater: ordering, failures, auth --------------------------------------------

def test_an_api_key_protects_every_route_but_health(slow):
    bare = httpx.Client(base_url=slow.url + "/slow", timeout=30)
    assert bare.get("/healthz").status_code == 200
    for client in (bare, httpx.Client(base_url=slow.url + "/slow", headers={"authorization": "Bearer nope"})):
        for r in (client.get("/v1/models"), client.post("/v1/chat/completions", json={}),
                  client.post("/v1/sessions"), client.get("/v1/sessions/sess_" + "0" * 32)):
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
    assert slow.http.get("/v1/models").status_code == 200


def test_the_update_runs_after_the_answer_and_the_next_turn_waits_for_it(slow, reference):
    first, sid, _ = slow.stream(A[0])
    # The whole answer arrived while the (slowed) update is still running…
    info = slow.session(sid)
    assert info["pending_update"] and info["memory_version"] == 0
    # …and the next turn, sent right away, is answered from the memory that update writes.
    r = slow.chat(A[1], sid)
    assert r.status_code == 200 and r.headers["x-memory-version"] == "1"
    assert [first, r.json()["choices"][0]["message"]["content"]] == reference.conversation(A[:2], MAX_TOKENS)


def test_updates_of_different_conversations_are_batched(slow, reference):
    texts = [A[0], B[0], A[2]]
    updater = serve.get_deployment_handle("MemoryUpdater", "slow")
    # Updates dispatched while a batch runs (each sleeps UPDATE_DELAY_S) queue and go in
    # together. On a loaded machine three answers may end further apart than that: a few rounds.
    for _ in range(3):
        sids = [None] * len(texts)

        def first_turn(i):
            sids[i] = slow.answer(texts[i])[1]

        threads = [threading.Thread(target=first_turn, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sid, text in zip(sids, texts):
            assert slow.settled(sid)["memory_version"] == 1
            # Consolidated in a batch, each memory still leads to its own conversation's next answer.
            assert slow.answer(A[1], sid)[0] == reference.conversation([text, A[1]], MAX_TOKENS)[1]
        if updater.stats.remote().result()["max_batch"] >= 2:
            break
    stats = updater.stats.remote().result()
    assert stats["max_batch"] >= 2
    # what the capacity check reads of each update: its call's wait on the Ingress after the answer
    # ended and its transit from there (both stamped there), its wait for a batch, the
    # consolidation's own time on its thread
    assert stats["timed"] >= 2 and stats["transit_s"] > 0 and stats["queued_s"] > 0
    assert 2 <= stats["handed"] <= stats["timed"] and stats["handover_s"] >= 0
    assert stats["gaps"] < stats["batches"] and stats["gap_s"] >= 0  # the batcher's wait after a batch
    assert 0 < stats["consolidate_cpu_s"] <= stats["consolidate_run_s"] * 1.05 + 1e-3
    assert stats["consolidate_run_s"] <= stats["consolidate_s"]


def _replica_actors(app: str, deployment: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def test_killing_the_updater_mid_update_loses_and_repeats_nothing(slow, reference):
    first, sid, _ = slow.stream(B[0])
    assert slow.session(sid)["pending_update"]
    (name,) = _replica_actors("slow", "MemoryUpdater")
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)  # mid-update (it sleeps UPDATE_DELAY_S)
    second, _ = slow.answer(B[1], sid)
    third, _ = slow.answer(B[2], sid)
    assert [first, second, third] == reference.conversation(B, MAX_TOKENS)
    info = slow.settled(sid)
    assert (info["turns"], info["memory_version"]) == (3, 3)
    assert _replica_actors("slow", "MemoryUpdater") != [name]  # Serve replaced the replica


# ---- the chat CLI and a restart (last: it redeploys ``main``) ---------------------------------

def test_the_chat_cli_streams_and_keeps_the_session(main, reference):
    out = io.StringIO()
    code = chat_main(["--url", main.url, "--max-tokens", str(MAX_TOKENS), "--temperature", "0"],
                     stdin=io.StringIO(f"{A[0]}\n{A[1]}\n/session\n/quit\n"), stdout=out)
    assert code == 0
    lines = out.getvalue().splitlines()
    expected = reference.conversation(A[:2], MAX_TOKENS)
    assert [line for line in lines if line.startswith("rxt> ")] == [f"rxt> {a}" for a in expected]
    sessions = {line for line in lines if line.startswith("[session ")}
    assert len(sessions) == 1  # both turns in one session
    assert json.loads(lines[-1])["turns"] == 2


def test_a_session_survives_a_restart_of_the_application_and_the_store(cluster, main, reference):
    url, args = cluster
    _, sid = main.answer(A[0])
    main.answer(A[1], sid)
    main.settled(sid)
    serve.delete("main")
    assert stop_session_stores(args["main"].store_url, args["main"].store_shards) == 1
    serve.run(build_app(args["main"]), name="main", route_prefix="/")
    main.wait_healthy()
    third, _ = main.answer(A[2], sid)
    assert third == reference.conversation(A, MAX_TOKENS)[2]
    assert main.settled(sid)["turns"] == 3


def test_a_running_store_shard_takes_the_settings_of_a_new_deployment(cluster, tmp_path):
    """Store shards are detached: they outlive the deployment that created them. A deployment
    with other store settings must not silently get the old ones."""
    url = str(tmp_path / "reconfigured")
    first = StoreShards(StoreConfig(url=url, cache_sessions=5, session_ttl_s=60), 1)
    assert ray.get(first.handles[0].get_config.remote()).cache_sessions == 5
    second = StoreShards(StoreConfig(url=url, cache_sessions=9, session_ttl_s=600), 1)
    assert ray.get(second.configured) == [["cache_sessions", "session_ttl_s"]]  # what the shard logs
    assert ray.get(second.handles[0].get_config.remote()) == StoreConfig(url=url, cache_sessions=9, session_ttl_s=600)
    assert stop_session_stores(url, 1) == 1


def test_a_store_shard_keeps_its_start_up_heap_out_of_the_cycle_collectors_walks(cluster, tmp_path):
    """A full collection walks every tracked object of the process; the shard's start-up objects
    (Ray, pyarrow, …) are frozen once it is constructed, so a collection walks its sessions only."""
    url = str(tmp_path / "frozen")
    shard = StoreShards(StoreConfig(url=url), 1).handles[0]

    def heap(store) -> tuple[int, int]:
        import gc
        gc.collect()
        return gc.get_freeze_count(), len(gc.get_objects(2))

    frozen, walked = ray.get(shard.__ray_call__.remote(heap))
    assert frozen > 50_000 and walked < frozen / 5, (frozen, walked)
    assert stop_session_stores(url, 1) == 1


# ---- idempotent retries, tenants, bodies, logs -----------------------------------------------

def test_a_retried_turn_with_the_same_idempotency_key_is_answered_once(main, reference):
    _, sid = main.answer(A[0])
    main.settled(sid)
    key = {"idempotency-key": "turn-2-of-this-chat"}
    first = main.http.post("/v1/chat/completions", json=_chat_json(A[1]), headers={"x-session-id": sid, **key})
    assert first.status_code == 200 and "x-idempotent-replay" not in first.headers
    after_first = main.settled(sid)
    # The answer was lost on the way; the client retries the same turn, plain and streamed.
    again = main.http.post("/v1/chat/completions", json=_chat_json(A[1]), headers={"x-session-id": sid, **key})
    assert again.status_code == 200 and again.headers["x-idempotent-replay"] == "true"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    with main.http.stream("POST", "/v1/chat/completions", json=_chat_json(A[1], stream=True),
                          headers={"x-session-id": sid, **key}) as r:
        events = [_event(line) for line in r.iter_lines() if line.startswith("data: ")]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert streamed == first.json()["choices"][0]["message"]["content"] and events[-1] == "[DONE]"
    assert main.settled(sid) == after_first and after_first["turns"] == 2  # nothing applied twice
    # A new key is a new turn, answered from the memory of both earlier turns.
    stm = reference.new_stm()
    _, _, stm = reference.turn(stm, A[0], MAX_TOKENS)
    _, _, stm = reference.turn(stm, A[1], MAX_TOKENS)
    r = main.http.post("/v1/chat/completions", json=_chat_json(A[2]),
                       headers={"x-session-id": sid, "idempotency-key": "turn-3"})
    assert r.json()["choices"][0]["message"]["content"] == reference.turn(stm, A[2], MAX_TOKENS)[0]
    bad = main.http.post("/v1/chat/completions", json=_chat_json(A[2]),
                         headers={"x-session-id": sid, "idempotency-key": "x" * 300})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "idempotency-key"


def _chat_json(text: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": MAX_TOKENS,
            "temperature": 0, **fields}


def test_a_session_belongs_to_the_key_that_created_it(slow):
    other = Server(slow.url, "/slow", key=OTHER_KEY)
    r = slow.http.post("/v1/sessions")
    assert r.status_code == 201
    sid = r.headers["x-session-id"]
    for r in (other.http.get(f"/v1/sessions/{sid}"), other.chat(A[0], sid),
              other.http.delete(f"/v1/sessions/{sid}"), other.http.delete(f"/v1/sessions/{sid}/pending")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert slow.session(sid)["turns"] == 0  # untouched by the other tenant
    assert other.http.post("/v1/sessions").status_code == 201  # both keys are accepted


def test_a_body_without_content_length_is_refused_while_it_streams(main):
    def chunks():
        for _ in range(80):  # 5 MiB, more than the 4 MiB limit, sent chunked (no content-length)
            yield b" " * 65536

    r = main.http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert main.http.get("/healthz").status_code == 200


def test_session_ids_do_not_appear_in_the_logs(main):
    """A session id is a capability; logs name sessions by a short hash."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": A[0]}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    with main.http.stream("POST", "/v1/chat/completions", json=body) as r:
        sid = r.headers["x-session-id"]
        for line in r.iter_lines():
            if '"content"' in line and '"role"' not in line:
                break  # a disconnect: the Ingress logs it
    main.settled(sid)
    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    deadline = time.monotonic() + 10
    while True:  # the INFO line about the disconnect reaches the replica's log file
        text = "".join(open(os.path.join(d, f), errors="replace").read()
                       for d, _, files in os.walk(logs) for f in files if f.endswith(".log"))
        if "client went away" in text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "client went away" in text
    assert sid not in text and sid[len("sess_"):] not in text


# ---- what an operator watches ----------------------------------------------------------------

def test_the_http_port_is_served_by_haproxy_in_serves_high_throughput_mode(main):
    """serve/ray_env.py: HAProxy, not Serve's Python proxy, holds the application's HTTP port
    (and the answers above came through it)."""
    port = httpx.URL(main.url).port
    owners = {c.pid for c in psutil.net_connections("tcp")
              if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    assert owners and {psutil.Process(pid).name() for pid in owners} == {"haproxy"}


@serve.deployment(**FAST)
class Echo:
    def __call__(self, text: str) -> str:
        return text


@serve.deployment(**FAST)
class Caller:
    """Holds a handle made in this driver, as the Ingress and the MemoryUpdater hold theirs."""

    def __init__(self, echo) -> None:
        self.made_here = echo.handle_options._by_reference
        self.echo = with_serve_transport(echo)

    async def __call__(self, text: str) -> dict:
        return {"made_here_by_reference": self.made_here,
                "by_reference": self.echo.handle_options._by_reference, "echo": await self.echo.remote(text)}


def test_replicas_call_each_other_over_grpc_whatever_the_driver_imported_first(cluster):
    """This module imports Serve before the high-throughput variables are set, so the handles it
    builds into an application would make Ray actor calls; a replica's handles go over gRPC,
    the transport of the cluster it runs in."""
    handle = serve.run(Caller.bind(Echo.bind()), name="transport", route_prefix=None)
    try:
        seen = handle.remote("over grpc").result(timeout_s=60)
    finally:
        serve.delete("transport")
    assert seen == {"made_here_by_reference": True, "by_reference": False, "echo": "over grpc"}


def test_operators_metrics_are_on_the_prometheus_endpoint(main, slow):
    """After the module's traffic (answers, busy sessions, waits for updates), every metric
    docs/serving.md lists is exported by the node's Prometheus endpoint."""
    _, sid = main.answer(A[0])
    main.answer(A[1], sid)
    main.settled(sid)
    expected = ['ray_rxt_requests_total{', 'code="ok"', 'code="session_not_found"', "ray_rxt_generated_tokens_total",
                "ray_rxt_decode_batch_size", "ray_rxt_memory_updates_total", "ray_rxt_update_batch_size_bucket",
                "ray_rxt_update_lag_seconds_bucket", "ray_rxt_waited_for_update_total",
                "ray_rxt_update_wait_seconds_bucket", "ray_rxt_sessions_cached", "ray_rxt_sessions_in_use",
                "ray_rxt_pending_updates", 'shard="0"']
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        missing = [name for name in expected if name not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"not on the endpoint: {missing}; " + "\n".join(
        line for line in text.splitlines() if "rxt_requests" in line)
    tokens = [line for line in text.splitlines() if line.startswith("ray_rxt_generated_tokens_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in tokens) >= 2 * MAX_TOKENS


SCALING = {**FAST, "autoscaling_config": {
    "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "metrics_interval_s": 0.5,
    "look_back_period_s": 1.0, "upscale_delay_s": 0.5, "downscale_delay_s": 2.0}}


def _running(app: str, deployment: str) -> int:
    states = serve.status().applications[app].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


def test_autoscaling_adds_a_generator_under_load_and_removes_it_after_without_a_failed_turn(
        cluster, model_dir, reference, tmp_path):
    """Load on a Generator with a target of one ongoing request adds a second replica; once the
    load stops it is removed. Every turn during both answers as the model does alone."""
    url, _ = cluster
    args = app_args(model_dir, str(tmp_path / "sessions"))
    args.deployment_options["Generator"] = SCALING
    serve.run(build_app(args), name="scaling", route_prefix="/scaling")
    server = Server(url, "/scaling")
    server.wait_healthy()
    texts = [A[i % 3] for i in range(200)]
    stop, results, errors = threading.Event(), {}, []

    def play(k: int) -> None:
        sid, answers = None, []
        try:
            for text in texts:
                if stop.is_set():
                    break
                r = server.http.post("/v1/chat/completions", headers={"x-session-id": sid} if sid else {},
                                     json={"model": MODEL, "messages": [{"role": "user", "content": text}],
                                           "max_tokens": 60, "temperature": 0})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                sid = r.headers["x-session-id"]
                answers.append(r.json()["choices"][0]["message"]["content"])
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            errors.append(repr(exc))
        results[k] = answers

    try:
        players = [threading.Thread(target=play, args=(k,)) for k in range(4)]
        for t in players:
            t.start()
        deadline, peak = time.monotonic() + 90, 1
        while time.monotonic() < deadline and peak < 2 and not errors:
            peak = max(peak, _running("scaling", "Generator"))
            time.sleep(0.25)
        stop.set()
        for t in players:
            t.join()
        assert not errors, errors[:3]
        assert peak == 2, "the Generator was not scaled up under load"
        deadline = time.monotonic() + 90
        while _running("scaling", "Generator") > 1:
            assert time.monotonic() < deadline, "the added Generator replica was not removed after the load"
            time.sleep(0.25)
        # Every committed STM the updater sent ahead to a Generator arrived (none left routing).
        updater = serve.get_deployment_handle("MemoryUpdater", "scaling")
        while updater.stats.remote().result()["sending"]:
            assert time.monotonic() < deadline, "STMs sent ahead to the Generators never arrived"
            time.sleep(0.25)
        expected = reference.conversation(texts[:max(len(a) for a in results.values())], 60)
        for answers in results.values():  # every session said the same: the same answers as alone
            assert answers and answers == expected[:len(answers)]
    finally:
        serve.delete("scaling")
