"""The open-space tokenizer: values split into syllables and digits, the same way in every split
and every position; template words stay whole."""

from __future__ import annotations

import re

import pytest

from rxt_dist.data import (
    FACT,
    UPDATE,
    PrepareConfig,
    SyntheticConfig,
    TextCodec,
    iter_conversations,
    load_tokenizer,
    prepare_dataset,
    train_open_tokenizer,
)
from rxt_dist.data.lexicon import template_words
from rxt_dist.data.storage import resolve
from rxt_dist.data.value_space import CODAS, ONSETS, VOWELS, is_open_word

SPLITS = ("train", "valid", "test")
_SYLLABLE = re.compile(r"[bdfgklmnprstvz][aeiou]")


def _dataset(url: str, vocab_size: int, conversations: int) -> str:
    cfg = PrepareConfig(out=url, conversations=conversations, synthetic=SyntheticConfig(seed=5),
                        vocab_size=vocab_size, valid_fraction=0.1, test_fraction=0.1, overwrite=True)  # fmt: skip
    prepare_dataset(cfg)
    return url


@pytest.fixture(scope="module", params=[4096, 1024, 512])
def dataset(request):
    """A written open-space dataset (memory://) at each vocabulary size; 4096 has room for codas."""
    url = _dataset(f"memory://rxt-open-tokenizer-{request.param}", request.param, 800 if request.param == 4096 else 200)
    yield url, request.param
    fs, path = resolve(url)
    fs.rm(path, recursive=True)


def _convs(url: str):
    return {s: list(iter_conversations(url, s)) for s in SPLITS}


def _pieces(codec: TextCodec, value: str) -> list[str]:
    return [codec.token(i) for i in codec.encode(value)]


def _expected_pieces(word: str, codas_merged: bool) -> list[str]:
    """The syllables of ``word``; the first with the prefix space, a final coda on its own or not."""
    syllables = _SYLLABLE.findall(word)
    coda = word[len("".join(syllables)) :]
    pieces = ["Ġ" + syllables[0], *syllables[1:]]
    if coda and codas_merged:
        pieces[-1] += coda
    elif coda:
        pieces.append(coda)
    return pieces


def test_open_values_split_into_syllables_and_digits(dataset):
    url, vocab_size = dataset
    codec = TextCodec(load_tokenizer(url))
    codas_merged = codec.tokenizer.token_to_id("kor") is not None
    assert codas_merged == (vocab_size == 4096)  # smaller vocabularies leave codas single letters
    checked = 0
    for split, convs in _convs(url).items():
        for v in {t.value for c in convs for t in c.turns if t.kind in (FACT, UPDATE)}:
            pieces = _pieces(codec, v)
            if v.isdigit():
                assert pieces == ["Ġ" + v[0], *v[1:]], (split, v)  # k digits are k tokens
            else:
                assert pieces == _expected_pieces(v, codas_merged), (split, v)
            assert len(pieces) >= 2
            checked += 1
    assert checked > 500


def test_a_value_has_the_same_ids_in_query_answer_and_recall(dataset):
    url, _ = dataset
    codec = TextCodec(load_tokenizer(url))

    def holds(ids, sub):
        return any(ids[i : i + len(sub)] == sub for i in range(len(ids) - len(sub) + 1))

    for convs in _convs(url).values():
        for c in convs:
            for t in c.turns:
                if t.kind in (FACT, UPDATE):
                    ids = codec.encode(t.value)
                    assert holds(t.query_ids, ids) and holds(t.answer_ids, ids), t
                if t.recall is not None:
                    assert t.recall.gold_ids == codec.encode(t.recall.gold)


def test_no_token_spells_an_open_value_or_two_digits(dataset):
    url, vocab_size = dataset
    vocab = load_tokenizer(url).get_vocab()
    assert len(vocab) <= vocab_size
    assert not [t for t in vocab if t.startswith("Ġ") and is_open_word(t[1:])]
    assert not [t for t in vocab if sum(ch.isdigit() for ch in t) > 1]


def test_template_words_keep_whole_word_tokens():
    url = _dataset("memory://rxt-open-tokenizer-words", 4096, 300)
    codec = TextCodec(load_tokenizer(url))
    words = {w for c in iter_conversations(url, "train") for t in c.turns for w in f"{t.query} {t.answer}".split()}
    template = sorted(words & template_words())
    assert len(template) > 100
    assert [w for w in template if len(codec.encode(w)) != 1] == []
    resolve(url)[0].rm(resolve(url)[1], recursive=True)


def test_open_tokenizer_needs_room_for_the_syllables():
    with pytest.raises(ValueError, match="vocab_size=400: the open value space needs ≥ 427 .* raise vocab_size"):
        train_open_tokenizer(["my pet is called ."], 400, onsets=ONSETS, vowels=VOWELS, codas=CODAS)


def test_values_in_the_training_text_do_not_become_tokens():
    """Extra text (or imports) may spell open values and years many times over: the BPE still splits
    them, because merges of two syllables or two digits are never kept."""
    texts = ["my pet is called .", "your pet is called ."] * 5 + ["bakor tesimu came in 2023 and 1999 ."] * 50
    codec = TextCodec(train_open_tokenizer(texts, 4096, onsets=ONSETS, vowels=VOWELS, codas=CODAS,
                                           whole_words=template_words()))  # fmt: skip
    assert [_pieces(codec, v) for v in ("bakor", "tesimu", "2023")] == [
        ["Ġba", "kor"], ["Ġte", "si", "mu"], ["Ġ2", "0", "2", "3"]]  # fmt: skip
    assert len(codec.encode("called")) == 1
