"""The application's arguments (``args:`` in ``serve/config.yaml``), validated by pydantic."""

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from rxt_dist.serving.api import RequestLimits
from rxt_dist.serving.sessions import StoreConfig

DEPLOYMENT_NAMES = ("Ingress", "Generator", "MemoryUpdater")
MAKE_DEMO_HINT = "`make demo` trains one and exports it to runs/tiny/models/smat"


def absolute_url(url: str) -> str:
    """A local path made absolute (replicas do not share the caller's working directory);
    URLs with a protocol (``s3://…``, ``file://…``) are left alone."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


class AppArgs(BaseModel):
    """Everything the serving application is built from."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = None
    """Model directory exported by training (config.json, model.safetensors, tokenizer.json);
    any fsspec URL. ``serve/config.yaml`` points at the one ``make demo`` exports."""
    random_demo_model: bool = False
    """Serve a RANDOMLY initialised ``debug`` model written to ``demo_dir`` instead of
    ``model_dir`` (answers are noise): for tests and for trying the API before training."""
    model_name: str | None = None
    """The model id of ``/v1/models`` (default: the model directory's name)."""
    demo_dir: str = "runs/serve/demo-model"
    """Where the random demo model is written when no ``model_dir`` is given."""
    device: str = "cpu"
    """torch device of the Generator and MemoryUpdater replicas (``cpu``, ``cuda``)."""

    store_url: str = "runs/serve/sessions"
    """Where sessions persist: a directory or any fsspec URL."""
    store_shards: int = 1
    """Session-store actors; sessions are spread over them by id."""
    store_cache_sessions: int = 4096
    """Settled sessions each store shard keeps in memory."""
    turn_lease_s: float = 120.0
    """A session claimed by a request whose server died is freed after this long (an answer
    that is still streaming renews its claim)."""
    session_ttl_s: float | None = 30 * 86400.0
    """A session idle this long (no turn) is deleted from storage; None: never."""
    store_max_sessions: int | None = 1_000_000
    """Most sessions each store shard keeps; new ones beyond it get 503 (None: no cap)."""
    store_sweep_interval_s: float = 300.0
    """How often each store shard deletes expired sessions."""

    max_batch_size: int = 32
    """Sequences one Generator replica decodes together."""
    compile_decode: bool = False
    """Prefill and decode through the compiled model (``torch.compile``; the eager passes are
    the fallback): faster per token, but each Generator replica spends tens of seconds
    compiling at start."""
    compile_update: bool = False
    """Consolidate through the compiled memory update (``torch.compile``; the eager update is
    the fallback): each MemoryUpdater replica compiles for tens of seconds at start."""
    stream_interval_s: float = 0.05
    """The Generator sends an answer's tokens to the Ingress at most this often (the tokens
    decoded meanwhile go together in one message, and one server-sent event); the first token
    is never held back. 0: send whatever is ready as soon as the Ingress takes it — one event
    per token, each costing ~5 ms of CPU across the serving processes (docs/BENCHMARKS.md)."""
    stream_chunks_per_s: float = 200.0
    """The most chunks (server-sent events) one Generator replica's answers send per second
    together: with more than ``stream_chunks_per_s × stream_interval_s`` answers streaming
    from a replica, each answer's interval stretches to share this budget (32 answers at 200:
    one chunk per 0.16 s each), so the serving path's per-chunk cost stays bounded under load.
    The first token and the end of an answer are never held back. 0: no budget."""
    stm_cache_sessions: int = 4096
    """STMs each Generator replica keeps (sessions, least recently used dropped first). A
    session's turns go to one replica, which the MemoryUpdater sends each new STM to, so the
    STM does not cross the object store on the response path; each MemoryUpdater replica keeps
    as many of the STMs it computed, for the session's next update. 0: every turn reads it
    from the session store."""
    update_batch_size: int = 16
    """Memory updates one MemoryUpdater replica applies in one batch."""
    update_batch_wait_s: float = 0.0
    """How long an idle updater waits for more updates before starting a batch (updates that
    arrive while a batch runs go in the next one whatever this is). 0 since 2026-12-07: a lone
    session's next turn waits for its update, and the 5 ms wait had been half of that update's
    lag (docs/BENCHMARKS.md, "The MemoryUpdater's wait for company")."""

    max_message_tokens: int = 512
    """Longest accepted message, in tokens."""
    max_tokens_limit: int = 512
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 128
    """Answer length when a request gives no ``max_tokens``."""
    max_history_turns: int = 64
    """Most earlier turns a request without a session may carry (migrated into memory)."""

    update_wait_timeout_s: float = 30.0
    """How long a request waits for its session's previous memory update before a 503."""
    update_stale_s: float = 10.0
    """A pending update older than this is dispatched again by the next request (its first
    dispatcher may have died); duplicates are harmless (compare-and-set)."""
    update_retry_s: float = 120.0
    """How long a dispatcher keeps retrying a failing update call."""
    initial_stm_seed: int = 0
    """Seed of a new session's initial STM (the same for every session, so a conversation's
    answers are reproducible)."""

    api_key: str | None = None
    """Bearer key required on every route but /healthz (None: no key)."""
    api_key_env: str | None = None
    """Name of an environment variable holding the key, or several separated by commas
    (keeps them out of config files)."""
    api_keys_file: str | None = None
    """A file of accepted keys, one per line (``#`` starts a comment). Each session belongs
    to the key that created it: other keys get 404 for it."""

    update_delay_s: float = 0.0
    """TEST KNOB: the updater sleeps this long before committing each batch."""
    deployment_options: dict[str, dict[str, Any]] = {}
    """Per-deployment ``.options(...)`` overrides, keyed by deployment name (for code that
    calls ``build_app`` directly; ``serve/config.yaml`` uses its ``deployments:`` section)."""

    @field_validator("store_shards", "store_cache_sessions", "max_batch_size", "update_batch_size",
                     "max_message_tokens", "max_tokens_limit", "default_max_tokens", "max_history_turns")
    @classmethod
    def _at_least_one(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name}={value}: must be ≥ 1")
        return value

    @field_validator("update_wait_timeout_s", "update_stale_s", "update_retry_s", "turn_lease_s",
                     "store_sweep_interval_s")
    @classmethod
    def _positive(cls, value: float, info) -> float:
        if value <= 0:
            raise ValueError(f"{info.field_name}={value}: must be > 0 seconds")
        return value

    @field_validator("update_delay_s", "update_batch_wait_s", "stream_interval_s")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:
        if value < 0:
            raise ValueError(f"{info.field_name}={value}: must be ≥ 0 seconds")
        return value

    @field_validator("stream_chunks_per_s")
    @classmethod
    def _rate(cls, value: float, info) -> float:
        if value < 0:
            raise ValueError(f"{info.field_name}={value}: must be ≥ 0 chunks a second (0: no budget)")
        return value

    @field_validator("stm_cache_sessions")
    @classmethod
    def _count(cls, value: int, info) -> int:
        if value < 0:
            raise ValueError(f"{info.field_name}={value}: must be ≥ 0 (0 turns the cache off)")
        return value

    @field_validator("deployment_options")
    @classmethod
    def _known_deployments(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(DEPLOYMENT_NAMES))
        if unknown:
            raise ValueError(f"deployment_options names {unknown}: the deployments are {list(DEPLOYMENT_NAMES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        self.limits()  # RequestLimits checks default_max_tokens ≤ max_tokens_limit
        given = [n for n in ("api_key", "api_key_env", "api_keys_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are {'both' if len(given) == 2 else 'all'} set: "
                             "give the keys one way")
        self.store_config()  # StoreConfig checks the TTL and the cap
        if self.model_dir is None and not self.random_demo_model:
            raise ValueError(f"model_dir is not set: give the directory of a trained model ({MAKE_DEMO_HINT}), "
                             "or set random_demo_model: true to serve a random model whose answers are noise")
        if self.model_dir is not None and self.random_demo_model:
            raise ValueError("model_dir and random_demo_model are both set: serve one or the other")
        return self

    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_message_tokens, self.max_tokens_limit, self.default_max_tokens,
                             self.max_history_turns)

    def store_config(self) -> StoreConfig:
        return StoreConfig(url=self.store_url, cache_sessions=self.store_cache_sessions,
                           turn_lease_s=self.turn_lease_s, session_ttl_s=self.session_ttl_s,
                           max_sessions=self.store_max_sessions, sweep_interval_s=self.store_sweep_interval_s)

    def resolved_api_keys(self) -> list[str] | None:
        """The accepted keys (None: the API is open)."""
        if self.api_key is not None:
            keys = [self.api_key]
        elif self.api_key_env is not None:
            keys = [k.strip() for k in os.environ.get(self.api_key_env, "").split(",") if k.strip()]
            if not keys:
                raise ValueError(f"api_key_env={self.api_key_env!r}: that environment variable is not set "
                                 "(or holds no key)")
        elif self.api_keys_file is not None:
            try:
                with open(os.path.expanduser(self.api_keys_file), encoding="utf-8") as f:
                    lines = [line.partition("#")[0].strip() for line in f]
            except OSError as exc:
                raise ValueError(f"api_keys_file={self.api_keys_file!r}: cannot be read ({exc.strerror})") from None
            keys = [line for line in lines if line]
            if not keys:
                raise ValueError(f"api_keys_file={self.api_keys_file!r}: holds no key")
        else:
            return None
        return keys
