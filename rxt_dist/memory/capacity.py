"""Memory capacity: exact-match recall against the number of facts held and the distance.

Two sweeps of generated probe conversations (:func:`rxt_dist.data.generate_capacity_conversations`,
the ``capacity`` corpus preset: 4 owners × 8 attributes = 32 fact keys):

``facts``
    Each conversation states ``f`` distinct facts, one per turn, then asks ``min(recalls, f)`` of
    them back (drawn at random), for every ``f`` in :attr:`CapacityConfig.facts`.
``distance``
    Each conversation states :attr:`CapacityConfig.distance_facts` facts and asks one of them
    exactly ``d`` turns after its statement (filler turns pad the gap), for every ``d``.

Every model answers the same conversations. Scoring is the quality evaluation's
(:func:`rxt_dist.eval.evaluate_conversations`): the STM is carried through the conversation and
consolidated with gold answers, recall is the exact match of the greedy answer, and the
teacher-forced value accuracy is reported beside it (docs/evaluation.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rxt_dist.data import (
    Conversation,
    SyntheticConfig,
    TextCodec,
    generate_capacity_conversations,
    tokenize_conversations,
)
from rxt_dist.eval import QualityConfig, evaluate_conversations
from rxt_dist.model import RxTModel, load_model_dir
from rxt_dist.model.io import load_tokenizer_json

log = logging.getLogger(__name__)


@dataclass
class CapacityConfig:
    """The probe conversations and how they are answered."""

    facts: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32)
    """Facts held, one point of the facts sweep each (≤ owners × attributes of the preset)."""
    recalls: int = 4
    """Recall turns per conversation of the facts sweep (``min(recalls, f)``)."""
    distances: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    """Turns between a fact's statement and its recall, one point of the distance sweep each."""
    distance_facts: int = 8
    """Facts stated in every conversation of the distance sweep."""
    conversations: int = 48
    """Conversations per sweep point."""
    corpus_preset: str = "capacity"
    """Generator preset (``SyntheticConfig.from_name``): the phrasing the model was trained on."""
    seed: int = 1
    """Seed of the probe conversations and of each conversation's initial STM."""
    batch_size: int = 16
    """Conversations answered together."""
    max_new_tokens: int = 16
    """Greedy answer limit on recall turns."""

    def __post_init__(self) -> None:
        self.facts, self.distances = tuple(self.facts), tuple(self.distances)
        for name in ("facts", "distances"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={list(values)}: must be a non-empty list of integers ≥ 1")
        for name in ("recalls", "distance_facts", "conversations", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        keys = len(self.corpus().fact_keys)
        too_many = [f for f in (*self.facts, self.distance_facts) if f > keys]
        if too_many:
            raise ValueError(f"facts={too_many}: the {self.corpus_preset!r} corpus has {keys} fact keys "
                             "(owners × attributes); hold at most that many")

    def corpus(self) -> SyntheticConfig:
        return SyntheticConfig.from_name(self.corpus_preset, seed=self.seed)


def probe_conversations(cfg: CapacityConfig, codec: TextCodec) -> dict[str, list[Conversation]]:
    """The tokenized conversations of both sweeps: ``{"facts": [...], "distance": [...]}``."""
    corpus = cfg.corpus()
    facts = [c for f in cfg.facts for c in generate_capacity_conversations(
        corpus, f, cfg.conversations, recalls=min(cfg.recalls, f))]
    distance = [c for d in cfg.distances for c in generate_capacity_conversations(
        corpus, cfg.distance_facts, cfg.conversations, distance=d, recalls=1)]
    return {"facts": tokenize_conversations(facts, codec), "distance": tokenize_conversations(distance, codec)}


def _points(breakdown: dict[str, dict[str, Any]], keys: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    return {str(k): breakdown[str(k)] for k in keys if str(k) in breakdown}


def evaluate_capacity(model: RxTModel, probes: dict[str, list[Conversation]], codec: TextCodec,
                      cfg: CapacityConfig, progress: bool = False) -> dict[str, Any]:
    """Recall of ``model`` on both sweeps: per point ``count``, ``exact_match``, ``value_accuracy``."""
    quality = QualityConfig(systems=("rxt",), batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed, examples=3)
    facts = evaluate_conversations(probes["facts"], codec, rxt=model, cfg=quality, progress=progress)["rxt"]
    dist = evaluate_conversations(probes["distance"], codec, rxt=model, cfg=quality, progress=progress)["rxt"]
    f_summary, d_summary = facts.recall_summary(3), dist.recall_summary(3)
    return {
        "facts": _points(f_summary["by_facts_held"], cfg.facts),
        "facts_by_distance": f_summary["by_distance"],
        "distance": _points(d_summary["by_distance"], cfg.distances),
        "overall_facts_sweep": {"count": f_summary["count"], "exact_match": f_summary["exact_match"],
                                "value_accuracy": f_summary["value_accuracy"]},
        "examples": f_summary["examples"],
    }


def check_compatible(model: RxTModel, url: str, codec: TextCodec) -> None:
    """Raise unless ``model`` (loaded from ``url``) is an RxT model that reads ``codec``'s token ids."""
    if not isinstance(model, RxTModel):
        raise ValueError(f"{url}: holds a {model.cfg.model_type} model; the capacity study needs RxT models")
    if model.cfg.vocab_size < codec.vocab_size:
        raise ValueError(f"{url}: vocab_size={model.cfg.vocab_size} is smaller than the tokenizer's "
                         f"{codec.vocab_size} tokens")
    text = load_tokenizer_json(url)
    if text is not None:
        from tokenizers import Tokenizer

        if Tokenizer.from_str(text).get_vocab() != codec.tokenizer.get_vocab():
            raise ValueError(f"{url.rstrip('/')}/tokenizer.json differs from the dataset's tokenizer: "
                             "the model was trained on other token ids")


def evaluate_capacity_models(models: dict[str, str], codec: TextCodec, cfg: CapacityConfig,
                             progress: bool = False) -> dict[str, Any]:
    """Evaluate each named model directory on the same probe conversations.

    Returns ``{"config": …, "probe_conversations": …, "models": {name: {"source", "stm_slots",
    "parameters", "elapsed_s", "results"}}}``.
    """
    probes = probe_conversations(cfg, codec)
    out: dict[str, Any] = {"config": asdict(cfg),
                           "probe_conversations": {k: len(v) for k, v in probes.items()}, "models": {}}
    for name, url in models.items():
        model = load_model_dir(url).eval()
        check_compatible(model, url, codec)
        start = time.perf_counter()
        with torch.no_grad():
            results = evaluate_capacity(model, probes, codec, cfg, progress)
        out["models"][name] = {
            "source": url,
            "stm_slots": model.cfg.stm.num_slots,
            "parameters": sum(p.numel() for p in model.parameters()),
            "elapsed_s": time.perf_counter() - start,
            "results": results,
        }
        log.info("%s: facts-sweep recall %.3f", name, results["overall_facts_sweep"]["exact_match"])
    return out


def capacity_tables(report: dict[str, Any]) -> str:
    """Markdown tables: recall exact match by facts held and by distance, one row per model."""
    models = report["models"]
    lines = []
    for sweep, title in (("facts", "facts held"), ("distance", "distance (turns)")):
        keys = [str(k) for k in report["config"]["facts" if sweep == "facts" else "distances"]]
        lines += [f"| recall EM by {title} | " + " | ".join(keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for name, m in models.items():
            cells = [m["results"][sweep].get(k, {}).get("exact_match") for k in keys]
            lines.append(f"| {name} (S={m['stm_slots']}) | "
                         + " | ".join("—" if c is None else f"{100 * c:.1f}%" for c in cells) + " |")
        counts = [max((m["results"][sweep].get(k, {}).get("count", 0) for m in models.values()), default=0)
                  for k in keys]
        lines += ["| (recall turns) | " + " | ".join(str(c) for c in counts) + " |", ""]
    return "\n".join(lines)


_STYLE = {"original": "black", "control": "tab:blue", "reinit": "tab:red", "inherit": "tab:green"}


def plot_capacity(report: dict[str, Any], path: str) -> None:
    """Recall exact match against facts held and against distance, one line per model, as PNG
    (written atomically; needs matplotlib from the ``bench`` extra)."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    from rxt_dist.eval.report import write_bytes_atomic

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, sweep, label in ((axes[0], "facts", "facts held"), (axes[1], "distance", "distance (turns)")):
        for name, m in report["models"].items():
            points = sorted((int(k), v["exact_match"]) for k, v in m["results"][sweep].items())
            color = next((c for key, c in _STYLE.items() if key in name), None)
            ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", color=color,
                    label=f"{name} (S={m['stm_slots']})")
        ax.set(xlabel=label, ylabel="recall exact match (%)", xscale="log", ylim=(0, 100))
        ax.set_xticks([int(k) for k in report["config"]["facts" if sweep == "facts" else "distances"]])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"recall vs facts held (≤ {report['config']['recalls']} recalls per conversation)")
    axes[1].set_title(f"recall vs distance ({report['config']['distance_facts']} facts held)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["CapacityConfig", "capacity_tables", "check_compatible", "evaluate_capacity", "evaluate_capacity_models",
           "plot_capacity", "probe_conversations"]
