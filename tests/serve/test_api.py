import json
import subprocess
import sys

import pytest

from rxt_dist.serving.api import (
    ApiError,
    CreateSessionRequest,
    RequestLimits,
    parse_body,
    parse_chat_request,
    prepare_turn,
)

LIMITS = RequestLimits(max_message_tokens=20, max_tokens_limit=50, default_max_tokens=16, max_history_turns=2)


def body(**fields) -> bytes:
    base = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    return json.dumps({**base, **fields}).encode()


def refused(raw: bytes, codec=None, new_session=True) -> ApiError:
    with pytest.raises(ApiError) as info:
        req = parse_chat_request(raw)
        prepare_turn(req, codec, LIMITS, new_session)
    assert info.value.status == 400
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}
    return info.value


@pytest.mark.parametrize("raw, param, code", [
    (b"{not json", None, "invalid_json"),
    (b"", None, "invalid_json"),
    (b"[1, 2]", None, "model_type"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "missing"),
    (body(messages=[]), "messages", "too_short"),
    (body(messages="hello"), "messages", "list_type"),
    (body(messages=[{"content": "x"}]), "messages.0.role", "missing"),
    (body(messages=[{"role": "robot", "content": "x"}]), "messages.0.role", "literal_error"),
    (body(messages=[{"role": "user", "content": 5}]), "messages.0.content", None),
    (body(max_tokens="5"), "max_tokens", "int_type"),
    (body(max_tokens=2.5), "max_tokens", "int_type"),
    (body(stream="yes"), "stream", "bool_type"),
    (body(temperature="hot"), "temperature", "float_type"),
    (body(ignore_eos="yes"), "ignore_eos", "bool_type"),
    (body(ignore_eos=1), "ignore_eos", "bool_type"),
])
def test_malformed_requests_are_400_naming_the_field(raw, param, code):
    err = refused(raw)
    assert err.param == param
    if code is not None:
        assert err.code == code
    if param is not None:
        assert param in err.message


@pytest.mark.parametrize("fields, param, fragment", [
    ({"max_tokens": 0}, "max_tokens", "between 1 and 50"),
    ({"max_tokens": 51}, "max_tokens", "between 1 and 50"),
    ({"max_completion_tokens": 99}, "max_completion_tokens", "between 1 and 50"),
    ({"temperature": 2.5}, "temperature", "between 0 and 2"),
    ({"top_p": 0}, "top_p", "(0, 1]"),
    ({"n": 2}, "n", "n=1"),
    ({"stop": ["\n"]}, "stop", "not supported"),
    ({"seed": -1}, "seed", "2**63-1"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages.0.content", "empty"),
    ({"messages": [{"role": "user", "content": "word " * 40}]}, "messages.0.content", "limit is 20 tokens"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "messages.1.role", "last message"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "messages.0.role", "alternating"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 3
      + [{"role": "user", "content": "c"}]}, "messages", "at most 2"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "word " * 40},
                   {"role": "user", "content": "c"}]}, "messages.1.content", "limit is 20 tokens"),
])
def test_requests_outside_the_limits_are_400(reference, fields, param, fragment):
    err = refused(body(**fields), reference.codec)
    assert err.param == param and fragment in err.message


def test_defaults_follow_openai(reference):
    turn = prepare_turn(parse_chat_request(body()), reference.codec, LIMITS, True)
    assert turn.sampling.temperature == 1.0 and turn.sampling.top_p == 1.0
    assert turn.sampling.max_new_tokens == LIMITS.default_max_tokens
    assert turn.query_ids == reference.codec.encode("hello") and not turn.stream
    assert not turn.sampling.ignore_eos
    asked = prepare_turn(parse_chat_request(body(ignore_eos=True, max_tokens=7)), reference.codec, LIMITS, True)
    assert asked.sampling.ignore_eos and asked.sampling.max_new_tokens == 7


def test_new_session_history_is_split_into_system_and_turns(reference):
    codec = reference.codec
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "my name"}, {"type": "text", "text": " is ada"}]},
                {"role": "assistant", "content": "hello ada"},
                {"role": "user", "content": "what is my name?"}]
    turn = prepare_turn(parse_chat_request(body(messages=messages)), codec, LIMITS, new_session=True)
    assert turn.system_ids == codec.encode("be brief")
    assert turn.history == [(codec.encode("my name is ada"), codec.encode("hello ada"))]
    assert turn.query_ids == codec.encode("what is my name?")
    # With a session the earlier messages are already in memory: only the last one counts.
    again = prepare_turn(parse_chat_request(body(messages=messages)), codec, LIMITS, new_session=False)
    assert again.history == [] and again.system_ids is None and again.query_ids == turn.query_ids


def test_session_request_body_may_be_empty():
    assert parse_body(CreateSessionRequest, b"", empty_ok=True).system is None
    with pytest.raises(ApiError, match="'system'"):
        parse_body(CreateSessionRequest, b'{"system": 3}')


def test_limits_are_validated():
    with pytest.raises(ValueError, match="default_max_tokens=600: must be ≤ max_tokens_limit=512"):
        RequestLimits(default_max_tokens=600)
    with pytest.raises(ValueError, match="max_message_tokens=0"):
        RequestLimits(max_message_tokens=0)


def test_the_chat_client_imports_the_session_header_without_loading_torch():
    # one definition of the header (rxt_dist.serving.protocol); the package loads the rest lazily
    code = ("import sys; from rxt_dist.serving import client, protocol; "
            "assert client.SESSION_HEADER is protocol.SESSION_HEADER; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
