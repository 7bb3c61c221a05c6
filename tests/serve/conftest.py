"""Fixtures of the serving tests: a real model directory and an in-process reference.

The model is the ``debug`` preset with ``init_std=0.5`` (at the training init every answer
is one repeated token, which would make every equality below vacuous) and a byte-level BPE
trained here on a few sentences, special tokens at ids 0..6, vocabulary within 512.
"""

import dataclasses

import pytest
import torch

from rxt_dist.inference import SamplingParams, consolidate, generate, system_prompt_stm
from rxt_dist.model import RxTModel, from_name, load_model_dir, load_tokenizer, save_model_dir
from rxt_dist.serving.demo import train_small_tokenizer
from rxt_dist.serving.text import TextCodec

CORPUS = [
    "my name is ada and i live by the river",
    "what is my name? your name is ada",
    "the cat sat on the mat and the dog sat by the door",
    "remember my favourite colour is green",
    "where do i live? you live by the river",
    "tell me a story about a fox and a crow",
] * 5


@pytest.fixture(autouse=True, scope="module")
def serve_on_one_torch_thread(one_torch_thread):
    """The reference model is tiny: on a busy 2-core machine two OpenMP threads per op only
    wait for each other (10× slower)."""


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = dataclasses.replace(from_name("debug"), init_std=0.5)
    tokenizer = train_small_tokenizer(CORPUS, vocab_size=cfg.vocab_size)
    assert tokenizer.get_vocab_size() <= cfg.vocab_size
    url = str(tmp_path_factory.mktemp("models") / "rxt-test")
    save_model_dir(RxTModel(cfg), url, tokenizer_json=tokenizer.to_str())
    return url


class Reference:
    """The same model answering one conversation alone, in this process: what the server
    must reproduce (greedy decoding, the app's seeded initial STM)."""

    def __init__(self, model_dir: str, seed: int = 0) -> None:
        self.model = load_model_dir(model_dir).eval()
        self.codec = TextCodec(load_tokenizer(model_dir))
        self.seed = seed

    def new_stm(self, system: str | None = None, history=()) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        if system:
            stm = system_prompt_stm(self.model, [self.codec.encode(system)], gen)
        else:
            stm = self.model.initial_stm(1, gen)
        for query, answer in history:
            stm = consolidate(self.model, stm, [self.codec.encode(query)], [self.codec.encode(answer)])
        return stm

    def turn(self, stm: torch.Tensor, text: str, max_tokens: int):
        """(answer text, answer ids, next STM) of one greedy turn."""
        query = self.codec.encode(text)
        ids = generate(self.model, [query], stm, SamplingParams(max_new_tokens=max_tokens))[0]
        return self.codec.decode_answer(ids), ids, self.consolidated(stm, text, ids)

    def consolidated(self, stm: torch.Tensor, text: str, answer_ids: list[int]) -> torch.Tensor:
        return consolidate(self.model, stm, [self.codec.encode(text)], [answer_ids])

    def conversation(self, texts: list[str], max_tokens: int, stm: torch.Tensor | None = None) -> list[str]:
        stm = self.new_stm() if stm is None else stm
        answers = []
        for text in texts:
            answer, _, stm = self.turn(stm, text, max_tokens)
            answers.append(answer)
        return answers


@pytest.fixture(scope="session")
def reference(model_dir) -> Reference:
    return Reference(model_dir)
