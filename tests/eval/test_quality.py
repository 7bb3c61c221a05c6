import dataclasses
import json

import pytest
import torch

from rxt_dist.data import PrepareConfig, SyntheticConfig, TextCodec, iter_conversations, prepare_dataset
from rxt_dist.eval.quality import (
    QUALITY_SYSTEMS,
    QualityConfig,
    _stale_values,
    _value_positions,
    answer_positions,
    evaluate_models,
    recall_exact_match,
)
from rxt_dist.model import build_model, from_name, save_model_dir
from rxt_dist.tokens import EOS_ID, interaction_ids

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(max_new_tokens=6, threads=1, max_conversations=8)


@pytest.fixture(scope="module")
def data_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "dialogue")
    prepare_dataset(PrepareConfig(out=url, conversations=60, synthetic=SyntheticConfig.from_name("debug", seed=3),
                                  vocab_size=512, shard_rows=32, valid_fraction=0.1, test_fraction=0.2))
    return url


def _save(tmp_path_factory, preset: str, **changes) -> str:
    torch.manual_seed(0)
    url = str(tmp_path_factory.mktemp("models") / preset)
    save_model_dir(build_model(dataclasses.replace(from_name(preset), **changes)), url)
    return url


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[str, str]:
    """Untrained debug models at the training init."""
    return _save(tmp_path_factory, "debug"), _save(tmp_path_factory, "baseline-debug")


@pytest.fixture(scope="module")
def varied_dirs(tmp_path_factory) -> tuple[str, str]:
    """Debug models whose greedy answers vary with their input, so comparisons mean something."""
    return (_save(tmp_path_factory, "debug", init_std=0.5),
            _save(tmp_path_factory, "baseline-debug", init_std=0.5))


def test_report_has_every_system_and_counts_every_recall_turn(data_url, model_dirs):
    report = evaluate_models(data_url, *model_dirs, QualityConfig(**FAST))
    convs = list(iter_conversations(data_url, "test"))[: FAST["max_conversations"]]
    recall_turns = sum(len(c.recall_turns) for c in convs)
    assert recall_turns > 0 and report.recall_turns == recall_turns
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d["systems"]) == set(QUALITY_SYSTEMS) and d["split"] == "test"
    answer_tokens = sum(len(t.answer_ids) + 1 for c in convs for t in c.turns)  # answers + [EOS]
    for name, s in d["systems"].items():
        assert s["recall"]["count"] == recall_turns, name
        assert sum(b["count"] for b in s["recall"]["by_distance"].values()) == recall_turns
        assert sum(b["count"] for b in s["recall"]["by_facts_held"].values()) == recall_turns
        assert 0.0 <= s["recall"]["exact_match"] <= 1.0
        assert len(s["per_turn"]) == max(len(c.turns) for c in convs)
        assert sum(t["tokens"] for t in s["per_turn"]) == s["overall"]["tokens"] == answer_tokens
        # An untrained model is near uniform over the vocabulary.
        assert 100 < s["overall"]["perplexity"] < 2000, name
    table = report.summary_table()
    assert all(name in table for name in QUALITY_SYSTEMS) and "recall EM by distance" in table


def test_batched_evaluation_equals_one_conversation_at_a_time(data_url, varied_dirs):
    one = evaluate_models(data_url, *varied_dirs, QualityConfig(**dict(FAST, max_conversations=5), batch_size=1))
    many = evaluate_models(data_url, *varied_dirs, QualityConfig(**dict(FAST, max_conversations=5), batch_size=3))
    for name in QUALITY_SYSTEMS:
        a, b = one.systems[name], many.systems[name]
        for x, y in zip(a.per_turn, b.per_turn, strict=True):
            assert x.tokens == y.tokens and x.correct == y.correct
            assert x.nll == pytest.approx(y.nll, rel=1e-4)
        key = lambda r: (r.conversation_id, r.turn)  # noqa: E731
        assert sorted(a.recalls, key=key) == sorted(b.recalls, key=key), name
    # Without history, the first turn is the same input for both baseline views.
    full, none = one.systems["stateless_full"].per_turn[0], one.systems["stateless_none"].per_turn[0]
    assert full.nll == pytest.approx(none.nll, rel=1e-5) and full.correct == none.correct
    answers = {r.answer for r in one.systems["rxt"].recalls}
    assert len(answers) > 1  # the recall answers differ, so their equality above means something


def test_scored_positions_are_the_answer_and_the_gold_value(data_url):
    convs = list(iter_conversations(data_url, "test"))
    recalls = [t for c in convs for t in c.turns if t.recall is not None]
    assert recalls
    for t in recalls:
        ids = interaction_ids(t.query_ids, t.answer_ids)
        answer = answer_positions(len(t.query_ids), len(t.answer_ids))
        assert [ids[p + 1] for p in answer] == [*t.answer_ids, EOS_ID]
        assert [ids[p + 1] for p in _value_positions(t, answer)] == t.recall.gold_ids


def test_a_perfect_model_scores_every_recall_and_a_wrong_value_scores_none(data_url):
    """Decoding the gold answer ids gives exact match 1 on every recall turn; the gold answer of
    a recall turn about another value gives 0."""
    codec = TextCodec.load(data_url)
    recalls = [(c, i) for c in iter_conversations(data_url, "test") for i, _ in c.recall_turns]
    for conv, i in recalls:
        rec, stale = conv.turns[i].recall, _stale_values(conv, i)
        assert recall_exact_match(codec.decode(conv.turns[i].answer_ids), rec.gold, stale)
        other = next(c.turns[j] for c, j in recalls if c.turns[j].recall.gold != rec.gold)
        assert not recall_exact_match(codec.decode(other.answer_ids), rec.gold, stale)


@pytest.mark.parametrize("answer, gold, stale, expected", [
    ("your pet is called rex .", "rex", (), True),
    ("Your pet is called Rex.", "rex", (), True),
    ("your pet is called rexa .", "rex", (), False),
    ("your pet is called max .", "rex", (), False),
    ("", "rex", (), False),
    ("your list is apples , milk and soap .", "apples , milk and soap", (), True),
    ("your list is apples , soap and milk .", "apples , milk and soap", (), False),
    ("your pet is called max .", "max", ("rex",), True),
    ("your pet is called rex , no , max .", "max", ("rex",), False),
    ("your lucky number is 388 .", "388", ("38",), True),
])
def test_exact_match(answer, gold, stale, expected):
    assert recall_exact_match(answer, gold, stale) is expected


def test_model_whose_vocabulary_is_too_small_is_rejected(data_url, tmp_path_factory):
    small = _save(tmp_path_factory, "debug", vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size=100 in config.json is smaller"):
        evaluate_models(data_url, small, None, QualityConfig(**FAST))


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"max_conversations": 0}, "max_conversations=0"),
    ({"systems": ("rxt", "gpt")}, "systems="),
    ({"threads": 0}, "threads=0"),
])
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        QualityConfig(**change)
