"""Seeded synthetic conversations whose recall answers can only come from memory.

A conversation states facts about the user ("my pet is called rex ."), sometimes changes them
("actually , my pet is called max ."), makes small talk, and asks for facts back ("what is my pet
called ?" → "your pet is called max ."). The gold value of a recall turn was stated in an earlier
turn of the same conversation and is the latest value of that fact. Values come from the open
value space (held-out splits draw values the training split never used, so a model must copy
them) or from a closed lexicon of ``values_per_attribute`` per attribute
(:mod:`rxt_dist.data.value_space`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from rxt_dist.data.conversation import FACT, FILLER, RECALL, UPDATE, Conversation, RecallInfo, Turn
from rxt_dist.data.lexicon import (
    ATTRIBUTES,
    DEFAULT_ATTRIBUTES,
    FACT_ANSWERS,
    FACT_QUERIES,
    FILLERS,
    LEXICON_SEED,
    LIKE_ANSWER,
    LIKE_QUERIES,
    OWNERS,
    RECALL_ANSWER,
    RECALL_QUERIES,
    THINGS,
    UPDATE_ANSWERS,
    UPDATE_QUERIES,
    attribute_values,
    possessives,
)
from rxt_dist.data.value_space import VALUE_SPACES, ValueSource, stated_values

Progress = Callable[[int], None]
"""Called with the number of items just finished (drives a progress bar in the entry point)."""

_KINDS = (FACT, UPDATE, FILLER, RECALL)
_REASK = 0.25  # weight of a recall turn, relative to p_recall, when every stated fact was asked
_MAX_WORD_VALUES = 2500  # per attribute; the pseudo-word pool holds about 29,000 words in all


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic dialogue generator (see docs/data.md)."""

    seed: int = 0
    """Corpus seed. Each split draws from its own stream derived from it."""
    min_turns: int = 4
    """Fewest turns in a conversation."""
    max_turns: int = 8
    """Most turns in a conversation."""
    p_fact: float = 0.4
    """Relative weight of a turn stating a new fact (when an unstated fact key remains)."""
    p_update: float = 0.1
    """Relative weight of a turn changing a stated fact."""
    p_filler: float = 0.1
    """Relative weight of a small-talk turn."""
    p_recall: float = 0.4
    """Relative weight of a turn asking for a stated fact."""
    min_recalls: int = 1
    """Recall turns every conversation gets at least (forced at the end when the draw fell short)."""
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    """Which kinds of facts occur (names from ``rxt_dist.data.lexicon.ATTRIBUTES``)."""
    values_per_attribute: int = 300
    """Closed space: distinct values per attribute; chance level of recall is 1 / this. (The open
    space uses it only for the closed ``shopping`` and ``appointment`` attributes.)"""
    owners: int = 1
    """Whose facts: 1 = only the user's ("my pet"); more adds "my sister 's pet", … (fact keys =
    owners × attributes; capacity tests with many facts need owners > 1)."""
    value_space: str = "open"
    """``"open"``: values from a large space split into a training and a held-out pool (the
    training split never sees a held-out value); ``"closed"``: ``values_per_attribute`` fixed
    values per attribute shared by every split (datasets made before the open space)."""
    heldout_value_share: float = 0.2
    """Open space: share of the value space in the held-out pool."""
    seen_value_share: float = 0.2
    """Open space: share of the statements of a held-out split that reuse a value the training
    split used (recall on seen values), instead of a held-out one."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: must be ≥ 0")
        if self.min_turns < 1:
            raise ValueError(f"min_turns={self.min_turns}: must be ≥ 1")
        if self.max_turns < self.min_turns:
            raise ValueError(f"max_turns={self.max_turns}: must be ≥ min_turns={self.min_turns}")
        for kind in _KINDS:
            p = getattr(self, f"p_{kind}")
            if not p >= 0:
                raise ValueError(f"p_{kind}={p}: must be ≥ 0")
        if self.p_fact <= 0:
            raise ValueError(f"p_fact={self.p_fact}: must be > 0, or no conversation states a fact")
        if not 0 <= self.min_recalls < self.min_turns:
            raise ValueError(
                f"min_recalls={self.min_recalls}: must be in [0, min_turns-1={self.min_turns - 1}] "
                "(a recall needs an earlier fact turn)"
            )
        self._check_attributes()
        if not 1 <= self.owners <= len(OWNERS):
            raise ValueError(f"owners={self.owners}: must be in [1, {len(OWNERS)}]")
        self._check_value_space()

    def _check_value_space(self) -> None:
        if self.value_space not in VALUE_SPACES:
            raise ValueError(f"value_space={self.value_space!r}: use 'open' or 'closed'")
        if not 0 < self.heldout_value_share < 1:
            raise ValueError(
                f"heldout_value_share={self.heldout_value_share}: must be in (0, 1) — the training and "
                "the held-out pool both need values (0.2 is the default)"
            )
        if not 0 <= self.seen_value_share <= 1:
            raise ValueError(f"seen_value_share={self.seen_value_share}: must be in [0, 1] (0.2 is the default)")

    def _check_attributes(self) -> None:
        if not self.attributes:
            raise ValueError("attributes=(): name at least one attribute")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"attributes={self.attributes!r}: unknown {unknown}; choose from {sorted(ATTRIBUTES)}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes={self.attributes!r}: each attribute at most once")
        words = sum(ATTRIBUTES[a].values == "word" for a in self.attributes)
        if not 2 <= self.values_per_attribute <= _MAX_WORD_VALUES:
            raise ValueError(f"values_per_attribute={self.values_per_attribute}: must be in [2, {_MAX_WORD_VALUES}]")
        if words * self.values_per_attribute > 26_000:
            raise ValueError(
                f"values_per_attribute={self.values_per_attribute}: {words} word attributes × "
                f"{self.values_per_attribute} exceeds the 26,000 pseudo-words available; lower it"
            )

    @property
    def fact_keys(self) -> tuple[str, ...]:
        """Every fact key, ``"<owner>.<attribute>"``."""
        return tuple(f"{o}.{a}" for o in OWNERS[: self.owners] for a in self.attributes)

    def values(self) -> dict[str, tuple[str, ...]]:
        """The closed value vocabulary per attribute (identical for every seed and split). The open
        space draws from it only for attributes without an open kind (shopping, appointment)."""
        return attribute_values(tuple(self.attributes), self.values_per_attribute)

    def value_source(self, *, heldout: bool, train_values: Mapping[str, Sequence[str]] | None = None) -> ValueSource:
        """What draws a split's values: the training pool (``heldout=False``) or the held-out pool,
        with ``train_values`` (the training split's values) for the seen share."""
        return ValueSource(
            value_space=self.value_space,
            attributes=self.attributes,
            values_per_attribute=self.values_per_attribute,
            heldout_value_share=self.heldout_value_share,
            seen_value_share=self.seen_value_share,
            heldout=heldout,
            train_values=train_values,
        )

    def to_dict(self) -> dict:
        """JSON-ready settings (recorded in the manifest), with the lexicon seed."""
        d = dataclasses.asdict(self)
        d["attributes"] = list(self.attributes)
        d["lexicon_seed"] = LEXICON_SEED
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> SyntheticConfig:
        """Inverse of :meth:`to_dict` (unknown keys such as ``lexicon_seed`` are ignored). Settings
        recorded before the open value space existed have no ``value_space``: they were closed."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.setdefault("value_space", "closed")
        if "attributes" in kw:
            kw["attributes"] = tuple(kw["attributes"])
        return cls(**kw)

    @classmethod
    def from_name(cls, name: str, **overrides) -> SyntheticConfig:
        """A named preset: ``default``, ``capacity`` (4 owners = 32 fact keys, 8–24 turns) or
        ``debug`` (small value vocabulary, short conversations, for tests)."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r}: unknown; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, SyntheticConfig] = {
    "default": SyntheticConfig(),
    "capacity": SyntheticConfig(owners=4, min_turns=8, max_turns=24, p_fact=0.45, p_recall=0.35, min_recalls=2),
    "debug": SyntheticConfig(min_turns=2, max_turns=6, values_per_attribute=40),
}


def stream_seed(seed: int, stream: str) -> int:
    """An independent 64-bit seed for a named stream (a split, a capacity setting)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little")


class _Writer:
    """Renders the turns of one conversation from its fact keys (the language, in one place)."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.forms: dict[str, dict[str, str]] = {}
        for key in cfg.fact_keys:
            owner, attr = key.split(".")
            a = ATTRIBUTES[attr]
            my, your = possessives(owner)
            q_called = " called" if a.verb == "is called" else ""
            self.forms[key] = {"my": my, "your": your, "noun": a.noun, "verb": a.verb, "q_called": q_called}

    def fact(self, rng: random.Random, key: str, v: str, *, update: bool) -> Turn:
        f = self.forms[key]
        queries, answers = (UPDATE_QUERIES, UPDATE_ANSWERS) if update else (FACT_QUERIES, FACT_ANSWERS)
        q = rng.choice(queries).format(v=v, **f)
        a = rng.choice(answers).format(v=v, **f)
        return Turn(q, a, kind=UPDATE if update else FACT, fact=key, value=v)

    def recall(self, rng: random.Random, key: str, info: RecallInfo) -> Turn:
        f = self.forms[key]
        q = rng.choice(RECALL_QUERIES).format(**f)
        a = RECALL_ANSWER.format(v=info.gold, **f)
        return Turn(q, a, kind=RECALL, recall=info, fact=key, value=info.gold)

    @staticmethod
    def filler(rng: random.Random) -> Turn:
        if rng.random() < 0.4:
            thing = rng.choice(THINGS)
            return Turn(rng.choice(LIKE_QUERIES).format(thing=thing), LIKE_ANSWER.format(thing=thing), kind=FILLER)
        q, a = rng.choice(FILLERS)
        return Turn(q, a, kind=FILLER)


class _State:
    """What a conversation has stated so far: key → (value, turn of last statement, updated?)."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[str, int, bool]] = {}
        self.stated: list[str] = []  # keys in order of first statement
        self.taken: set[str] = set()  # values used in this conversation (all distinct)
        self.unasked: list[str] = []  # stated keys not recalled since their last statement
        self.mentioned: dict[str, int] = {}  # key → last turn whose text held its current value

    def state(self, key: str, value: str, turn: int) -> None:
        updated = key in self.current
        if not updated:
            self.stated.append(key)
        self.current[key] = (value, turn, updated)
        self.taken.add(value)
        self.mentioned[key] = turn
        if key not in self.unasked:
            self.unasked.append(key)

    def recall_target(self, rng: random.Random) -> str:
        """A fact not asked since it was stated, if any; else any stated fact."""
        key = rng.choice(self.unasked or self.stated)
        if key in self.unasked:
            self.unasked.remove(key)
        return key

    def recall_info(self, key: str, turn: int, values: ValueSource) -> RecallInfo:
        """The recall metadata of asking for ``key`` at ``turn`` (whose answer mentions it again)."""
        value, stated_turn, updated = self.current[key]
        seen = values.seen(key.split(".")[1], value)
        info = RecallInfo(key, stated_turn, turn - stated_turn, value, len(self.stated), updated, self.mentioned[key],
                          seen)  # fmt: skip
        self.mentioned[key] = turn
        return info


def _choose_kind(rng: random.Random, cfg: SyntheticConfig, state: _State, n_keys: int, need: int, left: int) -> str:
    """The next turn's kind: forced recalls at the end to meet ``min_recalls``, else a weighted draw."""
    if need > 0 and state.current and need >= left:
        return RECALL
    if need > 0 and not state.current and need >= left - 1:
        return FACT
    options = [(FILLER, cfg.p_filler)]
    last = left == 1 and bool(state.current)  # a statement in the last turn would never be asked for
    if len(state.current) < n_keys and not last:
        options.append((FACT, cfg.p_fact))
    if state.current:
        # asking again for a fact already asked is allowed, but less likely than a fresh one
        options.append((RECALL, cfg.p_recall if state.unasked else cfg.p_recall * _REASK))
        if not last:
            options.append((UPDATE, cfg.p_update))
    total = sum(w for _, w in options)
    if total == 0:
        return FACT if len(state.current) < n_keys else RECALL
    r = rng.random() * total  # one draw, cheaper than rng.choices for four options
    for kind, w in options:
        r -= w
        if r < 0 and w > 0:
            return kind
    return next(kind for kind, w in reversed(options) if w > 0)


def _one_conversation(
    rng: random.Random, cfg: SyntheticConfig, writer: _Writer, values: ValueSource, cid: str
) -> Conversation:
    n = rng.randint(cfg.min_turns, cfg.max_turns)
    keys = cfg.fact_keys
    state = _State()
    turns: list[Turn] = []
    recalls = 0
    for t in range(n):
        kind = _choose_kind(rng, cfg, state, len(keys), cfg.min_recalls - recalls, n - t)
        if kind == FACT:
            key = rng.choice([k for k in keys if k not in state.current])
            v = values.draw(rng, key.split(".")[1], state.taken)
            state.state(key, v, t)
            turns.append(writer.fact(rng, key, v, update=False))
        elif kind == UPDATE:
            key = rng.choice(state.stated)
            v = values.draw(rng, key.split(".")[1], state.taken)
            state.state(key, v, t)
            turns.append(writer.fact(rng, key, v, update=True))
        elif kind == RECALL:
            key = state.recall_target(rng)
            turns.append(writer.recall(rng, key, state.recall_info(key, t, values)))
            recalls += 1
        else:
            turns.append(writer.filler(rng))
    return Conversation(cid, turns)


def signature(conv: Conversation) -> tuple:
    """What makes two conversations the same: turn kinds, fact keys and values in order."""
    return tuple((t.kind, t.fact, t.value) for t in conv.turns)


def generate_conversations(
    cfg: SyntheticConfig,
    n: int,
    *,
    split: str = "train",
    exclude: Collection[tuple] = frozenset(),
    train_values: Mapping[str, Sequence[str]] | None = None,
    progress: Progress | None = None,
) -> list[Conversation]:
    """``n`` conversations from the stream of ``split`` (text only; ids are filled by tokenizing).

    Without ``train_values`` this is a training split: open values come from the training pool.
    With it (the training split's :func:`stated_values`) it is a held-out split: open values come
    from the held-out pool, except a share ``cfg.seen_value_share`` of statements that reuse one of
    ``train_values``; ``RecallInfo.seen`` tells which. A conversation whose :func:`signature` is in
    ``exclude`` is drawn again, so held-out splits can be kept apart from the training split. The
    same arguments give the same list.
    """
    if n < 0:
        raise ValueError(f"n={n}: must be ≥ 0")
    rng = random.Random(stream_seed(cfg.seed, split))
    writer = _Writer(cfg)
    values = cfg.value_source(heldout=train_values is not None, train_values=train_values)
    out: list[Conversation] = []
    seen = set(exclude) if exclude else None
    rejected = 0
    while len(out) < n:
        conv = _one_conversation(rng, cfg, writer, values, f"{split}-{len(out):07d}")
        if seen is not None:
            sig = signature(conv)
            if sig in seen:
                rejected += 1
                if rejected > 10 * n + 1000:
                    raise ValueError(
                        f"split {split!r}: drew {rejected} conversations that repeat earlier splits while "
                        f"looking for {n} new ones; these settings allow too few distinct conversations "
                        "(raise values_per_attribute or max_turns, or ask for fewer)"
                    )
                continue
            seen.add(sig)
        out.append(conv)
        if progress is not None and len(out) % 1000 == 0:
            progress(1000)
    if progress is not None and n % 1000:
        progress(n % 1000)
    return out


def generate_splits(
    cfg: SyntheticConfig, counts: Mapping[str, int], *, progress: Progress | None = None
) -> dict[str, list[Conversation]]:
    """Conversations for each split. The first is the training split; every later one is held
    out: it gets the training split's values (for its seen share, see
    :func:`generate_conversations`) and avoids the conversations (signatures) of all splits before
    it, so held-out splits never repeat a training one."""
    out: dict[str, list[Conversation]] = {}
    seen: set[tuple] = set()
    train_values = None
    for i, (split, n) in enumerate(counts.items()):
        convs = generate_conversations(cfg, n, split=split, exclude=seen if i else frozenset(),
                                       train_values=train_values, progress=progress)  # fmt: skip
        if i == 0:
            train_values = stated_values(convs)
        if i < len(counts) - 1:
            seen.update(signature(c) for c in convs)
        out[split] = convs
    return out


def generate_capacity_conversations(
    cfg: SyntheticConfig,
    facts_held: int,
    n: int,
    *,
    distance: int | None = None,
    recalls: int = 1,
) -> list[Conversation]:
    """Conversations that state ``facts_held`` distinct facts, one per turn, then ask ``recalls``
    of them back — for measuring recall against the number of facts held and the distance.

    With ``distance`` every recall turn sits exactly that many turns after the turn that stated
    its fact (filler turns pad the gap when ``distance > facts_held``); without it the recalled
    facts are drawn at random. Open values come from the held-out pool, so no model has seen
    them in training (``RecallInfo.seen`` is False). The stream depends on cfg.seed and the
    arguments only.
    """
    keys = cfg.fact_keys
    if not 1 <= facts_held <= len(keys):
        raise ValueError(
            f"facts_held={facts_held}: must be in [1, {len(keys)}] = owners × attributes "
            f"({cfg.owners} × {len(cfg.attributes)}); raise owners for more facts"
        )
    limit = facts_held if distance is None else min(facts_held, distance)
    if not 1 <= recalls <= limit:
        raise ValueError(f"recalls={recalls}: must be in [1, {limit}] (≤ facts_held and ≤ distance)")
    if distance is not None and distance < 1:
        raise ValueError(f"distance={distance}: must be ≥ 1")
    rng = random.Random(stream_seed(cfg.seed, f"capacity/{facts_held}/{distance}/{recalls}"))
    writer = _Writer(cfg)
    values = cfg.value_source(heldout=True)
    gap = 0 if distance is None else max(0, distance - facts_held)
    out = []
    for i in range(n):
        state = _State()
        turns = []
        for t, key in enumerate(rng.sample(keys, facts_held)):
            v = values.draw(rng, key.split(".")[1], state.taken)
            state.state(key, v, t)
            turns.append(writer.fact(rng, key, v, update=False))
        turns += [writer.filler(rng) for _ in range(gap)]
        if distance is None:
            targets = rng.sample(state.stated, recalls)
        else:
            targets = [state.stated[facts_held + gap + k - distance] for k in range(recalls)]
        for key in targets:
            turns.append(writer.recall(rng, key, state.recall_info(key, len(turns), values)))
        out.append(Conversation(f"capacity-f{facts_held}-d{distance or 0}-{i:06d}", turns))
    return out
