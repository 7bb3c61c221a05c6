"""The decode benchmark: time per generated token and tokens/s at several batch sizes, and
the prefill before them (a turn's time to first token in-process).

For each RxT preset (fresh weights, seeded) this times decoding steps of a
:class:`~rxt_dist.inference.DecodeBatch` — the code path of ``respond``, the serving loop and
the other benchmarks — eager and compiled, at each batch size, and the Hugging Face
``LlamaForCausalLM`` of the decoder's dimensions (the peer) at batch 1, all in one process
and interleaved round by round so the machine's load falls on every system alike.

The peer has the decoder's vocabulary, width, depth and attention heads, and a dense FFN as
wide as the experts a token passes through (``hidden_dim × top_k`` for a mixture of experts),
so it does the arithmetic of our decoder minus the memory cross-attention.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rxt_dist.inference import CompiledDecoder, DecodeBatch, SamplingParams
from rxt_dist.model import RxTModel
from rxt_dist.model.config import AttentionConfig, FFNConfig, RxTConfig, StatelessConfig
from rxt_dist.model.presets import from_name

NO_STOP = -1
"""An end-of-answer id no token has: every timed sequence decodes all its tokens."""
MODES = ("eager", "compiled")


@dataclass
class DecodeConfig:
    """What one run of the benchmark measures."""

    presets: list[str] = field(default_factory=lambda: ["tiny", "nano"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    tokens: int = 64
    """Decoding steps timed per repeat (after the prefill and a few untimed steps)."""
    prompt_tokens: int = 16
    repeats: int = 5
    """Rounds; each figure is the median over them."""
    peer: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r}: choose from {MODES}")
        if min(self.batches, default=0) < 1:
            raise ValueError(f"batches={self.batches}: every batch size must be ≥ 1")
        if self.tokens < 2 or self.repeats < 1:
            raise ValueError(f"tokens={self.tokens}, repeats={self.repeats}: need tokens ≥ 2 and repeats ≥ 1")


def peer_config(cfg: RxTConfig) -> StatelessConfig:
    """A dense stateless config with the RxT decoder's dimensions (see the module docstring)."""
    att, ffn = cfg.decoder_attention, cfg.decoder_ffn
    hidden = ffn.hidden_dim * (ffn.top_k if ffn.kind == "moe" else 1)
    return StatelessConfig(
        vocab_size=cfg.vocab_size, dim=cfg.dim, num_layers=cfg.num_layers,
        attention=AttentionConfig(num_heads=att.num_heads, num_kv_heads=att.kv_heads, rope_theta=att.rope_theta),
        ffn=FFNConfig(hidden_dim=hidden), tie_embeddings=cfg.tie_embeddings,
    )


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, vocab, (batch, length), generator=g).tolist()


@torch.no_grad()
def time_steps(model: RxTModel, batch: int, cfg: DecodeConfig, compiled: CompiledDecoder | None,
               warm_steps: int = 3) -> tuple[float, float, list[list[int]]]:
    """Seconds of the prefill (the prompts' pass and the first token: a turn's time to first
    token, in-process), seconds for ``cfg.tokens`` decoding steps of ``batch`` rows (after
    ``warm_steps`` untimed steps), and the greedy answers."""
    stm = model.initial_stm(batch, torch.Generator().manual_seed(cfg.seed))
    prompts = _prompts(batch, cfg.prompt_tokens, model.cfg.vocab_size, cfg.seed)
    params = [SamplingParams(max_new_tokens=cfg.tokens + warm_steps + 1)] * batch
    decode = DecodeBatch(model, eos_id=NO_STOP, compiled=compiled)
    start = time.perf_counter()
    answers = [[e.token] for e in decode.admit(list(range(batch)), prompts, params, stm=stm)]
    prefill_s = time.perf_counter() - start
    for _ in range(warm_steps):
        for e in decode.step():
            answers[e.key].append(e.token)
    start = time.perf_counter()
    for _ in range(cfg.tokens):
        for e in decode.step():
            answers[e.key].append(e.token)
    return prefill_s, time.perf_counter() - start, answers


def time_peer(peer, cfg: DecodeConfig) -> tuple[float, float]:
    """The Hugging Face peer at batch 1 (greedy ``generate`` of ``cfg.tokens`` tokens): seconds
    to its first token, and per generated token after it."""
    from rxt_dist.eval.hf_peer import timed_generate

    prompt = _prompts(1, cfg.prompt_tokens, peer.config.vocab_size, cfg.seed)[0]
    run = timed_generate(peer, prompt, cfg.tokens + 1)
    return run.prompt_s, (run.turn_s - run.prompt_s) / cfg.tokens


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_preset(preset: str, cfg: DecodeConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every figure of one preset (see the module docstring)."""
    torch.manual_seed(cfg.seed)
    model = RxTModel(from_name(preset)).eval()
    peer = None
    if cfg.peer:
        from rxt_dist.eval.hf_peer import build_llama

        peer = build_llama(peer_config(model.cfg), max_positions=4 * (cfg.prompt_tokens + cfg.tokens), seed=cfg.seed)
    decoders: dict[str, CompiledDecoder | None] = {"eager": None}
    compile_s: dict[int, float] = {}
    if "compiled" in cfg.modes:
        decoders["compiled"] = CompiledDecoder(model)
        for batch in cfg.batches:  # compile outside the timed rounds (batch 1 and >1 compile apart)
            start = time.perf_counter()
            decoders["compiled"].warm_up((batch,))
            compile_s[batch] = time.perf_counter() - start
            say(f"  {preset}: compiled for batch {batch} in {compile_s[batch]:.1f}s")
    times: dict[str, dict[int, list[float]]] = {m: {b: [] for b in cfg.batches} for m in cfg.modes}
    prefills: dict[str, dict[int, list[float]]] = {m: {b: [] for b in cfg.batches} for m in cfg.modes}
    answers: dict[str, dict[int, list[list[int]]]] = {m: {} for m in cfg.modes}
    peer_times: list[float] = []
    peer_prefills: list[float] = []
    for r in range(cfg.repeats):
        for batch in cfg.batches:
            for mode in cfg.modes:
                prefill, seconds, ans = time_steps(model, batch, cfg, decoders[mode])
                times[mode][batch].append(seconds)
                prefills[mode][batch].append(prefill)
                answers[mode].setdefault(batch, ans)
        if peer is not None:
            first, per_token = time_peer(peer, cfg)
            peer_prefills.append(first)
            peer_times.append(per_token)
        say(f"  {preset}: round {r + 1}/{cfg.repeats} done")
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    for mode in cfg.modes:
        med = {b: _median(times[mode][b]) for b in cfg.batches}
        out[mode] = {
            "ms_per_step": {f"batch{b}": 1000 * med[b] / cfg.tokens for b in cfg.batches},
            "tokens_per_s": {f"batch{b}": b * cfg.tokens / med[b] for b in cfg.batches},
            "prefill_ms": {f"batch{b}": 1000 * _median(prefills[mode][b]) for b in cfg.batches},
        }
        if 1 in cfg.batches:
            out[mode]["ms_per_token"] = {"batch1": 1000 * med[1] / cfg.tokens}
    if "compiled" in cfg.modes:
        out["compiled"]["compile_s"] = {f"batch{b}": s for b, s in compile_s.items()}
        if "eager" in cfg.modes:
            out["compiled"]["same_greedy_answers_as_eager"] = all(
                answers["compiled"][b] == answers["eager"][b] for b in cfg.batches)
    peer_doc = None
    if peer is not None:
        c = peer.config
        peer_doc = {
            "ms_per_token": {"batch1": 1000 * _median(peer_times)},
            "prefill_ms": {"batch1": 1000 * _median(peer_prefills)},
            "model": {"class": type(peer).__name__, "vocab": c.vocab_size, "dim": c.hidden_size,
                      "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                      "kv_heads": c.num_key_value_heads, "ffn": c.intermediate_size,
                      "params": sum(p.numel() for p in peer.parameters())},
        }
    return {"rxt": out, "hf_peer": peer_doc}


def ratios(rxt: dict[str, Any], peer: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's ratios for one preset: per-token time against the peer at batch 1, and
    batch-32 (or the largest) tokens/s against batch 1."""
    out: dict[str, Any] = {}
    for mode in MODES:
        if mode not in rxt:
            continue
        tps = rxt[mode]["tokens_per_s"]
        if peer is not None and "ms_per_token" in rxt[mode]:
            out[f"{mode}_ms_per_token_vs_peer_batch1"] = rxt[mode]["ms_per_token"]["batch1"] / peer["ms_per_token"]["batch1"]
        largest = max(tps, key=lambda k: int(k.removeprefix("batch")))
        if "batch1" in tps and largest != "batch1":
            out[f"{mode}_{largest}_over_batch1_tokens_per_s"] = tps[largest] / tps["batch1"]
    return out


def run_decode(cfg: DecodeConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The benchmark document (without the command and machine, which the job adds)."""
    doc: dict[str, Any] = {
        "benchmark": "decode", "tokens": cfg.tokens, "prompt_tokens": cfg.prompt_tokens,
        "repeats": cfg.repeats, "batches": cfg.batches, "modes": cfg.modes, "torch_threads": torch.get_num_threads(),
        "rxt": {}, "hf_peer": {}, "ratios": {},
    }
    for preset in cfg.presets:
        say(f"{preset}: timing {', '.join(cfg.modes)} at batch {', '.join(map(str, cfg.batches))}"
            + (" and the Hugging Face peer" if cfg.peer else ""))
        result = bench_preset(preset, cfg, say)
        doc["rxt"][preset] = result["rxt"]
        if result["hf_peer"] is not None:
            doc["hf_peer"][preset] = result["hf_peer"]
        doc["ratios"][preset] = ratios(result["rxt"], result["hf_peer"])
    return doc
