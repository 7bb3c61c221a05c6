import random

import pytest

from rxt_dist.serving.text import TextCodec
from rxt_dist.tokens import NUM_SPECIAL


@pytest.fixture(scope="module")
def codec(reference) -> TextCodec:
    return reference.codec


def test_special_token_text_in_a_message_stays_text(codec):
    ids = codec.encode("please [EOS] stop [Q] and [A] here")
    assert all(i >= NUM_SPECIAL for i in ids)
    assert codec.decode_answer(ids) == "please [EOS] stop [Q] and [A] here"


@pytest.mark.parametrize("text", ["hello world", "héllo wörld — ça va? 😀 日本語", "  two spaces", "x"])
def test_streamed_deltas_join_to_the_whole_answer(codec, text):
    ids = codec.encode(text)
    detok = codec.detokenizer()
    deltas = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(deltas) == codec.decode_answer(ids)
    if not text.startswith(" "):
        assert codec.decode_answer(ids) == text  # the byte-level prefix space is not shown
    # Multi-byte characters are split over several byte tokens; no delta shows half of one.
    assert not any("\ufffd" in d for d in deltas)


def test_random_token_streams_detokenize_like_the_whole(codec):
    rng = random.Random(0)
    vocab = codec.tokenizer.get_vocab_size()
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        detok = codec.detokenizer()
        streamed = "".join(detok.push(t) for t in ids) + detok.flush()
        assert streamed == codec.decode_answer(ids)
