import dataclasses

import pytest
import torch

from rxt_dist.model import GateConfig, MemoryAttentionConfig, RxTModel, STMConfig, from_name


def slotted_model(variant: str = "simple", seed: int = 0) -> RxTModel:
    """The debug preset with both kinds of slot-indexed parameter (a static per-slot gate and a
    learned initial STM), made to look trained: per-slot values all differ, and weights are
    large enough (init_std 0.5) that greedy answers depend on the memory."""
    base = from_name("debug")
    cfg = dataclasses.replace(
        base, init_std=0.5,
        memory_attention=MemoryAttentionConfig(variant=variant, attention=base.memory_attention.attention,
                                               gate=GateConfig(kind="static", init_bias=-1.0)),
        stm=STMConfig(num_slots=8, init="learned", init_std=1.0),
    )
    torch.manual_seed(seed)
    model = RxTModel(cfg).eval()
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            layer.gate.logit.normal_(0.0, 1.0)  # (S, 1): a trained gate differs per slot
    return model


@pytest.fixture
def model() -> RxTModel:
    return slotted_model()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine a second OpenMP thread spins against other
    processes and makes these tiny models ~100× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
