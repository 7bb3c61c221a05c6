"""Where the values of facts come from: the closed lexicon, or the open value space.

``closed``: a few hundred fixed values per attribute (:func:`rxt_dist.data.lexicon.attribute_values`),
shared by every split. A model can memorise them.

``open``: values come from a space far larger than any corpus — pseudo-words of 2–3 syllables
(about two million), numbers 100–99999 (years left out) and years 1500–2099. A stable hash of
``(LEXICON_SEED, attribute, value)`` puts every value into the **training pool** or the
**held-out pool**. The training split draws only training-pool values; later splits draw held-out
values, apart from a share of statements that reuse a value the training split actually used, so
recall on seen and on unseen values can both be measured. Word values are also owned by exactly
one word attribute (a stable hash of the word's ending), so a held-out pet name never spells a
training city.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from rxt_dist.data.conversation import FACT, UPDATE, Conversation
from rxt_dist.data.lexicon import (
    _AVOID,
    _CODAS,
    _ONSETS,
    _VOWELS,
    ATTRIBUTES,
    LEXICON_SEED,
    attribute_values,
    template_words,
)

VALUE_SPACES = ("open", "closed")

WORD_ATTRIBUTES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES.values() if a.values == "word")
"""Every attribute whose values are pseudo-words; each open word belongs to one of them."""
OPEN_KINDS = frozenset({"word", "number", "year"})
"""Value kinds the open space draws; lists and appointments keep their closed values."""

ONSETS: tuple[str, ...] = _ONSETS
VOWELS: tuple[str, ...] = _VOWELS
SYLLABLES: tuple[str, ...] = tuple(o + v for o in ONSETS for v in VOWELS)
"""Consonant + vowel: every syllable of an open word starts with one (a coda may end the word)."""
CODAS: tuple[str, ...] = tuple(sorted({c for c in _CODAS if c}))
"""Consonants that may end a word."""
YEARS = range(1500, 2100)
NUMBER_DIGITS = (3, 4, 5)
"""A number's length is drawn first, so 3-, 4- and 5-digit numbers are equally common."""

_TWO_SYLLABLES = 0.5  # share of two-syllable words; the rest have three
_SHARE_SCALE = 1_000_000
_MAX_DRAWS = 100_000  # a draw is accepted with probability ≈ its pool's share
_SEEN_TRIES = 20


def _digest(text: str) -> int:
    """A 64-bit hash that is the same in every process and Python version (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def is_heldout(attribute: str, value: str, share: float) -> bool:
    """True when ``value`` of ``attribute`` lies in the held-out pool (a fraction ``share`` of the
    space); decided by a stable hash of ``(LEXICON_SEED, attribute, value)``."""
    return _digest(f"{LEXICON_SEED}/{attribute}/{value}") % _SHARE_SCALE < round(share * _SHARE_SCALE)


def _ending(word: str) -> str:
    """The last two syllables and the coda: what decides a word's owner."""
    return word[-5:] if word[-1] in CODAS else word[-4:]


def _ending_owner(ending: str) -> str:
    return WORD_ATTRIBUTES[_digest(f"{LEXICON_SEED}/owner/{ending}") % len(WORD_ATTRIBUTES)]


def word_owner(word: str) -> str:
    """The one word attribute that may use ``word``: a stable hash of its last two syllables and
    coda over :data:`WORD_ATTRIBUTES` (so a word of an attribute is drawn without rejection)."""
    return _ending_owner(_ending(word))


@functools.lru_cache(maxsize=1)
def _template_starts() -> frozenset[str]:
    return frozenset(w[:4] for w in template_words() if len(w) >= 4)


_AVOID_RE = re.compile("|".join(sorted(_AVOID, key=len, reverse=True)))
_WORD_RE = re.compile(rf"^(?:[{''.join(_ONSETS)}][{''.join(_VOWELS)}]){{2,3}}[{''.join(CODAS)}]?$")


def is_open_word(word: str) -> bool:
    """True when the open space can make ``word``: 2–3 consonant-vowel syllables and an optional
    final coda, not starting like a template word, not containing a word from the avoid list.

    Starting like a template word (``"name…"``, ``"reme…"``) is left out because the tokenizer
    builds template words from syllable tokens (rxt_dist/data/syllable_bpe.py): such a value would
    begin with a template-word piece instead of its own syllables.
    """
    return bool(_WORD_RE.match(word)) and word[:4] not in _template_starts() and not _AVOID_RE.search(word)


@functools.lru_cache(maxsize=1)
def _endings() -> dict[str, tuple[str, ...]]:
    """Per word attribute, the two-syllable endings with optional coda it owns ("" twice in _CODAS:
    2 words in 7 end in a vowel). A word is an ending, or a syllable followed by one."""
    out: dict[str, list[str]] = {a: [] for a in WORD_ATTRIBUTES}
    for ending in (a + b + c for a in SYLLABLES for b in SYLLABLES for c in _CODAS):
        out[_ending_owner(ending)].append(ending)
    return {a: tuple(e) for a, e in out.items()}


def _random_word(rng: random.Random, attribute: str) -> str:
    endings = _endings()[attribute]
    word = endings[rng.randrange(len(endings))]
    return word if rng.random() < _TWO_SYLLABLES else SYLLABLES[rng.randrange(len(SYLLABLES))] + word


def _random_number(rng: random.Random) -> str:
    while True:
        digits = rng.choice(NUMBER_DIGITS)
        n = rng.randrange(10 ** (digits - 1), 10**digits)
        if n not in YEARS:  # a number never looks like a year
            return str(n)


def in_open_space(attribute: str, value: str) -> bool:
    """True when the open space can draw ``value`` for ``attribute`` (either pool)."""
    kind = ATTRIBUTES[attribute].values
    if kind == "word":
        return is_open_word(value) and word_owner(value) == attribute
    if not value.isdigit() or value.startswith("0"):
        return False
    n = int(value)
    return n in YEARS if kind == "year" else 100 <= n <= 99_999 and n not in YEARS


def stated_values(conversations: Iterable[Conversation]) -> dict[str, list[str]]:
    """Distinct values stated (fact and update turns) per attribute, in order of first use."""
    out: dict[str, dict[str, None]] = {}
    for conv in conversations:
        for t in conv.turns:
            if t.kind in (FACT, UPDATE) and t.fact and t.value is not None:
                out.setdefault(t.fact.split(".")[1], {})[t.value] = None
    return {a: list(vs) for a, vs in out.items()}


class ValueSource:
    """Draws the values of one split and tells whether a value occurred in the training split.

    ``heldout=False`` is the training split: training-pool values (open) or the lexicon (closed);
    every value counts as seen. ``heldout=True`` draws held-out values (open); with
    ``train_values`` (the training split's :func:`stated_values`) a share ``seen_value_share`` of
    statements reuses one of them instead. Closed attributes draw from the lexicon in every split.
    """

    def __init__(
        self,
        *,
        value_space: str,
        attributes: Sequence[str],
        values_per_attribute: int,
        heldout_value_share: float,
        seen_value_share: float,
        heldout: bool,
        train_values: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.closed = attribute_values(tuple(attributes), values_per_attribute)
        self.open = value_space == "open"
        self.heldout = heldout
        self.heldout_share = heldout_value_share
        self.seen_share = seen_value_share
        self.train_values = None if train_values is None else {a: list(v) for a, v in train_values.items()}
        self._train_sets = None if train_values is None else {a: set(v) for a, v in train_values.items()}

    def draws_open(self, attribute: str) -> bool:
        return self.open and ATTRIBUTES[attribute].values in OPEN_KINDS

    def draw(self, rng: random.Random, attribute: str, taken: Collection[str]) -> str:
        """A value for ``attribute`` that is not in ``taken`` (the conversation's values so far)."""
        if not self.draws_open(attribute):
            return self._draw_closed(rng, attribute, taken)
        if self.heldout and self.train_values is not None and rng.random() < self.seen_share:
            pool = self.train_values.get(attribute)
            for _ in range(_SEEN_TRIES if pool else 0):
                v = rng.choice(pool)
                if v not in taken:
                    return v
        return self._draw_open(rng, attribute, taken)

    def seen(self, attribute: str, value: str) -> bool:
        """Whether ``value`` occurred in the training split (as far as this source knows)."""
        if not self.heldout:
            return True
        if self._train_sets is not None:
            return value in self._train_sets.get(attribute, ())
        return not self.draws_open(attribute)  # a held-out pool value never occurs in training

    def _draw_closed(self, rng: random.Random, attribute: str, taken: Collection[str]) -> str:
        pool = self.closed[attribute]
        for _ in range(20):  # almost always enough: a conversation uses few of the values
            v = rng.choice(pool)
            if v not in taken:
                return v
        free = [v for v in pool if v not in taken]
        if not free:
            raise ValueError(
                f"values_per_attribute={len(pool)}: a conversation used every {attribute} value; "
                "raise values_per_attribute or lower max_turns/owners"
            )
        return rng.choice(free)

    def _draw_open(self, rng: random.Random, attribute: str, taken: Collection[str]) -> str:
        kind = ATTRIBUTES[attribute].values
        for _ in range(_MAX_DRAWS):
            if kind == "word":
                v = _random_word(rng, attribute)
                if not is_open_word(v):
                    continue
            elif kind == "number":
                v = _random_number(rng)
            else:
                v = str(rng.choice(YEARS))
            if v not in taken and is_heldout(attribute, v, self.heldout_share) == self.heldout:
                return v
        pool = "held-out" if self.heldout else "training"
        raise ValueError(
            f"heldout_value_share={self.heldout_share}: found no free {attribute} value in the {pool} pool "
            f"after {_MAX_DRAWS} draws; move the share away from {0 if self.heldout else 1}"
        )
