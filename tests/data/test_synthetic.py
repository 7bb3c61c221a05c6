"""The synthetic corpus: deterministic, and its recall answers need memory."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from rxt_dist.data import (
    FACT,
    RECALL,
    UPDATE,
    SyntheticConfig,
    generate_capacity_conversations,
    generate_conversations,
    generate_splits,
)
from rxt_dist.data.lexicon import _AVOID, template_words
from rxt_dist.data.synthetic import PRESETS, signature


def _latest_statement(conv, turn_index: int, fact: str) -> tuple[int, str]:
    """(turn, value) of the last fact/update turn for ``fact`` before ``turn_index``."""
    for i in range(turn_index - 1, -1, -1):
        t = conv.turns[i]
        if t.kind in (FACT, UPDATE) and t.fact == fact:
            return i, t.value
    raise AssertionError(f"{conv.conversation_id}: recall of {fact} at turn {turn_index} with no statement")


def test_same_seed_same_conversations_other_seed_others():
    cfg = SyntheticConfig(seed=3)
    a = generate_conversations(cfg, 200)
    assert a == generate_conversations(SyntheticConfig(seed=3), 200)
    b = generate_conversations(SyntheticConfig(seed=4), 200)
    assert [signature(c) for c in a] != [signature(c) for c in b]


def test_every_recall_gold_is_the_latest_earlier_statement():
    convs = generate_conversations(SyntheticConfig(), 2000)
    n_recalls = n_updated = 0
    for conv in convs:
        held: set[str] = set()
        for i, t in enumerate(conv.turns):
            if t.kind in (FACT, UPDATE):
                held.add(t.fact)
                assert t.value in t.query.split() and t.value in t.answer.split()
            if t.kind != RECALL:
                assert t.recall is None
                continue
            r = t.recall
            stated_turn, value = _latest_statement(conv, i, r.fact)
            assert (r.stated_turn, r.gold) == (stated_turn, value)
            assert r.distance == i - stated_turn >= 1
            assert r.facts_held == len(held)
            assert r.gold not in t.query.split(), "the question must not contain the answer"
            assert t.answer.split()[-2] == r.gold  # "... is <gold> ."
            mentions = [j for j in range(i) if r.gold in conv.turns[j].answer.split()]
            assert r.mentioned_turn == mentions[-1] >= r.stated_turn
            n_recalls += 1
            n_updated += r.updated
    assert n_recalls > 2000 and n_updated > 100  # most conversations recall; some after an update


def test_updates_change_the_value_and_recall_wants_the_new_one():
    convs = generate_conversations(SyntheticConfig(p_update=0.5), 500)
    seen = 0
    for conv in convs:
        for i, t in enumerate(conv.turns):
            if t.recall is not None and t.recall.updated:
                old = [u.value for u in conv.turns[: t.recall.stated_turn] if u.fact == t.recall.fact]
                assert old and t.recall.gold not in old
                seen += 1
    assert seen > 50


@pytest.mark.parametrize("space", ["open", "closed"])
def test_most_frequent_value_baseline_is_near_chance(space):
    cfg = SyntheticConfig(value_space=space)
    splits = generate_splits(cfg, {"train": 3000, "test": 1000})
    overall = collections.Counter()
    per_fact: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for conv in splits["train"]:
        for _, t in conv.recall_turns:
            overall[t.recall.gold] += 1
            per_fact[t.recall.fact][t.recall.gold] += 1
    top = overall.most_common(1)[0][0]
    top_per_fact = {f: c.most_common(1)[0][0] for f, c in per_fact.items()}
    test_recalls = [t.recall for conv in splits["test"] for _, t in conv.recall_turns]
    acc_overall = sum(r.gold == top for r in test_recalls) / len(test_recalls)
    acc_per_fact = sum(r.gold == top_per_fact[r.fact] for r in test_recalls) / len(test_recalls)
    assert acc_overall < 0.10 and acc_per_fact < 0.10
    assert acc_per_fact < 5 / cfg.values_per_attribute  # chance is 1/300


def test_conversation_shape_follows_the_config():
    cfg = SyntheticConfig(min_turns=3, max_turns=5, min_recalls=2)
    convs = generate_conversations(cfg, 500)
    assert {len(c.turns) for c in convs} == {3, 4, 5}
    assert all(len(c.recall_turns) >= 2 for c in convs)
    default = generate_conversations(SyntheticConfig(), 1000)
    distances = {t.recall.distance for c in default for _, t in c.recall_turns}
    assert {1, 2, 3, 4, 5} <= distances


def test_closed_held_out_splits_share_values_but_not_conversations():
    # 40 values: collisions would be likely without exclusion
    cfg = SyntheticConfig.from_name("debug", value_space="closed")
    splits = generate_splits(cfg, {"train": 3000, "valid": 500, "test": 500})
    train = {signature(c) for c in splits["train"]}
    valid = {signature(c) for c in splits["valid"]}
    test = {signature(c) for c in splits["test"]}
    assert not (train & valid) and not (train & test) and not (valid & test)
    values = {t.value for c in splits["train"] for t in c.turns if t.value}
    assert {t.value for c in splits["test"] for t in c.turns if t.value} <= values
    ids = [c.conversation_id for s in splits.values() for c in s]
    assert len(set(ids)) == len(ids)


def test_closed_values_are_distinct_across_attributes_and_template_words():
    values = SyntheticConfig(value_space="closed", values_per_attribute=300).values()
    assert all(len(v) == 300 for v in values.values())
    flat = [v for vs in values.values() for v in vs]
    assert len(set(flat)) == len(flat) == 2400
    assert not set(flat) & (template_words() | _AVOID)


@pytest.mark.parametrize("facts", [1, 8, 32])
def test_capacity_conversations_hold_the_requested_facts(facts):
    cfg = SyntheticConfig.from_name("capacity")
    convs = generate_capacity_conversations(cfg, facts, 20, recalls=min(facts, 3))
    for conv in convs:
        assert sum(t.kind == FACT for t in conv.turns) == facts
        recalls = [t.recall for _, t in conv.recall_turns]
        assert len(recalls) == min(facts, 3)
        assert all(r.facts_held == facts for r in recalls)
        assert len({r.fact for r in recalls}) == len(recalls)


@pytest.mark.parametrize(("facts", "distance"), [(4, 1), (4, 4), (4, 10), (32, 16)])
def test_capacity_conversations_at_an_exact_distance(facts, distance):
    cfg = SyntheticConfig.from_name("capacity")
    convs = generate_capacity_conversations(cfg, facts, 10, distance=distance, recalls=1)
    for conv in convs:
        (i, t), = conv.recall_turns
        assert t.recall.distance == distance
        stated = conv.turns[t.recall.stated_turn]
        assert stated.kind == FACT and stated.value == t.recall.gold and i - t.recall.stated_turn == distance


def test_capacity_needs_enough_fact_keys():
    with pytest.raises(ValueError, match="facts_held=9.*raise owners"):
        generate_capacity_conversations(SyntheticConfig(), 9, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_turns": 0}, "min_turns=0"),
        ({"min_turns": 5, "max_turns": 4}, "max_turns=4: must be ≥ min_turns=5"),
        ({"p_fact": 0.0}, "p_fact=0.0"),
        ({"p_recall": -1.0}, "p_recall=-1.0"),
        ({"attributes": ("name", "colour")}, "unknown \\['colour'\\]"),
        ({"values_per_attribute": 1}, "values_per_attribute=1"),
        ({"owners": 0}, "owners=0"),
        ({"min_recalls": 4, "min_turns": 4}, "min_recalls=4"),
        ({"value_space": "half"}, "value_space='half': use 'open' or 'closed'"),
        ({"heldout_value_share": 0.0}, r"heldout_value_share=0.0: must be in \(0, 1\)"),
        ({"heldout_value_share": 1.0}, r"heldout_value_share=1.0: must be in \(0, 1\)"),
        ({"seen_value_share": 1.5}, r"seen_value_share=1.5: must be in \[0, 1\]"),
    ],
)
def test_bad_config_names_field_value_and_fix(changes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_presets_load_and_generate():
    for name in PRESETS:
        cfg = SyntheticConfig.from_name(name)
        assert cfg.value_space == "open"
        assert SyntheticConfig.from_dict(cfg.to_dict()) == cfg
        assert generate_conversations(cfg, 5)
    with pytest.raises(ValueError, match="preset 'nano'"):
        SyntheticConfig.from_name("nano")


def test_settings_recorded_before_the_open_space_read_as_closed():
    old = SyntheticConfig().to_dict()
    for key in ("value_space", "heldout_value_share", "seen_value_share"):
        del old[key]
    assert SyntheticConfig.from_dict(old) == SyntheticConfig(value_space="closed")


def test_optional_multi_word_attributes():
    cfg = SyntheticConfig(attributes=("shopping", "appointment"), values_per_attribute=50)
    convs = generate_conversations(cfg, 200)
    golds = [t.recall.gold for c in convs for _, t in c.recall_turns]
    assert any(" and " in g for g in golds) and any(" at " in g for g in golds)
    assert dataclasses.asdict(cfg)["attributes"] == ("shopping", "appointment")


def test_too_small_a_closed_value_space_fails_clearly():
    tiny = SyntheticConfig(min_turns=2, max_turns=2, attributes=("name",), values_per_attribute=2, p_update=0,
                           value_space="closed")  # fmt: skip
    with pytest.raises(ValueError, match="split 'test': drew .* too few distinct conversations"):
        generate_splits(tiny, {"train": 50, "test": 50})
    crowded = SyntheticConfig(min_turns=8, max_turns=8, attributes=("name",), values_per_attribute=2, p_update=1,
                              value_space="closed")  # fmt: skip
    with pytest.raises(ValueError, match="values_per_attribute=2: a conversation used every name value"):
        generate_conversations(crowded, 20)
