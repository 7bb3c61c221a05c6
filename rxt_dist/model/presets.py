"""Named model presets. Each entry states the size it is built to have; a test checks it.

``debug`` is for tests (tiny vocab, dim 32, 2 layers, few slots; the paper's plain memory
write); ``tiny`` trains on two CPU cores in minutes; ``nano`` and ``micro`` follow RxT-Alpha Nano
(12M) and Micro (26M); ``baseline-*`` are stateless decoder-only LMs of matching total size.

``tiny``, ``nano`` and ``micro`` write their memory the way that measured best (docs/memory.md):
slot identities on the memory-attention queries, a competitive write with a sink (tokens the sink
wins are written nowhere, and a slot's gate is scaled by what it won), per-slot gate biases spread
over time scales, and a learned initial STM with a little per-conversation noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rxt_dist.model.config import (
    AttentionConfig,
    FFNConfig,
    GateConfig,
    MemoryAttentionConfig,
    ModelConfig,
    RxTConfig,
    STMConfig,
    StatelessConfig,
)


@dataclass(frozen=True)
class Preset:
    """A named config and the total parameter count it is meant to have."""

    build: Callable[[], ModelConfig]
    stated_params: int
    description: str


def _memory(attention: AttentionConfig, variant: str = "simple") -> MemoryAttentionConfig:
    """The measured memory write (see the module docstring; measured on ``tiny``)."""
    return MemoryAttentionConfig(
        variant=variant, attention=attention, slot_ids=True, write="competitive_keep", write_sink=True,
        gate=GateConfig(kind="linear", per_slot_bias=True, slot_bias_spread=2.0),
    )


def _stm(slots: int) -> STMConfig:
    return STMConfig(num_slots=slots, init="learned", init_noise_std=0.02)


def _debug() -> RxTConfig:
    att = AttentionConfig(num_heads=4)
    return RxTConfig(
        vocab_size=512, dim=32, num_layers=2,
        decoder_attention=att, memory_cross_attention=att, encoder_attention=att,
        decoder_ffn=FFNConfig(hidden_dim=64), encoder_ffn=FFNConfig(hidden_dim=64),
        memory_attention=MemoryAttentionConfig(attention=att),
        stm=STMConfig(num_slots=8),
    )


def _tiny() -> RxTConfig:
    att = AttentionConfig(num_heads=4)
    sqa = AttentionConfig(num_heads=4, num_query_heads=2)
    return RxTConfig(
        vocab_size=4096, dim=128, num_layers=2,
        decoder_attention=att, memory_cross_attention=att, encoder_attention=sqa,
        decoder_ffn=FFNConfig(hidden_dim=384), encoder_ffn=FFNConfig(hidden_dim=384),
        memory_attention=_memory(att),
        stm=_stm(32),
    )


def _nano() -> RxTConfig:
    att = AttentionConfig(num_heads=8, num_kv_heads=4)
    sqa = AttentionConfig(num_heads=8, num_query_heads=4, num_kv_heads=4)
    return RxTConfig(
        vocab_size=8192, dim=128, num_layers=6,
        decoder_attention=att, memory_cross_attention=att, encoder_attention=sqa,
        decoder_ffn=FFNConfig(kind="moe", hidden_dim=448, num_experts=8, top_k=2),
        encoder_ffn=FFNConfig(hidden_dim=512),
        memory_attention=_memory(sqa, "gated_self_interlayer"),
        stm=_stm(256),
    )


def _micro() -> RxTConfig:
    att = AttentionConfig(num_heads=8, num_kv_heads=4)
    sqa = AttentionConfig(num_heads=8, num_query_heads=4, num_kv_heads=4)
    return RxTConfig(
        vocab_size=8192, dim=256, num_layers=6,
        decoder_attention=att, memory_cross_attention=att, encoder_attention=sqa,
        decoder_ffn=FFNConfig(kind="moe", hidden_dim=400, num_experts=8, top_k=2),
        encoder_ffn=FFNConfig(hidden_dim=768),
        memory_attention=_memory(sqa, "gated_self_interlayer"),
        stm=_stm(256),
    )


def _baseline(vocab: int, dim: int, layers: int, heads: int, hidden: int) -> Callable[[], StatelessConfig]:
    return lambda: StatelessConfig(
        vocab_size=vocab, dim=dim, num_layers=layers,
        attention=AttentionConfig(num_heads=heads), ffn=FFNConfig(hidden_dim=hidden),
    )


PRESETS: dict[str, Preset] = {
    "debug": Preset(_debug, 76_000, "tests: tiny vocab, dim 32, 2 layers, 8 slots"),
    "tiny": Preset(_tiny, 1_600_000, "1.6M params (2 layers, 32 slots): trains on 2 CPU cores in minutes"),
    "nano": Preset(_nano, 12_000_000, "like RxT-Alpha Nano: D=128, 6 layers, STM 6×256×128, MoE decoder"),
    "micro": Preset(_micro, 26_000_000, "like RxT-Alpha Micro: D=256, 6 layers, MoE decoder"),
    "baseline-debug": Preset(_baseline(512, 32, 4, 4, 112), 76_000, "stateless, sized like debug"),
    "baseline-tiny": Preset(_baseline(4096, 128, 4, 4, 512), 1_600_000, "stateless, sized like tiny"),
    "baseline-nano": Preset(_baseline(8192, 192, 12, 6, 1248), 12_000_000, "stateless, sized like nano"),
    "baseline-micro": Preset(_baseline(8192, 320, 12, 8, 1600), 26_000_000, "stateless, sized like micro"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def from_name(name: str) -> ModelConfig:
    """The config of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown; choose one of {preset_names()}")
    return PRESETS[name].build()
