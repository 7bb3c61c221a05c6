"""The systems the latency benchmark times, and the loop that plays a conversation through them.

Each system answers one turn at a time from an explicit state (``fresh()`` gives the state of
a new conversation, ``turn(state, query)`` returns a :class:`TurnRun` holding the next one), so
the same turn can be repeated from the same state. What the systems are and how the runs are
interleaved is described in :mod:`rxt_dist.eval.latency`.

Shape legend: L layers, S memory slots, D model dim, Nkv key/value heads, H head dim.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rxt_dist.inference import CompiledDecoder, CompiledMemoryUpdate, DecodeBatch, SamplingParams, consolidate
from rxt_dist.model import KVCache, RxTModel, StatelessLM
from rxt_dist.tokens import NUM_SPECIAL, interaction_ids, prompt_ids

NO_STOP = -1
"""An end-of-answer id no token has: every answer runs to ``max_new_tokens``."""
ID_BYTES = 8
"""Bytes per token id held between turns (int64) by systems that keep the history as tokens."""


# -- one turn of each system ----------------------------------------------------------------

@dataclass
class TurnRun:
    """One timed turn of one system and what the next turn starts from."""

    prompt_s: float
    turn_s: float
    answer: list[int]
    tokens: int
    """Token positions run through a model this turn (decoder, plus encoder for RxT)."""
    context: int
    """Self-attention positions the last answer token attended to."""
    kv_cache_bytes: int
    """Attention state built for the turn: the self-attention KV cache (and, for RxT, the
    STM keys/values projected for it)."""
    carried_bytes: int
    """State kept between turns: the STM (RxT), the KV cache (prefix caching) or the token
    history (systems that re-read it)."""
    state_bytes: int
    """Attention state and carried state together at the end of the turn, each tensor once."""
    state: Any
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class DecodeTiming:
    """A single-sequence decode through :class:`DecodeBatch`."""

    prompt_s: float
    turn_s: float
    answer: list[int]
    steps: int
    """Decoding steps after the prefill (each feeds one token)."""
    cache: KVCache


@torch.no_grad()
def timed_decode(
    model: RxTModel | StatelessLM,
    prompt: Sequence[int],
    answer_tokens: int,
    stm: torch.Tensor | None = None,
    cache: KVCache | None = None,
    compiled: CompiledDecoder | None = None,
) -> DecodeTiming:
    """Greedy-decode exactly ``answer_tokens`` tokens after ``prompt`` (continuing ``cache``
    when given; through ``compiled`` when given), timing the first token and the whole answer;
    returns the sequence's cache."""
    batch = DecodeBatch(model, eos_id=NO_STOP, compiled=compiled)
    params = [SamplingParams(max_new_tokens=answer_tokens)]
    start = time.perf_counter()
    events = batch.admit([0], [list(prompt)], params, stm=stm, cache=cache, keep_cache=True)
    first = time.perf_counter()
    answer, steps = [events[0].token], 0
    while not events[0].finished:
        events = batch.step()
        answer.append(events[0].token)
        steps += 1
    end = time.perf_counter()
    return DecodeTiming(first - start, end - start, answer, steps, batch.kept_caches.pop(0))


def _copy(cache: KVCache | None) -> KVCache | None:
    """A cache the next turn may advance without touching ``cache`` (writes are in place), so
    a repeat of the same turn starts from the same state."""
    return None if cache is None else cache.clone()


class RxTSystem:
    """RxT: respond from the STM, then consolidate (timed separately). With a compiled
    ``decoder`` and ``updater`` of ``model``, both run as the server runs them with
    ``compile_decode`` on (:meth:`compiled` builds the pair)."""

    def __init__(self, model: RxTModel, answer_tokens: int, seed: int, decoder: CompiledDecoder | None = None,
                 updater: CompiledMemoryUpdate | None = None) -> None:
        self.model, self.answer_tokens, self.seed = model, answer_tokens, seed
        self.decoder, self.updater = decoder, updater
        self.name = "rxt_compiled" if decoder is not None or updater is not None else "rxt"
        cfg = model.cfg
        att = cfg.memory_cross_attention
        itemsize = model.embed.weight.element_size()
        L, S, D = cfg.stm_shape
        self.stm_bytes = L * S * D * itemsize
        self.memory_kv_bytes = 2 * L * att.kv_heads * S * att.head_dim(D) * itemsize  # keys+values

    @classmethod
    def compiled(cls, model: RxTModel, answer_tokens: int, seed: int) -> RxTSystem:
        """The system through the compiled prefill, decoding step and memory update, compiled
        now for batch 1 (before any turn is timed)."""
        decoder, updater = CompiledDecoder(model), CompiledMemoryUpdate(model)
        decoder.warm_up((1,))
        updater.warm_up((1,))
        return cls(model, answer_tokens, seed, decoder, updater)

    def fresh(self) -> torch.Tensor:
        return self.model.initial_stm(1, torch.Generator().manual_seed(self.seed))  # (L, 1, S, D)

    @torch.no_grad()
    def turn(self, stm: torch.Tensor, query: list[int]) -> TurnRun:
        prompt = prompt_ids(query)
        d = timed_decode(self.model, prompt, self.answer_tokens, stm=stm, compiled=self.decoder)
        start = time.perf_counter()
        new_stm = consolidate(self.model, stm, [query], [d.answer], compiled=self.updater)  # (L, 1, S, D)
        consolidate_s = time.perf_counter() - start
        encoder_tokens = len(interaction_ids(query, d.answer))
        return TurnRun(
            d.prompt_s, d.turn_s, d.answer,
            tokens=len(prompt) + d.steps + encoder_tokens,
            context=int(d.cache.lengths[0]),
            kv_cache_bytes=d.cache.nbytes() + self.memory_kv_bytes,
            carried_bytes=self.stm_bytes,
            state_bytes=d.cache.nbytes() + self.memory_kv_bytes + self.stm_bytes,
            state=new_stm,
            extra={"consolidate_s": consolidate_s, "decoder_tokens": len(prompt) + d.steps,
                   "encoder_tokens": encoder_tokens},
        )


class FullHistorySystem:
    """The stateless baseline re-reading the whole history each turn."""

    name = "stateless_full"

    def __init__(self, model: StatelessLM, answer_tokens: int) -> None:
        self.model, self.answer_tokens = model, answer_tokens

    def fresh(self) -> list[int]:
        return []

    def turn(self, history: list[int], query: list[int]) -> TurnRun:
        prompt = history + prompt_ids(query)
        d = timed_decode(self.model, prompt, self.answer_tokens)
        new_history = history + interaction_ids(query, d.answer)
        carried = len(new_history) * ID_BYTES
        return TurnRun(d.prompt_s, d.turn_s, d.answer, tokens=len(prompt) + d.steps,
                       context=int(d.cache.lengths[0]), kv_cache_bytes=d.cache.nbytes(),
                       carried_bytes=carried, state_bytes=d.cache.nbytes() + carried,
                       state=new_history)


class PrefixCacheSystem:
    """The stateless baseline keeping its KV cache across turns (prefix caching)."""

    name = "stateless_prefix"

    def __init__(self, model: StatelessLM, answer_tokens: int) -> None:
        self.model, self.answer_tokens = model, answer_tokens

    def fresh(self) -> tuple[list[int], KVCache | None]:
        return [], None

    def turn(self, state: tuple[list[int], KVCache | None], query: list[int]) -> TurnRun:
        history, cache = state
        full = history + prompt_ids(query)
        # The cache lacks the last answer token (sampled, never fed) and the end-of-answer
        # token; feeding everything past the cached positions makes the sequence equal the
        # full history, whatever way the previous answer ended.
        cached = int(cache.lengths[0]) if cache is not None else 0
        new_tokens = full[cached:]
        d = timed_decode(self.model, new_tokens, self.answer_tokens, cache=_copy(cache))
        new_history = history + interaction_ids(query, d.answer)
        return TurnRun(d.prompt_s, d.turn_s, d.answer, tokens=len(new_tokens) + d.steps,
                       context=int(d.cache.lengths[0]), kv_cache_bytes=d.cache.nbytes(),
                       carried_bytes=d.cache.nbytes(), state_bytes=d.cache.nbytes(),
                       state=(new_history, d.cache))


class HFGenerateSystem:
    """Hugging Face ``LlamaForCausalLM.generate`` over the whole history."""

    name = "hf_llama"

    def __init__(self, model, answer_tokens: int) -> None:
        self.model, self.answer_tokens = model, answer_tokens

    def fresh(self) -> list[int]:
        return []

    def turn(self, history: list[int], query: list[int]) -> TurnRun:
        from rxt_dist.eval.hf_peer import timed_generate

        prompt = history + prompt_ids(query)
        g = timed_generate(self.model, prompt, self.answer_tokens)
        new_history = history + interaction_ids(query, g.answer)
        carried = len(new_history) * ID_BYTES
        return TurnRun(g.prompt_s, g.turn_s, g.answer, tokens=len(prompt) + len(g.answer) - 1,
                       context=g.cache_positions, kv_cache_bytes=g.kv_cache_bytes,
                       carried_bytes=carried, state_bytes=g.kv_cache_bytes + carried,
                       state=new_history)


# -- the conversation loop ------------------------------------------------------------------

def make_queries(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """``n`` random queries of ``length`` ordinary (non-special) token ids."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, vocab_size, (n, length), generator=gen)  # (n, length)
    return ids.tolist()


@dataclass
class TurnSamples:
    """The timed runs of one turn index and, interleaved with them, replays of turn 1."""

    runs: list[TurnRun]
    references: list[TurnRun]
    """Turn 1 replayed from the fresh state right after each run: a control measured under
    the same load, so ``run / reference`` cancels whatever else the machine was doing."""


def repeat_turn(system, state, query: list[int], repeats: int = 1, max_repeats: int | None = None,
                min_time_s: float = 0.0, reference: tuple[Any, list[int]] | None = None) -> TurnSamples:
    """Run one turn from ``state`` at least ``repeats`` times, and more (up to ``max_repeats``)
    until the runs' times add up to ``min_time_s``; after each run, replay ``reference``
    (a (state, query) pair: the first turn) when given."""
    max_repeats = repeats if max_repeats is None else max_repeats
    out = TurnSamples([], [])
    while len(out.runs) < repeats or (
        len(out.runs) < max_repeats
        and sum(r.turn_s + r.extra.get("consolidate_s", 0.0) for r in out.runs) < min_time_s
    ):
        out.runs.append(system.turn(state, query))
        if reference is not None:
            out.references.append(system.turn(*reference))
    return out


def play_conversation(system, queries: Sequence[list[int]], repeats: int = 1) -> list[TurnSamples]:
    """Play ``queries`` through one ``system``; each turn runs ``repeats`` times from the same
    state and the conversation continues from the last run."""
    return play_interleaved([system], queries, repeats)[system.name]


def play_interleaved(
    systems: Sequence,
    queries: Sequence[list[int]],
    repeats: int = 1,
    max_repeats: int | None = None,
    min_time_s: float = 0.0,
    paired: bool = False,
    on_turn: Callable[[str], None] | None = None,
) -> dict[str, list[TurnSamples]]:
    """Play ``queries`` through every system, turn t of each before turn t+1 of any (see
    :func:`repeat_turn` for the repeats; ``paired`` replays turn 1 after every run).
    Returns, per system name, the samples of every turn."""
    fresh = {s.name: s.fresh() for s in systems}
    states = dict(fresh)
    per_turn: dict[str, list[TurnSamples]] = {s.name: [] for s in systems}
    for query in queries:
        for system in systems:
            reference = (fresh[system.name], queries[0]) if paired else None
            samples = repeat_turn(system, states[system.name], query, repeats, max_repeats, min_time_s,
                                  reference)
            states[system.name] = samples.runs[-1].state
            per_turn[system.name].append(samples)
            if on_turn is not None:
                on_turn(system.name)
    return per_turn
