"""``trainer_state.pt``'s content: everything a resumed run needs to continue as if it had never stopped.

:func:`fext.checkpoints.save_checkpoint` writes it first at every save. It holds, in one atomic
file, the model weights, the optimizer and grad-scaler states, the position in the run (completed epochs, global step, batches
done in a running epoch and its partial metric sums), every random number generator and the
history. A run of several processes (torchrun) also stores every rank's generators in
``rng_ranks`` (``rng`` is rank 0's). Resuming trusts this file alone, so a process killed
between two writes of a save never pairs weights of one epoch with an optimizer of another.

Only tensors, numbers, strings, lists and dicts are stored, so the file loads with
``torch.load(..., weights_only=True)``: NumPy's and Python's generator states are converted to
integer tensors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RunPosition:
    """Where a run stands; saved in trainer_state.pt.

    ``epoch`` epochs are complete; ``step`` optimizer updates were made in total (the schedule's
    position); ``batch`` > 0 when the run stopped inside epoch ``epoch + 1`` after that many
    batches, whose running sums are ``partial`` (metric sums over images, ``images``, ``seconds``).
    """

    epoch: int = 0
    step: int = 0
    batch: int = 0
    partial: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(augment: torch.Generator) -> dict[str, Any]:
    """The state of every generator a training step can draw from, as plain tensors and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "augment": augment.get_state(),
    }


def restore_rng(rng: dict[str, Any], augment: torch.Generator) -> list[str]:
    """Put back the generator states of :func:`capture_rng`; return the ones that could not be.

    ``augment`` is a CPU generator (its draws are moved to the device), so its state applies on
    any machine; GPU states only apply on a machine with as many GPUs.
    """
    skipped = []
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
            torch.cuda.set_rng_state_all(rng["cuda"])
        else:
            skipped.append("GPU dropout generator")
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    augment.set_state(rng["augment"])
    return skipped


def trainer_state(
    position: RunPosition,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    augment: torch.Generator,
    rank_rngs: list[dict[str, Any]] | None = None,
    projector: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """The content of trainer_state.pt (written by :func:`fext.checkpoints.save_checkpoint`).

    ``rank_rngs``: every rank's :func:`capture_rng`, in rank order; ``projector``: the recipe's
    projector, whose weights only the trainer state keeps.
    """
    state = {
        "epoch": position.epoch,
        "step": position.step,
        "batch": position.batch,
        "partial": dict(position.partial),
        "history": position.history,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng(augment),
    }
    if rank_rngs:
        state["rng_ranks"] = rank_rngs
    if projector is not None:
        state["projector"] = {k: v.detach().to("cpu") for k, v in projector.state_dict().items()}
    return state


def position_from_state(state: dict[str, Any]) -> RunPosition:
    """The :class:`RunPosition` stored in a loaded trainer state."""
    return RunPosition(
        epoch=int(state["epoch"]), step=int(state["step"]), batch=int(state["batch"]),
        partial=dict(state["partial"]), history=list(state["history"]),
    )
