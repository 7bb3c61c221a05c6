"""The memory write options that keep slots apart: slot identities on the queries, the
competitive write, per-slot gate biases, a learned initial STM with noise, gate openness."""

import dataclasses

import pytest
import torch

from rxt_dist.memory import ExpansionConfig, expand_model
from rxt_dist.memory.health import effective_rank, slot_cosine
from rxt_dist.model import GateConfig, MemoryAttentionConfig, STMConfig
from rxt_dist.model.memory_attention import competitive_attend
from tests.model.conftest import debug_rxt
from tests.tolerances import EXACT, KERNEL


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(7, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def equal_slots() -> torch.Tensor:
    one = torch.randn(2, 1, 1, 32, generator=torch.Generator().manual_seed(3))
    return one.expand(2, 1, 8, 32).clone()  # (L, B, S, D): every slot the same vector


def consolidate(model, stm, length=11, seed=1):
    return model.consolidate(stm, tokens(1, length, seed), torch.tensor([length]))


def test_equal_slots_stay_equal_in_the_plain_memory_attention():
    """The collapse the issue describes: nothing in the paper's write path tells equal slots apart."""
    model = debug_rxt()
    new = consolidate(model, equal_slots())
    assert slot_cosine(new).min() > 1 - 1e-5
    assert effective_rank(new).max() < 1.01


@pytest.mark.parametrize("ma", [MemoryAttentionConfig(slot_ids=True),
                                MemoryAttentionConfig(slot_ids=True, write="competitive")])
def test_slot_identities_make_equal_slots_take_different_updates(ma):
    model = debug_rxt(memory_attention=ma)
    new = consolidate(model, equal_slots())
    assert slot_cosine(new).max() < 0.95
    assert effective_rank(new).min() > 2


def test_slot_identities_change_the_queries_only():
    """The stored STM carries no identity: with the gate shut the STM comes back unchanged."""
    model = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True, gate=GateConfig(kind="static")))
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            layer.gate.logit.fill_(-1e4)
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    assert torch.equal(consolidate(model, stm), stm)


def test_competitive_write_gives_each_slot_the_tokens_it_wins():
    model = debug_rxt(memory_attention=MemoryAttentionConfig(write="competitive"))
    attn = model.memory_attention.layers[0].attn
    H = attn.head_dim
    k = torch.zeros(1, attn.n_kv, 2, H)
    k[..., 0, 0], k[..., 1, 1] = 1.0, 1.0  # token 0 and token 1 point different ways
    v = torch.randn(1, attn.n_kv, 2, H, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    q = torch.zeros(1, attn.n_q, 2, H)
    q[..., 0, 0], q[..., 1, 1] = 50.0, 50.0  # slot 0 wants token 0, slot 1 wants token 1
    out, won = competitive_attend(attn, q, k, v, valid)
    torch.testing.assert_close(won.view(-1), torch.ones(2), **KERNEL)  # each slot won one whole token
    expected = attn.o_proj(v.transpose(1, 2).reshape(1, 2, -1))  # slot i takes token i's value
    torch.testing.assert_close(out, expected, **KERNEL)
    # Both slots prefer token 0, slot 0 far more: it wins token 0, and slot 1 — which plain
    # attention would also point at token 0 — is left with token 1.
    q = torch.zeros(1, attn.n_q, 2, H)
    q[..., 0, 0], q[..., 1, 0] = 200.0, 60.0
    out, won = competitive_attend(attn, q, k, v, valid)
    torch.testing.assert_close(out[:, 1], expected[:, 1], **KERNEL)
    torch.testing.assert_close(won.view(-1), torch.tensor([1.0, 0.5]), **KERNEL)  # 1½ tokens: slot 1 half of token 1
    plain = attn.attend(q, k, v, valid)
    torch.testing.assert_close(plain[:, 1], expected[:, 0], **KERNEL)
    same, won = competitive_attend(attn, torch.zeros_like(q), k, v, valid)  # equal slots split every token
    torch.testing.assert_close(won.view(-1), torch.ones(2), **KERNEL)  # two tokens, half of each
    mean = attn.o_proj(v.mean(dim=2, keepdim=True).transpose(1, 2).reshape(1, 1, -1)).expand(1, 2, -1)
    torch.testing.assert_close(same, mean, **KERNEL)


def test_competitive_keep_scales_each_slots_gate_by_what_it_won():
    """A slot that wins nothing keeps its content exactly; the update is the competitive one."""
    gate = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(kind="static", init_bias=0.0)))
    g = gate.memory_attention.layers[0].gate
    old, update = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    scale = torch.linspace(0, 1, 8).view(1, 8, 1)
    new, _ = g(old, update, scale)
    torch.testing.assert_close(new[:, 0], old[:, 0], **EXACT)
    torch.testing.assert_close(new, old + 0.5 * scale * (update - old), **KERNEL)  # G = sigmoid(0) = ½
    keep = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True, write="competitive_keep"))
    plain = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True, write="competitive"))
    plain.load_state_dict(keep.state_dict())
    stm = keep.initial_stm(1, torch.Generator().manual_seed(0))
    moved_keep = (consolidate(keep, stm) - stm).abs().mean()
    moved_plain = (consolidate(plain, stm) - stm).abs().mean()
    assert moved_keep < moved_plain  # every slot won less than a whole interaction: smaller steps


@pytest.mark.parametrize("write, extra", [
    ("attention", {}), ("competitive", {}), ("competitive_keep", {}),
    ("competitive_keep", {"write_sink": True}), ("competitive", {"ed_positions": True}),
    ("competitive_keep", {"write_sink": True, "ed_previous": True}),
])
def test_padding_tokens_write_nothing(write, extra):
    model = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True, write=write, **extra))
    stm = model.initial_stm(2, torch.Generator().manual_seed(0))
    ids = tokens(2, 11)
    padded = model.consolidate(stm, ids, torch.tensor([11, 6]))
    alone = model.consolidate(stm[:, 1:], ids[1:, :6], torch.tensor([6]))
    torch.testing.assert_close(padded[:, 1:], alone, **KERNEL)


def test_a_write_sink_takes_a_share_of_every_token_so_kept_slots_move_less():
    """The sink competes for every token (a zero query still gets exp(0) of each token's
    softmax) and what it wins is written nowhere: under competitive_keep the slots then win
    less and move less than the same weights without a sink."""
    cfg = MemoryAttentionConfig(slot_ids=True, write="competitive_keep", write_sink=True,
                                gate=GateConfig(kind="static", init_bias=0.0))
    sink = debug_rxt(memory_attention=cfg)
    plain = debug_rxt(memory_attention=dataclasses.replace(cfg, write_sink=False))
    plain.load_state_dict({k: v for k, v in sink.state_dict().items() if not k.endswith(".sink")})
    assert all(layer.sink.shape == (32,) for layer in sink.memory_attention.layers)
    stm = sink.initial_stm(1, torch.Generator().manual_seed(0))
    # 3 tokens over 8 slots: no slot wins a whole token's worth, so the keep scale is below 1
    moved_sink = (consolidate(sink, stm, length=3) - stm).abs().mean()
    moved_plain = (consolidate(plain, stm, length=3) - stm).abs().mean()
    assert 0 < moved_sink < moved_plain


def test_ed_positions_make_the_write_depend_on_where_tokens_stand():
    """The position code reaches the values: the same tokens in another order write another
    memory (without it, a slot query that ignores keys' rotation would not tell them apart)."""
    model = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True, ed_positions=True))
    assert model.memory_attention.layers[0].ed_positions
    off = debug_rxt(memory_attention=MemoryAttentionConfig(slot_ids=True))
    off.load_state_dict(model.state_dict())
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    ed = torch.randn(2, 1, 6, 32)
    with_code = model.update_memory(stm, ed, torch.tensor([6]))
    without = off.update_memory(stm, ed, torch.tensor([6]))
    assert (with_code - without).abs().max() > 1e-3


def test_ed_previous_starts_as_the_plain_write_and_makes_it_depend_on_order():
    """Zero at the start (the same memory as without it); once trained, a token's write says
    which token came before it: the same tokens in another order write another memory."""
    cfg = MemoryAttentionConfig(slot_ids=True, write="competitive_keep", write_sink=True)
    model = debug_rxt(memory_attention=dataclasses.replace(cfg, ed_previous=True))
    off = debug_rxt(memory_attention=cfg)
    off.load_state_dict(model.state_dict(), strict=False)
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    ed = torch.randn(2, 1, 6, 32)
    reordered = ed[:, :, [0, 2, 1, 3, 5, 4]]
    torch.testing.assert_close(model.update_memory(stm, ed, torch.tensor([6])),
                               off.update_memory(stm, ed, torch.tensor([6])))
    # without the previous token a competitive write is blind to order up to the keys' rotation;
    # compare how much reordering moves the memory with and without a trained projection
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            layer.ed_previous.weight.normal_(0.0, 0.5)
    moved_with = (model.update_memory(stm, ed, torch.tensor([6]))
                  - model.update_memory(stm, reordered, torch.tensor([6]))).abs().max()
    moved_without = (off.update_memory(stm, ed, torch.tensor([6]))
                     - off.update_memory(stm, reordered, torch.tensor([6]))).abs().max()
    assert moved_with > moved_without + 1e-3


def test_per_slot_gate_bias_lets_one_slot_keep_its_content():
    model = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(per_slot_bias=True)))
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            assert layer.gate.slot_bias.shape == (8, 1)
            layer.gate.slot_bias[0] = -1e4
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    new = consolidate(model, stm)
    assert torch.equal(new[:, :, 0], stm[:, :, 0])
    assert (new[:, :, 1:] - stm[:, :, 1:]).abs().max() > 1e-3


def test_slot_bias_spread_starts_slots_at_different_time_scales():
    model = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(per_slot_bias=True, slot_bias_spread=2.0)))
    bias = model.memory_attention.layers[0].gate.slot_bias.view(-1)
    torch.testing.assert_close(bias, torch.linspace(-2.0, 2.0, 8), rtol=0, atol=0)  # built by the same linspace


def test_gate_openness_is_reported_per_layer_and_conversation():
    model = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(kind="static", init_bias=-2.0)))
    stm = model.initial_stm(3, torch.Generator().manual_seed(0))
    ids = tokens(3, 9)
    ed, _ = model.encode(ids, torch.full((3,), 9))
    new, gates = model.update_memory_with_gates(stm, ed, torch.full((3,), 9))
    torch.testing.assert_close(new, model.update_memory(stm, ed, torch.full((3,), 9)), rtol=0, atol=0)
    assert gates.shape == (2, 3)
    # a mean of equal sigmoid values: fp32 rounding of the sum only, within assert_close's default 1.3e-6
    torch.testing.assert_close(gates, torch.full((2, 3), torch.sigmoid(torch.tensor(-2.0)).item()))
    plain = debug_rxt(memory_attention=MemoryAttentionConfig(gate=GateConfig(kind="none")))
    assert plain.update_memory_with_gates(stm, ed, torch.full((3,), 9))[1] is None


def test_learned_initial_stm_with_noise_is_seeded_per_conversation():
    model = debug_rxt(stm=STMConfig(num_slots=8, init="learned", init_noise_std=0.1))
    a = model.initial_stm(2, torch.Generator().manual_seed(0))
    b = model.initial_stm(2, torch.Generator().manual_seed(0))
    c = model.initial_stm(2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05
    noise = a - model.stm_init.weight[:, None]
    assert 0.05 < noise.std() < 0.2
    assert (a[:, 0] - a[:, 1]).abs().max() > 0.05  # two conversations do not share their start


@pytest.mark.parametrize("bad, message", [
    (lambda: GateConfig(kind="none", per_slot_bias=True), "per_slot_bias=True"),
    (lambda: STMConfig(init="normal", init_noise_std=0.1), "init_noise_std=0.1"),
    (lambda: MemoryAttentionConfig(write="softmax"), "write='softmax'"),
    (lambda: GateConfig(slot_bias_spread=1.0), "slot_bias_spread=1.0: needs per_slot_bias"),
    (lambda: MemoryAttentionConfig(write_sink=True), "write_sink=true needs a competitive write"),
])
def test_bad_memory_write_settings_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_statex_grows_the_slot_identities_and_gate_biases():
    model = debug_rxt(memory_attention=MemoryAttentionConfig(
        slot_ids=True, gate=GateConfig(per_slot_bias=True)))
    grown = expand_model(model, ExpansionConfig(slots=12, mode="inherit")).model
    for old, new in zip(model.memory_attention.layers, grown.memory_attention.layers):
        assert new.slot_id.shape == (12, 32) and new.gate.slot_bias.shape == (12, 1)
        assert torch.equal(new.slot_id[:8], old.slot_id)
        assert not torch.equal(new.slot_id[8:], old.slot_id[:4])  # copies get noise, or they never diverge
