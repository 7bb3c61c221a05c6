"""Parameter counts and a one-screen description of a model config."""

from __future__ import annotations

from torch import nn

from rxt_dist.model.config import ModelConfig, RxTConfig
from rxt_dist.model.layers import MoE


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active-per-token) parameters: for MoE blocks only ``top_k`` experts count as
    active."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for module in model.modules():
        if isinstance(module, MoE):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            inactive += per_expert * (len(module.experts) - module.top_k)
    return total, total - inactive


def describe(name: str, cfg: ModelConfig, model: nn.Module) -> str:
    """Human-readable summary: kind, sizes, parameter counts and the STM shape."""
    total, active = count_parameters(model)
    lines = [
        f"preset        {name}",
        f"kind          {cfg.model_type}",
        f"vocab × dim   {cfg.vocab_size} × {cfg.dim}",
        f"layers        {cfg.num_layers}",
        f"parameters    {total:,} total, {active:,} active per token",
    ]
    if isinstance(cfg, RxTConfig):
        L, S, D = cfg.stm_shape
        lines += [
            f"STM shape     {L} × {S} × {D} (layers × slots × dim) = {L * S * D:,} values",
            f"memory attn   {_memory_write(cfg)}",
            f"STM init      {cfg.stm.init}" + (f" + noise {cfg.stm.init_noise_std:g}" if cfg.stm.init_noise_std else ""),
            f"decoder FFN   {cfg.decoder_ffn.kind}"
            + (f" ({cfg.decoder_ffn.num_experts} experts, top-{cfg.decoder_ffn.top_k})"
               if cfg.decoder_ffn.kind == "moe" else ""),
        ]
    return "\n".join(lines)


def _memory_write(cfg: RxTConfig) -> str:
    ma, gate = cfg.memory_attention, cfg.memory_attention.gate
    parts = [ma.variant, f"{ma.write} write" + (" with a sink" if ma.write_sink else "")]
    if ma.slot_ids:
        parts.append("slot identities on queries")
    bias = f", per-slot bias ±{gate.slot_bias_spread:g}" if gate.per_slot_bias else ""
    parts.append(f"gate {gate.kind}/{gate.activation}{bias}")
    return ", ".join(parts)
