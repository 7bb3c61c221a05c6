"""What storing the STM in a narrower dtype costs in recall.

A session's STM is stored and passed between deployments between turns; in bf16 it takes half
the bytes of fp32 (docs/scaling.md). :func:`recall_by_stm_dtype` plays the same held-out
conversations through the quality evaluation's RxT path (``rxt_dist.eval.quality``: greedy
answers from the STM, the model's own answer consolidated after each turn) once with the STM
kept in fp32 and once with every STM — the initial one and each consolidated one — rounded
to the narrower dtype between turns, exactly where serving would store it; the model itself
still computes in fp32.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from rxt_dist.eval import quality, quality_systems
from rxt_dist.model import RxTModel


@contextlib.contextmanager
def stm_rounded_to(model: RxTModel, dtype: torch.dtype | None) -> Iterator[None]:
    """While active, the quality evaluation's RxT path rounds every STM it carries to the next
    turn to ``dtype`` and back (``None``: unchanged)."""
    if dtype is None:
        yield
        return
    consolidate, initial = quality_systems._consolidate_tracked, model.initial_stm

    def rounded_consolidate(m, stm, queries, answers, result):
        return consolidate(m, stm, queries, answers, result).to(dtype).to(stm.dtype)

    def rounded_initial(*args, **kwargs):
        stm = initial(*args, **kwargs)
        return stm.to(dtype).to(stm.dtype)

    quality_systems._consolidate_tracked = rounded_consolidate
    model.initial_stm = rounded_initial
    try:
        yield
    finally:
        quality_systems._consolidate_tracked = consolidate
        del model.initial_stm  # the class's method again


def recall_by_stm_dtype(data_url: str, rxt_dir: str, max_conversations: int | None = 300, threads: int = 1,
                        dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, Any]:
    """Recall (exact match, values never seen in training and seen ones), answer perplexity
    and token accuracy of ``rxt_dir`` on the first ``max_conversations`` test conversations,
    once per STM dtype."""
    from rxt_dist.data import TextCodec, load_tokenizer, read_manifest

    manifest, tokenizer = read_manifest(data_url), load_tokenizer(data_url)
    model = quality._load_model(rxt_dir, RxTModel, "rxt_dir", manifest.vocab_size, tokenizer)
    cfg = quality.QualityConfig(max_conversations=max_conversations, systems=("rxt",), threads=threads)
    convs = quality.load_conversations(data_url, cfg.split, cfg.max_conversations)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"data": data_url, "model": rxt_dir, "conversations": len(convs), "arms": {}}
    try:
        for name in dtypes:
            dtype = None if name == "float32" else getattr(torch, name)
            started = time.perf_counter()
            with stm_rounded_to(model, dtype):
                result = quality.evaluate_conversations(convs, TextCodec(tokenizer), rxt=model, cfg=cfg)["rxt"]
            full = result.to_dict(examples=0)
            out["arms"][name] = {
                "recall_new_values": full["recall"]["exact_match"], "recall_new_count": full["recall"]["count"],
                "recall_seen_values": full["recall_seen"]["exact_match"],
                "recall_seen_count": full["recall_seen"]["count"],
                "answer_perplexity": full["overall"]["perplexity"], "token_accuracy": full["overall"]["accuracy"],
                "recall_by_distance": {k: v.get("exact_match") for k, v in full["recall"]["by_distance"].items()},
                "seconds": time.perf_counter() - started}
    finally:
        torch.set_num_threads(previous)
    return out
