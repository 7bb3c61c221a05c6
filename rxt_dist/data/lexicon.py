"""The small, regular template language of the synthetic corpus and its value vocabulary.

Everything is lowercase with punctuation split off by spaces (``"ok , your pet is called rex ."``)
so a byte-level BPE splits it cleanly and a tiny model learns the templates fast; what it cannot
learn from the templates is the value, which only memory of an earlier turn supplies.

The closed value space (:func:`attribute_values`) is pseudo-words (``"bakor"``, ``"tesimu"``) and
numbers built from a fixed seed, so the value vocabulary is the same for every corpus seed and every
split; disjoint between attributes; and free of the template words. The open value space, built
from the same syllables, is in :mod:`rxt_dist.data.value_space`.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

LEXICON_SEED = 20251
"""Seed of the value vocabulary. Fixed: a corpus seed changes conversations, not values."""


@dataclass(frozen=True)
class Attribute:
    """A kind of fact: ``{my} {noun} {verb} {value}`` ("my pet is called rex")."""

    name: str
    noun: str
    verb: str
    """``"is"`` or ``"is called"``; recall questions end in ``called ?`` for the latter."""
    values: str
    """How values are made: ``"word"``, ``"number"``, ``"year"``, ``"list"``, ``"appointment"``."""


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute("name", "name", "is", "word"),
        Attribute("city", "home town", "is", "word"),
        Attribute("pet", "pet", "is called", "word"),
        Attribute("number", "lucky number", "is", "number"),
        Attribute("year", "birth year", "is", "year"),
        Attribute("password", "password", "is", "word"),
        Attribute("street", "street", "is called", "word"),
        Attribute("food", "favourite dish", "is", "word"),
        Attribute("car", "car", "is called", "word"),
        Attribute("boat", "boat", "is called", "word"),
        Attribute("shopping", "shopping list", "is", "list"),
        Attribute("appointment", "appointment", "is on", "appointment"),
    )
}
"""Every attribute the generator knows. The first eight are the default set: one token each."""

DEFAULT_ATTRIBUTES: tuple[str, ...] = ("name", "city", "pet", "number", "year", "password", "street", "food")

OWNERS: tuple[str, ...] = (
    "me", "sister", "brother", "mother", "father", "friend", "neighbour", "boss",
    "cousin", "teacher", "uncle", "aunt",
)  # fmt: skip
"""Whose fact it is. ``"me"`` is the user; others give more fact keys (capacity tests)."""


def possessives(owner: str) -> tuple[str, str]:
    """(user's form, model's form): ``("my", "your")`` or ``("my sister 's", "your sister 's")``."""
    if owner == "me":
        return "my", "your"
    return f"my {owner} 's", f"your {owner} 's"


# Templates. {my}/{your} are possessives, {noun}/{verb} come from the attribute, {v} is the value.
# The value always comes last before " ." so it is one whole word to the tokenizer.
FACT_QUERIES = (
    "{my} {noun} {verb} {v} .",
    "remember this : {my} {noun} {verb} {v} .",
    "by the way , {my} {noun} {verb} {v} .",
)
FACT_ANSWERS = (
    "ok , {your} {noun} {verb} {v} .",
    "got it , {your} {noun} {verb} {v} .",
    "nice ! {your} {noun} {verb} {v} .",
)
UPDATE_QUERIES = (
    "actually , {my} {noun} {verb} {v} .",
    "correction : {my} {noun} {verb} {v} .",
    "{my} {noun} changed , now it {verb} {v} .",
)
UPDATE_ANSWERS = (
    "ok , i updated it : {your} {noun} {verb} {v} .",
    "noted , from now on {your} {noun} {verb} {v} .",
)
RECALL_QUERIES = (
    "what is {my} {noun}{q_called} ?",
    "do you remember {my} {noun} ?",
    "can you tell me {my} {noun} ?",
)
RECALL_ANSWER = "{your} {noun} {verb} {v} ."
"""One gold form per question: only the value needs memory."""

FILLERS: tuple[tuple[str, str], ...] = (
    ("hello !", "hello ! how can i help you ?"),
    ("how are you today ?", "i am fine , thank you ."),
    ("thank you !", "you are welcome ."),
    ("what can you do ?", "i can remember what you tell me ."),
    ("is it going to rain ?", "i do not know , take an umbrella ."),
    ("tell me a joke .", "why did the cat sit on the computer ? to keep an eye on the mouse ."),
    ("i am tired .", "maybe you should take a short rest ."),
    ("good morning !", "good morning to you too !"),
    ("are you a robot ?", "i am a small language model ."),
    ("that is nice .", "i am glad you think so ."),
    ("let us talk about something else .", "sure , what would you like to talk about ?"),
    ("i had a long day .", "i hope you can relax now ."),
    ("ok .", "ok ."),
    ("see you later .", "see you later !"),
)
"""Small talk whose answer follows from the query alone."""

LIKE_QUERIES = ("do you like {thing} ?", "i really like {thing} .", "i am a big fan of {thing} .")
LIKE_ANSWER = "i like {thing} too ."
THINGS = (
    "music", "tea", "coffee", "rain", "books", "movies", "football", "chess", "summer",
    "winter", "dogs", "cats", "pizza", "the sea", "mountains", "painting", "cooking",
    "dancing", "trains", "gardens",
)  # fmt: skip
"""Small-talk topics; the answer copies the topic from the query, not from memory."""

LIST_ITEMS = (
    "apples", "bread", "milk", "eggs", "rice", "cheese", "butter", "onions", "carrots",
    "lemons", "soap", "salt", "sugar", "beans", "honey", "flour", "tomatoes", "potatoes",
    "pears", "grapes", "yogurt", "pasta", "oil", "tea bags", "candles", "batteries",
)  # fmt: skip
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Real words (in several languages) the syllable pattern can spell and a demo should not print.
_AVOID = frozenset(
    "bego bodo boner dago dagos kafir kaka kakas kike kikes loli lolis loser memek mofo moron morons "
    "nazi nazis nigar niger nude nudes nudi nuke nukes paki pakis pedo pedos pene peni penis pipi pisa "
    "pises popo puke puker puki pukis pusi puta putas pute puto rape raper rapes rapin sadis sata satan "
    "sekes sekis semen suka teta tetas titi".split()
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "k")


def template_words() -> frozenset[str]:
    """Every word the templates, fillers and owners use (values must avoid them)."""
    texts = [*FACT_QUERIES, *FACT_ANSWERS, *UPDATE_QUERIES, *UPDATE_ANSWERS, *RECALL_QUERIES]
    texts += [RECALL_ANSWER, LIKE_ANSWER, *LIKE_QUERIES, *THINGS, *LIST_ITEMS, *WEEKDAYS, *OWNERS]
    texts += [q + " " + a for q, a in FILLERS]
    texts += [f"{a.noun} {a.verb}" for a in ATTRIBUTES.values()]
    texts += ["called", "at", "and"]
    return frozenset(w for t in texts for w in t.split() if not w.startswith("{"))


@functools.lru_cache(maxsize=8)
def _pseudo_words() -> tuple[str, ...]:
    """All two-syllable pseudo-words (CV + CV + coda), shuffled by :data:`LEXICON_SEED`."""
    stop = template_words() | _AVOID
    words = sorted(
        {o1 + v1 + o2 + v2 + c for o1 in _ONSETS for v1 in _VOWELS for o2 in _ONSETS for v2 in _VOWELS for c in _CODAS}
    )
    random.Random(LEXICON_SEED).shuffle(words)
    return tuple(w for w in words if w not in stop)


@functools.lru_cache(maxsize=64)
def attribute_values(attributes: tuple[str, ...], values_per_attribute: int) -> dict[str, tuple[str, ...]]:
    """The value vocabulary: ``values_per_attribute`` values for each attribute.

    Word values of different attributes are disjoint slices of one shuffled pseudo-word list;
    numbers are 100–999 and years 1500–2099, so no value belongs to two attributes (each set
    is capped by what its kind can make: 900 numbers, 600 years, 84 appointments).
    """
    words = _pseudo_words()
    rng = random.Random(LEXICON_SEED)
    out: dict[str, tuple[str, ...]] = {}
    next_word = 0
    for name in attributes:
        kind = ATTRIBUTES[name].values
        if kind == "word":
            out[name] = words[next_word : next_word + values_per_attribute]
            next_word += values_per_attribute
        elif kind == "number":
            out[name] = tuple(str(n) for n in rng.sample(range(100, 1000), min(values_per_attribute, 900)))
        elif kind == "year":
            out[name] = tuple(str(n) for n in rng.sample(range(1500, 2100), min(values_per_attribute, 600)))
        elif kind == "list":
            out[name] = _item_lists(rng, values_per_attribute)
        else:  # appointment
            slots = [f"{d} at {h}" for d in WEEKDAYS for h in range(1, 13)]
            out[name] = tuple(rng.sample(slots, min(values_per_attribute, len(slots))))
    return out


def _item_lists(rng: random.Random, n: int) -> tuple[str, ...]:
    """``n`` distinct shopping lists of three items (``"apples , milk and soap"``)."""
    lists: set[str] = set()
    n = min(n, len(LIST_ITEMS) * (len(LIST_ITEMS) - 1) * (len(LIST_ITEMS) - 2))
    while len(lists) < n:
        a, b, c = rng.sample(LIST_ITEMS, 3)
        lists.add(f"{a} , {b} and {c}")
    return tuple(sorted(lists))
