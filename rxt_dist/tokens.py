"""The token format every part of rxt_dist agrees on.

One interaction (a turn) is ``[BOS][Q] query [A] answer [EOS]``. The decoder is prompted with
``[BOS][Q] query [A]`` and generates the answer up to ``[EOS]``; the memory encoder reads the
whole interaction. The special tokens take the first ids of every tokenizer the project
trains, in the order of :data:`SPECIAL_TOKENS`, so a model and a tokenizer agree on them
without looking each other up.
"""

from __future__ import annotations

from collections.abc import Sequence

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[Q]", "[A]", "[MASK]")

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
Q_ID = 4
A_ID = 5
MASK_ID = 6
NUM_SPECIAL = len(SPECIAL_TOKENS)


def prompt_ids(query_ids: Sequence[int]) -> list[int]:
    """The decoder prompt of one turn: ``[BOS][Q] query [A]``."""
    return [BOS_ID, Q_ID, *query_ids, A_ID]


def interaction_ids(query_ids: Sequence[int], answer_ids: Sequence[int]) -> list[int]:
    """The full interaction the memory encoder reads: ``[BOS][Q] query [A] answer [EOS]``."""
    return [BOS_ID, Q_ID, *query_ids, A_ID, *answer_ids, EOS_ID]


def history_ids(turns: Sequence[tuple[Sequence[int], Sequence[int]]], query_ids: Sequence[int]) -> list[int]:
    """What a stateless model reads for a turn: every earlier interaction, then the new prompt."""
    ids: list[int] = []
    for q, a in turns:
        ids.extend(interaction_ids(q, a))
    ids.extend(prompt_ids(query_ids))
    return ids
