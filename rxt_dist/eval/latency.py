"""In-process latency benchmark: what each turn of a growing conversation costs.

One conversation of ``turns`` turns is played through every system in the same process,
on the same threads, with the same random queries (``query_tokens`` each) and answers of
exactly ``answer_tokens`` greedy tokens: the end-of-answer token is not treated as a stop
here, so a random model that would stop early still does the configured work. Systems:

``rxt``
    :class:`RxTModel` answering from its STM through the inference core's
    :class:`DecodeBatch` (the path ``respond`` takes), then ``consolidate`` of the
    interaction into the next STM, timed separately (it is off the response path).
``rxt_compiled``
    The same through the compiled prefill, decoding step and memory update
    (:class:`CompiledDecoder`, :class:`CompiledMemoryUpdate`): what the server runs with
    ``compile_decode`` on, as the shipped serving config has it. Compiled before the first
    turn (batch 1); the other systems have no compiled path here.
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
turn-N / turn-1 ratio with the machine's changing load cancelled out. Times: ``prompt_s`` is
the time to first token (prefill, for RxT including the once-per-turn STM projection, plus
choosing the first token); ``turn_s`` runs until the last answer token.

The systems and the loop that plays them live in :mod:`rxt_dist.eval.latency_systems`, the
summaries, ratios and targets in :mod:`rxt_dist.eval.latency_stats`; this module holds the
config, builds the models and assembles the report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rxt_dist.eval.latency_stats import (
    RXT_PROMPT_RATIO_TARGET,
    compare_to_rxt,
    summarise_runs,
    tail_turns,
    targets,
)
from rxt_dist.eval.latency_systems import (
    ID_BYTES,
    NO_STOP,
    DecodeTiming,
    FullHistorySystem,
    HFGenerateSystem,
    PrefixCacheSystem,
    RxTSystem,
    TurnRun,
    TurnSamples,
    make_queries,
    play_conversation,
    play_interleaved,
    repeat_turn,
    timed_decode,
)
from rxt_dist.eval.report import (
    current_rss_bytes,
    load_average,
    machine_info,
    peak_rss_bytes,
)
from rxt_dist.model import (
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

__all__ = [
    "ID_BYTES", "NO_STOP", "RXT_PROMPT_RATIO_TARGET", "SYSTEMS", "DecodeTiming",
    "FullHistorySystem", "HFGenerateSystem", "LatencyConfig", "PrefixCacheSystem", "RxTSystem",
    "TurnRun", "TurnSamples", "build_baseline", "build_rxt", "build_systems", "compare_to_rxt",
    "describe_model", "latency_document", "make_queries", "play_conversation", "play_interleaved",
    "repeat_turn", "run_latency", "summarise_runs", "tail_turns", "targets", "timed_decode",
    "token_formulas",
]

log = logging.getLogger(__name__)

SYSTEMS: tuple[str, ...] = ("rxt", "rxt_compiled", "stateless_full", "stateless_prefix", "hf_llama")


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
        if any(not s.startswith("rxt") for s in self.systems):
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
    if any(s.startswith("rxt") for s in cfg.systems):
        rxt, source = build_rxt(cfg)
        if "rxt" in cfg.systems:
            systems.append(RxTSystem(rxt, cfg.answer_tokens, cfg.seed))
        if "rxt_compiled" in cfg.systems:
            systems.append(RxTSystem.compiled(rxt, cfg.answer_tokens, cfg.seed))
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
            "rxt": n * rxt_turn, "rxt_compiled": n * rxt_turn, "stateless_full": full, "hf_llama": full,
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
