"""The RxT model family and the stateless baseline (architecture only; no Ray here)."""

from rxt_dist.model.config import (
    AttentionConfig,
    FFNConfig,
    GateConfig,
    MemoryAttentionConfig,
    ModelConfig,
    RxTConfig,
    STMConfig,
    StatelessConfig,
    config_from_dict,
)
from rxt_dist.model.io import (
    Model,
    build_model,
    is_complete_dir,
    load_config,
    load_model_dir,
    load_tokenizer,
    save_model_dir,
)
from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.layers import compile_for_training
from rxt_dist.model.presets import PRESETS, from_name, preset_names
from rxt_dist.model.rxt import MemoryKV, RxTModel
from rxt_dist.model.stateless import StatelessLM
from rxt_dist.model.stm import split_stm, stack_stm, stm_from_bytes, stm_to_bytes
from rxt_dist.model.summary import count_parameters, describe

__all__ = [
    "AttentionConfig", "FFNConfig", "GateConfig", "MemoryAttentionConfig", "ModelConfig",
    "RxTConfig", "STMConfig", "StatelessConfig", "config_from_dict",
    "Model", "build_model", "is_complete_dir", "load_config", "load_model_dir", "load_tokenizer", "save_model_dir",
    "KVCache", "compile_for_training", "PRESETS", "from_name", "preset_names", "MemoryKV", "RxTModel", "StatelessLM",
    "split_stm", "stack_stm", "stm_from_bytes", "stm_to_bytes", "count_parameters", "describe",
]
