"""The training loop in plain PyTorch: one epoch of updates, one pass of validation.

What a step optimises (inputs and loss of ``training.RECIPE``) lives in :mod:`fext.training.objectives`.

``train_one_epoch`` and ``validate`` are read top to bottom, their steps numbered. They work on
the decoded-image cache (uint8 rows, gathered per batch, no decoding) and stop cleanly at a batch
boundary when :class:`GracefulStop` has caught Ctrl-C, so the state saved afterwards is exact.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fext import distributed
from fext.config import Config
from fext.checkpoints import CheckpointDescription
from fext.data import CachedImages, to_float
from fext.device import autocast, replay_rng, rng_state
from fext.metrics import cosine, mae, psnr
from fext.model import FeXTAutoEncoder
from fext.training.objectives import training_inputs, training_loss, views_loss
from fext.training.schedule import learning_rate, set_lr, trained_seconds
from fext.training.state import RunPosition

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class NonFiniteLoss(Exception):
    """The loss of a batch was nan or inf (raised before the update, so the weights are still good)."""

    def __init__(self, value: float, epoch: int, batch: int, step: int) -> None:
        super().__init__(f"non-finite loss {value} at epoch {epoch}, batch {batch}, step {step}")
        self.value, self.epoch, self.batch, self.step = value, epoch, batch, step


class GracefulStop:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the running batch.

    The loop polls ``requested`` between batches, so an update is never cut in half and the saved
    state is exact. A second Ctrl-C raises KeyboardInterrupt at once. Handlers are only installed
    in the main thread, and only when ``handle_signals``, and are restored on exit.
    """

    def __init__(self, handle_signals: bool = True) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}
        self._handle_signals = handle_signals

    def __enter__(self) -> GracefulStop:
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum
        log.warning("Stopping after the running batch to save a resumable checkpoint (Ctrl-C again to abort without saving).")


@dataclass(frozen=True)
class Step:
    """What a training step runs a batch through (:func:`compute_gradients`): ``forward``, the model as the
    step calls it (compiled or DDP-wrapped, or the bare ``model``), the bare ``model``, ``cfg``, ``device``,
    the gradient ``scaler`` and the recipe's ``projector`` as the loss calls it (or None)."""

    forward: Forward
    model: torch.nn.Module
    cfg: Config
    device: torch.device
    scaler: torch.amp.GradScaler
    projector: torch.nn.Module | None = None


@dataclass
class Run:
    """What :func:`train_one_epoch` and :func:`fext.training.run.fit` work with: the model and its optimizer,
    the images, where to save (:func:`fext.training.train` builds it)."""

    cfg: Config
    folder: Path
    device: torch.device
    model: FeXTAutoEncoder
    forward: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    augment: torch.Generator
    images: CachedImages
    train_rows: torch.Tensor
    val_rows: torch.Tensor
    description: CheckpointDescription
    """config.json: the same at every save of the run."""
    position: RunPosition
    saved: str | None
    """What the checkpoint on disk holds ("epoch 3", "epoch 3 + 12 batches"), None before the first save."""
    validate_forward: Any = None
    """The model for validation when it differs from ``forward`` (under DDP: not the DDP wrapper,
    whose forward could wait on ranks that have fewer validation batches)."""
    projector: torch.nn.Module | None = None
    """The recipe's projector, trained with the model and saved only in the trainer state; None without one."""
    train_projector: Any = None
    """``projector`` as the loss calls it (under DDP its wrapper, which averages its gradients)."""

    def step(self) -> Step:
        """What :func:`compute_gradients` runs this run's batches through."""
        return Step(self.forward, self.model, self.cfg, self.device, self.scaler, self.train_projector)


@dataclass
class EpochResult:
    """Mean train metrics of an epoch (per image), its training time, and whether it was cut short."""

    metrics: dict[str, float]
    images: int
    seconds: float
    lr: float
    interrupted: bool


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of the ``n`` training images in ``epoch`` (1-based).

    A pure function of (seed, epoch), so a run resumed inside an epoch sees the same order.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def train_one_epoch(run: Run, stop: GracefulStop, show_bar: bool = True) -> EpochResult:
    """Train epoch ``run.position.epoch + 1`` from batch ``run.position.batch`` on (0, or where a run stopped).

    The run's ``forward`` is the (possibly compiled, possibly DDP) model; of ``train_rows``, the cache rows
    of the training images, this rank takes its share of each epoch's order (all of them in one process);
    ``train_projector`` is the recipe's projector (trained with the model), or None; the metrics returned are
    over the images of all ranks. Updates ``position.step``, ``position.batch`` and ``position.partial``
    (running sums) after every batch, so an interruption leaves them describing the state exactly.
    Raises :class:`NonFiniteLoss` before the update of a batch whose loss is nan or inf.
    """
    cfg, position = run.cfg, run.position
    epoch, batch_size = position.epoch + 1, cfg.training.BATCH_SIZE
    order = distributed.shard(run.train_rows[epoch_order(len(run.train_rows), cfg.SEED, epoch)], pad=True)
    n_batches = math.ceil(len(order) / batch_size)
    sums = {k: position.partial.get(k, 0.0) for k in ("loss", "cosine", "psnr", "images", "seconds")}
    run.model.train()
    if run.train_projector is not None:
        run.train_projector.train()
    bar = tqdm(total=n_batches, initial=position.batch, desc=f"Epoch {epoch}", unit="batch",
               leave=False, disable=not show_bar, dynamic_ncols=True)
    start = time.perf_counter() - sums["seconds"]
    before = trained_seconds(position.history)  # earlier epochs, for a time budget's schedule
    lr = learning_rate(max(position.step - 1, 0), before + sums["seconds"], cfg.training)  # should no batch run
    try:
        for b in range(position.batch, n_batches):
            if stop.requested is not None:
                break
            # 1. Learning rate of this update, from the global step or the time trained (survives resumes).
            lr = learning_rate(position.step, _seconds_trained(before + sums["seconds"], cfg), cfg.training)
            set_lr(run.optimizer, lr)
            # 2.-6. Gather the batch, compute the gradients, refuse a non-finite loss, update.
            x = _gather(run, order[b * batch_size : (b + 1) * batch_size])
            target, loss_value, terms, reconstruction = _update(run, x, epoch, b)
            # 7. Running per-image sums of the train metrics, and the position in the run.
            _add_metrics(sums, x, target, loss_value, terms, reconstruction)
            sums["seconds"] = time.perf_counter() - start
            position.step += 1
            position.batch = b + 1
            position.partial = dict(sums)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / sums['images']:.4f}", img_s=f"{sums['images'] / sums['seconds']:.1f}")
    finally:
        bar.close()
    return _epoch_result(sums, position.batch < n_batches, lr)


def _gather(run: Run, rows: torch.Tensor) -> torch.Tensor:
    """2. The batch of cache ``rows``, converted on the device (a uint8 copy is 4x smaller): (B, 3, S, S) float
    in [0, 1], channels_last."""
    x = run.images.batch(rows)  # (B, S, S, 3) uint8
    return to_float(x.to(run.device, non_blocking=True))


def _update(run: Run, x: torch.Tensor, epoch: int, b: int
            ) -> tuple[torch.Tensor, float, dict[str, torch.Tensor], torch.Tensor]:
    """Steps 3 to 6 of a batch ``x`` (batch ``b`` of ``epoch``): (target, loss, its terms, reconstruction)."""
    cfg = run.cfg
    # 3. The recipe's inputs and targets, drawn with the seeded generator: the seed's augmented
    #    batch (B rows), or two augmented views of every image ("views", 2B rows).
    inputs, target = training_inputs(x, cfg, run.augment)
    # 4. Forward and backward (the last batch's gradients dropped first, so they do not take
    #    memory through it).
    run.optimizer.zero_grad(set_to_none=True)
    loss_value, terms, reconstruction = compute_gradients(run.step(), inputs, target)
    # 5. Refuse a non-finite loss before it reaches the weights.
    if not distributed.all_true(math.isfinite(loss_value)):  # every rank stops at the same batch
        raise NonFiniteLoss(loss_value, epoch, b + 1, run.position.step + 1)
    # 6. Update (the scaler is a pass-through unless fp16 autocast needs it).
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return target, loss_value, terms, reconstruction


def _add_metrics(sums: dict[str, float], x: torch.Tensor, target: torch.Tensor, loss_value: float,
                 terms: dict[str, torch.Tensor], reconstruction: torch.Tensor) -> None:
    """Add a batch to the running per-image sums of the train metrics."""
    with torch.no_grad():
        r, per_image = reconstruction.float(), len(x) / len(target)  # 1 or 1/2 (two views)
        # The reported train loss is the reconstruction MAE in every recipe, comparable to validation's.
        sums["loss"] += (terms["reconstruction"].item() if terms else loss_value) * len(x)
        sums["cosine"] += cosine(r, target).sum().item() * per_image
        sums["psnr"] += psnr(r, target).sum().item() * per_image
    sums["images"] += len(x)


def _epoch_result(sums: dict[str, float], interrupted: bool, lr: float) -> EpochResult:
    """The epoch's mean metrics, over every rank's images when the epoch is complete."""
    if not interrupted:
        totals = distributed.all_reduce_sum([sums[k] for k in ("loss", "cosine", "psnr", "images")])
        sums.update(zip(("loss", "cosine", "psnr", "images"), totals))
    n = max(sums["images"], 1)
    return EpochResult(
        metrics={k: sums[k] / n for k in ("loss", "cosine", "psnr")},
        images=int(sums["images"]),
        seconds=sums["seconds"],
        lr=lr,  # of the last update
        interrupted=interrupted,
    )


def _seconds_trained(seconds: float, cfg: Config) -> float:
    """The seconds a time budget's schedule reads: under torchrun their mean over the ranks (one collective a
    step, only with a budget), so every rank applies the same learning rate and the replicas stay equal."""
    if cfg.training.TIME_BUDGET_MINUTES > 0 and distributed.active():
        return distributed.all_reduce_sum([seconds])[0] / distributed.world_size()
    return seconds


def compute_gradients(
    step: Step, inputs: torch.Tensor, target: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """Forward and backward of one batch: the gradients of the recipe's loss are added to ``.grad``.

    ``inputs`` and ``target`` come from :func:`~fext.training.objectives.training_inputs`.
    The forward runs under autocast and the loss is computed in float32, scaled by ``step.scaler``
    for backward. Returns the loss's value, its terms (detached; empty for "reconstruction") and the
    reconstruction (detached). The "views" recipe takes its two views one at a time
    (:func:`_views_one_at_a_time`) when ``training.VIEWS.ONE_VIEW_AT_A_TIME`` and not
    ``model.JIT_COMPILE``; otherwise the batch takes one forward and one backward pass.
    """
    cfg = step.cfg
    if cfg.training.RECIPE == "views" and cfg.training.VIEWS.ONE_VIEW_AT_A_TIME and not cfg.model.JIT_COMPILE:
        return _views_one_at_a_time(step, inputs, target)
    with autocast(step.device, cfg.device.MIXED_PRECISION):
        out = step.forward(inputs)
    loss, terms = training_loss(out, target, cfg, step.projector)
    step.scaler.scale(loss).backward()
    return loss.item(), terms, out["reconstruction"].detach()


def _views_one_at_a_time(
    step: Step, inputs: torch.Tensor, target: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """:func:`compute_gradients` of the "views" recipe with the activations of one view (B rows) in
    memory at a time instead of both (2B rows): about half the memory, the same gradients.

    The VICReg terms tie the two views' latents together, so view B's latent is first computed
    without a graph (the encoder only: the extra cost). View A then goes forward and backward with
    the whole loss but B's reconstruction, which also leaves the loss's gradient with respect to
    B's latent in that latent's ``.grad``. View B finally goes forward again, with its graph and
    the same dropout draws (so the same latent), and backward with its reconstruction and that
    gradient. The two backward passes add up to the gradient of the one-pass loss (to float rounding).
    """
    views, mixed = step.cfg.training.VIEWS, step.cfg.device.MIXED_PRECISION
    device, forward, scaler = step.device, step.forward, step.scaler
    (input_a, input_b), (target_a, target_b) = inputs.chunk(2), target.chunk(2)
    # 1. View B's latent without a graph; the dropout generator's state is kept to replay its draws in 3.
    state_b = rng_state(device)
    with torch.no_grad(), autocast(device, mixed):
        latent_b = step.model.encode(input_b)
    latent_b.requires_grad_()  # a leaf: the gradient of the latent terms with respect to it lands in .grad
    # 2. View A forward and backward: the latent terms of both views and A's reconstruction.
    with autocast(device, mixed):
        out_a = forward(input_a)
    loss_a, terms = views_loss(out_a["reconstruction"], target_a, views, torch.cat([out_a["latent"], latent_b]),
                               step.projector, share=1 / 2)
    scaler.scale(loss_a).backward()
    # 3. View B forward again with its graph, and backward: its reconstruction, and through its latent the
    #    gradient of the latent terms found in 2 (already scaled).
    with replay_rng(device, state_b), autocast(device, mixed):
        out_b = forward(input_b)
    loss_b, terms_b = views_loss(out_b["reconstruction"], target_b, views, share=1 / 2)
    torch.autograd.backward([scaler.scale(loss_b), out_b["latent"]], [None, latent_b.grad])
    terms["reconstruction"] = (terms["reconstruction"] + terms_b["reconstruction"]) / 2
    reconstruction = torch.cat([out_a["reconstruction"].detach(), out_b["reconstruction"].detach()])
    return loss_a.item() + loss_b.item(), terms, reconstruction


@torch.no_grad()
def validate(
    forward: Forward,
    model: torch.nn.Module,
    images: CachedImages,
    rows: torch.Tensor,
    cfg: Config,
    device: torch.device,
    stop: GracefulStop | None = None,
    show_bar: bool = True,
) -> dict[str, float] | None:
    """Mean per-image loss (MAE), cosine similarity and PSNR of the images at cache ``rows``.

    No augmentation, dropout off. Returns None when there is no image, or when a stop was
    requested before the pass finished. Under torchrun ``rows`` is this rank's share and the
    sums and counts of all ranks make the averages (every rank returns the same values).
    """
    if len(rows) == 0 and not distributed.active():
        return None
    model.eval()
    batch_size = cfg.training.BATCH_SIZE
    sums = {"loss": 0.0, "cosine": 0.0, "psnr": 0.0}
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="Validation", unit="batch", leave=False,
                          disable=not show_bar, dynamic_ncols=True):
            if stop is not None and stop.requested is not None:
                return None
            x = to_float(images.batch(rows[start : start + batch_size]).to(device, non_blocking=True))
            with autocast(device, cfg.device.MIXED_PRECISION):
                r = forward(x)["reconstruction"]
            r = r.float()
            sums["loss"] += mae(r, x).sum().item()
            sums["cosine"] += cosine(r, x).sum().item()
            sums["psnr"] += psnr(r, x).sum().item()
    finally:
        model.train()
    *totals, count = distributed.all_reduce_sum([*sums.values(), len(rows)])
    return {k: v / count for k, v in zip(sums, totals)} if count else None
