"""A plain optimisation loop over a stage objective, for tests that train a few steps in-process."""

import torch

from rxt_dist.train.objectives import combine, local_counts


def train_steps(objective, batches, opt, steps: int):
    """``steps`` optimizer steps cycling over ``batches`` (step k seeds the objective's noise with
    k); returns each step's (loss, StageOutput)."""
    history = []
    for step in range(steps):
        out = objective(batches[step % len(batches)], torch.Generator().manual_seed(step))
        loss = combine(out, local_counts(out), world=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((loss.item(), out))
    return history
