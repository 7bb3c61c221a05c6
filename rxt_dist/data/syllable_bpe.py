"""The tokenizer of the open value space: values split into syllables and digits, never whole.

A BPE trained on texts full of values learns the frequent ones as whole tokens, and a model then
memorises tokens instead of learning to copy; a held-out value would also split differently from
a training one. So the BPE is trained on the texts with the values taken out, and its merges are
rebuilt in four ranked blocks (BPE applies the lowest-ranked merge present first):

1. **syllables and digits**: ``Ġ+b``, ``Ġb+a``, ``b+a`` for every onset and vowel, ``Ġ+4`` for every
   digit. They come first, so every open value is cut into its syllables (``Ġba`` ``ko`` ``r``) and
   every number into its digits (``Ġ4`` ``1`` ``7``) before anything else can apply.
2. **codas** (when the vocabulary has room): ``ko+r`` for every syllable and coda, so a word of k
   syllables is exactly k tokens.
3. **the trained merges**, less two kinds: a merge of two value pieces (syllables, codas), which
   could join the syllables of a value, and a merge that makes a token of two or more digits.
4. **whole words**: a chain ``Ġna+me``, … for each of ``whole_words`` (the template words) that the
   blocks above left in pieces, most frequent first. A chain starts at a word's first piece, so it
   can only act on a value that begins like a template word; the open space leaves those out
   (:func:`rxt_dist.data.value_space.is_open_word`).

Merges that never act on the training texts are dropped. When the result is larger than
``vocab_size`` or leaves a template word in pieces, block 2 goes; when it still does, the trained
merges are fewer (the BPE is trained to a smaller size, the one whose result encodes the training
texts in the fewest tokens) and the rarest words' chains are cut.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, pre_tokenizers

from rxt_dist.data.tokenizer import check_special_tokens, train_tokenizer
from rxt_dist.tokens import NUM_SPECIAL

SPACE = "Ġ"
"""The byte-level BPE's form of the prefix space."""
DIGITS = tuple("0123456789")

Merge = tuple[str, str]


def train_open_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    onsets: Sequence[str],
    vowels: Sequence[str],
    codas: Sequence[str],
    whole_words: Iterable[str] = (),
    min_frequency: int = 2,
) -> Tokenizer:
    """A byte-level BPE for ``texts`` (values taken out) whose values split at syllables
    (``onsets`` × ``vowels``, final ``codas``) and digits; see the module docstring.

    The result has at most ``vocab_size`` tokens, the special tokens at ids 0..6.
    """
    check_vocab_size(vocab_size, onsets, vowels)
    texts = list(dict.fromkeys(texts))
    words = _words_by_frequency(texts, set(whole_words))
    syllables = _syllable_merges(onsets, vowels)
    codas_merges = [(o + v, c) for o in onsets for v in vowels for c in codas]
    # what an open value consists of after blocks 1-2: no merge may join two of these
    pieces = {SPACE + o + v for o in onsets for v in vowels} | {o + v for o in onsets for v in vowels} | set(codas)
    with_codas = (syllables + codas_merges, pieces | {a + b for a, b in codas_merges})

    def build(trained_size: int, fixed: list[Merge], value_pieces: set[str]) -> Tokenizer:
        trained = json.loads(train_tokenizer(texts, trained_size, min_frequency=min_frequency).to_str())
        made = {a + b for a, b in trained["model"]["merges"]}
        base = [t for t, _ in sorted(trained["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in made]
        merges = _rebuild(trained, base, fixed, value_pieces, words, texts)
        return _tokenizer_from(trained, base, merges[: vocab_size - len(base)])  # the rarest words' chains go first

    for fixed, value_pieces in (with_codas, (syllables, pieces)):
        tok = build(vocab_size, fixed, value_pieces)
        if len(tok.get_vocab()) <= vocab_size and all(len(tok.encode(w).ids) == 1 for w in words):
            break
    else:
        # Too small for every template word: fewer trained merges leave room for whole-word
        # chains. Keep the size that encodes the training texts in the fewest tokens.
        sizes = range(NUM_SPECIAL + 256, vocab_size + 1, max(1, (vocab_size - NUM_SPECIAL - 256) // 6))
        candidates = [build(size, syllables, pieces) for size in sizes]
        tok = min(candidates, key=lambda t: sum(len(e.ids) for e in t.encode_batch(texts, add_special_tokens=False)))
    check_special_tokens(tok, "open-space tokenizer")
    return tok


def check_vocab_size(vocab_size: int, onsets: Sequence[str], vowels: Sequence[str]) -> None:
    """Raise ValueError unless ``vocab_size`` holds the special tokens, the bytes and block 1."""
    syllables = len(_syllable_merges(onsets, vowels))
    minimum = NUM_SPECIAL + 256 + syllables
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size}: the open value space needs ≥ {minimum} (special tokens, 256 bytes and "
            f"{syllables} syllable and digit tokens); raise vocab_size or use value_space='closed'"
        )


def _syllable_merges(onsets: Sequence[str], vowels: Sequence[str]) -> list[Merge]:
    """Block 1: word-initial syllables (``Ġ+b``, ``Ġb+a``), inner ones (``b+a``), digits (``Ġ+4``)."""
    merges = [(SPACE, o) for o in onsets]
    merges += [(SPACE + o, v) for o in onsets for v in vowels]
    merges += [(o, v) for o in onsets for v in vowels]
    merges += [(SPACE, d) for d in DIGITS]
    return merges


def _words_by_frequency(texts: Sequence[str], whole_words: set[str]) -> list[str]:
    """Words of ``whole_words`` that occur in ``texts``, most frequent first, each one pre-token."""
    counts = collections.Counter(w for t in texts for w in t.split() if w in whole_words)
    pre = pre_tokenizers.ByteLevel(add_prefix_space=True)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return [w for w in words if len(pre.pre_tokenize_str(w)) == 1]


def _rebuild(
    trained: dict, base: list[str], fixed: list[Merge], pieces: set[str], words: list[str], texts: list[str]
) -> list[Merge]:
    """Blocks 1–4 in rank order, without merges that never act on ``texts``."""
    merges = list(fixed)
    have = set(base) | {a + b for a, b in fixed}
    for a, b in trained["model"]["merges"]:
        joined = a + b
        if joined in have or a not in have or b not in have:
            continue
        if (a in pieces and b in pieces) or sum(ch in DIGITS for ch in joined) > 1:
            continue
        merges.append((a, b))
        have.add(joined)
    chained = _chains(merges, words)
    used = _used_tokens(_tokenizer_from(trained, base, merges + chained), texts + words)
    tail = [m for m in merges[len(fixed) :] + chained if m[0] + m[1] in used]
    return merges[: len(fixed)] + tail


def _chains(merges: list[Merge], words: list[str]) -> list[Merge]:
    """Block 4: merges that join each word's pieces left to right into one token."""
    ranks = {m: i for i, m in enumerate(merges)}
    chained: list[Merge] = []
    for w in words:
        parts = _bpe(list(SPACE + w), ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in ranks:
                ranks[pair] = len(ranks)
                chained.append(pair)
            parts[:2] = [parts[0] + parts[1]]
    return chained


def _bpe(symbols: list[str], ranks: dict[Merge, int]) -> list[str]:
    """One pre-token through the merges, lowest rank first (leftmost on a tie), as HF BPE does."""
    while len(symbols) > 1:
        pairs = [ranks.get(p, len(ranks)) for p in zip(symbols, symbols[1:])]
        best = min(range(len(pairs)), key=pairs.__getitem__)
        if pairs[best] == len(ranks):
            break
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols


def _used_tokens(tok: Tokenizer, texts: list[str]) -> set[str]:
    """Every token of the encoded ``texts``, with every token a merge needs on the way to it."""
    made = collections.defaultdict(list)
    for a, b in json.loads(tok.to_str())["model"]["merges"]:
        made[a + b] += (a, b)  # a chain may make a token the trained merges make too
    todo = {t for enc in tok.encode_batch(texts, add_special_tokens=False) for t in enc.tokens}
    used: set[str] = set()
    while todo:
        t = todo.pop()
        if t not in used:
            used.add(t)
            todo.update(made.get(t, ()))
    return used


def _tokenizer_from(data: dict, base: list[str], merges: list[Merge]) -> Tokenizer:
    """``data`` (a tokenizer's JSON) with ``base`` tokens, then one token per merge, in id order."""
    vocab = {t: i for i, t in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    data = dict(data, model=dict(data["model"], vocab=vocab, merges=[list(m) for m in merges]))
    return Tokenizer.from_str(json.dumps(data))
