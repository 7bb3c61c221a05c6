"""Weight initialisation, in one place for every model of the family.

Linear and embedding weights draw from N(0, init_std); projections that write into the
residual stream (attention outputs, FFN down-projections) are scaled by 1/sqrt(2·L) so the
stream's variance does not grow with depth. Norms start at 1, biases at 0; gates and the
learned initial STM take the values their configs name; slot identities start at unit scale;
the previous-token projection of the memory write starts at zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rxt_dist.model.config import RxTConfig, StatelessConfig

_RESIDUAL_OUTPUTS = ("o_proj", "down")


@torch.no_grad()
def init_weights(model: nn.Module, cfg: RxTConfig | StatelessConfig) -> None:
    """Initialise every parameter of ``model`` (built from ``cfg``) in place."""
    std = cfg.init_std
    residual_std = std / math.sqrt(2 * cfg.num_layers)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, residual_std if leaf in _RESIDUAL_OUTPUTS else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
    if isinstance(cfg, RxTConfig):
        _init_memory(model, cfg)


def _init_memory(model: nn.Module, cfg: RxTConfig) -> None:
    gate_cfg = cfg.memory_attention.gate
    for layer in model.memory_attention.layers:
        for name in ("gate", "mix_gate", "pre_gate"):
            if hasattr(layer, name):
                _init_gate(getattr(layer, name), gate_cfg)
        if hasattr(layer, "slot_id"):
            # unit scale, like the RMS-normalised state it is added to: distinct from the start
            nn.init.normal_(layer.slot_id, 0.0, 1.0)
        if hasattr(layer, "ed_previous"):  # the write starts as it is without the previous token
            nn.init.zeros_(layer.ed_previous.weight)
    if cfg.stm.init == "learned":
        nn.init.normal_(model.stm_init.weight, 0.0, cfg.stm.init_std)


def _init_gate(gate: nn.Module, gate_cfg) -> None:
    if gate_cfg.kind == "static":
        gate.logit.fill_(gate_cfg.init_bias)
    elif gate_cfg.kind == "elementwise":
        gate.weight.zero_()
        gate.bias.fill_(gate_cfg.init_bias)
    elif gate_cfg.kind == "linear":
        gate.proj.bias.fill_(gate_cfg.init_bias)
    elif gate_cfg.kind == "slot_mean":
        gate.slot_weight.fill_(gate_cfg.init_bias)
    if gate_cfg.per_slot_bias:
        spread = gate_cfg.slot_bias_spread
        gate.slot_bias.copy_(torch.linspace(-spread, spread, gate.slot_bias.shape[0])[:, None])
