"""Dialogue data: synthetic conversations that need memory, imports, tokenizer, Arrow shards.

Typical use::

    from rxt_dist.data import iter_conversations, ray_dataset, read_manifest, load_tokenizer

    manifest = read_manifest("data/dialogue")          # vocab size, counts, settings
    ds = ray_dataset("data/dialogue", "train")          # Ray Dataset, one conversation per row
    for conv in iter_conversations("data/dialogue", "valid"):  # single process, for evaluation
        ...

Shard schema and manifest: docs/data.md.
"""

from rxt_dist.data.conversation import (
    FACT,
    FILLER,
    RECALL,
    TURN_KINDS,
    UNKNOWN,
    UPDATE,
    Conversation,
    RecallInfo,
    Turn,
)
from rxt_dist.data.epochs import TrainingRows, read_batches, training_rows, worker_rows
from rxt_dist.data.importers import (
    DialogueImportError,
    FileImport,
    SkipReason,
    import_jsonl,
    import_summary,
    import_yaml,
    read_jsonl,
    read_text_documents,
    read_yaml,
)
from rxt_dist.data.prepare import PrepareConfig, prepare_dataset
from rxt_dist.data.reader import (
    ShardError,
    iter_conversations,
    iter_text,
    ray_dataset,
    ray_text_dataset,
)
from rxt_dist.data.schema import (
    CONVERSATION_SCHEMA,
    SCHEMA_VERSION,
    TEXT_SCHEMA,
    Manifest,
    ShardFile,
    SplitInfo,
    read_manifest,
)
from rxt_dist.data.syllable_bpe import train_open_tokenizer
from rxt_dist.data.synthetic import (
    SyntheticConfig,
    generate_capacity_conversations,
    generate_conversations,
    generate_splits,
)
from rxt_dist.data.tokenizer import (
    TextCodec,
    load_tokenizer,
    save_tokenizer,
    tokenize_conversations,
    train_tokenizer,
)
from rxt_dist.data.value_space import in_open_space, is_heldout, stated_values
from rxt_dist.data.writer import index_shards, write_shards

__all__ = [
    "CONVERSATION_SCHEMA",
    "FACT",
    "FILLER",
    "RECALL",
    "SCHEMA_VERSION",
    "TEXT_SCHEMA",
    "TURN_KINDS",
    "UNKNOWN",
    "UPDATE",
    "Conversation",
    "DialogueImportError",
    "FileImport",
    "Manifest",
    "PrepareConfig",
    "RecallInfo",
    "ShardError",
    "ShardFile",
    "SkipReason",
    "SplitInfo",
    "SyntheticConfig",
    "TextCodec",
    "TrainingRows",
    "Turn",
    "generate_capacity_conversations",
    "generate_conversations",
    "generate_splits",
    "in_open_space",
    "is_heldout",
    "import_jsonl",
    "import_summary",
    "import_yaml",
    "index_shards",
    "iter_conversations",
    "iter_text",
    "load_tokenizer",
    "prepare_dataset",
    "ray_dataset",
    "ray_text_dataset",
    "read_batches",
    "read_jsonl",
    "read_manifest",
    "read_text_documents",
    "read_yaml",
    "save_tokenizer",
    "stated_values",
    "tokenize_conversations",
    "training_rows",
    "worker_rows",
    "train_open_tokenizer",
    "train_tokenizer",
    "write_shards",
]
