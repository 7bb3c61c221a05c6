import pytest
import torch

from rxt_dist.inference import (
    SamplingParams,
    consolidate,
    filter_logits,
    generate,
    greedy_tokens,
    respond,
    respond_stateless,
    system_prompt_stm,
)
from rxt_dist.inference.engine import collect
from rxt_dist.tokens import EOS_ID, history_ids, prompt_ids
from tests.model.conftest import admitted_midway
from tests.tolerances import KERNEL

QUERIES = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30], [40, 41]]
GREEDY = SamplingParams(max_new_tokens=10)


def stms(model, B, seed=1):
    return model.initial_stm(B, torch.Generator().manual_seed(seed)) * 25  # well apart


def full_recompute_greedy(logits_fn, prompt, steps):
    """Greedy decoding by re-running the whole sequence every step (no caches)."""
    seq = list(prompt)
    out = []
    for _ in range(steps):
        ids = torch.tensor([seq])
        logits = logits_fn(ids, torch.tensor([len(seq)]))
        tok = int(logits[0, -1].argmax())
        if tok == EOS_ID:
            break
        out.append(tok)
        seq.append(tok)
    return out


def test_cached_generation_equals_full_recomputation(rxt):
    stm = stms(rxt, 1)
    cached = generate(rxt, [QUERIES[1]], stm, GREEDY)[0]
    with torch.no_grad():
        recomputed = full_recompute_greedy(lambda i, n: rxt(i, n, stm)[0], prompt_ids(QUERIES[1]), 10)
    assert cached == recomputed
    assert len(set(cached)) > 1  # a non-degenerate answer, so the comparison means something


def test_stateless_cached_generation_equals_full_recomputation(stateless):
    history = history_ids([([7, 8], [9, 10, 11])], QUERIES[0])
    cached = collect(respond_stateless(stateless, [history], GREEDY), 1)[0]
    with torch.no_grad():
        recomputed = full_recompute_greedy(lambda i, n: stateless(i, n)[0], history, 10)
    assert cached == recomputed


@pytest.mark.parametrize("sampling", [
    GREEDY,
    SamplingParams(max_new_tokens=10, temperature=0.9, top_k=50, seed=7),
    SamplingParams(max_new_tokens=10, temperature=1.2, top_p=0.8, seed=11),
])
def test_batched_respond_equals_each_conversation_alone(rxt, sampling):
    stm = stms(rxt, len(QUERIES))
    batched = generate(rxt, QUERIES, stm, sampling)
    for i, q in enumerate(QUERIES):
        alone = generate(rxt, [q], stm[:, i:i + 1], sampling)[0]
        assert batched[i] == alone
    assert len({tuple(a) for a in batched}) == len(QUERIES)


def test_batched_consolidate_equals_each_conversation_alone(rxt):
    stm = stms(rxt, len(QUERIES))
    answers = [[50 + i] * (i + 1) for i in range(len(QUERIES))]
    batched = consolidate(rxt, stm, QUERIES, answers)
    for i in range(len(QUERIES)):
        alone = consolidate(rxt, stm[:, i:i + 1], [QUERIES[i]], [answers[i]])
        torch.testing.assert_close(batched[:, i:i + 1], alone, **KERNEL)  # padded batch vs one unpadded row


def test_multi_turn_batched_equals_alone(rxt):
    """Two turns: respond, consolidate, respond again — batched and alone agree throughout."""
    stm = stms(rxt, 3)
    qs = QUERIES[:3]
    a1 = generate(rxt, qs, stm, GREEDY)
    stm1 = consolidate(rxt, stm, qs, a1)
    a2 = generate(rxt, qs, stm1, GREEDY)
    for i in range(3):
        s = stm[:, i:i + 1]
        x1 = generate(rxt, [qs[i]], s, GREEDY)
        s1 = consolidate(rxt, s, [qs[i]], x1)
        assert generate(rxt, [qs[i]], s1, GREEDY)[0] == a2[i]


def test_respond_streams_one_token_per_step_then_none(rxt):
    stm = stms(rxt, 2)
    steps = list(respond(rxt, [QUERIES[0], QUERIES[1]], stm, [SamplingParams(max_new_tokens=2), GREEDY]))
    assert len(steps) == 10
    assert all(isinstance(t, int) for t in steps[0]) and all(isinstance(t, int) for t in steps[1])
    assert all(s[0] is None for s in steps[2:])  # the first answer stopped at its token limit


def test_admitting_between_steps_gives_the_same_answers(rxt):
    """Continuous batching: a sequence joining a running batch decodes as if alone."""
    stm = stms(rxt, 2)
    got = admitted_midway(rxt, stm, QUERIES, GREEDY)
    assert got[0] == generate(rxt, [QUERIES[0]], stm[:, :1], GREEDY)[0]
    assert got[1] == generate(rxt, [QUERIES[1]], stm[:, 1:], GREEDY)[0]


def test_same_seed_same_sample_and_different_seed_differs(rxt):
    stm = stms(rxt, 1)
    s = lambda seed: SamplingParams(max_new_tokens=12, temperature=1.5, seed=seed)
    a = generate(rxt, [QUERIES[0]], stm, s(1))[0]
    assert generate(rxt, [QUERIES[0]], stm, s(1))[0] == a
    assert generate(rxt, [QUERIES[0]], stm, s(2))[0] != a


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    k2 = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(k2).tolist() == [True, True, False, False]
    p = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.isfinite(p).tolist() == [True, True, False, False]
    p_small = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.1))
    assert torch.isfinite(p_small).tolist() == [True, False, False, False]


@pytest.mark.parametrize("batch, vocab", [(1, 4096), (32, 4096), (8, 8192), (16, 4100)])
def test_greedy_tokens_are_argmax_ties_and_nans_included(batch, vocab):
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, vocab, generator=gen)
    logits[0, [70, 3000]] = 50.0  # a tie in two blocks: the first wins
    logits[-1, [1, 2]] = logits[-1].max() + 1  # a tie inside one block
    logits[batch // 2, [900, 64, 4000]] = float("nan")  # argmax takes NaN as the maximum
    assert torch.equal(greedy_tokens(logits), logits.argmax(dim=-1))
    transposed = logits.T.contiguous().T  # the same values in another layout
    assert torch.equal(greedy_tokens(transposed), logits.argmax(dim=-1))


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"temperature": -1}, "temperature=-1"),
    ({"top_p": 0}, "top_p=0"),
    ({"top_k": -3}, "top_k=-3"),
])
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_memory_mask_hides_slots(rxt):
    stm = stms(rxt, 1)
    extra = torch.randn(2, 1, 4, 32, generator=torch.Generator().manual_seed(9)) * 25
    grown = torch.cat([stm, extra], dim=2)
    mask = torch.tensor([[True] * 8 + [False] * 4])
    assert generate(rxt, [QUERIES[1]], grown, GREEDY, memory_mask=mask) == generate(rxt, [QUERIES[1]], stm, GREEDY)


def test_system_prompt_shapes_the_initial_memory(rxt):
    a = system_prompt_stm(rxt, [[100, 101, 102]], torch.Generator().manual_seed(0))
    b = system_prompt_stm(rxt, [[200, 201]], torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 8, 32)
    assert (a - b).abs().max() > 1e-3


def test_respond_rejects_mismatched_batch(rxt):
    with pytest.raises(ValueError, match="stm holds 1 conversations but 2 queries"):
        list(respond(rxt, [[10], [11]], stms(rxt, 1)))
