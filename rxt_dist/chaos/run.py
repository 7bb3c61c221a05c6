"""One chaos run: conversations played while faults are injected, then the verdict."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rxt_dist.chaos.client import (
    ClientConfig,
    Pace,
    SessionLog,
    play_sessions,
    settled_sessions,
)
from rxt_dist.chaos.inject import Fault, FaultInjector, fault_summary
from rxt_dist.chaos.verdict import Verdict, judge


@dataclass
class ChaosResult:
    logs: list[SessionLog]
    faults: list[Fault]
    verdict: Verdict
    play_s: float

    def summary(self) -> dict[str, Any]:
        return {"play_s": round(self.play_s, 1), "faults": fault_summary(self.faults),
                "fault_log": [vars(f) for f in self.faults], "verdict": self.verdict.summary()}


def fault_pace(injector: FaultInjector, faults: int, turns: int, poll_s: float = 0.05) -> Pace:
    """Hold turn ``t`` of every session until ``ceil(t · faults / (turns − 1))`` faults were
    injected: the last turns are sent only after the ``faults``-th kill, so that many faults fall
    inside the play however fast the machine plays. No hold once the injector has stopped."""

    async def pace(t: int) -> None:
        need = faults if turns <= 1 else math.ceil(t * faults / (turns - 1))
        while injector.injected < need and injector.injecting:
            await asyncio.sleep(poll_s)

    return pace


def run_chaos(cfg: ClientConfig, texts: Sequence[Sequence[str]], expected: Sequence[Sequence[str]],
              injector: FaultInjector | None, seed: int = 0, settle_timeout_s: float = 30.0,
              session_ids: Sequence[str] | None = None, faults_during_play: int = 0) -> ChaosResult:
    """Play ``texts`` (one session per conversation: ``session_ids`` when given, else new ones)
    while ``injector`` kills actors; stop it when every conversation has ended, wait for the
    last updates, judge against ``expected``. With ``faults_during_play`` > 0 the turns are
    paced (:func:`fault_pace`) so that at least that many faults are injected during the play."""
    if faults_during_play < 0:
        raise ValueError(f"faults_during_play={faults_during_play}: must be ≥ 0 (0: no pacing)")
    started = time.monotonic()
    pace = None
    if injector is not None:
        injector.start()
        if faults_during_play > 0:
            pace = fault_pace(injector, faults_during_play, max(map(len, texts), default=0))
    try:
        logs = asyncio.run(play_sessions(cfg, texts, seed, session_ids, pace))
    finally:
        faults = injector.stop() if injector is not None else []
    play_s = time.monotonic() - started
    records = asyncio.run(settled_sessions(cfg, [log.sid for log in logs], settle_timeout_s))
    return ChaosResult(logs, faults, judge(logs, expected, records), play_s)


@torch.no_grad()
def fault_free_answers(model_dir: str, texts: Sequence[Sequence[str]], max_tokens: int,
                       seed: int = 0) -> list[list[str]]:
    """The greedy answers of each conversation played alone in this process, from the app's
    seeded initial STM: what the server must reproduce whatever it went through."""
    from rxt_dist.inference import SamplingParams, consolidate, generate
    from rxt_dist.model import load_model_dir, load_tokenizer
    from rxt_dist.serving.text import TextCodec

    model = load_model_dir(model_dir).eval()
    codec = TextCodec(load_tokenizer(model_dir))
    answers = []
    for conversation in texts:
        stm = model.initial_stm(1, torch.Generator().manual_seed(seed))  # (L, 1, S, D)
        answers.append([])
        for text in conversation:
            query = codec.encode(text)
            ids = generate(model, [query], stm, SamplingParams(max_new_tokens=max_tokens))[0]
            answers[-1].append(codec.decode_answer(ids))
            stm = consolidate(model, stm, [query], [ids])  # (L, 1, S, D)
    return answers
