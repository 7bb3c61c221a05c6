"""Serving benchmark: concurrent conversations against the running Ray Serve app, over HTTP.

For each concurrency level S, S sessions each hold a conversation of ``turns`` turns at the
same time. Every turn is a streamed, greedy chat request with a fixed ``max_tokens``. A session
sends its next turn as soon as its previous answer has ended (``think_time_s`` adds a pause).
That cadence is what stresses the server's ordering: the next turn must wait for the previous
turn's memory update, which runs only after that answer has ended. Per turn the client records:

* **time to first token** (TTFT): request sent → first streamed chunk after the role chunk
  (the first answer text, or the end of an empty answer). It includes any wait for the
  previous update;
* **answer time**: request sent → ``[DONE]``; the completion tokens (``include_usage``);
* **waited for an update**: the ``x-waited-for-update-ms`` response header (> 0: this
  request waited for a pending update before it could read the memory);
* **memory update lag**: end of this answer (client clock, at ``[DONE]``) → commit of the
  memory version it produced (server clock). The commit time is the next turn's
  ``x-memory-committed-at`` header; after a session's last turn it is polled from
  ``GET /v1/sessions/{id}`` (``memory_committed_at``). Both clocks are this machine's, which is
  why the benchmark only talks to a loopback address.

Sessions are created with ``POST /v1/sessions`` before the level starts, so turn 1 is a plain
turn (not a session creation), and deleted afterwards. Levels run one after another; a level
stops starting turns once ``max_level_s`` has passed (reported as ``truncated``). The report
has per-turn-index p50/p99 figures, throughput, the share of requests that waited, and the
serving targets judged on each level (TTFT p50 at the last turn ≤ 1.2 × turn 1, and the median
update lag below the median answer time; ``met`` at S = 8).

The config and the HTTP client live in :mod:`rxt_dist.eval.serving_client`, the sessions,
rounds and levels that load the server in :mod:`rxt_dist.eval.serving_levels`, the summaries
and targets in :mod:`rxt_dist.eval.serving_stats` and the table and plot in
:mod:`rxt_dist.eval.serving_report`; this module runs the benchmark and assembles the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from rxt_dist.eval.report import load_average, machine_info
from rxt_dist.eval.serving_client import (
    COMMITTED_HEADER,
    MAX_SESSIONS,
    MAX_TURNS,
    SESSION_HEADER,
    VERSION_HEADER,
    WAITED_HEADER,
    ServingClient,
    ServingConfig,
    TurnResult,
    is_loopback_url,
)
from rxt_dist.eval.serving_levels import (
    LevelRun,
    make_query,
    play_session,
    run_level,
    run_round,
    warm_up,
)
from rxt_dist.eval.serving_report import _ms, plot_serving, summary_table
from rxt_dist.eval.serving_stats import (
    TARGET_SESSIONS,
    TTFT_RATIO_TARGET,
    WINDOW_TURNS,
    judge_targets,
    percentile,
    summarise_level,
)

__all__ = [
    "COMMITTED_HEADER", "MAX_SESSIONS", "MAX_TURNS", "SESSION_HEADER", "TARGET_SESSIONS",
    "TTFT_RATIO_TARGET", "VERSION_HEADER", "WAITED_HEADER", "WINDOW_TURNS", "LevelRun",
    "ServingClient", "ServingConfig", "TurnResult", "is_loopback_url", "judge_targets",
    "make_query", "percentile", "play_session", "plot_serving", "run_level", "run_round",
    "run_serving", "summarise_level", "summary_table", "warm_up",
]

log = logging.getLogger(__name__)


def run_serving(cfg: ServingConfig, progress: bool = False, command: str | None = None,
                server: dict[str, Any] | None = None,
                describe_server: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every level of ``cfg`` against the application at ``cfg.url``; returns the report
    (fields in docs/evaluation.md). ``server`` describes what is being served (recorded as
    is); ``describe_server()`` is called after each level (e.g. replica counts)."""
    return asyncio.run(_run(cfg, progress, command, server or {}, describe_server))


async def _run(cfg: ServingConfig, progress: bool, command: str | None, server: dict[str, Any],
               describe_server: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    machine = machine_info()
    levels = []
    started = time.perf_counter()
    async with ServingClient(cfg, connections=max(cfg.sessions) + 4) as client:
        model = await client.model_id()
        await warm_up(client)
        total = sum(cfg.sessions) * cfg.turns * cfg.rounds
        with tqdm(total=total, desc="serving", unit="turn", disable=not progress) as bar:
            for sessions in cfg.sessions:
                bar.set_postfix_str(f"S={sessions}")
                run = await run_level(client, sessions, lambda: bar.update(1))
                if describe_server is not None:
                    run.server_state = describe_server()
                level = summarise_level(run, cfg)
                levels.append(level)
                log.info("S=%d: TTFT p50 turn 1 %s ms, turn %d %s ms; update lag p50 %s ms; waited %s",
                         sessions, _ms(level["ttft"]["turn1_p50_s"]), level["turns_played"],
                         _ms(level["ttft"]["last_turn_p50_s"]), _ms(level["update_lag"]["p50_s"]),
                         level["waited"]["share"])
        polls = client.session_polls
    return {
        "benchmark": "serving",
        "command": command,
        "config": {**dataclasses.asdict(cfg), "api_key": "***" if cfg.api_key else None},
        "machine": machine,
        "load_average_after": load_average(),
        "wall_s": time.perf_counter() - started,
        "session_polls": polls,
        "server": {**server, "url": cfg.url, "model_id": model},
        "levels": levels,
        "targets": judge_targets(levels),
    }
