import json

import pytest

from rxt_dist.eval.latency import (
    SYSTEMS,
    FullHistorySystem,
    LatencyConfig,
    PrefixCacheSystem,
    latency_document,
    make_queries,
    play_conversation,
    play_interleaved,
    run_latency,
)
from rxt_dist.eval.plots import plot_latency
from rxt_dist.model import build_model, from_name, save_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")

EAGER_SYSTEMS = tuple(s for s in SYSTEMS if s != "rxt_compiled")
"""Every system but the compiled RxT (compiling costs tens of seconds: tested in
tests/model/test_compiled.py, on that module's compiled model)."""
SMALL = dict(rxt_preset="debug", turns=3, query_tokens=4, answer_tokens=5, repeats=2, max_repeats=4,
             min_turn_time_s=0.0, warmup_turns=1, systems=EAGER_SYSTEMS)


@pytest.fixture(scope="module")
def report():
    return run_latency(LatencyConfig(**SMALL), command="pytest")


def test_report_has_every_system_with_per_turn_times_and_ratios(report):
    assert set(report["systems"]) == set(EAGER_SYSTEMS)
    for name, r in report["systems"].items():
        assert len(r["prompt_s"]) == len(r["turn_s"]) == SMALL["turns"], name
        assert all(p > 0 for p in r["prompt_s"]) and all(t > 0 for t in r["turn_s"]), name
        # The whole answer takes longer than its first token, sample by sample.
        for ps, ts in zip(r["prompt_samples_s"], r["turn_samples_s"]):
            assert len(ps) == SMALL["repeats"] and all(t > p for p, t in zip(ps, ts)), name
        # The same division of the same floats: exact.
        assert r["prompt_ratio_last_first"] == r["prompt_s"][-1] / r["prompt_s"][0]
        assert r["turn_ratio_last_first"] == r["turn_s"][-1] / r["turn_s"][0]
        assert r["prompt_ratio_last_first_min"] == r["prompt_min_s"][-1] / r["prompt_min_s"][0]
        assert all(m <= med for m, med in zip(r["prompt_min_s"], r["prompt_s"]))
        assert len(r["prompt_paired_ratio"]) == SMALL["turns"] and min(r["prompt_reference_s"]) > 0
        assert r["turn_ratio_paired"] == r["turn_paired_ratio"][-1] > 0
        assert r["turn_ratio_paired_tail"] == r["turn_ratio_paired"]  # the last quarter of 3 turns is 1
        assert all(n >= SMALL["repeats"] for n in r["repeats_per_turn"])
        assert r["peak_state_bytes"] > 0
    rxt = report["systems"]["rxt"]
    assert len(rxt["consolidate_s"]) == SMALL["turns"] and min(rxt["consolidate_s"]) > 0
    assert set(report["vs_rxt_last_turn"]) == set(EAGER_SYSTEMS) - {"rxt"}
    assert min(report["process_memory"].values()) > 0
    assert report["threads"] == 1 and report["machine"]["logical_cpus"] >= 1
    assert report["targets"]["rxt_prompt_ratio_target"] == 1.15
    assert set(report["targets"]) >= {"rxt_prompt_ratio_paired_met", "stateless_full_vs_rxt_prompt_last_turn"}
    json.dumps(latency_document([report], "pytest"))  # the report is plain JSON


def test_plot_is_written_as_png(report, tmp_path):
    path = plot_latency(latency_document([report, report]), tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_totals_are_linear_for_rxt_and_quadratic_for_full_reread(report):
    n, q, a = SMALL["turns"], SMALL["query_tokens"], SMALL["answer_tokens"]
    interaction, prompt = q + a + 4, q + 3
    systems = report["systems"]
    # RxT: every turn feeds the prompt, a-1 decoding steps, and the interaction to the encoder.
    assert systems["rxt"]["tokens_per_turn"] == [prompt + a - 1 + interaction] * n
    # Re-reading the history: turn t also reads t earlier interactions.
    full = [t * interaction + prompt + a - 1 for t in range(n)]
    assert systems["stateless_full"]["tokens_per_turn"] == full
    assert systems["hf_llama"]["tokens_per_turn"] == full
    # Prefix caching feeds only what its cache lacks, but attends to the whole history.
    assert systems["stateless_prefix"]["tokens_total"] == n * interaction - 2
    assert systems["stateless_prefix"]["context_tokens"] == systems["stateless_full"]["context_tokens"]
    formulas = report["token_formulas"]
    for name in EAGER_SYSTEMS:
        assert systems[name]["tokens_total"] == formulas[name], name
    # The state RxT carries does not grow; the prefix cache's does.
    assert len(set(systems["rxt"]["carried_bytes"])) == 1
    assert systems["stateless_prefix"]["context_tokens"][-1] > systems["stateless_prefix"]["context_tokens"][0]


def test_prefix_cached_answers_equal_full_reread(varied_stateless):
    queries = make_queries(4, 5, varied_stateless.cfg.vocab_size, seed=3)
    full = play_conversation(FullHistorySystem(varied_stateless, 6), queries)
    cached = play_conversation(PrefixCacheSystem(varied_stateless, 6), queries)
    full_answers = [t.runs[0].answer for t in full]
    assert [t.runs[0].answer for t in cached] == full_answers
    assert len({tuple(a) for a in full_answers}) > 1  # answers vary, so equality means something
    assert cached[-1].runs[0].state[0] == full[-1].runs[0].state  # both hold the same history


def test_stm_slots_override_and_model_dir(tmp_path):
    one = dict(SMALL, turns=2, repeats=1, max_repeats=1, warmup_turns=0, systems=("rxt",))
    r = run_latency(LatencyConfig(**one, stm_slots=16))
    cfg = from_name("debug")
    assert r["models"]["rxt"]["stm_slots"] == 16
    assert r["systems"]["rxt"]["carried_bytes"] == [cfg.num_layers * 16 * cfg.dim * 4] * 2
    save_model_dir(build_model(cfg), str(tmp_path / "rxt"))
    r = run_latency(LatencyConfig(**one, rxt_model_dir=str(tmp_path / "rxt")))
    assert r["models"]["rxt"]["source"] == f"model directory {tmp_path / 'rxt'}"
    assert r["models"]["rxt"]["stm_slots"] == cfg.stm.num_slots


def test_paired_references_replay_the_first_turn(varied_stateless):
    """Every run of every turn is followed by a replay of turn 1 from the fresh state."""
    queries = make_queries(3, 4, varied_stateless.cfg.vocab_size, seed=5)
    system = FullHistorySystem(varied_stateless, 4)
    turns = play_interleaved([system], queries, repeats=2, paired=True)[system.name]
    first = turns[0].runs[0]
    for t in turns:
        assert len(t.references) == len(t.runs) == 2
        assert all(ref.answer == first.answer and ref.tokens == first.tokens for ref in t.references)
    assert turns[-1].runs[0].tokens > first.tokens  # the runs themselves did move on


@pytest.mark.parametrize("change, message", [
    ({"turns": 0}, "turns=0"),
    ({"answer_tokens": -1}, "answer_tokens=-1"),
    ({"systems": ("rxt", "vllm")}, "systems=['rxt', 'vllm']"),
    ({"rxt_preset": "baseline-tiny"}, "rxt_preset='baseline-tiny': must name an RxT"),
    ({"baseline_preset": "tiny"}, "baseline_preset='tiny': must name a stateless"),
    ({"stm_slots": 0}, "stm_slots=0"),
    ({"repeats": 5, "max_repeats": 2}, "max_repeats=2: must be ≥ repeats=5"),
    ({"stm_slots": 64, "rxt_model_dir": "/some/dir"}, "stm_slots=64: cannot resize"),
])
def test_bad_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        LatencyConfig(**change)
