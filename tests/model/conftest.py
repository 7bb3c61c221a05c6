import dataclasses

import pytest
import torch

from rxt_dist.inference import DecodeBatch
from rxt_dist.model import RxTModel, StatelessLM, from_name
from rxt_dist.tokens import prompt_ids


def debug_rxt(**changes) -> RxTModel:
    """The debug preset with weights large enough that a random model's answers vary with
    their input (at the training init of 0.02 every answer collapses to one token)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(from_name("debug"), init_std=0.5, **changes)
    return RxTModel(cfg).eval()


@pytest.fixture
def rxt() -> RxTModel:
    return debug_rxt()


@pytest.fixture
def stateless() -> StatelessLM:
    torch.manual_seed(0)
    cfg = dataclasses.replace(from_name("baseline-debug"), init_std=0.5)
    return StatelessLM(cfg).eval()


def admitted_midway(model, stm, queries, params, compiled=None, join_at=3, steps=40):
    """Answers of two sequences when the second joins a running batch at step ``join_at``."""
    batch = DecodeBatch(model, compiled=compiled)
    got = {0: [], 1: []}
    events = batch.admit([0], [prompt_ids(queries[0])], [params], stm=stm[:, :1])
    for step in range(steps):
        if step == join_at:
            events += batch.admit([1], [prompt_ids(queries[1])], [params], stm=stm[:, 1:])
        for ev in events:
            if ev.token is not None:
                got[ev.key].append(ev.token)
        events = batch.step()
    return got
