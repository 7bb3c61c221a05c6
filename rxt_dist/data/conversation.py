"""The in-memory form of a dialogue: a conversation is a list of turns (query, answer).

Token ids here are the ids of the text only, without special tokens; the model adds
``[BOS][Q] … [A] … [EOS]`` itself through :mod:`rxt_dist.tokens`. A conversation fresh from
the generator or an importer has empty id lists; :func:`rxt_dist.data.tokenize_conversations`
fills them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FACT = "fact"
"""A turn that states a fact for the first time ("my pet is called rex .")."""
UPDATE = "update"
"""A turn that changes a fact stated earlier; the new value wins from here on."""
FILLER = "filler"
"""Small talk: no fact is stated or needed."""
RECALL = "recall"
"""A question whose gold answer holds a value stated in an earlier turn."""
UNKNOWN = "unknown"
"""An imported turn: nothing is known about what it states or needs."""

TURN_KINDS: tuple[str, ...] = (FACT, UPDATE, FILLER, RECALL, UNKNOWN)


@dataclass
class RecallInfo:
    """What a recall turn asks for and where the answer was given.

    ``answer_ids[gold_start : gold_start + len(gold_ids)] == gold_ids``: exact-match recall
    compares the model's tokens at those positions (or its decoded text) with ``gold``.
    """

    fact: str
    """The fact key, ``"<owner>.<attribute>"`` (e.g. ``"me.pet"``, ``"sister.city"``)."""
    stated_turn: int
    """Index of the turn that last stated or updated the fact before this turn."""
    distance: int
    """This turn's index minus ``stated_turn`` (≥ 1)."""
    gold: str
    """The gold value text (e.g. ``"rex"``)."""
    facts_held: int
    """How many distinct facts the conversation had stated before this turn."""
    updated: bool = False
    """True when the fact was changed at least once, so an older value is a wrong answer."""
    mentioned_turn: int = -1
    """The last turn before this one whose text held the gold value: ``stated_turn``, or a later
    recall turn that asked for the same value (its answer repeats it). -1 when unknown."""
    seen: bool = True
    """True when the gold value occurred in the training split (always, in the training split
    itself). False only for a held-out value of the open value space: recall of it needs copying,
    not a memorised value (docs/data.md)."""
    gold_ids: list[int] = field(default_factory=list)
    """Token ids of ``gold`` as it appears in the answer (empty until tokenized)."""
    gold_start: int = -1
    """Where ``gold_ids`` starts in the turn's ``answer_ids`` (-1 until tokenized)."""


@dataclass
class Turn:
    """One interaction: the user's query and the model's answer."""

    query: str
    answer: str
    query_ids: list[int] = field(default_factory=list)
    answer_ids: list[int] = field(default_factory=list)
    kind: str = UNKNOWN
    """One of :data:`TURN_KINDS`."""
    recall: RecallInfo | None = None
    """Set on recall turns only."""
    fact: str | None = None
    """The fact key a fact/update/recall turn is about; ``None`` otherwise."""
    value: str | None = None
    """The value a fact/update turn states, or the gold value of a recall turn."""


@dataclass
class Conversation:
    """A conversation: an id and its turns in order."""

    conversation_id: str
    turns: list[Turn]

    @property
    def recall_turns(self) -> list[tuple[int, Turn]]:
        """(index, turn) of every recall turn."""
        return [(i, t) for i, t in enumerate(self.turns) if t.recall is not None]

    def text(self) -> str:
        """The plain-text view: every query and answer joined by spaces (stage-1 pre-training)."""
        return " ".join(part for t in self.turns for part in (t.query, t.answer))

    def token_ids(self) -> list[int]:
        """The plain-token view: query and answer ids of every turn, concatenated."""
        ids: list[int] = []
        for t in self.turns:
            ids.extend(t.query_ids)
            ids.extend(t.answer_ids)
        return ids
