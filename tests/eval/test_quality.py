import dataclasses
import json

import pytest
import torch

from rxt_dist.data import PrepareConfig, SyntheticConfig, TextCodec, iter_conversations, prepare_dataset
from rxt_dist.eval.quality import (
    QUALITY_SYSTEMS,
    QualityConfig,
    answer_positions,
    evaluate_models,
    recall_exact_match,
)
from rxt_dist.eval.quality_scoring import _stale_values, _value_positions
from rxt_dist.model import build_model, from_name, save_model_dir
from rxt_dist.tokens import EOS_ID, interaction_ids
from tests.tolerances import KERNEL

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
    unseen = sum(not t.recall.seen for c in convs for _, t in c.recall_turns)
    assert 0 < unseen < recall_turns  # the held-out split mixes new values with a share of seen ones
    for name, s in d["systems"].items():
        assert s["recall"]["count"] == unseen, name
        assert s["recall_seen"]["count"] == recall_turns - unseen, name
        for key in ("by_distance", "by_facts_held", "by_facts_held_and_distance", "by_value_kind"):
            assert sum(b["count"] for b in s["recall"][key].values()) == unseen, (name, key)
        assert set(s["recall"]["by_value_kind"]) <= {"word"} | {f"{n}dig" for n in range(1, 6)}
        assert all(not e["seen"] for e in s["recall"]["examples"]) and all(e["seen"] for e in s["recall_seen"]["examples"])
        assert 0.0 <= s["recall"]["exact_match"] <= 1.0
        assert ("echo" in s) == (name == "rxt")  # only the own-answer system answers fact turns
        if name == "rxt":
            assert s["echo"]["count"] > 0 and 0 <= s["echo"]["unseen"] <= 1
            # each recall knows whether its fact's statement was echoed right by the model's own answer
            assert sum(b["count"] for b in s["recall"]["by_echoed"].values()) == unseen
        else:
            assert s["recall"]["by_echoed"] == {}, name
        if name.startswith("rxt"):
            memory = s["memory"]  # slot statistics per layer, after every update
            assert len(memory["slot_cosine"]) == len(memory["effective_rank"]) == len(memory["gate_openness"]) == 2
            assert memory["updates"] == memory["states"] == sum(len(c.turns) for c in convs)
            assert all(-1 <= x <= 1 for x in memory["slot_cosine"]) and all(1 <= x <= 8 for x in memory["effective_rank"])
        else:
            assert "memory" not in s
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
            assert x.nll == pytest.approx(y.nll, rel=KERNEL["rtol"])  # padded batches vs one at a time
        key = lambda r: (r.conversation_id, r.turn)  # noqa: E731
        assert sorted(a.recalls, key=key) == sorted(b.recalls, key=key), name
    # Without history, the first turn is the same input for both baseline views.
    full, none = one.systems["stateless_full"].per_turn[0], one.systems["stateless_none"].per_turn[0]
    # The same first turn, scored inside one pass over the whole conversation vs on its own.
    assert full.nll == pytest.approx(none.nll, rel=KERNEL["rtol"]) and full.correct == none.correct
    answers = {r.answer for r in one.systems["rxt"].recalls}
    assert len(answers) > 1  # the recall answers differ, so their equality above means something


def test_worker_processes_give_what_one_process_gives(data_url, varied_dirs):
    """Two processes of one thread split the conversations into runs of whole batches: each
    batch is computed exactly as in one process, so every record is equal; the sums differ at
    most by the order of their additions. The initial STMs keep their split index."""
    cfg = QualityConfig(**dict(FAST, max_conversations=7), batch_size=2)
    one = evaluate_models(data_url, *varied_dirs, cfg)
    two = evaluate_models(data_url, *varied_dirs, dataclasses.replace(cfg, workers=2, threads=2))
    for name in QUALITY_SYSTEMS:
        a, b = one.systems[name], two.systems[name]
        assert a.recalls == b.recalls and a.echoes == b.echoes, name
        for x, y in zip(a.per_turn, b.per_turn, strict=True):
            assert (x.tokens, x.correct) == (y.tokens, y.correct)
            assert x.nll == pytest.approx(y.nll, rel=1e-12)
        assert (a.memory.states, a.memory.updates) == (b.memory.states, b.memory.updates), name
        assert b.memory.cosine == pytest.approx(a.memory.cosine, rel=1e-12), name
        assert b.memory.gate == pytest.approx(a.memory.gate, rel=1e-12), name
    assert len({r.conversation_id for r in two.systems["rxt"].recalls}) > 1
    assert len({r.answer for r in two.systems["rxt"].recalls}) > 1  # answers vary: the equality means something


def test_rxt_consolidates_its_own_answers_and_rxt_gold_the_gold_ones(data_url, varied_dirs):
    """Both start from the same memory, so the first turn scores the same; later turns differ
    because one memory holds the model's (random) answers and the other the gold answers —
    and the own-answer memory is exactly what greedy answers consolidated one by one give."""
    from rxt_dist.inference import SamplingParams, consolidate, generate
    from rxt_dist.model import load_model_dir

    cfg = QualityConfig(**dict(FAST, max_conversations=3))
    report = evaluate_models(data_url, varied_dirs[0], None, dataclasses.replace(cfg, systems=("rxt", "rxt_gold")))
    own, gold = report.systems["rxt"], report.systems["rxt_gold"]
    assert own.per_turn[0].nll == gold.per_turn[0].nll  # the same batch through the same kernels
    assert own.per_turn[1].nll != pytest.approx(gold.per_turn[1].nll, rel=1e-3)  # measured: 2.6% apart
    model = load_model_dir(varied_dirs[0]).eval()
    conv = list(iter_conversations(data_url, "test"))[0]
    stm = model.initial_stm(1, torch.Generator().manual_seed(cfg.seed))
    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens)
    by_hand = []
    for t in conv.turns:
        answer = generate(model, [t.query_ids], stm, sampling)[0]
        if t.recall is not None:
            by_hand.append(answer)
        stm = consolidate(model, stm, [t.query_ids], [answer])
    codec = TextCodec.load(data_url)
    recorded = [r.answer for r in own.recalls if r.conversation_id == conv.conversation_id]
    assert recorded == [codec.decode(a) for a in by_hand] and recorded


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
    ({"workers": 0}, "workers=0"),
])
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        QualityConfig(**change)
