import dataclasses

import pytest
import torch

from rxt_dist.model import RxTModel, StatelessLM, from_name


@pytest.fixture
def varied_stateless() -> StatelessLM:
    """baseline-debug with weights large enough that greedy answers vary with the input (at
    the training init every answer collapses to one token, and equalities would be vacuous)."""
    torch.manual_seed(0)
    return StatelessLM(dataclasses.replace(from_name("baseline-debug"), init_std=0.5)).eval()


@pytest.fixture
def varied_rxt() -> RxTModel:
    torch.manual_seed(0)
    return RxTModel(dataclasses.replace(from_name("debug"), init_std=0.5)).eval()


@pytest.fixture
def one_thread():
    """Debug-sized models gain nothing from intra-op threads, and on a shared machine their
    spin-waiting costs seconds per test; restore torch's setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
