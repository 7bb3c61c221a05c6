"""The optimizers a config can name: which parameters Muon steps, and resuming from its state."""

import copy

import pytest
import torch

from rxt_dist.model import build_model, from_name
from rxt_dist.train.config import OptimizerSection, SMATStage
from rxt_dist.train.optim import MuonAdamW, build_optimizer, make_scheduler, muon_eligible
from tests.tolerances import EXACT


def _model():
    torch.manual_seed(0)
    return build_model(from_name("debug"))


def _grads(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-2


def test_muon_steps_the_layers_weight_matrices_and_adamw_the_rest():
    model = _model()
    opt = build_optimizer(model, OptimizerSection(name="muon"), 1e-3)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    adam = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon and adam and not muon & adam and muon | adam == set(names.values())
    assert "embed.weight" in adam  # the tied output head is an embedding
    assert all(model.get_parameter(n).dim() == 2 for n in muon)
    assert any(n.endswith("q_proj.weight") for n in muon) and not any(n.endswith("norm.weight") for n in muon)
    assert len(muon_eligible(model)) == len(muon)
    _grads(model, 1)
    opt.step()
    state = opt.state_dict()["state"]
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    for g in opt.param_groups:
        keys = {"momentum_buffer"} if g["muon"] else {"step", "exp_avg", "exp_avg_sq"}
        assert all(set(state[index[id(p)]]) == keys for p in g["params"])


def test_a_resumed_muon_optimizer_takes_the_same_steps():
    def steps(model, opt, scheduler, seeds):
        for seed in seeds:
            _grads(model, seed)
            opt.step()
            scheduler.step()

    cfg, stage = OptimizerSection(name="muon", muon_lr_scale=3.0), SMATStage(steps=10)
    model = _model()
    opt = build_optimizer(model, cfg, 1e-3)
    scheduler = make_scheduler(opt, cfg, stage)
    steps(model, opt, scheduler, [1, 2])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), scheduler.state_dict()))  # as a checkpoint
    steps(model, opt, scheduler, [3, 4])

    resumed = _model()
    resumed.load_state_dict(saved[0])
    opt2 = build_optimizer(resumed, cfg, 1e-3)
    scheduler2 = make_scheduler(opt2, cfg, stage)
    opt2.load_state_dict(saved[1])
    scheduler2.load_state_dict(saved[2])
    steps(resumed, opt2, scheduler2, [3, 4])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, **EXACT, msg=name)


def test_muon_refuses_a_model_without_weight_matrices():
    with pytest.raises(ValueError, match="no weight matrix"):
        build_optimizer(torch.nn.Sequential(torch.nn.LayerNorm(4)), OptimizerSection(name="muon"), 1e-3)
