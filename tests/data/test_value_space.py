"""The open value space: training and held-out pools, the seen share, and what values look like."""

from __future__ import annotations

import re

import pytest

from rxt_dist.data import (
    FACT,
    UPDATE,
    SyntheticConfig,
    generate_capacity_conversations,
    generate_conversations,
    generate_splits,
    in_open_space,
    is_heldout,
    stated_values,
)
from rxt_dist.data.lexicon import ATTRIBUTES, template_words
from rxt_dist.data.value_space import WORD_ATTRIBUTES, is_open_word, word_owner

SHARE = SyntheticConfig().heldout_value_share


@pytest.fixture(scope="module")
def splits():
    return generate_splits(SyntheticConfig(seed=11), {"train": 2000, "valid": 400, "test": 400})


def _statements(convs):
    """(attribute, value) of every fact and update turn."""
    return [(t.fact.split(".")[1], t.value) for c in convs for t in c.turns if t.kind in (FACT, UPDATE)]


def _recalls(convs):
    return [t.recall for c in convs for _, t in c.recall_turns]


def test_training_split_draws_only_training_pool_values(splits):
    statements = _statements(splits["train"])
    assert len(statements) > 5000
    assert all(in_open_space(a, v) for a, v in statements)
    assert not any(is_heldout(a, v, SHARE) for a, v in statements)
    assert all(r.seen for r in _recalls(splits["train"]))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_held_out_splits_draw_held_out_values_except_the_seen_share(splits, split):
    train = {a: set(vs) for a, vs in stated_values(splits["train"]).items()}
    statements = _statements(splits[split])
    seen = [(a, v) for a, v in statements if v in train[a]]
    unseen = [(a, v) for a, v in statements if v not in train[a]]
    assert all(in_open_space(a, v) for a, v in statements)
    assert all(is_heldout(a, v, SHARE) for a, v in unseen)  # never a training-pool value it did not see
    assert 0.15 < len(seen) / len(statements) < 0.25  # seen_value_share = 0.2
    recalls = _recalls(splits[split])
    assert all(r.seen == (r.gold in train[r.fact.split(".")[1]]) for r in recalls)
    assert 0.1 < sum(r.seen for r in recalls) / len(recalls) < 0.3


def test_seen_share_decides_how_many_held_out_values_were_trained_on():
    train = generate_conversations(SyntheticConfig(), 300)
    values = stated_values(train)
    never = generate_conversations(SyntheticConfig(seen_value_share=0.0), 100, split="test", train_values=values)
    always = generate_conversations(SyntheticConfig(seen_value_share=1.0), 100, split="test", train_values=values)
    assert not any(r.seen for r in _recalls(never))
    assert all(v not in values[a] and is_heldout(a, v, SHARE) for a, v in _statements(never))
    assert all(v in values[a] for a, v in _statements(always)) and all(r.seen for r in _recalls(always))


def test_values_are_many_and_shaped_as_documented(splits):
    statements = _statements(splits["train"])
    assert len(set(statements)) / len(statements) > 0.8  # a value rarely comes back: nothing to memorise
    syllables = re.compile(r"^(?:[bdfgklmnprstvz][aeiou]){2,3}[nrlsk]?$")
    templates = template_words()
    lengths = set()
    for attribute, v in statements:
        kind = ATTRIBUTES[attribute].values
        if kind == "word":
            assert syllables.match(v) and v not in templates and word_owner(v) == attribute
            lengths.add(len(re.findall("[aeiou]", v)))
        elif kind == "number":
            assert 100 <= int(v) <= 99_999 and not 1500 <= int(v) <= 2099  # never looks like a year
        else:
            assert 1500 <= int(v) <= 2099
    assert lengths == {2, 3}
    assert {len(v) for a, v in statements if a == "number"} == {3, 4, 5}


def test_pools_and_owners_are_a_fixed_function_of_the_value():
    # Pinned: a change here reshuffles the pools, and datasets made before it no longer agree with
    # is_heldout about which of their values were held out.
    words = ["bakor", "tesimu", "gavon", "koful", "ralimos", "dunek", "zipo"]
    assert [is_heldout("pet", w, 0.2) for w in words] == [False, False, False, True, False, False, False]
    assert [word_owner(w) for w in words] == ["name", "password", "street", "food", "car", "city", "name"]
    assert word_owner("tebakor") == word_owner("bakor")  # the last two syllables and the coda decide
    assert [is_heldout("number", n, 0.2) for n in ("417", "41735", "99999")] == [False, True, True]
    assert set(WORD_ATTRIBUTES) == {a for a, spec in ATTRIBUTES.items() if spec.values == "word"}
    assert not is_open_word("name") and not is_open_word("namelo")  # starts like a template word


def test_capacity_probes_draw_held_out_values():
    cfg = SyntheticConfig.from_name("capacity")
    convs = generate_capacity_conversations(cfg, 8, 20, distance=4)
    assert all(in_open_space(a, v) and is_heldout(a, v, SHARE) for a, v in _statements(convs))
    assert not any(r.seen for r in _recalls(convs))
    closed = generate_capacity_conversations(SyntheticConfig.from_name("capacity", value_space="closed"), 8, 5)
    assert all(r.seen for r in _recalls(closed))


def test_closed_space_flags_what_its_training_split_used():
    cfg = SyntheticConfig.from_name("debug", value_space="closed")
    out = generate_splits(cfg, {"train": 20, "test": 200})
    train = {a: set(vs) for a, vs in stated_values(out["train"]).items()}
    recalls = _recalls(out["test"])
    assert all(r.seen == (r.gold in train.get(r.fact.split(".")[1], ())) for r in recalls)
    assert any(r.seen for r in recalls) and not all(r.seen for r in recalls)  # 40 values, 20 conversations
