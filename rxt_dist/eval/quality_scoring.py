"""How the quality evaluation judges answers: exact match of a greedy answer against the gold
value, and teacher-forced scores (NLL, token accuracy, value accuracy) of the gold answer.

Shape legend: B rows, T tokens, V vocabulary, K scored positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# -- exact match ----------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (``"Rex."`` → ``["rex", "."]``)."""
    return _WORD.findall(text.lower())


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def recall_exact_match(answer: str, gold: str, stale: Iterable[str] = ()) -> bool:
    """Exact-match recall: the gold value's words appear as a contiguous run of whole words
    in ``answer`` and no ``stale`` value (an older value of the same fact) appears.

    Words are compared lower-cased, with punctuation split off (:func:`words`), so
    ``"your pet is called rex ."`` matches gold ``rex`` but not ``rexa``; a multi-word value
    (``"apples , milk and soap"``) must appear whole and in order.
    """
    got = words(answer)
    if not _contains(got, words(gold)):
        return False
    return not any(_contains(got, words(s)) for s in stale if words(s) != words(gold))


def _stale_values(conv, turn: int) -> list[str]:
    """Values stated for the recalled fact before ``turn`` that are not the gold value."""
    rec = conv.turns[turn].recall
    return [t.value for t in conv.turns[:turn]
            if t.fact == rec.fact and t.value is not None and t.value != rec.gold]


EXACT_MATCH_DEFINITION = (
    "greedy answer (stopped at [EOS] or max_new_tokens), decoded with the dataset tokenizer, "
    "split into lower-cased words and punctuation marks; exact match = the gold value's words "
    "appear as a contiguous run and no older value of the same fact (stated earlier in the "
    "conversation, then updated) appears"
)


# -- teacher-forced scoring -----------------------------------------------------------------

def answer_positions(query_len: int, answer_len: int, offset: int = 0) -> range:
    """Logit positions that predict the answer tokens and the closing ``[EOS]`` of the
    interaction ``[BOS][Q] q [A] a [EOS]`` starting at ``offset`` (position p predicts p+1)."""
    first = offset + query_len + 2  # the [A] token
    return range(first, first + answer_len + 1)


def token_scores(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood and correctness (B, T) of the next token at the ``mask`` (B, T)
    logit positions of ``logits`` (B, T, V) against ``ids`` (B, T); 0 elsewhere."""
    mask = mask.to(logits.device).clone()
    mask[:, -1] = False  # the last position has no next token
    targets = torch.roll(ids, shifts=-1, dims=1)[mask]  # (K,): position p predicts token p+1
    picked = logits[mask].float()  # (K, V)
    nll = torch.zeros(ids.shape, dtype=torch.float32, device=logits.device)
    correct = torch.zeros(ids.shape, dtype=torch.bool, device=logits.device)
    nll[mask] = F.cross_entropy(picked, targets, reduction="none")
    correct[mask] = picked.argmax(dim=-1) == targets
    return nll.cpu(), correct.cpu()


@dataclass
class _Scored:
    """One turn's teacher-forced result in a batch row."""

    nll: float
    tokens: int
    correct: int
    value_ok: bool


def _score_rows(
    logits: Tensor, ids: Tensor, spans: Sequence[Sequence[tuple[range, range | None]]]
) -> list[list[_Scored]]:
    """Score the answer spans of each row: ``spans[b]`` lists, per turn in row b, the answer
    positions and (on recall turns) the positions predicting the gold value tokens."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for b, row in enumerate(spans):
        for answer, _ in row:
            mask[b, answer.start:answer.stop] = True
    nll, correct = token_scores(logits, ids, mask)
    out = []
    for b, row in enumerate(spans):
        scored = []
        for answer, value in row:
            sl = slice(answer.start, answer.stop)
            value_ok = bool(correct[b, value.start:value.stop].all()) if value is not None else False
            scored.append(_Scored(float(nll[b, sl].sum()), len(answer), int(correct[b, sl].sum()), value_ok))
        out.append(scored)
    return out


def _value_positions(turn, answer: range) -> range | None:
    """Logit positions predicting the gold value tokens of a recall turn (None otherwise)."""
    rec = turn.recall
    if rec is None or rec.gold_start < 0 or not rec.gold_ids:
        return None
    first = answer.start + rec.gold_start
    return range(first, first + len(rec.gold_ids))

