"""The compiled prefill, decoding step and memory update (torch.compile, inductor) give what the
eager path gives.

Compiling takes tens of seconds on a CPU, so each model is compiled once per module (batch 1
and batch > 1 compile apart)."""

import dataclasses
import platform
import subprocess
import sys

import pytest
import torch
from torch import Tensor

from rxt_dist.eval.latency_systems import RxTSystem
from rxt_dist.inference import CompiledDecoder, CompiledMemoryUpdate, DecodeBatch, SamplingParams, consolidate, generate
from rxt_dist.inference.engine import pad_batch
from rxt_dist.model import RxTModel, from_name
from rxt_dist.model.config import FFNConfig
from rxt_dist.tokens import prompt_ids
from tests.model.conftest import admitted_midway, debug_rxt
from tests.tolerances import CHANGED, KERNEL

# one thread, as the serving tests run: the thread count is part of what a compiled graph
# checks on every call, and the serving loop's test reuses this module's graphs
pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30], [40, 41]]
GREEDY = SamplingParams(max_new_tokens=12)


def stms(model, B, seed=1):
    return model.initial_stm(B, torch.Generator().manual_seed(seed)) * 25


@pytest.fixture(scope="module")
def moe():
    torch.manual_seed(0)
    cfg = from_name("debug")
    cfg = dataclasses.replace(cfg, init_std=0.5,
                              decoder_ffn=FFNConfig(kind="moe", hidden_dim=48, num_experts=4, top_k=2))
    model = RxTModel(cfg).eval()
    return model, CompiledDecoder(model)


def test_compiled_greedy_answers_equal_eager_alone_and_batched(compiled_debug):
    model, compiled = compiled_debug
    stm = stms(model, len(QUERIES))
    eager = generate(model, QUERIES, stm, GREEDY)
    assert generate(model, QUERIES, stm, GREEDY, compiled=compiled) == eager
    assert generate(model, QUERIES[1:2], stm[:, 1:2], GREEDY, compiled=compiled) == eager[1:2]
    assert len({tuple(a) for a in eager}) == len(QUERIES)  # answers differ: the check means something


def test_compiled_step_logits_match_eager_and_write_the_same_cache(compiled_debug):
    model, compiled = compiled_debug
    stm = stms(model, 2)
    prompts = [prompt_ids(QUERIES[0]), prompt_ids(QUERIES[1])]  # unequal lengths: a masked cache
    batches = [DecodeBatch(model), DecodeBatch(model, compiled=compiled)]
    for b in batches:
        b.admit([0, 1], prompts, [GREEDY, GREEDY], stm=stm)
    with torch.no_grad():
        for _ in range(5):
            ids = batches[0].last_tokens[:, None]
            eager = model.decode(ids, None, batches[0].memory, None, batches[0].cache)[0][:, -1]
            fast, greedy = compiled.step(ids, batches[1].cache, batches[1].memory, None)
            torch.testing.assert_close(fast, eager, **KERNEL)
            assert torch.equal(greedy, fast.argmax(-1))
            batches[0].last_tokens = batches[1].last_tokens = eager.argmax(-1)
    c0, c1 = batches[0].cache, batches[1].cache
    assert c0.host_lengths == c1.host_lengths
    for layer in range(len(c0.keys)):
        for row, n in enumerate(c0.host_lengths):
            torch.testing.assert_close(c1.keys[layer][row, :, :n], c0.keys[layer][row, :, :n], **KERNEL)
            torch.testing.assert_close(c1.values[layer][row, :, :n], c0.values[layer][row, :, :n], **KERNEL)


def test_compiled_steps_of_each_kind_in_turn_match_eager(compiled_debug):
    """Steps of batch 1 and batch 2, with and without hidden memory slots, in turn and twice
    over: each kind's first call runs all of dynamo's guards and later ones only the tensors'
    (CompiledDecoder); every step's logits are the eager step's, the hidden slots' too."""
    model, compiled = compiled_debug
    stm = stms(model, 2)
    hidden = torch.ones(2, stm.shape[2], dtype=torch.bool)
    hidden[:, ::2] = False
    prompts = [prompt_ids(QUERIES[0]), prompt_ids(QUERIES[1])]
    kinds = [(slice(0, 2), None), (slice(1, 2), hidden[1:2]), (slice(0, 2), hidden), (slice(0, 1), None)]
    for rows, mask in kinds * 2:
        ids, lengths = pad_batch(prompts[rows])
        step_ids = torch.full((ids.shape[0], 1), 7)
        with torch.no_grad():
            memory = model.project_memory(stm[:, rows])
            caches = [model.new_cache(ids.shape[0]) for _ in range(3)]
            for cache in caches:
                model.decode_hidden(ids, lengths, memory, mask, cache)
            eager = model.decode(step_ids, None, memory, mask, caches[0])[0][:, -1]
            unmasked = model.decode(step_ids, None, memory, None, caches[1])[0][:, -1]
        torch.testing.assert_close(compiled.step(step_ids, caches[2], memory, mask)[0], eager, **KERNEL)
        if mask is not None:
            assert (eager - unmasked).abs().max() > CHANGED  # the hidden slots change the answer


def test_compiled_prefill_matches_eager_logits_memory_and_cache(compiled_debug):
    """A turn's prefill through the compiled model: the next-token logits, the projected memory
    and every real cached position as the eager pass gives them — rows of unequal length (right
    padding under a plain causal mask), some slots hidden, and one row alone."""
    model, compiled = compiled_debug
    stm = stms(model, 3)
    prompts = [prompt_ids(q) for q in QUERIES[:3]]
    hidden_slots = torch.ones(3, stm.shape[2], dtype=torch.bool)
    hidden_slots[1, ::2] = False
    for rows, mask in ((slice(0, 3), hidden_slots), (slice(1, 2), None)):
        ids, lengths = pad_batch(prompts[rows])
        B = ids.shape[0]
        eager_cache, fast_cache = model.new_cache(B), model.new_cache(B)
        with torch.no_grad():
            eager_memory = model.project_memory(stm[:, rows])
            out, _ = model.decode_hidden(ids, lengths, eager_memory, mask, eager_cache)
            eager_logits = model.lm_logits(out[torch.arange(B), lengths - 1])
        logits, memory = compiled.prefill(ids, lengths, stm[:, rows], mask, fast_cache)
        torch.testing.assert_close(logits, eager_logits, **KERNEL)
        assert (logits - model.lm_logits(out[:, 0])).abs().max() > CHANGED  # the last real token's, not the first's
        for (k, v), (k0, v0) in zip(memory, eager_memory):
            assert k.is_contiguous() and v.is_contiguous()
            torch.testing.assert_close(k, k0, **KERNEL)
            torch.testing.assert_close(v, v0, **KERNEL)
        assert fast_cache.host_lengths == eager_cache.host_lengths == lengths.tolist()
        for layer in range(len(eager_cache.keys)):
            for row, n in enumerate(lengths.tolist()):
                torch.testing.assert_close(fast_cache.keys[layer][row, :, :n], eager_cache.keys[layer][row, :, :n], **KERNEL)
                torch.testing.assert_close(fast_cache.values[layer][row, :, :n], eager_cache.values[layer][row, :, :n], **KERNEL)
    with pytest.raises(ValueError, match="empty cache"):  # a prefill starts a turn; continuing one is eager's
        compiled.prefill(ids, lengths, stm[:, rows], None, fast_cache)


def test_after_its_warm_up_a_compiled_decoder_never_compiles_during_a_turn():
    """A replica compiles at start (``warm_up``) and not while it answers: a query alone, a
    batch of unequal prompts whose rows finish at different steps (the batch shrinks to one),
    a row joining a running batch — none compiles a graph again (a compile at request time
    stalls every answer of the replica for seconds) — nor does a model with a weight as wide as
    the warm-up's cache (the FFN's 64 columns: sizes that once shared one symbol in the graph)."""
    model = debug_rxt()
    assert model.cfg.decoder_ffn.hidden_dim == model.new_cache(1).capacity
    compiled = CompiledDecoder(model)
    stm = stms(model, 3)
    two = [SamplingParams(max_new_tokens=2)]  # the prefill's token and one step
    compiled.warm_up((1,))  # the default warm-up, (1, 2), in two parts: batch 1 first
    with torch._dynamo.config.patch(error_on_recompile=True):
        outgrow_the_cache(model, compiled, stm[:, :1])
    compiled.warm_up((2,))
    with torch._dynamo.config.patch(error_on_recompile=True):
        generate(model, QUERIES[:1], stm[:, :1], GREEDY, compiled=compiled)
        lengths = [SamplingParams(max_new_tokens=n) for n in (12, 3, 7)]  # rows leave at different steps
        answers = generate(model, QUERIES[:3], stm, lengths, compiled=compiled)
        admitted_midway(model, stm[:, :2], QUERIES, GREEDY, compiled=compiled, steps=30)
        for n in range(1, 70):  # every prompt length around the cache's first capacity (64)
            query = list(range(10, 10 + n))
            generate(model, [query], stm[:, :1], two, compiled=compiled)
            generate(model, [query, query[:1 + n // 2]], stm[:, :2], two * 2, compiled=compiled)
        for rows in (1, 2):
            outgrow_the_cache(model, compiled, stm[:, :rows])
    assert [len(a) for a in answers] == [12, 3, 7]


def outgrow_the_cache(model: RxTModel, compiled: CompiledDecoder, stm: Tensor) -> None:
    """Answer a 50-token query with 20 tokens (no end token) for each conversation of ``stm``:
    the cache outgrows its first capacity (64) while decoding."""
    rows = stm.shape[1]
    long = DecodeBatch(model, eos_id=-1, compiled=compiled)
    long.admit(list(range(rows)), [prompt_ids(list(range(10, 60)))] * rows,
               [SamplingParams(max_new_tokens=20)] * rows, stm=stm)
    while len(long):
        long.step()


def test_compiled_continuous_batching_admits_between_steps(compiled_debug):
    model, compiled = compiled_debug
    stm = stms(model, 2)
    got = admitted_midway(model, stm, QUERIES, GREEDY, compiled=compiled, steps=30)
    assert got[0] == generate(model, [QUERIES[0]], stm[:, :1], GREEDY)[0]
    assert got[1] == generate(model, [QUERIES[1]], stm[:, 1:], GREEDY)[0]


def _answers(model, stm, params, eos_id, compiled=None) -> tuple[dict, dict]:
    """Each query's greedy answer (QUERIES in one batch) with ``eos_id`` as the end-of-answer
    token, and how each ended."""
    batch = DecodeBatch(model, eos_id=eos_id, compiled=compiled)
    got, ends = {i: [] for i in range(len(QUERIES))}, {}
    events = batch.admit(list(range(len(QUERIES))), [prompt_ids(q) for q in QUERIES], params, stm=stm)
    while events:
        for ev in events:
            if ev.token is not None:
                got[ev.key].append(ev.token)
            if ev.finished:
                ends[ev.key] = ev.finish_reason
        events = batch.step() if len(batch) else []
    return got, ends


@pytest.mark.parametrize("at", ["a step", "the prefill"])
def test_an_answer_that_ignores_the_end_token_runs_to_its_length_and_changes_no_other(compiled_debug, at):
    model, compiled = compiled_debug
    stm = stms(model, len(QUERIES))
    plain, _ = _answers(model, stm, [GREEDY] * len(QUERIES), eos_id=-1)  # no token ends an answer
    if at == "a step":  # answer 0's first token that it has not said before, from its third on
        row, k = 0, next(k for k in range(2, 12) if plain[0][k] not in plain[0][:k])
    else:  # answer 1's first token: the one its prefill chooses
        row, k = 1, 0
    eos = plain[row][k]
    ignoring = [dataclasses.replace(GREEDY, ignore_eos=i == row) for i in range(len(QUERIES))]
    ended, ended_how = _answers(model, stm, [GREEDY] * len(QUERIES), eos)
    assert ended[row] == plain[row][:k] and ended_how[row] == "stop"
    for compiled_or_not in (None, compiled):
        got, how = _answers(model, stm, ignoring, eos, compiled_or_not)
        assert len(got[row]) == GREEDY.max_new_tokens and eos not in got[row] and how[row] == "length"
        assert got[row][:k] == plain[row][:k] and got[row][k] != eos
        assert {i: a for i, a in got.items() if i != row} == {i: a for i, a in ended.items() if i != row}


def test_compiled_mixture_of_experts_decoder_equals_eager(moe):
    """Batch 1 indexes its chosen experts' stacked weights; a batch runs each expert on the rows
    that chose it: both answer as the eager routing does."""
    model, compiled = moe
    stm = stms(model, 3)
    eager = generate(model, QUERIES[:3], stm, GREEDY)
    assert generate(model, QUERIES[:3], stm, GREEDY, compiled=compiled) == eager
    assert len({tuple(a) for a in eager}) == 3
    for i in range(3):
        assert generate(model, QUERIES[i:i + 1], stm[:, i:i + 1], GREEDY, compiled=compiled) == [eager[i]]


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-product", "one-product-per-expert"])
def test_routed_experts_give_the_eager_mixture_of_experts_output(moe, grouped, monkeypatch):
    """The operator behind a compiled batch's MoE, in both its forms (a grouped product where
    torch has one for the device, else a product per expert), equals the eager routing, also
    when some expert is chosen by no row."""
    from rxt_dist.inference import experts as experts_module

    if grouped and not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no grouped matrix product")
    if not grouped:
        monkeypatch.setattr(experts_module, "_grouped_swiglu", experts_module._looped_swiglu)
    model, compiled = moe
    ffn = model.decoder[0].ffn
    stacked = compiled._weights.layers[0]
    for rows in (1, 9):  # one row leaves two of the four experts without rows
        x = torch.randn(rows, 1, model.cfg.dim, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            eager, _ = ffn(x)
            probs = ffn.router(x[:, 0]).softmax(dim=-1)
            weights, chosen = probs.topk(ffn.top_k, dim=-1)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            got = experts_module.routed_experts(x[:, 0], chosen, weights, stacked["gate_up"], stacked["down"])
        torch.testing.assert_close(got, eager[:, 0], **KERNEL)
    assert eager.abs().max() > 1e-2  # the outputs compared are not zeros


WEIGHTS_CHANGED = {
    "an expert's down projection": lambda model: [e.down.weight for e in model.decoder[0].ffn.experts],
    "the router": lambda model: [model.decoder[0].ffn.router.weight],
    "a value projection": lambda model: [model.decoder[1].attn.v_proj.weight],
    "the memory query projection": lambda model: [model.decoder[0].mem_attn.q_proj.weight],
    "the head": lambda model: [model.lm_head.weight],
    "a norm": lambda model: [model.decoder[1].ffn_norm.weight],
}


@pytest.mark.parametrize("changed", WEIGHTS_CHANGED)
def test_compiled_decoding_follows_weights_changed_in_place(moe, changed):
    """The step's copies of the weights (transposed, stacked) are renewed when a weight changes
    in place: its answers stay the eager answers of the model as it now is."""
    model, compiled = moe
    stm = stms(model, 1)
    before = generate(model, QUERIES[:1], stm, GREEDY, compiled=compiled)
    weights = WEIGHTS_CHANGED[changed](model)
    saved = [w.detach().clone() for w in weights]
    try:
        with torch.no_grad():
            for w in weights:
                w.mul_(-3.0)
        eager = generate(model, QUERIES[:1], stm, GREEDY)
        assert eager != before  # the change matters to the answer
        assert generate(model, QUERIES[:1], stm, GREEDY, compiled=compiled) == eager
    finally:
        with torch.no_grad():
            for w, old in zip(weights, saved):
                w.copy_(old)
    assert generate(model, QUERIES[:1], stm, GREEDY, compiled=compiled) == before


@pytest.fixture(scope="module")
def memory_update(compiled_debug):
    model, _ = compiled_debug
    compiled = CompiledMemoryUpdate(model)
    compiled.warm_up()
    return compiled


def test_compiled_memory_update_gives_the_eager_stm_batched_and_alone(compiled_debug, memory_update):
    """The MemoryUpdater's compiled consolidation: interactions of unequal length (a padded
    batch) and one alone give the STM the eager update gives, and that STM moved; after its
    warm-up neither compiles again."""
    model, compiled = compiled_debug[0], memory_update
    stm = stms(model, 3)
    answers = [[50, 51], [52, 53, 54, 55, 56], [57]]
    eager = consolidate(model, stm, QUERIES[:3], answers)
    with torch._dynamo.config.patch(error_on_recompile=True):
        batched = consolidate(model, stm, QUERIES[:3], answers, compiled=compiled)
        alone = consolidate(model, stm[:, 1:2], QUERIES[1:2], answers[1:2], compiled=compiled)
        for n in range(1, 70):  # interactions of every length around the slot count and beyond
            query = list(range(10, 10 + n))
            consolidate(model, stm[:, :1], [query], [[60]], compiled=compiled)
            consolidate(model, stm[:, :2], [query, query[:1 + n // 2]], [[60], [61, 62]], compiled=compiled)
    torch.testing.assert_close(batched, eager, **KERNEL)
    torch.testing.assert_close(alone, eager[:, 1:2], **KERNEL)
    assert (eager - stm).abs().max() > CHANGED


def test_the_latency_benchmarks_compiled_rxt_answers_and_remembers_as_the_eager_one(compiled_debug, memory_update):
    """``rxt_compiled`` of jobs/bench_latency.py: the turns it times run through the compiled
    step and memory update and give the eager system's answers and STMs."""
    model, decoder = compiled_debug
    eager = RxTSystem(model, 6, seed=0)
    compiled = RxTSystem(model, 6, seed=0, decoder=decoder, updater=memory_update)
    assert (eager.name, compiled.name) == ("rxt", "rxt_compiled")
    e_stm = c_stm = stms(model, 1)
    answers = []
    for query in QUERIES:
        e, c = eager.turn(e_stm, query), compiled.turn(c_stm, query)
        assert c.answer == e.answer
        # The same maths through other kernels, each turn's roundings carried into the next on
        # an STM of order 25 (1.2e-4 after four turns, measured); a wrong STM (another row's, an
        # update skipped) is off by more than CHANGED.
        torch.testing.assert_close(c.state, e.state, rtol=10 * KERNEL["rtol"], atol=10 * KERNEL["atol"])
        answers.append(e.answer)
        e_stm, c_stm = e.state, c.state
    assert len({tuple(a) for a in answers}) > 1  # answers vary, so equality means something
    assert (e_stm - stms(model, 1)).abs().max() > CHANGED  # and the memory moved


def test_compiled_decoding_refuses_a_stateless_model():
    from rxt_dist.model import StatelessLM

    with pytest.raises(TypeError, match="RxT models"):
        CompiledDecoder(StatelessLM(from_name("baseline-debug")))


def test_where_the_step_cannot_be_compiled_the_server_decodes_eagerly_and_says_why(caplog):
    """``compiled_or_eager`` (the Generator's ``compile_decode``, the MemoryUpdater's
    ``compile_update``): a model the compiled step does not cover gives ``None`` — run eagerly —
    and a WARNING naming the reason, not a replica that fails to start."""
    from rxt_dist.inference import compiled_or_eager
    from rxt_dist.model import StatelessLM

    cfg = dataclasses.replace(from_name("debug"), decoder_ffn=FFNConfig(kind="moe", hidden_dim=48, num_experts=4,
                                                                       top_k=2, bias=True))
    with caplog.at_level("WARNING", logger="rxt_dist.inference.compiled"):
        assert compiled_or_eager(RxTModel(cfg).eval()) is None
    assert "decoding eagerly" in caplog.text and "biases" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rxt_dist.inference.compiled"):  # the MemoryUpdater's compile_update
        assert compiled_or_eager(StatelessLM(from_name("baseline-debug")), kind=CompiledMemoryUpdate) is None
    assert "compiled memory update unavailable, consolidating eagerly" in caplog.text and "RxT models" in caplog.text


SCALAR_CHECK = """
import logging, sys
import ctypes  # the real module, before the folder that shadows it joins sys.path
from rxt_dist.inference.compiled import warn_if_scalar_kernels
logging.basicConfig()
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
print("scalar:", warn_if_scalar_kernels())
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="checked on x86 CPUs")
def test_where_inductor_would_compile_scalar_kernels_the_log_says_so(tmp_path):
    """Inductor's check of the CPU's vector instructions loads a test library in a child Python
    that inherits sys.path: a folder on it holding a module named like a standard one breaks
    the child, every kernel would come out scalar, and the compiled steps warn."""
    shadow = tmp_path / "scripts"
    shadow.mkdir()
    (shadow / "ctypes.py").write_text("raise ImportError('a script named like a standard module')\n")
    run = lambda *args: subprocess.run([sys.executable, "-c", SCALAR_CHECK, *args], capture_output=True,
                                       text=True, timeout=300)
    plain = run()
    assert "scalar: False" in plain.stdout, plain.stderr
    assert "vector instructions" not in plain.stderr
    shadowed = run(str(shadow))
    assert "scalar: True" in shadowed.stdout, shadowed.stderr
    assert "no usable vector instructions" in shadowed.stderr
