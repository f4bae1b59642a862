"""The learning-rate schedule of the seed: constant, then a linear decay to a floor.

Steps count optimizer updates (batches) since the start of training; a resumed run continues
the count, so the schedule never restarts.
"""

from __future__ import annotations

import torch

from fext.config import LRSchedulerConfig

LR_FLOOR = 1e-8
"""Learning rate reached at the end of the decay and kept afterwards."""


def lr_at(step: int, schedule: LRSchedulerConfig) -> float:
    """Learning rate of the update numbered ``step`` (0-based).

    INITIAL_LR for steps 0 .. CONSTANT_STEPS - 1, then a straight line from INITIAL_LR at step
    CONSTANT_STEPS down to ``LR_FLOOR`` at step CONSTANT_STEPS + DECAY_STEPS, and the floor after.
    """
    initial = schedule.INITIAL_LR
    if step < schedule.CONSTANT_STEPS or initial <= LR_FLOOR:
        return initial
    done = min(1.0, (step - schedule.CONSTANT_STEPS) / schedule.DECAY_STEPS)
    return initial + (LR_FLOOR - initial) * done


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` for the next ``optimizer.step()`` (every parameter group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
