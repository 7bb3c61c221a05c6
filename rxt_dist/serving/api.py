"""The OpenAI-compatible chat API: request parsing, validation and response bodies.

Ray-free and model-free: :func:`parse_chat_request` turns the raw request body into a typed
request or an :class:`ApiError` (4xx, OpenAI's error shape); :func:`prepare_turn` checks it
against the server's limits and tokenizes it into a :class:`ChatTurn`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rxt_dist.inference import SamplingParams
from rxt_dist.serving.protocol import sse, transcript_start, transcript_step
from rxt_dist.serving.text import TextCodec

MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's API answers errors."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class RequestLimits:
    """What one chat request may ask of the server."""

    max_message_tokens: int = 512
    """Longest message, in tokens, the server accepts (longer → 400 ``context_length_exceeded``)."""
    max_tokens_limit: int = 512
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 128
    """Answer length when a request gives no ``max_tokens``."""
    max_history_turns: int = 64
    """Most earlier turns a new session's request may carry to be consolidated (migration)."""

    def __post_init__(self) -> None:
        for name in ("max_message_tokens", "max_tokens_limit", "default_max_tokens", "max_history_turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens={self.default_max_tokens}: must be ≤ "
                             f"max_tokens_limit={self.max_tokens_limit}")


# ---- request models (strict: "5" is not an integer, "true" is not a boolean) ----------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The fields of OpenAI's chat-completions request this server reads (others are ignored)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    """Not OpenAI's: the answer runs to ``max_tokens`` past the model's end-of-answer token
    (vLLM's extension of the same name; benchmarks ask for it)."""


class CreateSessionRequest(_Strict):
    """``POST /v1/sessions``: an optional system prompt that seeds the new session's memory."""

    system: str | None = None


_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _param(loc: tuple) -> str | None:
    """``("messages", 0, "content", "str")`` → ``messages.0.content`` (union branch tags dropped)."""
    parts = [str(p) for p in loc
             if str(p) not in _UNION_TAGS and "[" not in str(p) and not str(p).startswith("function-")]
    return ".".join(parts) or None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {first['msg']}", code="invalid_json")
    param = _param(first["loc"])
    where = f"'{param}'" if param else "request body"
    return ApiError(400, f"{where}: {first['msg']}", param=param, code=first["type"])


def parse_body(model: type[BaseModel], body: bytes, empty_ok: bool = False) -> BaseModel:
    """Validate a JSON request body against ``model``; :class:`ApiError` (400) if it does not fit."""
    if not body.strip():
        if empty_ok:
            return model()
        raise ApiError(400, "request body is empty: expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    return parse_body(ChatCompletionRequest, body)


# ---- checking a request against the limits and tokenizing it --------------------------------

@dataclass
class ChatTurn:
    """One validated, tokenized chat request."""

    query_ids: list[int]
    """The newest user message: the turn's event."""
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    system_ids: list[int] | None
    """System prompt of a new session (ignored for an existing one)."""
    history: list[tuple[list[int], list[int]]]
    """Earlier (user, assistant) turns to consolidate into a new session's memory first."""


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def sampling_params(req: ChatCompletionRequest, limits: RequestLimits) -> SamplingParams:
    """The request's sampling settings (OpenAI's defaults: temperature 1, top_p 1)."""
    if req.n not in (None, 1):
        raise _bad(f"n={req.n}: this server returns one choice per request; use n=1", "n")
    if req.stop:
        raise _bad("'stop' is not supported: answers end at the model's end-of-answer token "
                   "or at max_tokens", "stop", "unsupported_parameter")
    param = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    if not 1 <= max_tokens <= limits.max_tokens_limit:
        raise _bad(f"{param}={max_tokens}: must be between 1 and {limits.max_tokens_limit}", param)
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= 2.0:
        raise _bad(f"temperature={temperature}: must be between 0 and 2 (0 is greedy)", "temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise _bad(f"top_p={top_p}: must be in (0, 1]", "top_p")
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise _bad(f"seed={req.seed}: must be between 0 and 2**63-1", "seed")
    return SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=req.seed,
                          ignore_eos=req.ignore_eos)


def encode_message(codec: TextCodec, text: str, param: str, limits: RequestLimits) -> list[int]:
    """Token ids of one message; 400 when it is empty or longer than the token limit."""
    if not text.strip():
        raise _bad(f"'{param}' is empty: a message needs some text", param)
    ids = codec.encode(text)
    if len(ids) > limits.max_message_tokens:
        raise _bad(f"'{param}' is {len(ids)} tokens long; the limit is "
                   f"{limits.max_message_tokens} tokens per message", param, "context_length_exceeded")
    return ids


def _encode_message(codec: TextCodec, msg: ChatMessage, index: int, limits: RequestLimits) -> list[int]:
    return encode_message(codec, msg.text(), f"messages.{index}.content", limits)


def _encode_answer(codec: TextCodec, msg: ChatMessage, index: int, limits: RequestLimits) -> list[int]:
    """An earlier assistant answer being migrated: may be empty, not longer than the limit."""
    ids = codec.encode(msg.text()) if msg.text() else []
    if len(ids) > limits.max_message_tokens:
        raise _bad(f"'messages.{index}.content' is {len(ids)} tokens long; the limit is "
                   f"{limits.max_message_tokens} tokens per message", f"messages.{index}.content",
                   "context_length_exceeded")
    return ids


def _split_history(messages: list[ChatMessage]) -> tuple[list[int], list[tuple[int, int]]]:
    """Indices of the leading system messages and of the (user, assistant) pairs before the
    final user message; 400 when the messages do not have that shape."""
    i = 0
    system = []
    while i < len(messages) - 1 and messages[i].role in ("system", "developer"):
        system.append(i)
        i += 1
    pairs = []
    while i < len(messages) - 1:
        if messages[i].role != "user" or i + 1 >= len(messages) - 1 or messages[i + 1].role != "assistant":
            raise _bad(f"messages[{i}]: a new conversation's messages must be system messages, then "
                       "alternating user/assistant turns, then the new user message",
                       f"messages.{i}.role")
        pairs.append((i, i + 1))
        i += 2
    return system, pairs


def system_text(req: ChatCompletionRequest) -> str | None:
    """The leading system messages of ``req``, joined (None when there are none)."""
    system, _ = _split_history(req.messages)
    return "\n".join(req.messages[i].text() for i in system) if system else None


def history_transcript(req: ChatCompletionRequest, owner: str | None) -> str | None:
    """The transcript hash of the history ``req`` resends before its new user message (None
    when it resends no earlier turn): a stateless client continuing a conversation sends the
    transcript its session stands at. 400 when the messages do not have the history shape."""
    _, pairs = _split_history(req.messages)
    if not pairs:
        return None
    transcript = transcript_start(owner, system_text(req))
    for u, a in pairs:
        transcript = transcript_step(transcript, req.messages[u].text(), req.messages[a].text())
    return transcript


def prepare_turn(req: ChatCompletionRequest, codec: TextCodec, limits: RequestLimits,
                 new_session: bool) -> ChatTurn:
    """Validate ``req`` and tokenize what the turn needs.

    With a session only the last message (which must be the user's) is new; without one the
    earlier messages are the history a stateless client migrates into a new session.
    """
    sampling = sampling_params(req, limits)
    last = len(req.messages) - 1
    if req.messages[last].role != "user":
        raise _bad(f"messages[{last}] has role '{req.messages[last].role}': the last message "
                   "must be the user's new message", f"messages.{last}.role")
    query_ids = _encode_message(codec, req.messages[last], last, limits)
    system_ids, history = None, []
    if new_session:
        system, pairs = _split_history(req.messages)
        if system:
            system_ids = _encode_message(codec, ChatMessage(role="system", content=system_text(req)), system[0],
                                         limits)
        if len(pairs) > limits.max_history_turns:
            raise _bad(f"messages hold {len(pairs)} earlier turns; a new session migrates at most "
                       f"{limits.max_history_turns}", "messages", "too_many_turns")
        history = [(_encode_message(codec, req.messages[u], u, limits),
                    _encode_answer(codec, req.messages[a], a, limits)) for u, a in pairs]
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return ChatTurn(query_ids, sampling, req.stream, include_usage, system_ids, history)


# ---- response bodies -------------------------------------------------------------------------

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(cid: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    """A non-streamed ``chat.completion``."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage_,
    }


def chunk_event(cid: str, model: str, delta: dict, finish_reason: str | None = None,
                usage_: dict | None = None) -> str:
    """One server-sent event carrying a ``chat.completion.chunk``."""
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [] if usage_ is not None else
             [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if usage_ is not None:
        chunk["usage"] = usage_
    return sse(chunk)


def error_event(err: ApiError) -> str:
    """An error inside an already started stream (its HTTP status has been sent)."""
    return sse(err.body())


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body from its chunks, refused (413) as soon as it grows past ``limit`` bytes: a
    body without ``content-length`` is never read whole before the check."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)
