import itertools

import pytest
import torch

from rxt_dist.model import GateConfig, MemoryAttentionConfig
from rxt_dist.model.layers import MoE
from rxt_dist.model.config import FFNConfig

from tests.tolerances import CHANGED, EXACT, KERNEL

from .conftest import debug_rxt

VOCAB = 512


def tokens(B, T, seed=0):
    return torch.randint(7, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def full(B, T):
    return torch.full((B,), T, dtype=torch.long)


def test_decoder_is_causal(rxt):
    ids = tokens(1, 12)
    stm = rxt.initial_stm(1, torch.Generator().manual_seed(0))
    base, _ = rxt(ids, full(1, 12), stm)
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % VOCAB
    after, _ = rxt(changed, full(1, 12), stm)
    # Same kernel, same shapes, and the earlier positions read identical inputs: bit-for-bit.
    torch.testing.assert_close(after[:, :8], base[:, :8], **EXACT)
    assert (after[:, 8:] - base[:, 8:]).abs().max() > CHANGED


def test_stateless_baseline_is_causal(stateless):
    ids = tokens(1, 10)
    base, _ = stateless(ids, full(1, 10))
    changed = ids.clone()
    changed[0, 5] += 1
    after, _ = stateless(changed, full(1, 10))
    torch.testing.assert_close(after[:, :5], base[:, :5], **EXACT)  # as in test_decoder_is_causal


def test_padding_does_not_change_real_positions(rxt):
    ids = tokens(1, 7)
    stm = rxt.initial_stm(1, torch.Generator().manual_seed(0))
    alone, _ = rxt(ids, full(1, 7), stm)
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    logits, _ = rxt(padded, full(1, 7), stm)
    # The padded row takes an explicit mask, the row alone SDPA's fused causal path.
    torch.testing.assert_close(logits[:, :7], alone, **KERNEL)
    assert torch.isfinite(logits).all()


def test_permuting_stm_slots_leaves_decoder_output_unchanged(rxt):
    ids = tokens(2, 9)
    stm = torch.randn(2, 2, 8, 32, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(4))
    base, _ = rxt(ids, full(2, 9), stm)
    shuffled, _ = rxt(ids, full(2, 9), stm[:, :, perm])
    torch.testing.assert_close(shuffled, base, **KERNEL)  # the attention sums over slots in another order


def test_decoder_output_depends_on_stm(rxt):
    ids = tokens(1, 9)
    a, _ = rxt(ids, full(1, 9), torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(1)))
    b, _ = rxt(ids, full(1, 9), torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(2)))
    assert (a - b).abs().max() > 1e-2


def test_encoder_returns_every_layer_and_is_bidirectional(rxt):
    ids = tokens(1, 10)
    ed, last = rxt.encode(ids, full(1, 10))
    assert ed.shape == (2, 1, 10, 32)
    torch.testing.assert_close(ed[-1], last, **EXACT)  # the same tensor's values
    changed = ids.clone()
    changed[0, 9] += 1
    ed2, _ = rxt.encode(changed, full(1, 10))
    assert (ed2[:, :, 0] - ed[:, :, 0]).abs().max() > CHANGED  # the first token sees the last


VARIANTS = ["simple", "self", "interlayer", "gated_self_interlayer"]
GATES = [("static", "sigmoid"), ("elementwise", "sigmoid"), ("linear", "sigmoid"),
         ("linear", "tanh"), ("none", "sigmoid")]


@pytest.mark.parametrize("variant, gate", list(itertools.product(VARIANTS, GATES)))
def test_every_variant_and_gate_updates_stm_from_the_interaction(variant, gate):
    model = debug_rxt(memory_attention=MemoryAttentionConfig(
        variant=variant, gate=GateConfig(kind=gate[0], activation=gate[1])))
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    a = model.consolidate(stm, tokens(1, 11, seed=1), full(1, 11))
    b = model.consolidate(stm, tokens(1, 11, seed=2), full(1, 11))
    assert a.shape == b.shape == (2, 1, 8, 32)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() > 1e-3
    assert (a - stm).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["static", "elementwise", "linear"])
@pytest.mark.parametrize("closed, expect", [(True, "old"), (False, "update")])
def test_gate_forced_shut_keeps_stm_and_forced_open_replaces_it(kind, closed, expect):
    model = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(kind=kind)))
    logit = -1e4 if closed else 1e4
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            g = layer.gate
            if kind == "static":
                g.logit.fill_(logit)
            elif kind == "elementwise":
                g.weight.zero_()
                g.bias.fill_(logit)
            else:
                g.proj.weight.zero_()
                g.proj.bias.fill_(logit)
    stm = torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(0))
    ids = tokens(1, 11)
    ed, _ = model.encode(ids, full(1, 11))
    new = model.update_memory(stm, ed, full(1, 11))
    if expect == "old":
        torch.testing.assert_close(new, stm, **EXACT)  # (1 − 0)·old + 0·update is old, exactly
    else:
        layer = model.memory_attention.layers[0]
        positions = torch.arange(11)[None]
        q = layer.attn.project_q(layer.stm_norm(stm[0]), None)
        k, v = layer.attn.project_kv(layer.ed_norm(ed[0]), positions)
        update = layer.attn.attend(q, k, v, None)
        # The model reads the interaction through an all-True key mask, this through none.
        torch.testing.assert_close(new[0], update, **KERNEL)


def test_memory_attention_is_slot_equivariant():
    model = debug_rxt()  # linear gate: no slot-indexed parameters
    stm = torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    ids = tokens(1, 11)
    new = model.consolidate(stm, ids, full(1, 11))
    new_perm = model.consolidate(stm[:, :, perm], ids, full(1, 11))
    torch.testing.assert_close(new_perm, new[:, :, perm], **KERNEL)  # slots in another order in the matmuls


def test_stage1_style_memory_of_any_length_with_mask(rxt):
    """The decoder can read encoder states (any number of 'slots') with padding masked."""
    ids = tokens(2, 6)
    ed, _ = rxt.encode(tokens(2, 9, seed=5), torch.tensor([9, 4]))
    mask = torch.arange(9)[None] < torch.tensor([9, 4])[:, None]
    logits, _ = rxt(ids, full(2, 6), ed, memory_mask=mask)
    alone, _ = rxt(ids[1:], full(1, 6), ed[:, 1:, :4])
    torch.testing.assert_close(logits[1:], alone, **KERNEL)  # a masked batch vs 4 unmasked keys


def test_moe_routes_top_k_and_balancing_loss_is_minimal_when_uniform():
    moe = MoE(16, FFNConfig(kind="moe", hidden_dim=8, num_experts=4, top_k=2))
    x = torch.randn(2, 5, 16)
    out, aux = moe(x)
    assert out.shape == x.shape
    assert aux.item() >= 1.0 - 1e-5  # E·Σ f·P ≥ 1, equality when balanced
    out.sum().backward()
    assert all(p.grad is not None for p in moe.parameters())  # every expert is in the graph


def test_learned_and_zero_stm_init():
    from rxt_dist.model import STMConfig

    learned = debug_rxt(stm=STMConfig(num_slots=8, init="learned"))
    a = learned.initial_stm(3)
    torch.testing.assert_close(a[:, 0], learned.stm_init.weight, **EXACT)  # copies of the weight
    torch.testing.assert_close(a[:, 2], learned.stm_init.weight, **EXACT)
    zeros = debug_rxt(stm=STMConfig(num_slots=8, init="zeros"))
    assert zeros.initial_stm(2).abs().sum() == 0
    normal = debug_rxt()
    x = normal.initial_stm(2, torch.Generator().manual_seed(0))
    y = normal.initial_stm(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, y, **EXACT)  # the same call with the same seed
    assert x.shape == (2, 2, 8, 32) and 0 < x.std() < 0.1
