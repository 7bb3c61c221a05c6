"""Reference outputs of tiny random rxlm models (run by test_rxlm_import.py inside an isolated
virtual environment with rxlm installed; it imports nothing from rxt_dist).

usage: python rxlm_reference.py OUT_DIR

For each case in CASES: builds an RxTAlpha with random weights, saves it with save_pretrained to
OUT_DIR/<case>/model, reloads it with from_pretrained, and writes OUT_DIR/<case>/reference.pt:
decoder logits for two right-padded prompts and an STM, the STM after a memory update, and the
greedy answer from the updated STM (full forward per token, and rxlm's own ``interact``).
"""

import json
import sys
from pathlib import Path

import torch
from rxlm.rxt.models import RxTAlpha, RxTForwardAction

DIM, LAYERS, HEADS, SLOTS, VOCAB, FF = 32, 2, 4, 8, 64, 48
MAX_NEW = 10
BASE = dict(num_layers=LAYERS, vocab_size=VOCAB, embed_dim=DIM, att_heads=HEADS, seq_len=64,
            stm_size=SLOTS, ff_activation="silu", use_gated=True)
MEM_BASE = dict(num_layers=LAYERS, embed_dim=DIM, att_heads=HEADS, seq_len=64, stm_size=SLOTS)

CASES = {
    # SQA everywhere it can be, slot-mean ('elementwise') sigmoid gates, no head norm, and the
    # README's default variant name 'interlayer' (which rxlm 0.3.80 builds as self-interlayer).
    "sqa_elementwise": dict(
        decoder=dict(BASE, ff_dim=FF, self_att_type="sqa", att_query_groups=2, att_groups=1,
                     cross_att_type="gqa", cross_att_groups=2),
        encoder=dict(BASE, ff_dim=40, self_att_type="sqa", att_query_groups=4, att_groups=2,
                     skip_memory_cross_attention=True),
        memory=dict(MEM_BASE, att_type="sqa", att_query_groups=2, att_groups=2, interlayer_att_type="mha",
                    use_gated_residual=True, residual_gate_type="elementwise", use_tanh_residual_gate=False),
        tokens=dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, query_token_id=3, answer_token_id=4),
        variant="interlayer",
    ),
    # MHA/MQA/GQA, static tanh gates shared by all slots, an RMSNorm before the head, no output
    # bias in the decoder, another RoPE base, encoder layers holding (unused) cross-attention.
    "mha_static_tanh": dict(
        decoder=dict(BASE, ff_dim=FF, self_att_type="mha", cross_att_type="mqa", use_head_norm=True,
                     head_norm_type="rms_norm", use_attention_output_bias=False, rope_base=500),
        encoder=dict(BASE, ff_dim=FF, self_att_type="gqa", att_groups=2, cross_att_type="mha", rope_base=500),
        memory=dict(MEM_BASE, att_type="mha", interlayer_att_type="gqa", interlayer_att_groups=2, rope_base=500,
                    use_gated_residual=True, residual_gate_type="static", residual_per_slot_gate=False,
                    use_tanh_residual_gate=True),
        tokens=dict(pad_token_id=0, bos_token_id=10, eos_token_id=11, query_token_id=12, answer_token_id=13),
        variant="self-interlayer",
    ),
    # Plain residuals (no gates) through the grouped variant with one group.
    "grouped_plain": dict(
        decoder=dict(BASE, ff_dim=FF, self_att_type="gqa", att_groups=2, cross_att_type="sqa",
                     cross_att_query_groups=4, cross_att_groups=4),
        encoder=dict(BASE, ff_dim=FF, self_att_type="mha", skip_memory_cross_attention=True),
        memory=dict(MEM_BASE, att_type="gqa", att_groups=1, interlayer_att_type="sqa",
                    interlayer_att_query_groups=2, interlayer_att_groups=2, num_groups=1),
        tokens=dict(pad_token_id=3, bos_token_id=0, eos_token_id=1, query_token_id=2, answer_token_id=5),
        variant="grouped-self-interlayer",
    ),
}


@torch.no_grad()
def randomize(model: torch.nn.Module) -> None:
    """Weights large enough that logits, memory and answers depend on every input."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith(".gate"):
            p.copy_(1.5 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif "embedding" in name:
            p.normal_(0.0, 1.0)
        else:
            p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)


def padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def run_case(name: str, case: dict, out: Path) -> None:
    torch.manual_seed(len(name))
    tok = case["tokens"]
    model = RxTAlpha(case["decoder"], case["encoder"], case["memory"], tok,
                     memory_attention_variant=case["variant"])
    randomize(model)
    model.share_components()
    model.save_pretrained(out / "model")
    model = RxTAlpha.from_pretrained(str(out / "model")).eval()
    # save_pretrained stores the shared embedding once, as decoder.model.embedding.weight, and
    # from_pretrained leaves the encoder's at its random init; share_components() would then put
    # that random one into the decoder. Share the saved one instead.
    with torch.no_grad():
        model.encoder.model.embedding.weight.copy_(model.decoder.model.embedding.weight)
    model.share_components()

    specials = set(tok.values())
    plain = [t for t in range(VOCAB) if t not in specials]
    gen = torch.Generator().manual_seed(7)
    draw = lambda n: [plain[i] for i in torch.randint(len(plain), (n,), generator=gen).tolist()]  # noqa: E731
    queries, answers = [draw(5), draw(3)], [draw(4), draw(6)]
    bos, q, a, eos, pad = (tok[k] for k in ("bos_token_id", "query_token_id", "answer_token_id",
                                            "eos_token_id", "pad_token_id"))
    prompts = [[bos, q, *x, a] for x in queries]
    interactions = [[bos, q, *x, a, *y, eos] for x, y in zip(queries, answers)]
    stm0 = torch.randn(LAYERS, 2, SLOTS, DIM, generator=gen)

    model.set_batch_mode(True, 2)
    model.load_stm_state(stm0)
    ids, mask = padded(prompts, pad)
    logits = model(ids, attention_mask=mask, action=RxTForwardAction.DECODE)

    model.load_stm_state(stm0)
    inter_ids, inter_mask = padded(interactions, pad)
    model(inter_ids, attention_mask=inter_mask, action=RxTForwardAction.UPDATE)
    stm1 = model.export_stm_state()

    model.set_batch_mode(False)
    model.load_stm_state(stm1[:, :1])
    greedy, seq = [], list(prompts[0])
    while len(greedy) < MAX_NEW:
        step = model(torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                     action=RxTForwardAction.DECODE)
        token = int(step[0, -1].argmax())
        if token == eos:
            break
        greedy.append(token)
        seq.append(token)

    model.load_stm_state(stm1[:, :1])
    query = torch.tensor([prompts[0][:-1]])
    if model.decoder.model.stateless_layers is None:
        # rxlm 0.3.80's reset_self_attn_cache iterates stateless_layers even when there are none
        model.decoder.model.stateless_layers = torch.nn.ModuleList()
    try:
        streamed = [t for t in model.interact(query, torch.ones_like(query), temperature=1.0, top_k=1,
                                              max_seq_len=query.shape[1] + 1 + MAX_NEW) if t >= 0]
        interact = {"tokens": [t for t in streamed if t != eos], "error": None}
    except Exception as exc:  # recorded, not fatal: the test reports what rxlm's own loop does
        interact = {"tokens": None, "error": f"{type(exc).__name__}: {exc}"}

    torch.save({"stm0": stm0, "ids": ids, "mask": mask, "logits": logits, "inter_ids": inter_ids,
                "inter_mask": inter_mask, "stm1": stm1}, out / "reference.pt")
    (out / "reference.json").write_text(json.dumps({
        "tokens": tok, "queries": queries, "answers": answers, "greedy": greedy, "interact": interact,
    }))


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    for name, case in CASES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        run_case(name, case, root / name)
        print(f"{name}: written", flush=True)


if __name__ == "__main__":
    main()
