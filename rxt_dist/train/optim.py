"""Parameter groups per model component, stage freezing, and the learning-rate schedule.

Components: ``decoder`` (shared embedding, decoder, output head), ``encoder`` (encoder and
its MLM head) and ``memory_attention`` (memory attention and the learned initial STM). A
stage trains some of them; stage 4 unfreezes them one by one on a schedule. A component
that is "frozen" but still part of the forward pass keeps its optimizer group with a
learning-rate factor of 0, because DeepSpeed's optimizer partitions are fixed once built.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rxt_dist.train.config import OptimizerSection, SMATStage, StageSection

COMPONENTS = ("decoder", "encoder", "memory_attention")

TRAINED = {
    "joint_lm": ("decoder", "encoder"),
    "sft": ("decoder", "encoder"),
    "memory_attention": ("memory_attention",),
    "smat": COMPONENTS,
    "baseline": ("decoder",),
}
"""Components each stage trains; the rest get ``requires_grad=False``."""

BUDGET_WARMUP_STEPS = 5
"""Steps of a time-budgeted stage not timed: their time holds the data pipeline's start-up."""
BUDGET_CALIBRATION_STEPS = 20
"""Step at which a time-budgeted stage fixes its step count (timed from ``BUDGET_WARMUP_STEPS``)."""
BUDGET_REFINE_STEPS = (100, 300)
"""Steps at which it fixes the count again, each timed from the mark before: at 100 a stall in
the first steps (compiling, a worker late to the first all-reduce) no longer decides it; at 300
a slow stretch in steps 20–100 does not either (a demo baseline stopped 70 s short of its 550 s
budget when its steps sped up from 0.445 to 0.39 s after step 100). A later mark is skipped
when it falls past the first half of the count fixed so far, so a schedule's decay is not moved
once it may have begun."""


class BudgetClock:
    """When a time-budgeted stage fixes its step count, and from which step its timing starts:
    at ``BUDGET_CALIBRATION_STEPS`` from the steps after ``BUDGET_WARMUP_STEPS``, then at each of
    ``BUDGET_REFINE_STEPS`` from the mark before. A run resumed past a mark times from its start
    and is not refined (its marks were in the lost process)."""

    def __init__(self) -> None:
        self.mark: tuple[int, float] = (0, 0.0)  # (step, training seconds) the timing starts from

    def observe(self, step: int, train_s: float, fixed: bool, total: int | None = None) -> tuple[int, float] | None:
        """After each step (``fixed``: a count is already set, ``total``: that count): the mark to
        time from when the count is to be fixed now, else None."""
        if step == BUDGET_WARMUP_STEPS and not fixed:
            self.mark = (step, train_s)
        first = not fixed and step >= BUDGET_CALIBRATION_STEPS
        marks = (BUDGET_CALIBRATION_STEPS, *BUDGET_REFINE_STEPS)
        refine = (fixed and step in marks[1:] and self.mark[0] == marks[marks.index(step) - 1]
                  and (step == marks[1] or total is None or 2 * step <= total))
        if not (first or refine):
            return None
        start, self.mark = self.mark, (step, train_s)
        return start


def budget_steps(budget_s: float, elapsed_s: float, steps_done: int, per_step_s: float, max_steps: int) -> int:
    """The step count that ends a time-budgeted stage on its budget: the ``steps_done`` steps
    took ``elapsed_s`` (start-up included, it counts against the budget) and each further step
    takes ``per_step_s``. At least one more step, at most ``max_steps``."""
    more = (budget_s - elapsed_s) / max(per_step_s, 1e-9)
    return max(steps_done + 1, min(max_steps, steps_done + int(more)))


def component_of(name: str) -> str:
    """Which component a parameter name (of an RxT or stateless model) belongs to."""
    if name.startswith(("encoder", "mlm_head")):
        return "encoder"
    if name.startswith(("memory_attention", "stm_init")):
        return "memory_attention"
    return "decoder"


def freeze_for_stage(model: nn.Module, stage: str) -> None:
    """Turn off gradients of the components ``stage`` does not train."""
    trained = TRAINED[stage]
    for name, p in model.named_parameters():
        p.requires_grad_(component_of(name) in trained)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """One group per (component, decays?) among trainable parameters. Norm weights, biases,
    gate parameters and 1-D tensors do not decay."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.dim() >= 2 and "gate" not in name and "stm_init" not in name
        groups.setdefault((component_of(name), decays), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "component": comp}
        for (comp, decays), params in sorted(groups.items())
    ]


def muon_eligible(model: nn.Module) -> set[int]:
    """Ids of the parameters Muon steps: the 2-D weights of linear maps, except a weight an
    embedding shares (the tied output head)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {id(m.weight) for m in model.modules()
            if isinstance(m, nn.Linear) and m.weight.dim() == 2 and id(m.weight) not in embeddings}


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups marked ``muon``, AdamW for the others, as one optimizer: one list
    of param groups (the schedule sets each group's ``lr``; DeepSpeed sees one optimizer) and
    one ``state`` (so ``state_dict`` and ``load_state_dict`` are the base class's)."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], momentum: float,
                 muon_lr_scale: float = 1.0) -> None:
        muon = [g for g in groups if g["muon"]]
        adam = [g for g in groups if not g["muon"]]
        if not muon:
            raise ValueError("optimizer.name=muon: the model has no weight matrix for Muon to step")
        self._muon = torch.optim.Muon(muon, lr=lr * muon_lr_scale, momentum=momentum, nesterov=True,
                                      adjust_lr_fn="match_rms_adamw")
        self._adam = torch.optim.AdamW(adam, lr=lr, betas=betas) if adam else None
        super().__init__(self._muon.param_groups + (self._adam.param_groups if adam else []), {})
        self._share()

    def _share(self) -> None:
        self._muon.param_groups = [g for g in self.param_groups if g["muon"]]
        self._muon.state = self.state
        if self._adam is not None:
            self._adam.param_groups = [g for g in self.param_groups if not g["muon"]]
            self._adam.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state
        self._share()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon.step()
        if self._adam is not None:
            self._adam.step()
        return loss


def build_optimizer(model: nn.Module, opt: OptimizerSection, lr: float) -> torch.optim.Optimizer:
    """The optimizer ``opt.name`` names over :func:`param_groups` (``muon``: each group split
    into its Muon and AdamW halves)."""
    groups = param_groups(model, opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=opt.betas)
    eligible = muon_eligible(model)
    split = []
    for g in groups:
        for muon in (True, False):
            params = [p for p in g["params"] if (id(p) in eligible) == muon]
            if params:
                split.append({**g, "params": params, "muon": muon})
    return MuonAdamW(split, lr, opt.betas, opt.muon_momentum, opt.muon_lr_scale)


def base_schedule(opt: OptimizerSection, stage: StageSection,
                  total_steps: Callable[[], int] | None = None) -> Callable[[int], float]:
    """LR factor at optimizer step s: linear warm-up, then cosine/linear/constant/wsd decay to
    ``min_lr_ratio`` at the last step (``stage.steps``, or ``total_steps()`` when a time budget
    fixes the count during training)."""
    warmup = opt.warmup_steps if stage.warmup_steps is None else stage.warmup_steps

    def factor(step: int) -> float:
        total = total_steps() if total_steps is not None else stage.steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if opt.schedule == "constant" or total <= warmup:
            return 1.0
        if opt.schedule == "wsd":  # the peak, then linear decay over the last decay_fraction
            decay = max(1, round(opt.decay_fraction * (total - warmup)))
            progress = min(1.0, max(0.0, (step - (total - decay)) / decay))
        else:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if opt.schedule == "cosine" else 1 - progress
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * shape

    return factor


def unfreeze_step(stage: StageSection, component: str) -> int:
    """First step at which ``component`` trains in ``stage`` (stage 4's schedule)."""
    if isinstance(stage, SMATStage):
        if component == "memory_attention":
            return stage.unfreeze_memory_attention_at
        if component == "encoder":
            return stage.unfreeze_encoder_at
    return 0


def frozen_at(stage: StageSection, step: int) -> set[str]:
    """Components still waiting to be unfrozen at ``step``."""
    return {c for c in COMPONENTS if step < unfreeze_step(stage, c)}


def make_scheduler(optimizer: torch.optim.Optimizer, opt: OptimizerSection, stage: StageSection,
                   total_steps: Callable[[], int] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-group LambdaLR: the base schedule times 0 while the group's component is frozen."""
    base = base_schedule(opt, stage, total_steps)

    def for_group(component: str) -> Callable[[int], float]:
        start = unfreeze_step(stage, component)
        return lambda step: base(step) if step >= start else 0.0

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [for_group(g["component"]) for g in optimizer.param_groups]
    )
