"""Quality evaluation on held-out conversations: what the memory adds, turn by turn.

Three systems answer the same conversations (the ``test`` split of a dataset by default):

``rxt``
    The RxT model as a user meets it: each turn is answered (greedy) from the STM, then the
    interaction **with the model's own answer** is consolidated into it. Teacher-forced
    scores (PPL, value accuracy) are taken from that same STM.
``rxt_gold``
    The same model with the **gold** answer consolidated after each turn (as in training: it
    measures the memory apart from the compounding of the model's own earlier mistakes).
``stateless_full``
    The stateless baseline reading the whole history (every earlier interaction, gold
    answers) before each turn.
``stateless_none``
    The same baseline reading only the current query: the floor, what a model without any
    memory gets right.

Metrics (definitions in docs/evaluation.md):

* per turn index: answer perplexity and token accuracy, teacher-forced, over the answer
  tokens and the closing ``[EOS]`` (the training targets);
* on recall turns: **exact match** of the greedy answer (:func:`recall_exact_match`), and the
  teacher-forced value accuracy (every gold value token is the argmax at its position),
  each broken down by distance (turns since the fact was stated), facts held, and both.
  ``recall`` counts values never seen in training (what a user's new facts are), ``recall_seen``
  values that occurred in the training split; a closed-vocabulary dataset has only the latter;
* for RxT, memory health (:mod:`rxt_dist.memory.health`): slot cosine and effective rank of
  the STM after every update, and the gate's openness.

Everything is batched over conversations: the turns of a batch advance together, RxT's STM
rows and the baseline's histories side by side.

Answers are judged in :mod:`rxt_dist.eval.quality_scoring`, the systems run in
:mod:`rxt_dist.eval.quality_systems`, their tallies and summaries live in
:mod:`rxt_dist.eval.quality_stats` and the report in :mod:`rxt_dist.eval.quality_report`;
this module holds the config and the entry points.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rxt_dist.eval.quality_report import QualityReport
from rxt_dist.eval.quality_scoring import (
    EXACT_MATCH_DEFINITION,
    answer_positions,
    recall_exact_match,
    token_scores,
    words,
)
from rxt_dist.eval.quality_stats import RecallRecord, SystemQuality, TokenTally
from rxt_dist.eval.quality_systems import (
    evaluate_full_history_batch,
    evaluate_no_history_batch,
    evaluate_rxt_batch,
)
from rxt_dist.eval.report import machine_info
from rxt_dist.model import RxTModel, StatelessLM, load_model_dir
from rxt_dist.model.io import load_tokenizer_json

__all__ = [
    "DESCRIPTIONS", "EXACT_MATCH_DEFINITION", "QUALITY_SYSTEMS", "QualityConfig", "QualityReport",
    "RecallRecord", "SystemQuality", "TokenTally", "answer_positions", "evaluate_conversations",
    "evaluate_full_history_batch", "evaluate_models", "evaluate_no_history_batch",
    "evaluate_rxt_batch", "load_conversations", "recall_exact_match", "token_scores", "words",
]

log = logging.getLogger(__name__)

QUALITY_SYSTEMS: tuple[str, ...] = ("rxt", "rxt_gold", "stateless_full", "stateless_none")
DESCRIPTIONS = {
    "rxt": "RxT, STM carried through the conversation, consolidating its own answers",
    "rxt_gold": "RxT, STM carried through the conversation, consolidating the gold answers",
    "stateless_full": "stateless baseline, full history (gold answers)",
    "stateless_none": "stateless baseline, current query only (the floor)",
}


@dataclass
class QualityConfig:
    """What the quality evaluation reads and how it generates."""

    split: str = "test"
    """Dataset split of held-out conversations."""
    max_conversations: int | None = None
    """Evaluate only the first N conversations of the split (``None``: all)."""
    batch_size: int = 16
    """Conversations advanced together."""
    max_new_tokens: int = 32
    """Greedy answer limit on recall turns (answers stop at ``[EOS]`` before that)."""
    systems: tuple[str, ...] = QUALITY_SYSTEMS
    """Which of :data:`QUALITY_SYSTEMS` to evaluate."""
    seed: int = 0
    """Seed of each conversation's initial STM (conversation i uses ``seed + i``)."""
    threads: int | None = None
    """``torch.set_num_threads`` during the run (``None``: leave it); with ``workers`` > 1, the
    threads of all worker processes together (each gets ``threads // workers``, at least one)."""
    workers: int = 1
    """Processes that share the conversations (:func:`evaluate_models`), each playing a
    contiguous run of whole batches; the merged result is the one a single process with each
    worker's threads gives. Small models use a core better this way than with threads."""
    examples: int = 5
    """Recall answers kept verbatim per system in the report (failures first)."""

    def __post_init__(self) -> None:
        self.systems = tuple(self.systems)
        if self.max_conversations is not None and self.max_conversations < 1:
            raise ValueError(f"max_conversations={self.max_conversations}: must be ≥ 1 (or None for all)")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be ≥ 1")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be ≥ 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be ≥ 1 (or None to leave torch's setting)")
        if self.examples < 0:
            raise ValueError(f"examples={self.examples}: must be ≥ 0")
        unknown = [s for s in self.systems if s not in QUALITY_SYSTEMS]
        if unknown or not self.systems:
            raise ValueError(f"systems={list(self.systems)}: choose one or more of {list(QUALITY_SYSTEMS)}")


# -- entry points ---------------------------------------------------------------------------

def load_conversations(data_url: str, split: str, max_conversations: int | None) -> list:
    """The first ``max_conversations`` conversations of ``split`` (all when None)."""
    from rxt_dist.data import iter_conversations

    convs = []
    for conv in iter_conversations(data_url, split):
        if max_conversations is not None and len(convs) >= max_conversations:
            break
        convs.append(conv)
    if not convs:
        raise ValueError(f"{data_url}: split {split!r} holds no conversations")
    return convs


def _load_model(url: str, kind: type, role: str, data_vocab: int, data_tokenizer) -> RxTModel | StatelessLM:
    model = load_model_dir(url).eval()
    if not isinstance(model, kind):
        raise ValueError(f"{role}={url!r}: holds a {model.cfg.model_type} model; expected "
                         f"{'an rxt' if kind is RxTModel else 'a stateless'} model")
    if model.cfg.vocab_size < data_vocab:
        raise ValueError(f"{role}={url!r}: vocab_size={model.cfg.vocab_size} in config.json is smaller "
                         f"than the dataset's vocabulary of {data_vocab} tokens")
    text = load_tokenizer_json(url)
    if text is not None:
        from tokenizers import Tokenizer

        if Tokenizer.from_str(text).get_vocab() != data_tokenizer.get_vocab():
            raise ValueError(f"{url.rstrip('/')}/tokenizer.json differs from the dataset's tokenizer: "
                             "the model was trained on other token ids")
    return model


def evaluate_conversations(
    conversations: Sequence,
    codec,
    rxt: RxTModel | None = None,
    baseline: StatelessLM | None = None,
    cfg: QualityConfig | None = None,
    progress: bool = False,
    first_index: int = 0,
) -> dict[str, SystemQuality]:
    """Evaluate in-memory models on ``conversations`` (``codec`` decodes answers to text:
    :class:`rxt_dist.data.TextCodec`). Systems whose model is None are skipped.
    ``first_index``: the split index of ``conversations[0]`` (it seeds their initial STMs)."""
    from tqdm.auto import tqdm

    cfg = cfg or QualityConfig()
    runners = {
        "rxt": (rxt, lambda b, s, i: evaluate_rxt_batch(rxt, b, codec, s, cfg, i)),
        "rxt_gold": (rxt, lambda b, s, i: evaluate_rxt_batch(rxt, b, codec, s, cfg, i, own_answers=False)),
        "stateless_full": (baseline, lambda b, s, i: evaluate_full_history_batch(baseline, b, codec, s, cfg)),
        "stateless_none": (baseline, lambda b, s, i: evaluate_no_history_batch(baseline, b, codec, s, cfg)),
    }
    chosen = [n for n in cfg.systems if runners[n][0] is not None]
    results = {n: SystemQuality(n, DESCRIPTIONS[n]) for n in chosen}
    with tqdm(total=len(chosen) * len(conversations), desc="quality", unit="conv", disable=not progress) as bar:
        for name in chosen:
            bar.set_postfix_str(name)
            for start in range(0, len(conversations), cfg.batch_size):
                batch = conversations[start:start + cfg.batch_size]
                runners[name][1](batch, results[name], first_index + start)
                bar.update(len(batch))
    return results


def evaluate_models(
    data_url: str,
    rxt_dir: str | None,
    baseline_dir: str | None,
    cfg: QualityConfig | None = None,
    progress: bool = False,
    command: str | None = None,
) -> QualityReport:
    """Evaluate the RxT model directory and/or the stateless baseline directory on the
    held-out split of the dataset at ``data_url``; see the module docstring."""
    cfg = cfg or QualityConfig()
    if rxt_dir is None and baseline_dir is None:
        raise ValueError("rxt_dir=None and baseline_dir=None: give at least one model directory")
    convs = load_conversations(data_url, cfg.split, cfg.max_conversations)
    start = time.perf_counter()
    if cfg.workers == 1:
        systems = _evaluate_share(data_url, rxt_dir, baseline_dir, cfg, convs, 0, progress)
    else:
        systems = _evaluate_in_workers(data_url, rxt_dir, baseline_dir, cfg, len(convs))
    report = QualityReport(
        data_url=data_url, split=cfg.split, conversations=len(convs),
        turns=sum(len(c.turns) for c in convs),
        recall_turns=sum(len(c.recall_turns) for c in convs),
        models={"rxt": rxt_dir, "baseline": baseline_dir}, config=cfg, systems=systems,
        elapsed_s=time.perf_counter() - start, machine=machine_info(), command=command,
    )
    for name, s in systems.items():
        log.info("%s: recall exact match %s over %d recall turns", name, s.recall_exact_match, len(s.recalls))
    return report


def _evaluate_share(data_url: str, rxt_dir: str | None, baseline_dir: str | None, cfg: QualityConfig,
                    convs: Sequence | None, first_index: int, progress: bool = False,
                    count: int | None = None) -> dict[str, SystemQuality]:
    """Load the models and play ``convs`` (None: the ``count`` conversations of the split from
    ``first_index`` on, read here) with ``cfg.threads`` threads."""
    from rxt_dist.data import TextCodec, load_tokenizer, read_manifest

    manifest = read_manifest(data_url)
    tokenizer = load_tokenizer(data_url)
    rxt = _load_model(rxt_dir, RxTModel, "rxt_dir", manifest.vocab_size, tokenizer) if rxt_dir else None
    baseline = (_load_model(baseline_dir, StatelessLM, "baseline_dir", manifest.vocab_size, tokenizer)
                if baseline_dir else None)
    if convs is None:
        convs = load_conversations(data_url, cfg.split, cfg.max_conversations)[first_index:first_index + count]
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return evaluate_conversations(convs, TextCodec(tokenizer), rxt, baseline, cfg, progress, first_index)
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate_in_workers(data_url: str, rxt_dir: str | None, baseline_dir: str | None, cfg: QualityConfig,
                         total: int) -> dict[str, SystemQuality]:
    """Split the split's first ``total`` conversations into ``cfg.workers`` runs of whole
    batches, play each in its own process (spawned: no state of this one leaks in) and merge
    the results in conversation order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    batches = -(-total // cfg.batch_size)
    per_worker = -(-batches // cfg.workers) * cfg.batch_size
    shares = [(first, min(per_worker, total - first)) for first in range(0, total, per_worker)]
    threads = max(1, (cfg.threads or torch.get_num_threads()) // cfg.workers)
    worker_cfg = dataclasses.replace(cfg, workers=1, threads=threads)
    log.info("quality: %d conversations in %d processes of %d thread(s)", total, len(shares), threads)
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_share, data_url, rxt_dir, baseline_dir, worker_cfg, None, first,
                               False, count) for first, count in shares]
        parts = [f.result() for f in futures]
    merged = parts[0]
    for part in parts[1:]:
        for name, system in part.items():
            merged[name].merge(system)
    return merged
