"""The learning-rate schedules: constant, then a linear decay to a floor, over steps or over a time budget.

Without a time budget (the original schedule) steps count optimizer updates (batches) since the start
of training; a resumed run continues the count, so the schedule never restarts. With
``training.TIME_BUDGET_MINUTES`` the same shape is laid over the budget's seconds instead, so the
decay ends when the budget does whatever the speed of the machine.
"""

from __future__ import annotations

import torch

from fext.config import LRSchedulerConfig, TrainingConfig

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


BUDGET_DECAY_SHARE = 0.2
"""Share of a time budget, at its end, over which the learning rate falls from INITIAL_LR to the floor."""


def lr_in_budget(seconds: float, budget_minutes: float, initial: float) -> float:
    """Learning rate after ``seconds`` of training out of a budget of ``budget_minutes``.

    INITIAL_LR for the first (1 - BUDGET_DECAY_SHARE) of the budget, then a straight line down to
    ``LR_FLOOR`` at its end, and the floor after (the epoch that crosses the budget finishes there).
    """
    budget = budget_minutes * 60.0
    decay_from = (1.0 - BUDGET_DECAY_SHARE) * budget
    if seconds < decay_from or initial <= LR_FLOOR:
        return initial
    done = min(1.0, (seconds - decay_from) / (BUDGET_DECAY_SHARE * budget))
    return initial + (LR_FLOOR - initial) * done


def learning_rate(step: int, seconds: float, training: TrainingConfig) -> float:
    """Learning rate of update ``step`` made after ``seconds`` of training: over the time budget when there
    is one, else :func:`lr_at` over steps (exactly as without the budget key)."""
    if training.TIME_BUDGET_MINUTES > 0:
        return lr_in_budget(seconds, training.TIME_BUDGET_MINUTES, training.LR_SCHEDULER.INITIAL_LR)
    return lr_at(step, training.LR_SCHEDULER)


def trained_seconds(history: list[dict]) -> float:
    """Seconds of training (validation included) recorded in a run's history: what a time budget counts."""
    return sum(float(entry.get("seconds") or 0.0) for entry in history)


def budget_spent(history: list[dict], training: TrainingConfig) -> bool:
    """Whether the completed epochs of ``history`` used up the time budget (False without a budget)."""
    return training.TIME_BUDGET_MINUTES > 0 and trained_seconds(history) >= training.TIME_BUDGET_MINUTES * 60.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` for the next ``optimizer.step()`` (every parameter group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
