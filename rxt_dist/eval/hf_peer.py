"""A peer from outside this project: Hugging Face ``LlamaForCausalLM`` shaped like our baseline.

Llama is the same recipe as :class:`rxt_dist.model.StatelessLM` (pre-norm RMSNorm, RoPE,
SwiGLU, optionally GQA, tied embeddings), so a Llama built from a :class:`StatelessConfig`
has the same parameter count and the same FLOPs per token; timing it with ``generate`` shows
whether our stateless numbers are those of a well-engineered implementation.
``transformers`` is imported only when a peer is built (it is in the ``bench`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rxt_dist.model.config import StatelessConfig
from rxt_dist.tokens import BOS_ID, EOS_ID, PAD_ID


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "the hf_llama system needs Hugging Face transformers: pip install -e '.[bench]'"
        ) from exc
    return transformers


def llama_config(cfg: StatelessConfig, max_positions: int):
    """A ``transformers.LlamaConfig`` with the shape of ``cfg`` and room for ``max_positions``."""
    if cfg.ffn.kind != "dense":
        raise ValueError(f"ffn.kind={cfg.ffn.kind!r}: the Llama peer has a dense SwiGLU; "
                         "compare against a dense baseline preset")
    if cfg.attention.query_heads != cfg.attention.num_heads:
        raise ValueError(f"attention.num_query_heads={cfg.attention.query_heads}: Llama has no "
                         "sparse-query attention; compare against a baseline with all query heads")
    tf = _transformers()
    return tf.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn.hidden_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.attention.num_heads,
        num_key_value_heads=cfg.attention.kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.attention.rope_theta},
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def build_llama(cfg: StatelessConfig, max_positions: int, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` (eval mode, SDPA attention) shaped like ``cfg``."""
    tf = _transformers()
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(llama_config(cfg, max_positions))
    return model.eval()


@dataclass
class GenerateTiming:
    """One ``generate`` call over a whole history."""

    answer: list[int]
    prompt_s: float
    """Start of the call → the first new token reached the streamer (time to first token)."""
    turn_s: float
    """Start of the call → ``generate`` returned with every answer token."""
    kv_cache_bytes: int
    """Bytes of the returned ``past_key_values`` (the cache ``generate`` built for this turn)."""
    cache_positions: int
    """Positions held by that cache."""


class _FirstTokenClock:
    """A ``generate`` streamer that records when the first new token arrives (the first
    ``put`` carries the prompt, the second the first generated token)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@torch.no_grad()
def timed_generate(model, history: Sequence[int], answer_tokens: int) -> GenerateTiming:
    """Greedy ``generate`` of exactly ``answer_tokens`` tokens after ``history`` (the
    end-of-answer token is suppressed until then by ``min_new_tokens``), with the KV cache
    ``generate`` keeps within the call."""
    ids = torch.tensor([list(history)], dtype=torch.long)  # (1, T)
    clock = _FirstTokenClock()
    start = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=answer_tokens,
        min_new_tokens=answer_tokens,
        do_sample=False,
        use_cache=True,
        streamer=clock,
        return_dict_in_generate=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
    )
    end = time.perf_counter()
    answer = out.sequences[0, ids.shape[1]:].tolist()
    layers = out.past_key_values.layers
    nbytes = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    positions = int(out.past_key_values.get_seq_length())
    first = clock.first_token_at if clock.first_token_at is not None else end
    return GenerateTiming(answer, first - start, end - start, nbytes, positions)
