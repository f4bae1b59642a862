"""A training run from start to finish: images, model, optimizer, the epochs, and the checkpoint.

:func:`train` starts a run (``fext train``) or continues one (``fext train --resume``);
:func:`fit` runs its epochs and saves after each through :func:`fext.checkpoints.save_checkpoint`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import fext
from fext import distributed
from fext._allocator import release_freed_memory
from fext.checkpoints import PLOT, SUMMARY, TENSORBOARD, CheckpointDescription, DatasetRecord, save_checkpoint
from fext.config import Config
from fext.data import CachedImages
from fext.device import explain_compile_failure
from fext.errors import FeXTError
from fext.model import FeXTAutoEncoder
from fext.training import outputs
from fext.training.loop import EpochResult, GracefulStop, NonFiniteLoss, Run, train_one_epoch, validate
from fext.training.schedule import BUDGET_DECAY_SHARE, budget_spent, trained_seconds
from fext.training.start import (
    model_and_projector, new_folder, optimizer_and_position, starting_point, training_images, wrapped_for_training,
)
from fext.training.state import RunPosition, capture_rng, seed_everything, trainer_state
from fext.workspace import Workspace

log = logging.getLogger(__name__)


class TrainingInterrupted(FeXTError):
    """Ctrl-C or SIGTERM stopped the run after a resumable checkpoint was saved (exit status 130)."""

    exit_code = 130


def train(
    cfg: Config,
    ws: Workspace,
    *,
    resume: Path | None = None,
    dataset: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train a model from scratch, or continue the checkpoint ``resume``; return the checkpoint folder.

    From scratch: the images of ``dataset`` (default ``resources/dataset``), EPOCHS epochs, a new
    ``resources/checkpoints/FeXT_<timestamp>/``. Resumed: the checkpoint's own configuration
    (ADDITIONAL_EPOCHS and the device section from ``cfg``), its images and split, optimizer,
    schedule step, grad scaler and random generators, ADDITIONAL_EPOCHS more epochs (finishing an
    interrupted epoch counts as one), written into the same folder.

    Raises :class:`TrainingInterrupted` after saving when Ctrl-C or SIGTERM stops the run, and
    :class:`FeXTError` for a non-finite loss (the last saved checkpoint is kept) or unusable images.

    Under ``torchrun`` every process calls this: DistributedDataParallel on ``cuda:LOCAL_RANK``
    (nccl) or the CPU (gloo). Each epoch's shuffled order is the same on every rank, which
    takes every WORLD_SIZE-th image of it, so the global batch is BATCH_SIZE x WORLD_SIZE (the
    learning rate is left as configured). Validation is split over the ranks and its metrics
    summed over them. Rank 0 alone decodes into the cache (the others open it after a
    barrier), writes the checkpoint, history, plots, TensorBoard and logs, and draws bars.
    A resume loads the same state on every rank, each rank's own random generators included.
    Ctrl-C and SIGTERM are not caught under torchrun: the run stops and keeps its last
    completed epoch, from which ``--resume`` continues.
    """
    with distributed.session(cfg.device.DEVICE, cfg.device.DEVICE_ID) as device:
        return _train(cfg, ws, device, resume=resume, dataset=dataset, progress=progress)


def _train(
    cfg: Config, ws: Workspace, device: torch.device, *, resume: Path | None, dataset: Path | None, progress: bool
) -> Path:
    """:func:`train` in one process (of one or several) whose device is ``device``."""
    ws.ensure()
    fresh = resume is None
    # 1. The configuration, the trainer state and the image folder: fresh, or the checkpoint's.
    cfg, saved, state, root = starting_point(cfg, ws, resume, dataset)
    seed_everything(distributed.rank_seed(cfg.SEED, distributed.rank()))
    # 2. Images: find, sample and split; decode into the cache once (later epochs and runs decode nothing).
    listing, images, train_rows, val_rows = training_images(cfg, ws, root, resume, saved, progress)
    # 3. Model, optimizer, grad scaler, generators, position: fresh (seeded) or from the checkpoint.
    model, projector = model_and_projector(cfg, device, resume, saved, state)
    optimizer, scaler, augment, position = optimizer_and_position(cfg, device, model, projector, saved, state,
                                                                   train_rows)
    forward, validate_forward, train_projector = wrapped_for_training(cfg, device, model, projector, position)
    # 4. The checkpoint folder (rank 0 names and makes it): its description (config.json), summary.txt.
    folder = Path(resume) if resume is not None else new_folder(ws)
    dataset_info = DatasetRecord(str(Path(root).absolute()), len(train_rows), len(val_rows), len(images.failures))
    description = CheckpointDescription(
        model.arch, cfg, dataset_info, (saved and saved.description.created) or time.strftime("%Y-%m-%dT%H:%M:%S"),
        fext.__version__)
    if distributed.is_main():
        outputs.write_run_summary(folder / SUMMARY, fresh, cfg, model, device, description, images.failures, position,
                                  [(listing.relative(path), reason) for path, reason in listing.not_images])
        for note in listing.notes(where=SUMMARY):
            log.info("%s: %s", root, note)
    # 5. The epochs.
    epochs = _last_epoch(cfg, position, fresh)
    _log_start(cfg, device, folder, fresh, len(train_rows), len(val_rows), position, epochs)
    run = Run(cfg, folder, device, model, forward, optimizer, scaler, augment, images, train_rows, val_rows,
              description, position, saved=None if fresh else outputs.describe_position(position),
              validate_forward=validate_forward, projector=projector, train_projector=train_projector)
    _fit_and_tidy(run, epochs, fresh, progress)
    log.info("Done: %s", folder)
    return folder


def _log_start(cfg: Config, device: torch.device, folder: Path, fresh: bool, n_train: int, n_val: int,
               position: RunPosition, epochs: int) -> None:
    log.info("Training %s (%s preset, %d px) on %d images, %d for validation, epochs %d to %d on %s; checkpoint %s",
             "from scratch" if fresh else f"from {folder.name}", cfg.model.PRESET, cfg.model.IMG_SIZE,
             n_train, n_val, position.epoch + 1, epochs, device, folder)
    if distributed.active():
        log.info("%d processes: global batch %d (training.BATCH_SIZE %d per process); the learning rate is not "
                 "scaled with it.", distributed.world_size(), cfg.training.BATCH_SIZE * distributed.world_size(),
                 cfg.training.BATCH_SIZE)


def _fit_and_tidy(run: Run, epochs: int, fresh: bool, progress: bool) -> None:
    """:func:`fit`; a fresh run that stops before its first save leaves no folder; the memory goes back either way."""
    main = distributed.is_main()
    try:
        fit(run, epochs, show_bar=progress and main)
    except BaseException:
        if fresh and run.saved is None and main:
            # Nothing resumable was written: leave no half-made checkpoint folder behind.
            shutil.rmtree(run.folder, ignore_errors=True)
        raise
    finally:
        release_freed_memory()  # the process may go on (menu, demo): it need not keep the training peak


BUDGET_EPOCHS = 1_000_000
"""The epoch count of a run with a time budget: it stops at the end of the epoch that crosses the budget."""


def _last_epoch(cfg: Config, position: RunPosition, fresh: bool) -> int:
    """The epoch the run trains up to: EPOCHS from scratch, ADDITIONAL_EPOCHS more on a resume, or with a
    time budget left, as many as the budget allows (said in a log line)."""
    budget = cfg.training.TIME_BUDGET_MINUTES
    if budget > 0 and not budget_spent(position.history, cfg.training):
        used = trained_seconds(position.history) / 60.0
        log.info("Time budget: %g minutes (training.TIME_BUDGET_MINUTES)%s; training stops at the end of the epoch "
                 "that crosses it, the learning rate falls to its floor over the last %d %%.", budget,
                 f", {used:.1f} already trained" if used else "", round(100 * BUDGET_DECAY_SHARE))
        return position.epoch + BUDGET_EPOCHS
    if budget > 0:
        log.info("The time budget of %g minutes is spent: %d more epochs at the schedule's end (a larger --minutes "
                 "trains longer with the learning rate fitted to it).", budget, cfg.training.ADDITIONAL_EPOCHS)
    return position.epoch + (cfg.training.EPOCHS if fresh else cfg.training.ADDITIONAL_EPOCHS)


def fit(run: Run, epochs: int, show_bar: bool = True) -> None:
    """Train until ``epochs`` epochs are complete, validating and saving after each one.

    Ctrl-C / SIGTERM: the running batch finishes, the state is saved and
    :class:`TrainingInterrupted` is raised. A non-finite loss raises :class:`FeXTError`; the
    checkpoint on disk (the last completed epoch) is kept.
    """
    p, cfg = run.position, run.cfg
    use_tensorboard = cfg.training.USE_TENSORBOARD and distributed.is_main()
    tensorboard = outputs.TensorBoardLog(run.folder / TENSORBOARD, use_tensorboard, first_epoch=p.epoch + 1)
    val_rows = distributed.shard(run.val_rows, pad=False)
    budgeted = epochs - p.epoch > BUDGET_EPOCHS // 2  # a time budget, not an epoch count, ends the run
    try:
        # Under torchrun a signal reaches every rank at its own moment: no rank could stop at the same batch.
        with GracefulStop(handle_signals=not distributed.active()) as stop, explain_compile_failure():
            while p.epoch < epochs:
                # 1. One epoch of updates (from where an interrupted epoch stopped).
                result = train_one_epoch(run, stop, show_bar)
                # 2. Validation, when the epoch's updates are all done.
                validation, validation_started = None, time.perf_counter()
                if not result.interrupted and stop.requested is None:
                    validation = validate(run.validate_forward or run.forward, run.model, run.images, val_rows, cfg,
                                          run.device, stop, show_bar)
                complete = not result.interrupted and (validation is not None or len(run.val_rows) == 0)
                # 3. A completed epoch joins the history and is saved (a kill now loses nothing).
                if complete:
                    entry = _history_entry(p, result, validation, time.perf_counter() - validation_started)
                    p.history.append(entry)
                    p.epoch, p.batch, p.partial = p.epoch + 1, 0, {}
                    _save(run, tensorboard, entry)
                    # Between epochs the heap's free pages go back (ms; the next steps fault in what they use):
                    # without it, each epoch's new holes add to what the process holds for the rest of the run.
                    release_freed_memory()
                    outputs.log_epoch(entry, None if budgeted else epochs)
                    if budgeted and distributed.all_true(budget_spent(p.history, cfg.training)):
                        log.info("Time budget of %g minutes reached after epoch %d (%.1f minutes).",
                                 cfg.training.TIME_BUDGET_MINUTES, p.epoch, trained_seconds(p.history) / 60.0)
                        break
                # 4. Ctrl-C: save where the run stands (inside an epoch if need be) and stop.
                if stop.requested is not None and (not complete or p.epoch < epochs):
                    if not complete:
                        _save(run, tensorboard, None)
                    where = f"after epoch {p.epoch}" if complete else f"at epoch {p.epoch + 1} step {p.batch}"
                    raise TrainingInterrupted(
                        f"Interrupted {where}; saved {run.saved} in {run.folder}; "
                        f"resume with `fext train --resume {run.folder.name}`"
                    )
    except NonFiniteLoss as e:
        advice = "lower training.LR_SCHEDULER.INITIAL_LR"
        if cfg.device.MIXED_PRECISION:
            advice += " or disable device.MIXED_PRECISION"
        kept = (f"the last good checkpoint ({run.saved}) is kept in {run.folder}" if run.saved
                else "no epoch had completed, so no checkpoint was kept")
        raise FeXTError(
            f"Loss became non-finite ({e.value}) at epoch {e.epoch}, step {e.batch} (global step {e.step}); {kept}; {advice}"
        ) from None
    finally:
        tensorboard.close()


def _history_entry(p: RunPosition, result: EpochResult, validation: dict[str, float] | None,
                   validation_seconds: float) -> dict[str, Any]:
    """The history.json entry of the epoch that ``result`` completed (``p`` not yet moved past it)."""
    return {
        "epoch": p.epoch + 1, "train": result.metrics, "validation": validation, "lr": result.lr,
        "seconds": round(result.seconds + validation_seconds, 3),
        "images_per_second": round(result.images / max(result.seconds, 1e-9), 2), "steps": p.step,
    }


def _save(run: Run, tensorboard: outputs.TensorBoardLog, entry: dict[str, Any] | None) -> None:
    """Save the run: after a completed epoch (``entry``), or where an interrupted one stands.

    trainer_state.pt goes first: it alone is what a resume reads, so a kill between the writes
    below leaves at worst user-facing files one save behind it, never a state that mixes saves.
    """
    p, folder = run.position, run.folder
    rank_rngs = distributed.gather_objects(capture_rng(run.augment)) if distributed.active() else None
    # Every rank sets the centre (the same weights and images), so every rank's model is the saved one.
    set_feature_center(run.model, run.images, run.train_rows, run.device)
    if not distributed.is_main():
        run.saved = outputs.describe_position(p)
        return
    keep = entry["epoch"] if entry is not None and run.cfg.training.SAVE_CHECKPOINTS else None
    save_checkpoint(folder, run.model, run.description, history=p.history, keep_epoch=keep,
                    trainer_state=trainer_state(p, run.model, run.optimizer, run.scaler, run.augment, rank_rngs,
                                                run.projector))
    if p.history:
        outputs.plot_history(folder / PLOT, p.history, f"{folder.name}: {run.cfg.model.PRESET} preset, "
                             f"{run.cfg.model.IMG_SIZE} px, {len(run.train_rows)} training images")
    if entry is not None:
        tensorboard.log_epoch(entry)
    run.saved = outputs.describe_position(p)


CENTER_IMAGES = 256
"""Training images (evenly spread) whose mean latent becomes the model's feature centre at every save."""


def set_feature_center(model: FeXTAutoEncoder, images: CachedImages, rows: torch.Tensor, device: torch.device) -> None:
    """Set ``model.feature_center`` to the mean latent of up to :data:`CENTER_IMAGES` training images.

    In eval mode (no dropout) on the plain images, in float32: the centre every feature vector is taken
    from (:meth:`FeXTAutoEncoder.features`). It draws no random number, so training goes on as it would.
    """
    from fext.data import to_float

    chosen = rows[torch.linspace(0, len(rows) - 1, min(len(rows), CENTER_IMAGES)).round().long()].tolist()
    was_training = model.training
    model.eval()
    total = torch.zeros_like(model.feature_center, dtype=torch.float64)
    with torch.no_grad():
        for lo in range(0, len(chosen), 32):
            total += model.encode(to_float(images.batch(chosen[lo:lo + 32]).to(device))).double().sum(0)
    model.feature_center.copy_((total / max(1, len(chosen))).to(model.feature_center.dtype))
    model.train(was_training)


