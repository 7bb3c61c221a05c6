"""The byte-level BPE tokenizer (HF ``tokenizers``) and a small codec around it.

The special tokens of :mod:`rxt_dist.tokens` take ids 0..6 in every tokenizer trained here.
Text is pre-tokenized with a prefix space, so a word is the same token at the start of a text
and after a space (``"rex"`` and ``"... called rex"`` both give ``Ġrex``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rxt_dist.data.conversation import Conversation, Turn
from rxt_dist.data.storage import display, join, resolve, write_bytes_atomic
from rxt_dist.tokens import NUM_SPECIAL, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    *,
    lexicon: Sequence[str] = (),
    lexicon_repeats: int = 20,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with the special tokens at ids 0..6.

    Repeated texts count once (a template corpus repeats its sentences thousands of times; this
    makes training ~20× faster without changing which words become tokens). ``lexicon`` words
    (the synthetic value vocabulary) are added ``lexicon_repeats`` times each so they become
    whole tokens even when a small corpus mentions them rarely. The result may hold fewer than
    ``vocab_size`` tokens when the corpus runs out of pairs to merge.
    """
    if vocab_size < NUM_SPECIAL + 256:
        raise ValueError(f"vocab_size={vocab_size}: must be ≥ {NUM_SPECIAL + 256} (special tokens + 256 bytes)")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[1]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    corpus = list(dict.fromkeys(texts))
    for _ in range(lexicon_repeats):
        corpus.extend(lexicon)
    tok.train_from_iterator(corpus, trainer, length=len(corpus))
    check_special_tokens(tok, "trained tokenizer")
    return tok


def check_special_tokens(tok: Tokenizer, where: str) -> None:
    """Raise ValueError unless the special tokens have ids 0..6 in :data:`SPECIAL_TOKENS` order."""
    for i, name in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(name)
        if got != i:
            raise ValueError(f"{where}: special token {name} has id {got}, expected {i} (see rxt_dist/tokens.py)")


def tokenizer_json(tok: Tokenizer) -> str:
    """The canonical serialisation (what is saved and hashed)."""
    return tok.to_str()


def tokenizer_sha256(tok: Tokenizer) -> str:
    """sha256 of :func:`tokenizer_json`: the manifest records it so shards and tokenizer match."""
    return hashlib.sha256(tokenizer_json(tok).encode()).hexdigest()


def save_tokenizer(tok: Tokenizer, url: str) -> str:
    """Write ``tokenizer.json`` atomically to ``url`` (a folder, or a path ending in .json);
    return the sha256 of what was written."""
    fs, path = resolve(url)
    if not path.endswith(".json"):
        fs.makedirs(path, exist_ok=True)
        path = join(path, TOKENIZER_FILE)
    data = tokenizer_json(tok).encode()
    write_bytes_atomic(fs, path, data)
    return hashlib.sha256(data).hexdigest()


def load_tokenizer(url_or_path: str) -> Tokenizer:
    """Load ``tokenizer.json`` from a dataset or model folder, or from the file itself, over any
    fsspec URL; checks the special-token ids."""
    fs, path = resolve(url_or_path)
    if not path.endswith(".json"):
        path = join(path, TOKENIZER_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{display(fs, path)}: no tokenizer file (write one with prepare_data.py)")
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        tok = Tokenizer.from_str(data.decode())
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{display(fs, path)}: not a tokenizers JSON file ({e})") from e
    check_special_tokens(tok, display(fs, path))
    return tok


class TextCodec:
    """Text ↔ ids without special tokens: what the shards store and the model consumes.

    Special-token strings inside text (a user typing ``"[Q]"``) are encoded as plain text, so
    a query can never inject a control token.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        check_special_tokens(tokenizer, "TextCodec")
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # own copy: the flag below is not saved
        self.tokenizer.encode_special_tokens = True

    @classmethod
    def load(cls, url_or_path: str) -> TextCodec:
        """A codec over :func:`load_tokenizer` (``url_or_path``)."""
        return cls(load_tokenizer(url_or_path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` alone (no ``[BOS]``/``[Q]``/…)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts (parallel in Rust)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped, without the prefix space the encoder adds."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text[1:] if text.startswith(" ") else text

    def token(self, i: int) -> str | None:
        """The token string of id ``i`` (for debugging)."""
        return self.tokenizer.id_to_token(i)


def find_last(seq: Sequence[int], sub: Sequence[int]) -> int:
    """Start of the last occurrence of ``sub`` in ``seq``, or -1."""
    n = len(sub)
    for start in range(len(seq) - n, -1, -1):
        if seq[start : start + n] == sub:
            return start
    return -1


def encode_texts(codec: TextCodec, texts: Iterable[str]) -> dict[str, list[int]]:
    """ids of every distinct text (a corpus of templates repeats texts a lot: encode each once)."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, codec.encode_batch(unique)))


def tokenize_conversations(conversations: Sequence[Conversation], codec: TextCodec) -> list[Conversation]:
    """Copies of ``conversations`` with query/answer ids and recall gold ids filled by ``codec``.

    ``gold_ids`` are the value's tokens as they occur in the answer (the last occurrence), and
    ``gold_start`` their position in ``answer_ids``.
    """
    ids = encode_texts(codec, _texts(conversations))
    return [
        Conversation(c.conversation_id, [_tokenized_turn(t, ids) for t in c.turns]) for c in conversations
    ]


def _texts(conversations: Sequence[Conversation]) -> Iterable[str]:
    for c in conversations:
        for t in c.turns:
            yield t.query
            yield t.answer
            if t.recall is not None:
                yield t.recall.gold


def _tokenized_turn(t: Turn, ids: dict[str, list[int]]) -> Turn:
    answer_ids = ids[t.answer]
    recall = t.recall
    if recall is not None:
        gold_ids = ids[recall.gold]
        recall = dataclasses.replace(recall, gold_ids=gold_ids, gold_start=find_last(answer_ids, gold_ids))
    return dataclasses.replace(t, query_ids=ids[t.query], answer_ids=answer_ids, recall=recall)
