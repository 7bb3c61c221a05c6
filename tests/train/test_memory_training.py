"""What stages 3 and 4 add for the memory: per-slot targets, the value loss, the length
curriculum, memory-health metrics, and time budgets."""

import dataclasses
import itertools

import pytest
import torch

from rxt_dist.data import TextCodec, iter_conversations, read_manifest
from rxt_dist.model import MemoryAttentionConfig, RxTModel, from_name
from rxt_dist.train.batches import ECHO_COLUMNS, VALUE_COLUMNS, conversation_batch, first_turns, recall_pairs
from rxt_dist.train.config import MemoryAttentionStage, SMATStage, TrainConfig
from rxt_dist.train.launcher import conversation_columns
from rxt_dist.train.loop import collate_rows
from rxt_dist.train.objectives import StageObjective, _per_slot, misquote, with_value_end
from rxt_dist.train.optim import base_schedule, budget_steps
from rxt_dist.train.plain import PlainLoop, read_rows

from tests.model.conftest import debug_rxt
from tests.train.steps import train_steps


def rows_of(dataset, n, skip=0):
    """Shard rows as the readers give them, recall metadata included."""
    rows = read_rows(dataset, "train")
    return {k: v[skip:skip + n] for k, v in rows.items()}


def debug_model(dataset, **memory) -> RxTModel:
    torch.manual_seed(0)
    cfg = dataclasses.replace(from_name("debug"), vocab_size=read_manifest(dataset).vocab_size,
                              memory_attention=MemoryAttentionConfig(**memory))
    return RxTModel(cfg)


def test_value_mask_marks_the_tokens_of_each_recalled_value(dataset):
    rows = rows_of(dataset, 16)
    conv = conversation_batch(rows, 8, 64)
    convs = list(itertools.islice(iter_conversations(dataset, "train"), 16))
    seen = 0
    for t, turn in enumerate(conv.turns):
        for b, c in enumerate(convs):
            predicted = turn.ids[b, 1:][turn.value_mask[b, :-1]].tolist()  # what the marked positions predict
            recall = c.turns[t].recall if t < len(c.turns) else None
            assert predicted == (recall.gold_ids if recall is not None else [])
            seen += recall is not None
        assert not (turn.value_mask & ~turn.loss_mask).any()  # value tokens are answer tokens
    assert seen > 0
    assert conversation_batch({k: rows[k] for k in ("conversation_id", "query_ids", "answer_ids")},
                              8, 64).turns[0].value_mask is None


def test_echo_mask_marks_the_stated_value_the_answer_repeats(dataset):
    rows = rows_of(dataset, 16)
    conv = conversation_batch(rows, 8, 64)
    convs = list(itertools.islice(iter_conversations(dataset, "train"), 16))
    codec = TextCodec.load(dataset)
    echoed = 0
    for t, turn in enumerate(conv.turns):
        for b, c in enumerate(convs):
            predicted = turn.ids[b, 1:][turn.echo_mask[b, :-1]].tolist()
            x = c.turns[t] if t < len(c.turns) else None
            if x is not None and x.kind in ("fact", "update"):
                assert predicted == codec.encode(x.value)  # the value the query stated, as the answer repeats it
                echoed += 1
            else:
                assert predicted == []  # recall turns are the value mask's; small talk has no value
        assert not (turn.echo_mask & turn.value_mask).any()
    assert echoed > 0
    out = StageObjective(debug_model(dataset), "smat", SMATStage(echo_loss_weight=0.5), seed=0)(conv, torch.Generator())
    assert out.terms["echo"].weight == 0.5 and float(out.terms["echo"].count) == sum(
        int(t.echo_mask.sum()) for t in conv.turns)
    late = StageObjective(debug_model(dataset), "smat", SMATStage(echo_loss_weight=0.5, echo_loss_from=300), seed=0)
    for step, weight in ((299, 0.0), (300, 0.5)):  # the echo term joins at its step
        late.step = step
        assert late(conv, torch.Generator()).terms["echo"].weight == weight


def test_misquote_garbles_only_the_answers_copy_of_a_stated_value(dataset):
    conv = conversation_batch(rows_of(dataset, 16), 8, 64)
    garbled = kept = 0
    for turn in conv.turns:
        copy = torch.nn.functional.pad(turn.echo_mask[:, :-1], (1, 0))
        out = misquote(turn.ids, turn.echo_mask, 1.0, torch.Generator().manual_seed(0))
        assert torch.equal(out[~copy], turn.ids[~copy])  # queries, templates and padding untouched
        for b in copy.any(dim=1).nonzero().squeeze(1).tolist():
            if torch.equal(out[b], turn.ids[b]):
                kept += 1  # two equal neighbours swapped
            else:
                garbled += 1
                assert sorted(out[b][copy[b]].tolist()) != sorted(turn.ids[b][copy[b]].tolist()) or \
                    out[b][copy[b]].tolist() != turn.ids[b][copy[b]].tolist()
        assert torch.equal(misquote(turn.ids, turn.echo_mask, 0.0, torch.Generator()), turn.ids)
    assert garbled > 0 and kept <= garbled // 4


def test_echo_noise_changes_what_memory_keeps_not_what_the_answer_learns(dataset):
    """Training with echo_noise encodes garbled copies into memory while the answers are
    scored on the gold interactions; evaluation consolidates the gold interactions."""
    conv = conversation_batch(first_turns(rows_of(dataset, 8), 2), 2, 64)
    first = conv.turns[0]
    copy = torch.nn.functional.pad(first.echo_mask[:, :-1], (1, 0))
    assert copy.any()
    model = debug_model(dataset)
    encode, hidden = model.encode, model.hidden
    encoded, decoded = [], []
    model.encode = lambda ids, lengths: encoded.append(ids) or encode(ids, lengths)
    model.hidden = lambda ids, *rest: decoded.append(ids) or hidden(ids, *rest)

    def written(noise, train=True):
        encoded.clear(), decoded.clear()
        StageObjective(model, "smat", SMATStage(echo_noise=noise), seed=0).train(train)(
            conv, torch.Generator().manual_seed(1))
        assert torch.equal(decoded[0], first.ids)  # the answer is read and scored on the gold turn
        return encoded[0]

    garbled = written(1.0)
    assert not torch.equal(garbled, first.ids) and torch.equal(garbled[~copy], first.ids[~copy])
    assert torch.equal(written(0.0), first.ids) and torch.equal(written(1.0, train=False), first.ids)


def test_recall_loss_end_adds_the_token_that_ends_each_value(dataset):
    batch = conversation_batch(rows_of(dataset, 16), 8, 64, weight_per_fact=0.5)
    codec = TextCodec.load(dataset)
    ends = 0
    for turn in batch.turns:
        scored = with_value_end(turn.value_mask, turn.value_mask, turn.loss_mask)
        added = scored & ~turn.value_mask
        assert added.sum() == turn.value_mask.any(dim=1).sum()  # one position per recalled value
        for b in added.any(dim=1).nonzero().squeeze(1).tolist():
            p = int(added[b].nonzero())
            assert turn.value_mask[b, p - 1] and codec.decode([int(turn.ids[b, p + 1])]).strip() == "."
            ends += 1
        weights = with_value_end(turn.value_weight, turn.value_mask, turn.loss_mask)
        assert torch.equal(weights[added], turn.value_weight[:, :-1][added[:, 1:]])  # the weight of the value it ends
        assert torch.equal(weights[~added], turn.value_weight[~added])
    assert ends > 0
    model = debug_model(dataset)
    plain, with_end = (StageObjective(model, "smat", SMATStage(recall_loss_weight=1.0, recall_loss_end=end), seed=0)(
        batch, torch.Generator()) for end in (False, True))
    added_weight = sum(float((with_value_end(t.value_weight, t.value_mask, t.loss_mask) - t.value_weight).sum())
                       for t in batch.turns)  # each end weighs as its value's tokens
    assert float(with_end.terms["value"].count) == pytest.approx(float(plain.terms["value"].count) + added_weight)
    assert float(with_end.terms["value"].total) > float(plain.terms["value"].total)
    assert with_end.metrics["value_acc"] == plain.metrics["value_acc"]  # the metric still reads the values alone
    late = StageObjective(model, "smat", SMATStage(recall_loss_weight=1.0, recall_loss_end=True,
                                                   recall_loss_end_from=300), seed=0)
    for step, expected in ((299, plain), (300, with_end)):  # the end term joins at its step
        late.step = step
        assert float(late(batch, torch.Generator()).terms["value"].count) == float(expected.terms["value"].count)


def test_value_term_scores_only_recalled_values_and_its_weight_is_the_config(dataset):
    model = debug_model(dataset)
    batch = conversation_batch(rows_of(dataset, 8), 8, 64)
    out = StageObjective(model, "smat", SMATStage(recall_loss_weight=2.0), seed=0)(batch, torch.Generator())
    values = sum(int(t.value_mask.sum()) for t in batch.turns)
    assert float(out.terms["value"].count) == values > 0
    assert out.terms["value"].weight == 2.0
    assert 0 < float(out.terms["value"].total.detach()) / values  # a mean cross-entropy per value token
    assert 0 <= out.metrics["value_acc"][0] <= out.metrics["value_acc"][1] == values


def test_weight_per_fact_weighs_each_recalled_value_by_the_facts_its_turn_holds(dataset):
    rows = rows_of(dataset, 16)
    plain = conversation_batch(rows, 8, 64)
    weighted = conversation_batch(rows, 8, 64, weight_per_fact=0.5)
    convs = list(itertools.islice(iter_conversations(dataset, "train"), 16))
    held = set()
    for t, (p, w) in enumerate(zip(plain.turns, weighted.turns)):
        assert p.value_weight is None and torch.equal(w.value_mask, p.value_mask)
        for b, c in enumerate(convs):
            recall = c.turns[t].recall if t < len(c.turns) else None
            expected = 1 + 0.5 * (recall.facts_held - 1) if recall is not None else 0.0
            assert torch.equal(w.value_weight[b], p.value_mask[b].float() * expected)
            held |= {recall.facts_held} if recall is not None else set()
    assert len(held) >= 3  # the batch mixes turns holding different numbers of facts

    model = debug_model(dataset)
    cfg = SMATStage(recall_loss_weight=1.0, recall_weight_per_fact=0.5)

    def term(batch):
        with torch.no_grad():
            return StageObjective(model, "smat", cfg, seed=0)(batch, torch.Generator()).terms["value"]

    base, heavy = term(plain), term(weighted)
    # the weighted mean over the value tokens: counts are the summed weights
    assert float(heavy.count) == pytest.approx(sum(float(t.value_weight.sum()) for t in weighted.turns))
    assert float(heavy.count) > float(base.count)
    # equal weights (3 on every value token) scale sum and count alike: the unweighted mean
    for turn in weighted.turns:
        turn.value_weight = turn.value_mask.float() * 3.0
    same = term(weighted)
    assert float(same.count) == 3 * float(base.count)
    assert float(same.total) / float(same.count) == pytest.approx(float(base.total) / float(base.count), rel=1e-5)
    with pytest.raises(ValueError, match="weight_per_fact=0.5: the rows lack"):
        conversation_batch({k: rows[k] for k in ("conversation_id", "query_ids", "answer_ids")}, 8, 64,
                           weight_per_fact=0.5)


def test_smat_reports_memory_health_per_layer(dataset):
    model = debug_model(dataset)
    out = StageObjective(model, "smat", SMATStage(), seed=0)(conversation_batch(rows_of(dataset, 8), 8, 64),
                                                             torch.Generator())
    for layer in (0, 1):
        cos_sum, n = out.metrics[f"mem_cos_l{layer}"]
        assert n == 8 and -1 <= cos_sum / n <= 1
        rank_sum, _ = out.metrics[f"mem_rank_l{layer}"]
        assert 1 <= rank_sum / n <= 8
        gate_sum, updates = out.metrics[f"mem_gate_l{layer}"]
        assert updates > 8 and 0 < gate_sum / updates < 1  # one gate reading per update


def test_per_slot_target_gives_each_slot_its_own_position():
    ed = torch.arange(2 * 10, dtype=torch.float32).view(1, 2, 10, 1).expand(2, 2, 10, 3)  # value = b·10 + t
    lengths = torch.tensor([10, 4])
    picked = _per_slot(ed, lengths, slots=8)[0, :, :, 0]  # (B, S)
    assert picked[0].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]  # ⌊i·10/8⌋
    assert picked[1].tolist() == [10, 10, 11, 11, 12, 12, 13, 13]  # ⌊i·4/8⌋: short rows repeat tokens
    assert (picked[1] < 14).all()  # never a padding position


def _stage3_losses(dataset, model, cfg, steps=40):
    objective = StageObjective(model, "memory_attention", cfg, seed=0)
    opt = torch.optim.AdamW(model.memory_attention.parameters(), lr=3e-3)
    batches = [conversation_batch(rows_of(dataset, 8, skip=8 * i), 8, 64) for i in range(4)]
    history = train_steps(objective, batches, opt, steps)
    slot_cos = [max(out.metrics[f"mem_cos_l{i}"][0] / out.metrics[f"mem_cos_l{i}"][1] for i in (0, 1))
                for _, out in history]
    return [loss for loss, _ in history], slot_cos


def test_stage3_per_slot_target_keeps_slots_apart_where_the_pooled_one_collapses_them(dataset):
    """With slot identities, the per-slot target is learnable and the slots stay distinct; the
    pooled target drives every slot towards one vector."""
    per_slot, cos_per_slot = _stage3_losses(dataset, debug_model(dataset, slot_ids=True), MemoryAttentionStage())
    assert sum(per_slot[-4:]) / 4 < sum(per_slot[:4]) / 4 - 0.03  # a harder target than the pooled one
    pooled, cos_pooled = _stage3_losses(dataset, debug_model(dataset, slot_ids=True),
                                        MemoryAttentionStage(target="pooled"))
    assert sum(pooled[-4:]) / 4 < sum(pooled[:4]) / 4 - 0.05
    assert cos_per_slot[-1] < 0.5 < cos_pooled[-1]


def test_length_curriculum_grows_to_whole_conversations():
    st = SMATStage(steps=100, curriculum_turns=2, curriculum_steps=60)
    assert [st.turns_at(s, 8) for s in (0, 30, 59, 60, 99)] == [2, 5, 7, 8, 8]
    assert SMATStage(steps=100).turns_at(0, 8) == 8
    with pytest.raises(ValueError, match="curriculum_steps=0"):
        SMATStage(steps=100, curriculum_turns=2)
    with pytest.raises(ValueError, match="curriculum_steps=100"):
        SMATStage(steps=100, curriculum_turns=2, curriculum_steps=100)


def test_collate_cuts_conversations_by_the_curriculum_and_keeps_their_metadata(dataset):
    cfg = TrainConfig.from_dict({"data": {"url": dataset, "max_turns": 8},
                                 "stages": {"smat": {"steps": 100, "curriculum_turns": 2, "curriculum_steps": 60}}})
    rows = rows_of(dataset, 8)
    early = collate_rows(cfg, "smat", rows, step=0, world=1)
    late = collate_rows(cfg, "smat", rows, step=60, world=1)
    assert len(early.turns) == 2 and len(late.turns) == max(map(len, rows["query_ids"]))
    cut = first_turns(rows, 2)
    assert all(len(cut[c][i]) == min(2, len(rows["query_ids"][i])) for c in ("answer_ids", *VALUE_COLUMNS)
               for i in range(8))
    assert torch.equal(early.turns[1].value_mask, late.turns[1].value_mask[:, :early.turns[1].ids.shape[1]])


def test_recall_pairs_keep_the_value_positions_of_the_kept_turns(dataset):
    rows = rows_of(dataset, 16)
    pairs = recall_pairs(rows)
    batch = conversation_batch(pairs, 8, 64)
    assert len(batch.turns) == 2
    recalled = int(batch.turns[1].value_mask.any(dim=1).sum())
    assert recalled >= 8  # most conversations hold a fact → recall pair; its value is scored


def test_value_loss_on_data_without_recall_metadata_names_the_fix(dataset_without_recall, dataset):
    data = dataset_without_recall
    cfg = TrainConfig.from_dict({"data": {"url": str(data)}, "stages": {"smat": {"recall_loss_weight": 1.0}}},
                                source="c.yaml")
    with pytest.raises(ValueError, match=r"c.yaml: stages.smat.recall_loss_weight=1.0 needs the recall metadata.*"
                                         r"set stages.smat.recall_loss_weight=0"):
        conversation_columns(cfg, "smat")
    plain = TrainConfig.from_dict({"data": {"url": str(data)}})
    assert conversation_columns(plain, "smat") == ["conversation_id", "query_ids", "answer_ids"]
    full = TrainConfig.from_dict({"data": {"url": dataset}})
    assert set(VALUE_COLUMNS + ECHO_COLUMNS) <= set(conversation_columns(full, "smat"))  # read when present
    echo = TrainConfig.from_dict({"data": {"url": str(data)}, "stages": {"smat": {"echo_loss_weight": 1.0}}},
                                 source="c.yaml")
    with pytest.raises(ValueError, match=r"stages.smat.echo_loss_weight=1.0 needs the recall metadata"):
        conversation_columns(echo, "smat")
    per_fact = TrainConfig.from_dict({"data": {"url": str(data)}, "stages": {"smat": {
        "recall_loss_weight": 1.0, "recall_weight_per_fact": 0.5}}}, source="c.yaml")
    with pytest.raises(ValueError, match=r"stages.smat.recall_loss_weight=1.0 needs the recall metadata"):
        conversation_columns(per_fact, "smat")
    assert "recall_facts_held" in conversation_columns(TrainConfig.from_dict(
        {"data": {"url": dataset}, "stages": {"smat": {"recall_loss_weight": 1.0, "recall_weight_per_fact": 0.5}}}),
        "smat")
    with pytest.raises(ValueError, match=r"recall_weight_per_fact=0.5: weighs the value loss, which "
                                         r"recall_loss_weight=0 leaves out"):
        SMATStage(recall_weight_per_fact=0.5)
    # the single-process loop (memory studies, the throughput benchmark) refuses it as well,
    # instead of training without the term
    with pytest.raises(ValueError, match=r"stages.smat.echo_loss_weight=1.0 needs the recall metadata"):
        PlainLoop(echo, "smat", debug_rxt(), read_rows(str(data), "train"))


def test_time_budget_fixes_the_step_count_and_the_schedule_ends_with_it():
    # 20 steps took 10 s (start-up included); each further step takes 0.25 s
    assert budget_steps(budget_s=60, elapsed_s=10, steps_done=20, per_step_s=0.25, max_steps=1000) == 220
    assert budget_steps(budget_s=60, elapsed_s=10, steps_done=20, per_step_s=0.25, max_steps=100) == 100
    assert budget_steps(budget_s=5, elapsed_s=10, steps_done=20, per_step_s=0.25, max_steps=1000) == 21
    cfg = TrainConfig.from_dict({"optimizer": {"warmup_steps": 0, "schedule": "linear", "min_lr_ratio": 0.0},
                                 "stages": {"baseline": {"steps": 1000, "time_budget_s": 60}}})
    total = [1000]
    factor = base_schedule(cfg.optimizer, cfg.stages.baseline, lambda: total[0])
    assert factor(500) == pytest.approx(0.5)
    total[0] = 120
    assert factor(60) == pytest.approx(0.5) and factor(120) == pytest.approx(0.0)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = TrainConfig.from_dict({"optimizer": {"warmup_steps": 10, "schedule": "wsd", "decay_fraction": 0.25,
                                               "min_lr_ratio": 0.1},
                                 "stages": {"baseline": {"steps": 410}}})
    factor = base_schedule(cfg.optimizer, cfg.stages.baseline)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)  # warm-up
    assert factor(10) == factor(200) == factor(310) == 1.0  # held: 100 of the 400 steps after warm-up decay
    assert factor(360) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert factor(410) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainConfig.from_dict({"optimizer": {"schedule": "wsd", "decay_fraction": 0.0}})


def test_stage4_can_start_from_a_fresh_model_without_stage3(tmp_path, dataset):
    from rxt_dist.train.launcher import prepare_job

    cfg = TrainConfig.from_dict({"data": {"url": dataset}, "run": {"storage": str(tmp_path)},
                                 "model": {"preset": "debug"}, "stages": {"smat": {"start": "fresh"}}})
    job = prepare_job(cfg, "smat")  # no stage-3 export exists: a fresh model from the preset
    assert job.init_model_url is None and job.model_config["model_type"] == "rxt"
    curriculum = TrainConfig.from_dict({"data": {"url": dataset}, "run": {"storage": str(tmp_path)}})
    with pytest.raises(ValueError, match="starts from stage memory_attention's model"):
        prepare_job(curriculum, "smat")
    with pytest.raises(ValueError, match="use one or the other"):
        SMATStage(start="fresh", init_model_url="runs/x")


def test_plain_loop_replays_the_rows_two_ray_workers_read_step_by_step(dataset):
    """``PlainLoop(workers=2)``: each step's batch is worker 0's micro-batch, then worker 1's,
    as the Ray Train workers read them (the same rows in the same order, across epochs)."""
    from rxt_dist.data.epochs import read_batches, training_rows, worker_rows

    cfg = TrainConfig.from_dict({"data": {"url": dataset, "shuffle_buffer": 16}, "run": {"seed": 3},
                                 "stages": {"smat": {"batch_size": 8}}})
    loop = PlainLoop(cfg, "smat", debug_rxt(), read_rows(dataset, "train"), workers=2)
    rows = training_rows(dataset, ["conversation_id"])
    per_worker = rows.num_rows // 2 // 4  # micro-batches of 4 per worker and epoch
    expected = []
    for epoch in range(2):
        shares = [list(read_batches(rows, worker_rows(rows, 3, epoch, r, 2, 16), 4)) for r in range(2)]
        expected += [shares[0][i]["conversation_id"] + shares[1][i]["conversation_id"] for i in range(per_worker)]
    got = [next(loop._batches)["conversation_id"] for _ in expected]
    assert got == expected
    assert len(set(got[0])) == 8 and got[0] != got[per_worker]  # a fresh order in epoch 1
    whole = PlainLoop(cfg, "smat", debug_rxt(), read_rows(dataset, "train"))
    assert next(whole._batches)["conversation_id"] != got[0]  # the default order is another one
    with pytest.raises(ValueError, match=r"workers=3: stages.smat.batch_size=8 must be a multiple of it"):
        PlainLoop(cfg, "smat", debug_rxt(), read_rows(dataset, "train"), workers=3)


def test_the_budget_clock_fixes_the_count_after_calibration_then_refines_it_past_a_stall():
    from rxt_dist.train.optim import BUDGET_CALIBRATION_STEPS, BUDGET_REFINE_STEPS, BudgetClock

    # 1 s per step, but steps 6–10 stall 2 s more each (a compile) and steps 21–100 take 1.5 s
    # (a slow stretch): the calibration over steps 5–20 sees the stall, the first refinement
    # (20–100) the slow stretch, the second (100–300) neither
    times, t = {}, 0.0
    for step in range(1, 701):
        t += 1.0 + (2.0 if 6 <= step <= 10 else 0.0) + (0.5 if 21 <= step <= 100 else 0.0)
        times[step] = t
    clock, fixes, fixed = BudgetClock(), {}, False
    for step in range(1, 701):
        start = clock.observe(step, times[step], fixed, total=700)
        if start is not None:
            fixes[step] = (times[step] - start[1]) / (step - start[0])
            fixed = True
    assert list(fixes) == [BUDGET_CALIBRATION_STEPS, *BUDGET_REFINE_STEPS]
    assert fixes[BUDGET_CALIBRATION_STEPS] == pytest.approx(25 / 15)  # 15 steps, 10 s of stall
    assert fixes[BUDGET_REFINE_STEPS[0]] == pytest.approx(1.5)
    assert fixes[BUDGET_REFINE_STEPS[1]] == pytest.approx(1.0)
    # a count whose first half ends before the last mark is not moved there (its decay may run)
    short, fixed = BudgetClock(), False
    for step in range(1, 701):
        if short.observe(step, times[step], fixed, total=2 * BUDGET_REFINE_STEPS[1] - 1) is not None:
            fixed = True
            assert step != BUDGET_REFINE_STEPS[1]
    # a run resumed with its count fixed (the marks lost with the process) keeps that count
    resumed = BudgetClock()
    assert all(resumed.observe(step, times[step], fixed=True) is None for step in range(30, 701))
    # a run resumed before its count was fixed times from its start
    early = BudgetClock()
    assert [early.observe(step, times[step], fixed=False) for step in (19, 20)] == [None, (0, 0.0)]
