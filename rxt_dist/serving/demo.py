"""A stand-in model directory for trying the server before any training has run.

It holds the ``debug`` preset with **random weights** and a byte-level BPE tokenizer trained
on a few sentences: the server streams, keeps sessions and updates memory exactly as with a
trained model, but the answers are noise. The serving app builds it only when it is given
no ``model_dir`` and says so in its log.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import fsspec
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rxt_dist.model import RxTModel, from_name, load_config, save_model_dir
from rxt_dist.tokens import NUM_SPECIAL, SPECIAL_TOKENS, UNK_ID

logger = logging.getLogger(__name__)

DEMO_TEXT = (
    "Hello! My name is Ada and I live in a small house by the river.",
    "What is your favourite colour? I like green, and my sister likes blue.",
    "The cat sat on the warm mat while the dog slept near the door.",
    "Remember that my phone number is 555 0142 and my city is Lisbon.",
    "Where did we meet? We met at the train station on a rainy Tuesday.",
    "I changed my mind: my favourite colour is now orange.",
    "Tell me a short story about a fox who learns to count to ten.",
    "Thank you for the help today, see you tomorrow morning.",
)


def train_small_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE with the special tokens at ids 0..6 and at most ``vocab_size`` tokens
    (every byte is in the base alphabet, so any text encodes)."""
    if vocab_size < NUM_SPECIAL + 256:
        raise ValueError(f"vocab_size={vocab_size}: must be ≥ {NUM_SPECIAL + 256} "
                         "(the special tokens plus all 256 bytes)")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def write_demo_model_dir(url: str, seed: int = 0) -> str:
    """Write the random ``debug`` model and its tokenizer to ``url`` unless a model directory
    is already there; returns ``url``.

    The weights use ``init_std=0.5``: at the training init (0.02) a random model answers
    every query with one repeated token, which hides whether streaming and memory work.
    """
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(f"{root.rstrip('/')}/config.json"):
        load_config(url)  # a directory from an earlier run: check it is still readable
        return url
    cfg = dataclasses.replace(from_name("debug"), init_std=0.5)
    torch.manual_seed(seed)
    model = RxTModel(cfg)
    tok = train_small_tokenizer(DEMO_TEXT * 4, vocab_size=cfg.vocab_size)
    save_model_dir(model, url, tokenizer_json=tok.to_str())
    logger.info("wrote a demo model directory (random debug weights) to %s", url)
    return url
