"""Ray-free inference: batched ``respond``/``consolidate`` with KV cache and STM pre-cache."""

from rxt_dist.inference.compiled import CompiledDecoder, CompiledMemoryUpdate, compiled_or_eager
from rxt_dist.inference.engine import (
    DecodeBatch,
    TokenEvent,
    collect,
    consolidate,
    generate,
    pad_batch,
    respond,
    respond_stateless,
    system_prompt_stm,
)
from rxt_dist.inference.sampling import SamplingParams, filter_logits, greedy_tokens, sample_next

__all__ = [
    "CompiledDecoder", "CompiledMemoryUpdate", "DecodeBatch", "compiled_or_eager", "TokenEvent", "collect", "consolidate", "generate",
    "pad_batch", "respond", "respond_stateless", "system_prompt_stm", "SamplingParams", "filter_logits", "greedy_tokens", "sample_next",
]
