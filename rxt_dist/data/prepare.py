"""The whole data preparation, as one call: generate, import, train the tokenizer, write shards.

``jobs/prepare_data.py`` parses its flags into a :class:`PrepareConfig` and calls
:func:`prepare_dataset`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from rxt_dist.data.conversation import Conversation, Turn
from rxt_dist.data.importers import FileImport, import_summary, read_jsonl, read_text_documents, read_yaml
from rxt_dist.data.lexicon import ATTRIBUTES, template_words
from rxt_dist.data.schema import Manifest
from rxt_dist.data.syllable_bpe import check_vocab_size, train_open_tokenizer
from rxt_dist.data.synthetic import SyntheticConfig, generate_splits, stream_seed
from rxt_dist.data.tokenizer import load_tokenizer, train_tokenizer
from rxt_dist.data.value_space import CODAS, ONSETS, OPEN_KINDS, VOWELS
from rxt_dist.data.writer import write_shards

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")

StageProgress = Callable[[str, int, int], None]
"""``progress(stage, n, total)``: ``n`` more items of ``stage``'s ``total`` are done. Stages come in
order: ``generate`` (conversations), ``tokenizer`` (1 step), ``write`` (rows of every split)."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``jobs/prepare_data.py`` does (see docs/data.md)."""

    out: str
    """Dataset folder: any fsspec URL (local path, ``s3://…``, ``memory://…``)."""
    conversations: int = 20_000
    """Synthetic conversations in all splits together (0 with imports = imported data only)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings (its ``seed`` is the corpus seed)."""
    vocab_size: int = 4096
    """BPE vocabulary size to train (the manifest records the size actually reached)."""
    valid_fraction: float = 0.05
    """Share of conversations in the ``valid`` split."""
    test_fraction: float = 0.05
    """Share of conversations in the ``test`` split."""
    shard_rows: int = 2048
    """Conversations per Parquet shard."""
    extra_text: tuple[str, ...] = ()
    """Plain-text files added to the ``text`` split and to tokenizer training."""
    import_jsonl: tuple[str, ...] = ()
    """JSONL dialogue files to import (split by the same fractions)."""
    import_yaml: tuple[str, ...] = ()
    """Chatbot-corpus YAML files to import (split by the same fractions)."""
    strict: bool = False
    """Stop at the first bad record of an imported file; by default bad records are skipped, one
    warning each, and counted in the manifest's ``sources.import``."""
    tokenizer: str | None = None
    """Use this tokenizer (a dataset/model folder or a tokenizer.json) instead of training one:
    for evaluation sets that must share ids with an already trained model."""
    overwrite: bool = False
    """Replace a dataset already at ``out``."""

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out='': give the dataset folder URL")
        if self.conversations < 0:
            raise ValueError(f"conversations={self.conversations}: must be ≥ 0")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name}={v}: must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"valid_fraction + test_fraction = {self.valid_fraction + self.test_fraction}: must be < 1 "
                "to leave a training split"
            )
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows={self.shard_rows}: must be ≥ 1")
        if self.conversations == 0 and not (self.import_jsonl or self.import_yaml):
            raise ValueError("conversations=0 and nothing to import: the dataset would be empty")
        if self.tokenizer is None and self.conversations and self.synthetic.value_space == "open":
            check_vocab_size(self.vocab_size, ONSETS, VOWELS)

    def split_counts(self, n: int) -> dict[str, int]:
        """How ``n`` items divide into train/valid/test."""
        valid = round(n * self.valid_fraction)
        test = round(n * self.test_fraction)
        return {"train": n - valid - test, "valid": valid, "test": test}


def _imported(cfg: PrepareConfig) -> tuple[list[Conversation], dict]:
    """The imported conversations, shuffled with the corpus seed, and the import summary."""
    files = [read_jsonl(p, strict=cfg.strict) for p in cfg.import_jsonl]
    files += [read_yaml(p, strict=cfg.strict) for p in cfg.import_yaml]
    convs = [c for f in files for c in f.conversations]
    ids: dict[str, int] = {}
    for c in convs:
        ids[c.conversation_id] = ids.get(c.conversation_id, 0) + 1
    repeated = [cid for cid, k in ids.items() if k > 1]
    if repeated:
        raise ValueError(f"imported conversation ids repeat across files: {repeated[:5]}; rename the files")
    random.Random(stream_seed(cfg.synthetic.seed, "imports")).shuffle(convs)
    summary = import_summary(files)
    if files:
        log.info("%s", _describe(summary, files))
    return convs, summary


def _describe(summary: dict, files: Sequence[FileImport]) -> str:
    skipped = sum(summary["skipped"].values())
    reasons = ", ".join(f"{k} {n}" for k, n in summary["skipped"].items())
    line = (f"imports: {summary['files']} files, {summary['records']} records read, {summary['imported']} "
            f"imported, {skipped} skipped" + (f" ({reasons})" if reasons else ""))  # fmt: skip
    if summary["unpaired_lines_dropped"]:
        line += f", {summary['unpaired_lines_dropped']} unpaired last lines dropped"
    with_skips = [f"{f.source} ({sum(f.skipped.values())})" for f in files if f.skipped]
    return line + (f"; skipped in {', '.join(with_skips)}" if with_skips else "")


def _split_imports(cfg: PrepareConfig, convs: Sequence[Conversation]) -> dict[str, list[Conversation]]:
    counts = cfg.split_counts(len(convs))
    out, start = {}, 0
    for split in SPLITS:
        out[split] = list(convs[start : start + counts[split]])
        start += counts[split]
    return out


def _tokenizer(cfg: PrepareConfig, train: Sequence[Conversation], docs: Sequence[tuple[str, str]]) -> Tokenizer:
    """The tokenizer named by ``cfg.tokenizer``, or one trained on the training split and the extra
    text: in the closed value space with the value vocabulary added (values become whole tokens),
    in the open space with the values taken out (values split into syllables and digits)."""
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    docs_text = [d for _, d in docs]
    if cfg.conversations and cfg.synthetic.value_space == "open":
        texts = [s for c in train for t in c.turns for s in _without_open_value(t)]
        return train_open_tokenizer(texts + docs_text, cfg.vocab_size, onsets=ONSETS, vowels=VOWELS, codas=CODAS,
                                    whole_words=template_words())  # fmt: skip
    texts = [s for c in train for t in c.turns for s in (t.query, t.answer)]
    lexicon = [v for vs in cfg.synthetic.values().values() for v in vs] if cfg.conversations else []
    return train_tokenizer(texts + docs_text, cfg.vocab_size, lexicon=lexicon)


def _without_open_value(t: Turn) -> tuple[str, str]:
    """The turn's query and answer without its value, if the open space drew it (one word)."""
    if t.value is None or t.fact is None or ATTRIBUTES[t.fact.split(".")[1]].values not in OPEN_KINDS:
        return t.query, t.answer
    return tuple(" ".join(w for w in s.split() if w != t.value) for s in (t.query, t.answer))


def prepare_dataset(cfg: PrepareConfig, progress: StageProgress | None = None) -> Manifest:
    """Generate and import conversations, train (or load) the tokenizer, write the dataset
    folder at ``cfg.out``; return its manifest."""

    def tick(stage: str, total: int):
        return None if progress is None else (lambda n: progress(stage, n, total))

    start = time.perf_counter()
    splits = generate_splits(
        cfg.synthetic, cfg.split_counts(cfg.conversations), progress=tick("generate", cfg.conversations)
    )
    imported, import_report = _imported(cfg)
    for split, convs in _split_imports(cfg, imported).items():
        splits[split] = splits[split] + convs
    docs = read_text_documents(cfg.extra_text)
    log.info("generated %d and imported %d conversations in %.1fs", cfg.conversations, len(imported),
             time.perf_counter() - start)  # fmt: skip
    start = time.perf_counter()
    tokenizer = _tokenizer(cfg, splits["train"], docs)
    log.info("tokenizer: %d tokens in %.1fs", tokenizer.get_vocab_size(), time.perf_counter() - start)
    if progress is not None:
        progress("tokenizer", 1, 1)

    generator = dict(cfg.synthetic.to_dict(), conversations=cfg.conversations) if cfg.conversations else None
    sources = {
        "synthetic": cfg.conversations,
        "imported": len(imported),
        "jsonl": list(cfg.import_jsonl),
        "yaml": list(cfg.import_yaml),
        "extra_text": list(cfg.extra_text),
        "import": import_report,
    }
    return write_shards(
        cfg.out,
        splits,
        tokenizer,
        extra_text=docs,
        shard_rows=cfg.shard_rows,
        generator=generator,
        sources=sources,
        overwrite=cfg.overwrite,
        progress=tick("write", sum(map(len, splits.values())) + len(docs)),
    )

