"""Ray-free pieces of the serving application (``serve/``): the OpenAI-compatible request
and response shapes, safe text encoding and streaming detokenisation, and the versioned
session store.

The names below are imported on first use, not with the package: the terminal chat client
(:mod:`rxt_dist.serving.client`) imports :mod:`rxt_dist.serving.protocol` and needs the
standard library only, while the session store and the text codec load torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ApiError": "api", "ChatCompletionRequest": "api", "ChatTurn": "api", "RequestLimits": "api",
    "error_body": "api", "parse_chat_request": "api", "prepare_turn": "api",
    "SessionMeta": "session_records", "SessionStore": "sessions", "StoreConfig": "sessions",
    "is_session_id": "session_records", "new_session_id": "session_records", "shard_of": "session_records",
    "Detokenizer": "text", "TextCodec": "text",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
