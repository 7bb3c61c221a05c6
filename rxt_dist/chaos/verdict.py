"""The verdict on a chaos run: every answered turn applied exactly once, every answer the
one a run without faults gives.

For a session whose client read answers to turns 0…n-1 (each logical turn counted once, however
many attempts it took):

* **memory version** (``GET /v1/sessions/{id}``, once settled) must be n. Fewer: a turn the
  client was answered was never applied (*lost*). More: a turn was applied twice (*doubled*,
  e.g. a retry of an attempt whose turn had been recorded).
* **the answer to turn k** must have been generated from memory version k
  (``x-memory-version``): the same test, turn by turn, at the moment it happened;
* **the answer text** must equal the fault-free greedy answer of that conversation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rxt_dist.chaos.client import SessionLog


@dataclass
class Verdict:
    """Counts over all sessions, and the first few cases of each kind of failure."""

    sessions: int = 0
    turns_checked: int = 0
    attempts: int = 0
    retries: Counter = field(default_factory=Counter)
    lost: int = 0
    doubled: int = 0
    wrong_answers: int = 0
    wrong_versions: int = 0
    """Answers generated from another memory version than their turn index."""
    still_pending: int = 0
    """Sessions whose last update had not committed when the verdict was taken."""
    failed_sessions: int = 0
    cases: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.wrong_answers or self.wrong_versions
                    or self.still_pending or self.failed_sessions)

    def note(self, case: str, limit: int = 20) -> None:
        if len(self.cases) < limit:
            self.cases.append(case)

    def summary(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "turns_checked": self.turns_checked, "attempts": self.attempts,
                "retried_attempts": sum(self.retries.values()), "retries_by_reason": dict(self.retries),
                "lost_turns": self.lost, "doubled_turns": self.doubled, "wrong_answers": self.wrong_answers,
                "wrong_memory_versions": self.wrong_versions, "sessions_still_pending": self.still_pending,
                "failed_sessions": self.failed_sessions, "ok": self.ok, "cases": list(self.cases)}


def judge(logs: Sequence[SessionLog], expected: Sequence[Sequence[str]], records: dict[str, dict]) -> Verdict:
    """Judge each session's log against its fault-free answers ``expected`` and its final
    ``records`` (from :func:`rxt_dist.chaos.client.settled_sessions`)."""
    v = Verdict(sessions=len(logs))
    for i, (log, want) in enumerate(zip(logs, expected, strict=True)):
        v.retries.update(log.retries)
        v.attempts += sum(t.attempts for t in log.turns)
        if log.failure is not None:
            v.failed_sessions += 1
            v.note(f"session {i} ({log.sid}) failed: {log.failure}")
        answered = log.answered
        v.turns_checked += len(answered)
        wrong_versions = [k for k, turn in enumerate(answered) if turn.memory_version != k]
        wrong_answers = [k for k, turn in enumerate(answered) if turn.answer != want[k]]
        v.wrong_versions += len(wrong_versions)
        v.wrong_answers += len(wrong_answers)
        if wrong_versions or wrong_answers:  # the first of each tells the story; the rest follow
            v.note(f"session {i} ({log.sid}): {_first_wrong(answered, want, wrong_versions, wrong_answers)}")
        last_retries = answered[-1].failures if answered else []
        _judge_record(v, i, log.sid, len(answered), records.get(log.sid, {"missing": True}), last_retries)
    return v


def _judge_record(v: Verdict, i: int, sid: str, answered: int, record: dict, last_retries: list[str]) -> None:
    if record.get("missing"):
        v.lost += answered
        v.note(f"session {i} ({sid}): the session is gone")
        return
    if record["pending_update"]:
        v.still_pending += 1
        v.note(f"session {i} ({sid}): update still pending at version {record['memory_version']} "
               f"(update_error {record.get('update_error')}); the last turn was retried after {last_retries}")
    version = record["memory_version"] + (1 if record["pending_update"] else 0)
    if version < answered:
        v.lost += answered - version
        v.note(f"session {i} ({sid}): {answered} turns answered, memory version {version}")
    elif version > answered:
        v.doubled += version - answered
        v.note(f"session {i} ({sid}): {answered} turns answered, memory version {version}")


def _first_wrong(answered: Sequence, want: Sequence[str], versions: list[int], answers: list[int]) -> str:
    parts = []
    if versions:
        k = versions[0]
        parts.append(f"turn {k} answered from memory version {answered[k].memory_version}")
    if answers:
        k = answers[0]
        parts.append(f"turn {k} answer {answered[k].answer!r}, fault-free {want[k]!r}")
    first = min(versions[:1] + answers[:1])
    retried = [f"turn {j}: {t.failures}" for j, t in enumerate(answered[:first + 1]) if t.failures]
    return "; ".join(parts) + f"; retries up to there: {retried}"
