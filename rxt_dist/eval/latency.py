"""In-process latency benchmark: what each turn of a growing conversation costs.

One conversation of ``turns`` turns is played through every system in the same process,
on the same threads, with the same random queries (``query_tokens`` each) and answers of
exactly ``answer_tokens`` greedy tokens: the end-of-answer token is not treated as a stop
here, so a random model that would stop early still does the configured work. Systems:

``rxt``
    :class:`RxTModel` answering from its STM through the inference core's
    :class:`DecodeBatch` (the path ``respond`` takes), then ``consolidate`` of the
    interaction into the next STM, timed separately (it is off the response path).
``stateless_full``
    :class:`StatelessLM` re-reading the whole history (``history_ids``) every turn, with a
    KV cache only within the turn.
``stateless_prefix``
    :class:`StatelessLM` keeping its KV cache across turns (prefix caching): each turn feeds
    only the tokens the cache lacks.
``hf_llama``
    Hugging Face ``LlamaForCausalLM`` shaped like the baseline, ``generate`` over the whole
    history (KV cache within the call, as ``generate`` keeps it).

The systems are interleaved turn by turn (turn t of every system, then turn t+1), so load
from elsewhere on the machine falls on all of them alike at a given turn index. Each turn
is run several times from the same state (at least ``repeats``, more for cheap turns until
``min_turn_time_s`` is spent, at most ``max_repeats``); the median and the minimum are
reported. After every run, turn 1 is replayed from the fresh state, so each turn also has
a control measured under the same load: the paired ratio turn t / turn-1 replay is the
turn-N / turn-1 ratio with the machine's changing load cancelled out. Times: ``prompt_s`` is the time to first token (prefill, for RxT including the
once-per-turn STM projection, plus choosing the first token); ``turn_s`` runs until the last
answer token.

Shape legend: L layers, S memory slots, D model dim, Nkv key/value heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rxt_dist.eval.report import current_rss_bytes, load_average, machine_info, peak_rss_bytes
from rxt_dist.inference import DecodeBatch, SamplingParams, consolidate
from rxt_dist.model import (
    KVCache,
    PRESETS,
    RxTConfig,
    RxTModel,
    StatelessConfig,
    StatelessLM,
    build_model,
    count_parameters,
    from_name,
    load_model_dir,
)
from rxt_dist.tokens import NUM_SPECIAL, interaction_ids, prompt_ids

log = logging.getLogger(__name__)

SYSTEMS: tuple[str, ...] = ("rxt", "stateless_full", "stateless_prefix", "hf_llama")
NO_STOP = -1
"""An end-of-answer id no token has: every answer runs to ``max_new_tokens``."""
ID_BYTES = 8
"""Bytes per token id held between turns (int64) by systems that keep the history as tokens."""


@dataclass
class LatencyConfig:
    """What the latency benchmark runs."""

    rxt_preset: str = "nano"
    """RxT preset to time (random weights, training init)."""
    baseline_preset: str | None = None
    """Stateless preset; ``None`` means ``baseline-<rxt_preset>`` (matching total size)."""
    rxt_model_dir: str | None = None
    """Time this exported RxT model directory instead of ``rxt_preset`` (e.g. a StateX-expanded
    model, to see what its larger STM costs per turn)."""
    stm_slots: int | None = None
    """Override the STM slot count S of ``rxt_preset`` (``None``: the preset's)."""
    turns: int = 64
    """Turns N per conversation."""
    query_tokens: int = 32
    """Tokens per query (without the special tokens)."""
    answer_tokens: int = 32
    """Tokens per answer, generated greedily; every system generates exactly this many."""
    repeats: int = 3
    """Fewest timed runs of each turn from the same state (median and minimum reported)."""
    max_repeats: int = 10
    """Most timed runs of one turn."""
    min_turn_time_s: float = 0.5
    """Keep repeating a turn (up to ``max_repeats``) until its runs took this long in total:
    cheap turns get more samples, which is what makes a flat curve measurable on a busy machine."""
    warmup_turns: int = 2
    """Untimed turns of a separate conversation each system plays first."""
    threads: int = 1
    """``torch.set_num_threads`` for the whole run (restored afterwards)."""
    systems: tuple[str, ...] = SYSTEMS
    """Which of :data:`SYSTEMS` to run."""
    seed: int = 0
    """Seed of the weights and the queries."""

    def __post_init__(self) -> None:
        self.systems = tuple(self.systems)
        for name in ("turns", "query_tokens", "answer_tokens", "repeats", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer ≥ 1")
        if self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats={self.max_repeats}: must be ≥ repeats={self.repeats}")
        if self.min_turn_time_s < 0:
            raise ValueError(f"min_turn_time_s={self.min_turn_time_s}: must be ≥ 0 (0: exactly `repeats` runs)")
        if self.warmup_turns < 0:
            raise ValueError(f"warmup_turns={self.warmup_turns}: must be ≥ 0 (0 skips warm-up)")
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown or not self.systems:
            raise ValueError(f"systems={list(self.systems)}: choose one or more of {list(SYSTEMS)}")
        if self.stm_slots is not None and self.stm_slots < 1:
            raise ValueError(f"stm_slots={self.stm_slots}: the STM needs ≥ 1 slot per layer")
        if self.stm_slots is not None and self.rxt_model_dir is not None:
            raise ValueError(f"stm_slots={self.stm_slots}: cannot resize the STM of a trained model "
                             f"({self.rxt_model_dir}); expand it into a new model directory first")
        if self.rxt_model_dir is None:
            _check_preset("rxt_preset", self.rxt_preset, RxTConfig)
        if self.baseline_preset is None:
            self.baseline_preset = f"baseline-{self.rxt_preset}"
        if any(s != "rxt" for s in self.systems):
            _check_preset("baseline_preset", self.baseline_preset, StatelessConfig)

    @property
    def interaction_tokens(self) -> int:
        """Tokens of one whole interaction ``[BOS][Q] q [A] a [EOS]``."""
        return self.query_tokens + self.answer_tokens + 4


def _check_preset(name: str, preset: str, kind: type) -> None:
    if preset not in PRESETS:
        raise ValueError(f"{name}={preset!r}: unknown preset; choose one of {sorted(PRESETS)}")
    if not isinstance(from_name(preset), kind):
        wanted = "an RxT" if kind is RxTConfig else "a stateless (baseline-*)"
        raise ValueError(f"{name}={preset!r}: must name {wanted} preset")


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
) -> DecodeTiming:
    """Greedy-decode exactly ``answer_tokens`` tokens after ``prompt`` (continuing ``cache``
    when given), timing the first token and the whole answer; returns the sequence's cache."""
    batch = DecodeBatch(model, eos_id=NO_STOP)
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
    """RxT: respond from the STM, then consolidate (timed separately)."""

    name = "rxt"

    def __init__(self, model: RxTModel, answer_tokens: int, seed: int) -> None:
        self.model, self.answer_tokens, self.seed = model, answer_tokens, seed
        cfg = model.cfg
        att = cfg.memory_cross_attention
        itemsize = model.embed.weight.element_size()
        L, S, D = cfg.stm_shape
        self.stm_bytes = L * S * D * itemsize
        self.memory_kv_bytes = 2 * L * att.kv_heads * S * att.head_dim(D) * itemsize  # keys+values

    def fresh(self) -> torch.Tensor:
        return self.model.initial_stm(1, torch.Generator().manual_seed(self.seed))  # (L, 1, S, D)

    @torch.no_grad()
    def turn(self, stm: torch.Tensor, query: list[int]) -> TurnRun:
        prompt = prompt_ids(query)
        d = timed_decode(self.model, prompt, self.answer_tokens, stm=stm)
        start = time.perf_counter()
        new_stm = consolidate(self.model, stm, [query], [d.answer])  # (L, 1, S, D)
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


def _ratio(values: Sequence[float]) -> float:
    return values[-1] / values[0] if values[0] > 0 else float("inf")


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def _timing_fields(name: str, samples: list[list[float]], references: list[list[float]]) -> dict[str, Any]:
    """``<name>_s`` (per-turn medians), ``<name>_min_s``, the raw samples, the turn-N / turn-1
    ratios of both, and with ``references`` the paired ratio per turn and at turn N."""
    medians = [statistics.median(x) for x in samples]
    minima = [min(x) for x in samples]
    out: dict[str, Any] = {
        f"{name}_s": medians,
        f"{name}_min_s": minima,
        f"{name}_samples_s": samples,
        f"{name}_ratio_last_first": _ratio(medians),
        f"{name}_ratio_last_first_min": _ratio(minima),
    }
    if all(references):
        paired = [_median_ratio(x, ref) for x, ref in zip(samples, references)]
        out[f"{name}_reference_s"] = [statistics.median(ref) for ref in references]
        out[f"{name}_paired_ratio"] = paired
        out[f"{name}_ratio_paired"] = paired[-1]
        out[f"{name}_ratio_paired_tail"] = statistics.median(paired[-tail_turns(len(paired)):])
    return out


def tail_turns(turns: int) -> int:
    """How many final turns ``*_ratio_paired_tail`` pools: the last quarter (at least one)."""
    return max(1, turns // 4)


def summarise_runs(per_turn: list[TurnSamples]) -> dict[str, Any]:
    """Per-turn medians and minima, raw samples, ratios turn-N / turn-1 (endpoint and paired),
    token and memory figures."""
    last = [t.runs[-1] for t in per_turn]

    def timing(name: str, get: Callable[[TurnRun], float]) -> dict[str, Any]:
        return _timing_fields(name, [[get(r) for r in t.runs] for t in per_turn],
                              [[get(r) for r in t.references] for t in per_turn])

    out: dict[str, Any] = {
        **timing("prompt", lambda r: r.prompt_s),
        **timing("turn", lambda r: r.turn_s),
        "repeats_per_turn": [len(t.runs) for t in per_turn],
        "tokens_per_turn": [r.tokens for r in last],
        "context_tokens": [r.context for r in last],
        "kv_cache_bytes": [r.kv_cache_bytes for r in last],
        "carried_bytes": [r.carried_bytes for r in last],
        "state_bytes": [r.state_bytes for r in last],
    }
    out["tokens_total"] = sum(out["tokens_per_turn"])
    out["peak_state_bytes"] = max(out["state_bytes"])
    for key in last[0].extra:
        if key.endswith("_s"):
            out.update(timing(key[:-2], lambda r, key=key: r.extra[key]))
        else:
            out[f"{key}_per_turn"] = [r.extra[key] for r in last]
    return out


# -- models ---------------------------------------------------------------------------------

def build_rxt(cfg: LatencyConfig) -> tuple[RxTModel, str]:
    """The RxT model to time and a description of where it came from."""
    if cfg.rxt_model_dir is not None:
        model = load_model_dir(cfg.rxt_model_dir)
        if not isinstance(model, RxTModel):
            raise ValueError(f"rxt_model_dir={cfg.rxt_model_dir!r}: holds a {model.cfg.model_type} "
                             "model, not an RxT model")
        return model.eval(), f"model directory {cfg.rxt_model_dir}"
    mcfg = from_name(cfg.rxt_preset)
    source = f"preset {cfg.rxt_preset}"
    if cfg.stm_slots is not None:
        mcfg = dataclasses.replace(mcfg, stm=dataclasses.replace(mcfg.stm, num_slots=cfg.stm_slots))
        source += f" with stm_slots={cfg.stm_slots}"
    torch.manual_seed(cfg.seed)
    return build_model(mcfg).eval(), source


def build_baseline(cfg: LatencyConfig) -> StatelessLM:
    """The stateless baseline to time (random weights, training init)."""
    torch.manual_seed(cfg.seed)
    return build_model(from_name(cfg.baseline_preset)).eval()


def describe_model(model: torch.nn.Module, source: str) -> dict[str, Any]:
    """Where a timed model came from, its parameter counts and its shape."""
    total, active = count_parameters(model)
    info = {"source": source, "parameters": total, "active_parameters": active,
            "dim": model.config.hidden_size if hasattr(model, "config") else model.cfg.dim,
            "layers": model.config.num_hidden_layers if hasattr(model, "config") else model.cfg.num_layers}
    if isinstance(model, RxTModel):
        info["stm_slots"] = model.cfg.stm.num_slots
    return info


def build_systems(cfg: LatencyConfig) -> tuple[list, dict[str, Any]]:
    """The systems to run, in :data:`SYSTEMS` order, and a description of their models."""
    systems, models = [], {}
    vocab = None
    if "rxt" in cfg.systems:
        rxt, source = build_rxt(cfg)
        systems.append(RxTSystem(rxt, cfg.answer_tokens, cfg.seed))
        models["rxt"] = describe_model(rxt, source)
        vocab = rxt.cfg.vocab_size
    if any(s.startswith("stateless") for s in cfg.systems):
        base = build_baseline(cfg)
        models["baseline"] = describe_model(base, f"preset {cfg.baseline_preset}")
        vocab = min(vocab or base.cfg.vocab_size, base.cfg.vocab_size)
        if "stateless_full" in cfg.systems:
            systems.append(FullHistorySystem(base, cfg.answer_tokens))
        if "stateless_prefix" in cfg.systems:
            systems.append(PrefixCacheSystem(base, cfg.answer_tokens))
    if "hf_llama" in cfg.systems:
        from rxt_dist.eval.hf_peer import build_llama

        base_cfg = from_name(cfg.baseline_preset)
        positions = (cfg.turns + cfg.warmup_turns + 1) * cfg.interaction_tokens
        llama = build_llama(base_cfg, positions, cfg.seed)
        systems.append(HFGenerateSystem(llama, cfg.answer_tokens))
        models["hf_llama"] = describe_model(llama, f"transformers LlamaForCausalLM shaped like "
                                                   f"{cfg.baseline_preset}")
        vocab = min(vocab or base_cfg.vocab_size, base_cfg.vocab_size)
    return systems, {"models": models, "vocab_size": vocab}


def token_formulas(cfg: LatencyConfig) -> dict[str, Any]:
    """Tokens per conversation predicted from the token format: O(N·T) for RxT and prefix
    caching (whose attention context still grows), O(N²·T) for re-reading the history."""
    n, a = cfg.turns, cfg.answer_tokens
    inter, prompt = cfg.interaction_tokens, cfg.query_tokens + 3
    rxt_turn = prompt + (a - 1) + inter
    full = sum(t * inter + prompt + (a - 1) for t in range(n))
    return {"interaction_tokens": inter, "prompt_tokens": prompt,
            "rxt": n * rxt_turn, "stateless_full": full, "hf_llama": full,
            # After the first turn the cache lacks only the last answer token and [EOS].
            "stateless_prefix": n * inter - 2}


def run_latency(cfg: LatencyConfig, progress: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the report (see docs/evaluation.md).

    ``progress`` shows a tqdm bar on stderr; ``command`` is recorded in the report."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress, command)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: LatencyConfig, progress: bool, command: str | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    machine = machine_info()
    systems, described = build_systems(cfg)
    queries = make_queries(cfg.turns, cfg.query_tokens, described["vocab_size"], cfg.seed)
    warmup = make_queries(cfg.warmup_turns, cfg.query_tokens, described["vocab_size"], cfg.seed + 1)
    results: dict[str, Any] = {}
    bar = tqdm(total=len(systems) * cfg.turns, desc="latency", unit="turn", disable=not progress)
    started = time.perf_counter()
    play_interleaved(systems, warmup)

    def advance(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    with bar:
        runs = play_interleaved(systems, queries, cfg.repeats, cfg.max_repeats, cfg.min_turn_time_s,
                                paired=True, on_turn=advance)
    for name, per_turn in runs.items():
        results[name] = summarise_runs(per_turn)
        log.info("%s: turn-%d/turn-1 time to first token %.2f× (medians), %.2f× (paired)", name,
                 cfg.turns, results[name]["prompt_ratio_last_first"], results[name]["prompt_ratio_paired"])
    rss = {"rss_after_bytes": current_rss_bytes(), "rss_peak_bytes": peak_rss_bytes()}
    return {
        "benchmark": "latency",
        "command": command,
        "config": dataclasses.asdict(cfg),
        "threads": cfg.threads,
        "machine": machine,
        "load_average_after": load_average(),
        "wall_s": time.perf_counter() - started,
        **described,
        "systems": results,
        "vs_rxt_last_turn": compare_to_rxt(results),
        "token_formulas": token_formulas(cfg),
        "targets": targets(results),
        "process_memory": rss,
        "memory_note": ("kv_cache_bytes/carried_bytes/state_bytes are exact tensor bytes per system "
                        "(cache capacity, which grows by doubling); process_memory is the whole "
                        "process after the run (current RSS and getrusage high-water mark), all "
                        "systems together, models included"),
    }


def compare_to_rxt(results: dict[str, Any]) -> dict[str, Any]:
    """Each other system's time at the last turn divided by RxT's (>1: slower than RxT)."""
    if "rxt" not in results:
        return {}
    rxt = results["rxt"]
    return {
        name: {"prompt": r["prompt_s"][-1] / rxt["prompt_s"][-1],
               "turn": r["turn_s"][-1] / rxt["turn_s"][-1],
               "prompt_min": r["prompt_min_s"][-1] / rxt["prompt_min_s"][-1],
               "turn_min": r["turn_min_s"][-1] / rxt["turn_min_s"][-1]}
        for name, r in results.items() if name != "rxt"
    }


RXT_PROMPT_RATIO_TARGET = 1.15


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's latency targets, evaluated on these results."""
    out: dict[str, Any] = {}
    if "rxt" in results:
        for stat in ("last_first", "last_first_min", "paired", "paired_tail"):
            ratio = results["rxt"][f"prompt_ratio_{stat}"]
            out[f"rxt_prompt_ratio_{stat}"] = ratio
            out[f"rxt_prompt_ratio_{stat}_met"] = ratio <= RXT_PROMPT_RATIO_TARGET
        out["rxt_prompt_ratio_target"] = RXT_PROMPT_RATIO_TARGET
        if "stateless_full" in results:
            full = results["stateless_full"]["prompt_s"][-1] / results["rxt"]["prompt_s"][-1]
            out["stateless_full_vs_rxt_prompt_last_turn"] = full
            out["stateless_full_slower_than_rxt"] = full > 1.0
    return out


def latency_document(reports: Sequence[dict[str, Any]], command: str | None = None) -> dict[str, Any]:
    """Several :func:`run_latency` reports (e.g. one per preset) as one ``latency.json``:
    the machine and the threads once at the top, the runs below."""
    if not reports:
        raise ValueError("reports=[]: give at least one run_latency report")
    first = reports[0]
    return {
        "benchmark": "latency",
        "command": command,
        "machine": first["machine"],
        "threads": sorted({r["threads"] for r in reports}),
        "load_average_before": first["machine"]["load_average"],
        "load_average_after": reports[-1]["load_average_after"],
        "runs": list(reports),
    }
