"""Import checkpoints of the reference implementation ``rxlm`` (``RxTAlpha``/``RxTBeta``).

``rxlm`` saves a model with ``save_pretrained``: ``config.json`` holds the constructor's
arguments (``decoder_config``, ``encoder_config``, ``memory_attention_config``,
``tokenizer_config``, ``memory_attention_variant``; options left at their defaults are not
written) and ``model.safetensors`` the state dict. :func:`rxlm_to_rxt_config` maps that config to
an :class:`RxTConfig` and refuses, naming the option, what ``rxt_dist`` cannot represent;
:func:`convert_state_dict` renames and reshapes the tensors; :func:`import_rxlm` writes an
``rxt_dist`` model directory. Written against rxlm 0.3.80 (its defaults are
:data:`DECODER_DEFAULTS` …); see docs/rxlm.md for the mapping and the differences that matter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from safetensors.torch import load as st_load
from torch import Tensor

from rxt_dist.model.config import (
    AttentionConfig,
    FFNConfig,
    GateConfig,
    MemoryAttentionConfig,
    RxTConfig,
    STMConfig,
)
from rxt_dist.tokens import A_ID, BOS_ID, EOS_ID, MASK_ID, PAD_ID, Q_ID, SPECIAL_TOKENS, UNK_ID

log = logging.getLogger(__name__)

RXLM_VERSION = "0.3.80"
"""The rxlm release whose code and defaults this importer follows."""

# The constructor defaults of rxlm 0.3.80 that decide the architecture (config.json omits
# options left at their default).
COMPONENT_DEFAULTS: dict[str, Any] = {
    "num_layers": 12, "vocab_size": 20000, "embed_dim": 512, "ff_dim": 1536, "att_heads": 16,
    "stm_size": 1024, "use_gated": True, "ff_activation": "swish", "use_rms_norm": True,
    "att_groups": 1, "use_moe": False, "self_att_type": "sqa", "cross_att_type": "sqa",
    "att_query_groups": None, "cross_att_groups": None, "cross_att_query_groups": None,
    "use_head_norm": False, "head_norm_type": "layer_norm", "skip_memory_cross_attention": False,
    "stateless_layers_config": None, "final_stateless_layers_config": None, "use_nope": False,
    "use_gated_attention": False, "use_gated_cross_attention": None,
    "use_attention_output_bias": True, "rope_base": 10_000,
}
DECODER_DEFAULTS = COMPONENT_DEFAULTS
ENCODER_DEFAULTS = COMPONENT_DEFAULTS
MEMORY_DEFAULTS: dict[str, Any] = {
    "num_layers": 12, "embed_dim": 512, "att_heads": 16, "stm_size": 1024, "att_groups": 1,
    "att_type": "sqa", "att_query_groups": None, "interlayer_att_groups": 1,
    "interlayer_att_type": "sqa", "interlayer_att_query_groups": None, "norm_type": "classic-rms",
    "use_gated_residual": False, "residual_per_slot_gate": True, "residual_gate_init": 3.0,
    "residual_gate_type": "static", "residual_gate_slot_status_type": "mean",
    "use_tanh_residual_gate": True, "rope_base": 10_000, "num_groups": 1,
}
# rxlm's nn.RMSNorm(dim) has eps=None: torch then uses the input dtype's machine epsilon.
RXLM_NORM_EPS = float(torch.finfo(torch.float32).eps)


class RxlmImportError(ValueError):
    """An rxlm checkpoint that rxt_dist cannot represent (the message names the option)."""


def _refuse(ok: bool, message: str) -> None:
    if not ok:
        raise RxlmImportError(message)


@dataclass
class RxlmCheckpoint:
    """What an rxlm ``save_pretrained`` directory holds."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]
    tokenizer_json: str | None = None


def read_rxlm_dir(url: str) -> RxlmCheckpoint:
    """Read ``config.json``, ``model.safetensors`` (and ``tokenizer.json`` if any) from ``url``
    (a local directory or any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    for name in ("config.json", "model.safetensors"):
        if not fs.exists(f"{root}/{name}"):
            other = " (a pytorch_model.bin checkpoint: re-save it with rxlm's save_pretrained)" \
                if name == "model.safetensors" and fs.exists(f"{root}/pytorch_model.bin") else ""
            raise FileNotFoundError(f"{url}: no {name}; not an rxlm save_pretrained directory{other}")
    with fs.open(f"{root}/config.json", "r") as f:
        config = json.loads(f.read())
    with fs.open(f"{root}/model.safetensors", "rb") as f:
        tensors = st_load(f.read())
    tok = None
    if fs.exists(f"{root}/tokenizer.json"):
        with fs.open(f"{root}/tokenizer.json", "r") as f:
            tok = f.read()
    return RxlmCheckpoint(config, tensors, tok)


# -- config -----------------------------------------------------------------------------------
def _with_defaults(section: str, given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    _refuse(isinstance(given, dict), f"config.json: {section} is missing or not an object")
    return {**defaults, **given}


def _heads(kind: str, heads: int, groups: int | None, query_groups: int | None, rope: float,
           out_bias: bool, where: str) -> AttentionConfig:
    """rxlm's attention types as rxt_dist head counts (query heads, key/value heads)."""
    if kind == "mha":
        q, kv = heads, heads
    elif kind == "gqa":
        q, kv = heads, groups
    elif kind == "mqa":
        q, kv = heads, 1
    elif kind == "sqa":
        _refuse(query_groups is not None, f"{where}: type 'sqa' needs its query-group count (None)")
        q, kv = query_groups, groups
        _refuse(q >= kv, f"{where}: reversed SQA ({q} query heads < {kv} key/value heads) repeats "
                         "query heads over key/value heads; rxt_dist needs key/value heads ≤ query heads")
    else:
        raise RxlmImportError(f"{where}: attention type {kind!r} is not supported "
                              "(rxt_dist has mha, gqa, mqa and sqa)")
    try:
        return AttentionConfig(num_heads=heads, num_query_heads=q, num_kv_heads=kv,
                               rope_theta=float(rope), out_bias=bool(out_bias))
    except ValueError as exc:
        raise RxlmImportError(f"{where}: {exc}") from exc


def _check_component(c: dict[str, Any], name: str) -> None:
    _refuse(c["use_rms_norm"], f"{name}.use_rms_norm=false: LayerNorm layers are not supported "
                               "(rxt_dist's blocks use RMSNorm)")
    _refuse(c["use_gated"], f"{name}.use_gated=false: a plain (ungated) FFN is not supported; "
                            "rxt_dist's FFN is SwiGLU")
    _refuse(c["ff_activation"] in ("silu", "swish"),
            f"{name}.ff_activation={c['ff_activation']!r}: only silu/swish (SwiGLU) is supported")
    _refuse(not c["use_moe"], f"{name}.use_moe=true: rxlm's MoE (shared experts, routing bias, "
                              "its own router) is not the same as rxt_dist's MoE; not importable")
    _refuse(c["self_att_type"] != "hybrid",
            f"{name}.self_att_type='hybrid': per-layer attention types (linear attention) are not supported")
    for key in ("stateless_layers_config", "final_stateless_layers_config"):
        _refuse(c[key] is None, f"{name}.{key}={c[key]!r}: extra stateless layers are not supported")
    _refuse(not c["use_nope"], f"{name}.use_nope=true: attention without RoPE is not supported")
    _refuse(not c["use_gated_attention"], f"{name}.use_gated_attention=true: gated attention "
                                          "outputs are not supported")


def _gate(m: dict[str, Any]) -> GateConfig:
    if not m["use_gated_residual"]:
        return GateConfig(kind="none")
    act = "tanh" if m["use_tanh_residual_gate"] else "sigmoid"
    kind = m["residual_gate_type"]
    _refuse(m["residual_gate_slot_status_type"] == "mean",
            f"memory_attention_config.residual_gate_slot_status_type="
            f"{m['residual_gate_slot_status_type']!r}: only 'mean' is supported")
    if kind == "static":
        return GateConfig(kind="static", activation=act, init_bias=float(m["residual_gate_init"]))
    _refuse(kind == "elementwise", f"memory_attention_config.residual_gate_type={kind!r}: the "
                                   "slot-to-slot linear gate is not supported (static and elementwise are)")
    _refuse(m["residual_per_slot_gate"], "memory_attention_config.residual_per_slot_gate=false with "
                                         "residual_gate_type='elementwise': one gate from the whole "
                                         "layer's mean is not supported")
    return GateConfig(kind="slot_mean", activation=act, init_bias=float(m["residual_gate_init"]))


def _memory_variant(config: dict[str, Any], m: dict[str, Any]) -> None:
    # rxlm 0.3.80's RxTAlpha builds the self-interlayer network for 'interlayer' too: its
    # if/if/else leaves the plain interlayer network only until the else replaces it.
    variant = config.get("memory_attention_variant", "interlayer")
    _refuse(variant in ("interlayer", "self-interlayer", "grouped-self-interlayer"),
            f"memory_attention_variant={variant!r}: unknown")
    if variant == "grouped-self-interlayer":
        _refuse(m["num_groups"] == 1, f"memory_attention_config.num_groups={m['num_groups']}: grouped "
                                      "layer means are not supported (1 group, the all-layer mean, is)")
    _refuse(m["norm_type"] == "classic-rms", f"memory_attention_config.norm_type={m['norm_type']!r}: "
                                             "only 'classic-rms' (RMSNorm) is supported")


def rxlm_to_rxt_config(config: dict[str, Any]) -> RxTConfig:
    """Map an rxlm ``RxTAlpha``/``RxTBeta`` ``config.json`` to an :class:`RxTConfig`; raise
    :class:`RxlmImportError` naming the option rxt_dist cannot represent."""
    d = _with_defaults("decoder_config", config.get("decoder_config"), DECODER_DEFAULTS)
    e = _with_defaults("encoder_config", config.get("encoder_config"), ENCODER_DEFAULTS)
    m = _with_defaults("memory_attention_config", config.get("memory_attention_config"), MEMORY_DEFAULTS)
    _with_defaults("tokenizer_config", config.get("tokenizer_config"), {})
    _check_component(d, "decoder_config")
    _check_component(e, "encoder_config")
    _refuse(not d["skip_memory_cross_attention"],
            "decoder_config.skip_memory_cross_attention=true: a decoder without memory is not an RxT decoder")
    gated_cross = d["use_gated_cross_attention"]
    _refuse(not gated_cross, "decoder_config.use_gated_cross_attention=true: not supported")
    _refuse(not d["use_head_norm"] or d["head_norm_type"] == "rms_norm",
            f"decoder_config.head_norm_type={d['head_norm_type']!r}: only 'rms_norm' is supported "
            "before the head")
    for key in ("embed_dim", "num_layers"):
        _refuse(d[key] == e[key] == m[key], f"{key}: decoder {d[key]}, encoder {e[key]}, memory attention "
                                            f"{m[key]}; rxt_dist needs one value")
    _refuse(d["vocab_size"] == e["vocab_size"],
            f"vocab_size: decoder {d['vocab_size']} ≠ encoder {e['vocab_size']} (the embedding is shared)")
    _memory_variant(config, m)

    dec_att = _heads(d["self_att_type"], d["att_heads"], d["att_groups"], d["att_query_groups"],
                     d["rope_base"], d["use_attention_output_bias"], "decoder_config.self_att_type")
    cross = _heads(d["cross_att_type"], d["att_heads"], d["cross_att_groups"] or d["att_groups"],
                   d["cross_att_query_groups"] or d["att_query_groups"], d["rope_base"],
                   d["use_attention_output_bias"], "decoder_config.cross_att_type")
    enc_att = _heads(e["self_att_type"], e["att_heads"], e["att_groups"], e["att_query_groups"],
                     e["rope_base"], e["use_attention_output_bias"], "encoder_config.self_att_type")
    # rxlm's memory-attention layers always have an output bias (init_attention's default).
    mem_att = _heads(m["att_type"], m["att_heads"], m["att_groups"], m["att_query_groups"],
                     m["rope_base"], True, "memory_attention_config.att_type")
    pre_att = _heads(m["interlayer_att_type"], m["att_heads"], m["interlayer_att_groups"],
                     m["interlayer_att_query_groups"], m["rope_base"], True,
                     "memory_attention_config.interlayer_att_type")
    return RxTConfig(
        vocab_size=d["vocab_size"], dim=d["embed_dim"], num_layers=d["num_layers"],
        decoder_attention=dec_att, memory_cross_attention=cross,
        decoder_ffn=FFNConfig(kind="dense", hidden_dim=d["ff_dim"], bias=True),
        encoder_attention=enc_att, encoder_ffn=FFNConfig(kind="dense", hidden_dim=e["ff_dim"], bias=True),
        memory_attention=MemoryAttentionConfig(variant="self_interlayer", attention=mem_att,
                                               pre_attention=pre_att, gate=_gate(m)),
        # rxlm resets a conversation's STM to N(0, 1) ('standard').
        stm=STMConfig(num_slots=m["stm_size"], init="normal", init_std=1.0),
        tie_embeddings=False, lm_head_bias=True, decoder_final_norm=bool(d["use_head_norm"]),
        norm_eps=RXLM_NORM_EPS,
    )


# -- vocabulary -------------------------------------------------------------------------------
def vocab_permutation(tokenizer_config: dict[str, Any], vocab_size: int,
                      unk_id: int | None = None, mask_id: int | None = None) -> list[int]:
    """``perm`` with ``perm[new_id] = rxlm_id``: rxlm's special tokens moved to the ids
    rxt_dist fixes (:mod:`rxt_dist.tokens`) by swaps, every other token keeping its id where it
    can. ``unk_id``/``mask_id`` are rxlm's ids of [UNK]/[MASK] when known."""
    wanted = {PAD_ID: tokenizer_config.get("pad_token_id"), BOS_ID: tokenizer_config.get("bos_token_id"),
              EOS_ID: tokenizer_config.get("eos_token_id"), Q_ID: tokenizer_config.get("query_token_id"),
              A_ID: tokenizer_config.get("answer_token_id"), UNK_ID: unk_id, MASK_ID: mask_id}
    for new, old in wanted.items():
        if new in (UNK_ID, MASK_ID) and old is None:
            continue
        _refuse(isinstance(old, int) and 0 <= old < vocab_size,
                f"tokenizer_config: the id of {SPECIAL_TOKENS[new]} is {old!r}; expected an id below {vocab_size}")
    olds = [o for o in wanted.values() if o is not None]
    _refuse(len(set(olds)) == len(olds), f"tokenizer_config: special tokens share ids {wanted}")
    perm = list(range(vocab_size))
    where = list(range(vocab_size))  # where[rxlm_id] = its current new id
    for new, old in sorted(wanted.items()):
        if old is None:
            continue
        at = where[old]
        displaced = perm[new]
        perm[new], perm[at] = old, displaced
        where[old], where[displaced] = new, at
    return perm


def remap_tokenizer_json(text: str, perm: list[int], names: dict[int, str]) -> str:
    """Rewrite an HF ``tokenizer.json`` for the permuted vocabulary: every id moves to its new
    place and the special tokens at rxt_dist's ids get rxt_dist's names (``names``: new id →
    rxlm's token text there, to be renamed to :data:`SPECIAL_TOKENS`)."""
    data = json.loads(text)
    new_of = {old: new for new, old in enumerate(perm)}
    rename = {names[i]: SPECIAL_TOKENS[i] for i in names}
    model = data.get("model", {})
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        model["vocab"] = {rename.get(tok, tok): new_of[i] for tok, i in vocab.items()}
    elif isinstance(vocab, list):  # Unigram: position is the id
        model["vocab"] = [[rename.get(vocab[old][0], vocab[old][0]), vocab[old][1]] for old in perm]
    else:
        raise RxlmImportError("tokenizer.json: model.vocab is neither a map nor a list")
    if isinstance(model.get("unk_token"), str):
        model["unk_token"] = rename.get(model["unk_token"], model["unk_token"])
    for added in data.get("added_tokens", []):
        added["id"] = new_of[added["id"]]
        added["content"] = rename.get(added["content"], added["content"])
    post = data.get("post_processor") or {}
    _refuse(post.get("type") in (None, "TemplateProcessing"),
            f"tokenizer.json: post_processor {post.get('type')!r} is not supported (TemplateProcessing is)")
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [new_of[i] for i in special["ids"]]
    return json.dumps(data, ensure_ascii=False)


def _token_id(text: str | None, token: str) -> int | None:
    if text is None:
        return None
    data = json.loads(text)
    for added in data.get("added_tokens", []):
        if added["content"] == token:
            return added["id"]
    vocab = data.get("model", {}).get("vocab")
    return vocab.get(token) if isinstance(vocab, dict) else None


# -- weights ----------------------------------------------------------------------------------
def _rope_rows(w: Tensor, heads: int, head_dim: int) -> Tensor:
    """Reorder a q/k projection's output rows from rxlm's interleaved RoPE pairs (2j, 2j+1) to
    rxt_dist's half-split pairs (j, j + H/2). Applied to both q and k, the dot products do not
    change; with RoPE on one side only the rotation then matches too."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # (H,)
    rest = w.shape[1:]
    return w.reshape(heads, head_dim, *rest)[:, order].reshape(heads * head_dim, *rest)


class _Source:
    """The rxlm tensors, each to be taken exactly once."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = dict(tensors)
        self.taken: set[str] = set()

    def take(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise RxlmImportError(f"model.safetensors has no tensor {name} (config.json implies it)")
        self.taken.add(name)
        return self.tensors[name].float()

    def drop(self, prefix: str) -> list[str]:
        names = [n for n in self.tensors if n.startswith(prefix) and n not in self.taken]
        self.taken.update(names)
        return names

    def left(self) -> list[str]:
        return sorted(set(self.tensors) - self.taken)


def _attention(src: _Source, out: dict[str, Tensor], old: str, new: str, cfg: AttentionConfig,
               dim: int, rope: bool) -> None:
    hd = cfg.head_dim(dim)
    q, k = src.take(f"{old}.q_proj.weight"), src.take(f"{old}.k_proj.weight")
    out[f"{new}.q_proj.weight"] = _rope_rows(q, cfg.query_heads, hd) if rope else q
    out[f"{new}.k_proj.weight"] = _rope_rows(k, cfg.kv_heads, hd) if rope else k
    out[f"{new}.v_proj.weight"] = src.take(f"{old}.v_proj.weight")
    out[f"{new}.o_proj.weight"] = src.take(f"{old}.out_proj.weight")
    if cfg.out_bias:
        out[f"{new}.o_proj.bias"] = src.take(f"{old}.out_proj.bias")


def _ffn(src: _Source, out: dict[str, Tensor], old: str, new: str) -> None:
    # rxlm's GLU: fc1 → (l, g), out = fc2(l * silu(g)); rxt_dist: down(silu(gate(x)) * up(x)).
    w, b = src.take(f"{old}.fc1.linear.weight"), src.take(f"{old}.fc1.linear.bias")
    hidden = w.shape[0] // 2
    out[f"{new}.up.weight"], out[f"{new}.gate.weight"] = w[:hidden], w[hidden:]
    out[f"{new}.up.bias"], out[f"{new}.gate.bias"] = b[:hidden], b[hidden:]
    out[f"{new}.down.weight"] = src.take(f"{old}.fc2.weight")
    out[f"{new}.down.bias"] = src.take(f"{old}.fc2.bias")


def _gate_tensor(src: _Source, out: dict[str, Tensor], old: str, new: str, cfg: GateConfig, slots: int) -> None:
    if cfg.kind == "none":
        return
    g = src.take(f"{old}.gate")  # (S, 1) per slot, or (1,) shared
    name = "logit" if cfg.kind == "static" else "slot_weight"
    out[f"{new}.{name}"] = g.reshape(-1, 1).expand(slots, 1).clone()


def _embedding(src: _Source) -> Tensor:
    names = [n for n in ("decoder.model.embedding.weight", "encoder.model.embedding.weight") if n in src.tensors]
    _refuse(bool(names), "model.safetensors has no embedding (decoder.model.embedding.weight)")
    tensors = [src.take(n) for n in names]
    _refuse(all(torch.equal(tensors[0], t) for t in tensors[1:]),
            "decoder and encoder embeddings differ: rxt_dist shares one embedding (rxlm shares it "
            "after share_components(); save the model after calling it)")
    return tensors[0]


def convert_state_dict(tensors: dict[str, Tensor], cfg: RxTConfig, perm: list[int]) -> dict[str, Tensor]:
    """rxlm's state dict → the tensors of ``RxTModel(cfg)`` (tied ones once), vocabulary rows
    reordered by ``perm`` (``perm[new_id] = rxlm_id``). Raises when a tensor is missing or one
    is left over."""
    src, out, D, S = _Source(tensors), {}, cfg.dim, cfg.stm.num_slots
    idx = torch.tensor(perm)
    out["embed.weight"] = _embedding(src)[idx]
    out["lm_head.weight"] = src.take("decoder.model.head.weight")[idx]
    out["lm_head.bias"] = src.take("decoder.model.head.bias")[idx]
    # rxlm's MLM head lives in its training wrapper, not in RxTAlpha: start it tied-style.
    out["mlm_head.weight"] = out["embed.weight"].clone()
    out["encoder_norm.weight"] = torch.ones(D)  # only the MLM head reads it; rxlm has none
    if cfg.decoder_final_norm:
        out["decoder_norm.weight"] = src.take("decoder.model.head_norm.weight")
    for i in range(cfg.num_layers):
        old, new = f"decoder.model.layers.{i}", f"decoder.{i}"
        _attention(src, out, f"{old}.attention", f"{new}.attn", cfg.decoder_attention, D, rope=True)
        _attention(src, out, f"{old}.memory_cross_attention", f"{new}.mem_attn", cfg.memory_cross_attention, D, rope=True)
        for o, n in (("norm1", "attn_norm"), ("norm2", "mem_norm"), ("stm_norm", "stm_norm"), ("norm3", "ffn_norm")):
            out[f"{new}.{n}.weight"] = src.take(f"{old}.{o}.weight")
        _ffn(src, out, f"{old}.ff", f"{new}.ffn")

        old, new = f"encoder.model.layers.{i}", f"encoder.{i}"
        _attention(src, out, f"{old}.attention", f"{new}.attn", cfg.encoder_attention, D, rope=True)
        for o, n in (("norm1", "attn_norm"), ("norm3", "ffn_norm")):
            out[f"{new}.{n}.weight"] = src.take(f"{old}.{o}.weight")
        _ffn(src, out, f"{old}.ff", f"{new}.ffn")
        # rxlm builds memory cross-attention in encoder layers unless told to skip it; the
        # encoder never calls it (it passes no STM).
        unused = src.drop(f"{old}.memory_cross_attention.") + src.drop(f"{old}.norm2.") + src.drop(f"{old}.stm_norm.")
        if unused:
            log.info("encoder layer %d: dropped %d unused memory cross-attention tensors", i, len(unused))

        old, new = "memory_attention.model", f"memory_attention.layers.{i}"
        ma = cfg.memory_attention
        _attention(src, out, f"{old}.attention_layers.{i}", f"{new}.attn", ma.attention, D, rope=True)
        _attention(src, out, f"{old}.mean_attention_layers.{i}", f"{new}.pre_attn", ma.pre_attention, D, rope=False)
        out[f"{new}.stm_norm.weight"] = src.take(f"{old}.memory_norm_layers.{i}.weight")
        out[f"{new}.ed_norm.weight"] = src.take(f"{old}.memory_input_norm_layers.{i}.weight")
        out[f"{new}.pre_norm.weight"] = src.take(f"{old}.mean_memory_norm_layers.{i}.weight")
        out[f"{new}.mean_norm.weight"] = src.take(f"{old}.mean_stm_norm.weight")  # shared in rxlm
        for o, n in (("residual_gate_layers", "gate"), ("mean_residual_gate_layers", "pre_gate"),
                     ("interlayer_gate_layers", "mix_gate")):
            _gate_tensor(src, out, f"{old}.{o}.{i}", f"{new}.{n}", ma.gate, S)
    _check_rope_buffers(src, cfg)
    # Runtime state, not weights: the STM buffer (rxt_dist passes the STM in and out).
    for part in ("decoder", "encoder", "memory_attention"):
        src.drop(f"{part}.model.stm.")
    left = src.left()
    _refuse(not left, f"model.safetensors: tensors with no counterpart in rxt_dist: {left[:8]}"
                      f"{'…' if len(left) > 8 else ''}")
    return out


def _check_rope_buffers(src: _Source, cfg: RxTConfig) -> None:
    """The saved inverse frequencies must be the ones rope_theta gives (rxlm's update_max_len
    can change the base without the config knowing)."""
    for name in [n for n in src.tensors if n.endswith("rope.inv_freq")]:
        part = name.split(".")[0]
        att = {"decoder": cfg.decoder_attention, "encoder": cfg.encoder_attention,
               "memory_attention": cfg.memory_attention.attention}[part]
        hd = att.head_dim(cfg.dim)
        want = 1.0 / (att.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        got = src.take(name)
        _refuse(got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=0),
                f"{name}: saved RoPE frequencies do not match rope_base={att.rope_theta:g} from config.json")
    for name in [n for n in src.tensors if n.endswith("rope.cache")]:
        src.take(name)


# -- the whole import -------------------------------------------------------------------------
@dataclass
class RxlmImport:
    """An imported model: config, tensors, tokenizer text (or None) and the id permutation."""

    config: RxTConfig
    tensors: dict[str, Tensor]
    tokenizer_json: str | None
    perm: list[int]
    """``perm[rxt_dist_id] = rxlm_id``."""


def convert_rxlm(ckpt: RxlmCheckpoint) -> RxlmImport:
    """Config, weights and tokenizer of an rxlm checkpoint, converted (nothing written)."""
    cfg = rxlm_to_rxt_config(ckpt.config)
    tok_cfg = ckpt.config["tokenizer_config"]
    unk, mask = _token_id(ckpt.tokenizer_json, "[UNK]"), _token_id(ckpt.tokenizer_json, "[MASK]")
    if ckpt.tokenizer_json is not None:
        _refuse(unk is not None and mask is not None, "tokenizer.json: rxt_dist needs [UNK] and [MASK] "
                                                      "tokens; this tokenizer lacks one")
    perm = vocab_permutation(tok_cfg, cfg.vocab_size, unk, mask)
    tensors = convert_state_dict(ckpt.tensors, cfg, perm)
    tok = None
    if ckpt.tokenizer_json is not None:
        names = {new: _token_name(ckpt.tokenizer_json, perm[new]) for new in range(len(SPECIAL_TOKENS))}
        tok = remap_tokenizer_json(ckpt.tokenizer_json, perm, {k: v for k, v in names.items() if v})
    return RxlmImport(cfg, tensors, tok, perm)


def _token_name(text: str, token_id: int) -> str | None:
    data = json.loads(text)
    for added in data.get("added_tokens", []):
        if added["id"] == token_id:
            return added["content"]
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        return next((t for t, i in vocab.items() if i == token_id), None)
    return vocab[token_id][0] if isinstance(vocab, list) else None


def import_rxlm(src: str, out: str) -> RxlmImport:
    """Read the rxlm checkpoint at ``src`` and write an rxt_dist model directory at ``out``
    (both local paths or fsspec URLs). The id permutation is stored in the weights' metadata."""
    from rxt_dist.model.io import _load_checked, save_model_dir
    from rxt_dist.model.rxt import RxTModel

    log.info("reading rxlm checkpoint %s", src)
    result = convert_rxlm(read_rxlm_dir(src))
    model = RxTModel(result.config)
    _load_checked(model, result.tensors, f"{src} (converted)")
    metadata = {"source": "rxlm", "rxlm_version": RXLM_VERSION, "rxlm_source": src,
                "rxlm_token_ids": json.dumps(result.perm)}
    save_model_dir(model, out, tokenizer_json=result.tokenizer_json, metadata=metadata)
    log.info("wrote %s (%d tensors%s)", out, len(result.tensors),
             ", tokenizer" if result.tokenizer_json else ", no tokenizer.json in the source")
    return result
