"""The BPE tokenizer: special-token ids, ids without specials; closed values as whole tokens, open
values as syllables and digits."""

from __future__ import annotations

import json

import pytest

from rxt_dist.data import (
    SyntheticConfig,
    TextCodec,
    generate_conversations,
    load_tokenizer,
    save_tokenizer,
    tokenize_conversations,
    train_tokenizer,
)
from rxt_dist.data.storage import resolve
from rxt_dist.tokens import NUM_SPECIAL, SPECIAL_TOKENS, interaction_ids


@pytest.fixture(scope="module")
def corpus():
    cfg = SyntheticConfig(value_space="closed")
    convs = generate_conversations(cfg, 2000)
    texts = [s for c in convs for t in c.turns for s in (t.query, t.answer)]
    lexicon = [v for vs in cfg.values().values() for v in vs]
    return cfg, convs, train_tokenizer(texts, 4096, lexicon=lexicon)


def test_special_tokens_have_ids_0_to_6(corpus):
    _, _, tok = corpus
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(NUM_SPECIAL))
    assert [tok.id_to_token(i) for i in range(NUM_SPECIAL)] == list(SPECIAL_TOKENS)


def test_text_ids_carry_no_special_tokens_and_decode_back(corpus):
    _, convs, tok = corpus
    codec = TextCodec(tok)
    for conv in tokenize_conversations(convs[:50], codec):
        for t in conv.turns:
            assert t.query_ids and min(t.query_ids + t.answer_ids) >= NUM_SPECIAL
            assert codec.decode(t.query_ids) == t.query and codec.decode(t.answer_ids) == t.answer
            full = interaction_ids(t.query_ids, t.answer_ids)
            assert codec.decode(full) == f"{t.query} {t.answer}"


def test_special_token_text_in_user_input_stays_text(corpus):
    codec = TextCodec(corpus[2])
    ids = codec.encode("hello [Q] [EOS] there")
    assert min(ids) >= NUM_SPECIAL
    assert codec.decode(ids) == "hello [Q] [EOS] there"


def test_closed_values_are_single_tokens_and_gold_ids_point_into_the_answer(corpus):
    cfg, convs, tok = corpus
    codec = TextCodec(tok)
    values = [v for vs in cfg.values().values() for v in vs]
    single = sum(len(codec.encode(v)) == 1 for v in values) / len(values)
    assert single >= 0.99
    for conv in tokenize_conversations(convs[:200], codec):
        for _, t in conv.recall_turns:
            r = t.recall
            assert t.answer_ids[r.gold_start : r.gold_start + len(r.gold_ids)] == r.gold_ids
            assert codec.decode(r.gold_ids) == r.gold


def test_save_load_round_trip_over_fsspec(corpus, memory_url):
    tok = corpus[2]
    sha = save_tokenizer(tok, memory_url)
    loaded = load_tokenizer(memory_url)
    assert loaded.encode("my pet is called rex .").ids == tok.encode("my pet is called rex .").ids
    assert load_tokenizer(memory_url + "/tokenizer.json").get_vocab_size() == tok.get_vocab_size()
    assert len(sha) == 64


def test_load_errors_name_the_file(corpus, memory_url):
    with pytest.raises(FileNotFoundError, match=f"{memory_url}/tokenizer.json: no tokenizer file"):
        load_tokenizer(memory_url)
    fs, path = resolve(memory_url)
    fs.pipe(path + "/tokenizer.json", b"{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a tokenizers JSON file"):
        load_tokenizer(memory_url)
    # A tokenizer whose special tokens sit at other ids cannot be used with rxt_dist.tokens.
    data = json.loads(corpus[2].to_str())
    for tok in data["added_tokens"]:
        tok["id"] = 6 - tok["id"] if tok["content"] in ("[PAD]", "[MASK]") else tok["id"]
    vocab = data["model"]["vocab"]
    vocab["[PAD]"], vocab["[MASK]"] = vocab["[MASK]"], vocab["[PAD]"]
    fs.pipe(path + "/tokenizer.json", json.dumps(data).encode())
    with pytest.raises(ValueError, match=r"tokenizer.json: special token \[PAD\] has id 6, expected 0"):
        load_tokenizer(memory_url)


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["a b c"], 100)
