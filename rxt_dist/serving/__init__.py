"""Ray-free pieces of the serving application (``serve/``): the OpenAI-compatible request
and response shapes, safe text encoding and streaming detokenisation, and the versioned
session store."""

from rxt_dist.serving.api import (
    ApiError,
    ChatCompletionRequest,
    ChatTurn,
    RequestLimits,
    error_body,
    parse_chat_request,
    prepare_turn,
)
from rxt_dist.serving.sessions import (
    SessionMeta,
    SessionStore,
    StoreConfig,
    is_session_id,
    new_session_id,
    shard_of,
)
from rxt_dist.serving.text import Detokenizer, TextCodec

__all__ = [
    "ApiError", "ChatCompletionRequest", "ChatTurn", "RequestLimits", "error_body",
    "parse_chat_request", "prepare_turn", "SessionMeta", "SessionStore", "StoreConfig",
    "is_session_id", "new_session_id", "shard_of", "Detokenizer", "TextCodec",
]
