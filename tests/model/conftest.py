import dataclasses

import pytest
import torch

from rxt_dist.model import RxTModel, StatelessLM, from_name


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
