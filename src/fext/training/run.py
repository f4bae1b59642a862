"""A training run from start to finish: images, model, optimizer, the epochs, and the checkpoint.

:func:`train` starts a run (``fext train``) or continues one (``fext train --resume``);
:func:`fit` runs its epochs and saves after each through :func:`fext.checkpoints.save_checkpoint`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import fext
from fext import distributed
from fext._allocator import keep_freed_memory, release_freed_memory
from fext.checkpoints import (
    PLOT, SUMMARY, TENSORBOARD, TRAINER_STATE, WEIGHTS, Checkpoint, CheckpointDescription, DatasetRecord,
    load_trainer_state, load_weights, load_weights_file, new_checkpoint_dir, read_checkpoint, save_checkpoint,
)
from fext.config import Config
from fext.data import CachedImages, Listing, list_folder, open_readonly, prepare_images, select_images
from fext.device import explain_compile_failure, needs_grad_scaler
from fext.errors import FeXTError
from fext.machine import data_workers
from fext.model import FeXTAutoEncoder
from fext.training import outputs
from fext.training.loop import GracefulStop, NonFiniteLoss, Run, train_one_epoch, validate
from fext.training.objectives import recipe_projector
from fext.training.schedule import BUDGET_DECAY_SHARE, budget_spent, trained_seconds
from fext.training.state import (
    RunPosition, capture_rng, position_from_state, restore_rng, seed_everything, trainer_state,
)
from fext.workspace import Workspace

log = logging.getLogger(__name__)


class TrainingInterrupted(FeXTError):
    """Ctrl-C or SIGTERM stopped the run after a resumable checkpoint was saved (exit status 130)."""

    exit_code = 130


def resumed_config(saved: Config, current: Config) -> Config:
    """The checkpoint's configuration, with ADDITIONAL_EPOCHS, ACTIVATION_CHECKPOINTING (a memory
    setting of this machine, values unchanged) and the device section from ``current``, and
    TIME_BUDGET_MINUTES from ``current`` when set there (a total: a larger one extends the run)."""
    budget = current.training.TIME_BUDGET_MINUTES or saved.training.TIME_BUDGET_MINUTES
    training = replace(saved.training, ADDITIONAL_EPOCHS=current.training.ADDITIONAL_EPOCHS,
                       ACTIVATION_CHECKPOINTING=current.training.ACTIVATION_CHECKPOINTING,
                       TIME_BUDGET_MINUTES=budget)
    return replace(saved, training=training, device=current.device)


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
    cfg, saved, state, root = _starting_point(cfg, ws, resume, dataset)
    seed_everything(distributed.rank_seed(cfg.SEED, distributed.rank()))
    # 2. Images: find, sample and split; decode into the cache once (later epochs and runs decode nothing).
    listing, images, train_rows, val_rows = _training_images(cfg, ws, root, resume, saved, progress)
    # 3. Model, optimizer, grad scaler, generators, position: fresh (seeded) or from the checkpoint.
    model, projector = _model_and_projector(cfg, device, resume, saved, state)
    optimizer, scaler, augment, position = _optimizer_and_position(cfg, device, model, projector, saved, state,
                                                                   train_rows)
    forward, validate_forward, train_projector = _wrapped_for_training(cfg, device, model, projector, position)
    # 4. The checkpoint folder (rank 0 names and makes it): its description (config.json), summary.txt.
    folder = Path(resume) if resume is not None else _new_folder(ws)
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


def _starting_point(cfg: Config, ws: Workspace, resume: Path | None, dataset: Path | None
                    ) -> tuple[Config, Checkpoint | None, dict[str, Any] | None, Path]:
    """(configuration, the checkpoint resumed or None, its trainer state or None, the image folder)."""
    if resume is None:
        return cfg, None, None, Path(dataset or ws.dataset)
    cfg, saved, state = _open_checkpoint(Path(resume), cfg)
    recorded = saved.description.dataset
    return cfg, saved, state, Path(dataset or (recorded.root if recorded else None) or ws.dataset)


def _training_images(cfg: Config, ws: Workspace, root: Path, resume: Path | None, saved: Checkpoint | None,
                     progress: bool) -> tuple[Listing, CachedImages, torch.Tensor, torch.Tensor]:
    """(the folder's listing, its images decoded into the cache, the training rows, the validation rows)."""
    try:
        listing = list_folder(root)
        train_paths, val_paths = select_images(cfg, root, listing)
    except FeXTError as e:
        if resume is None:
            raise
        name = Path(resume).name
        raise FeXTError(f"{e} {name} was trained on {root}: if its images moved, run "
                        f"`fext train --resume {name} --dataset NEW_FOLDER`.") from None
    images = _cached_images(train_paths + val_paths, cfg, ws, progress)
    train_rows, val_rows = _rows(images, train_paths, val_paths, root, cfg)
    recorded = saved.description.dataset if saved else None
    if recorded and recorded.train != len(train_rows):
        log.warning("The images changed since the checkpoint was made: %d training images now, %d then.",
                    len(train_rows), recorded.train)
    return listing, images, train_rows, val_rows


def _model_and_projector(cfg: Config, device: torch.device, resume: Path | None, saved: Checkpoint | None,
                         state: dict[str, Any] | None) -> tuple[FeXTAutoEncoder, torch.nn.Module | None]:
    """The model (seeded, or the checkpoint's weights) set up for training on ``device``, and the recipe's projector."""
    if device.type == "cpu" and not cfg.training.ACTIVATION_CHECKPOINTING:
        keep_freed_memory()  # activations are not re-mapped every step (benchmarks/README.md)
    if resume is None:
        model = FeXTAutoEncoder.from_preset(cfg.model.PRESET, cfg.model.IMG_SIZE)
    else:
        model = FeXTAutoEncoder(saved.description.architecture)
        load_weights(model, state["model"] if state else load_weights_file(Path(resume) / WEIGHTS))
    model.to(device)
    model.activation_checkpointing = cfg.training.ACTIVATION_CHECKPOINTING
    model.enable_lean_training()  # the stages as memory-lean autograd nodes: the same values, fewer saved bytes
    projector = recipe_projector(cfg, model.arch.feature_dim)
    if projector is not None:
        projector.to(device)
        if state and "projector" in state:
            projector.load_state_dict(state["projector"])
    return model, projector


def _optimizer_and_position(
    cfg: Config, device: torch.device, model: FeXTAutoEncoder, projector: torch.nn.Module | None,
    saved: Checkpoint | None, state: dict[str, Any] | None, train_rows: torch.Tensor,
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler, torch.Generator, RunPosition]:
    """Adam over the model's parameters (then the projector's), the grad scaler, the augmentation generator and
    where the run stands: fresh, or restored from the trainer state."""
    parameters = list(model.parameters())
    if projector is not None:
        parameters += list(projector.parameters())  # after the model's: the optimizer state keeps its order
    optimizer = torch.optim.Adam(parameters, lr=cfg.training.LR_SCHEDULER.INITIAL_LR, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(device, cfg.device.MIXED_PRECISION))
    augment = torch.Generator().manual_seed(distributed.rank_seed(cfg.SEED + 1, distributed.rank()))
    if saved is None:
        position = RunPosition()
    else:
        batches_per_epoch = -(-len(distributed.shard(train_rows, pad=True)) // cfg.training.BATCH_SIZE)
        position = _restore(saved, state, optimizer, scaler, augment, batches_per_epoch)
    if cfg.device.MIXED_PRECISION and device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning("device.MIXED_PRECISION: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 "
                    "autocast is emulated and usually slower than float32; consider device.MIXED_PRECISION false.")
    return optimizer, scaler, augment, position


def _wrapped_for_training(cfg: Config, device: torch.device, model: FeXTAutoEncoder,
                          projector: torch.nn.Module | None, position: RunPosition) -> tuple[Any, Any, Any]:
    """(the forward training calls, the forward validation calls or None, the projector as the loss calls it):
    compiled with JIT_COMPILE, and wrapped in DistributedDataParallel under torchrun."""
    forward = torch.compile(model, backend=cfg.model.JIT_BACKEND) if cfg.model.JIT_COMPILE else model
    validate_forward = None
    if distributed.active():
        validate_forward = forward
        ddp = distributed.ddp_model(model, device)
        forward = torch.compile(ddp, backend=cfg.model.JIT_BACKEND) if cfg.model.JIT_COMPILE else ddp
        if position.batch:
            log.warning("The checkpoint stopped inside epoch %d: under torchrun that epoch starts again from its "
                        "first batch.", position.epoch + 1)
            position.batch, position.partial = 0, {}
    train_projector = distributed.ddp_model(projector, device) if projector is not None else None
    return forward, validate_forward, train_projector


def _new_folder(ws: Workspace) -> Path:
    """A new checkpoint folder, named and made by rank 0, its name shared with every rank."""
    folder = None
    if distributed.is_main():
        folder = new_checkpoint_dir(ws)
        folder.mkdir(parents=True)
    return Path(distributed.broadcast_object(str(folder) if distributed.is_main() else None))


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


def _cached_images(paths: list[Path], cfg: Config, ws: Workspace, progress: bool) -> CachedImages:
    """The run's images in the decoded-image cache: decoded by rank 0 only, then opened by the other ranks."""
    if distributed.is_main():
        images = prepare_images(paths, cfg.model.IMG_SIZE, ws.cache, data_workers(cfg.device.NUM_PROCESSORS),
                                progress=progress, desc="Decoding images")
    distributed.barrier()
    if distributed.is_main():
        return images
    try:
        return open_readonly(paths, cfg.model.IMG_SIZE, ws.cache)
    except FeXTError as e:
        raise FeXTError(f"Rank {distributed.rank()}: {e} Rank 0 decoded the images into {ws.cache}: on several "
                        "machines the workspace must be on a file system they all share.") from None


def _open_checkpoint(folder: Path, current: Config) -> tuple[Config, Checkpoint, dict[str, Any] | None]:
    """(the configuration to resume with, the checkpoint, its trainer state or None) of a checkpoint folder."""
    for stale in folder.glob(".*.tmp"):  # left by a process killed while writing a file
        stale.unlink(missing_ok=True)
    saved = read_checkpoint(folder)
    if saved.description.configuration is None:
        raise FeXTError(f"{folder.name} holds no training configuration (the model was not saved by "
                        "`fext train`), so it cannot be resumed; train a new model with `fext train`.")
    state = load_trainer_state(folder)
    if state is None:
        log.warning("%s has no %s: resuming from its weights with a fresh optimizer.", folder.name, TRAINER_STATE)
    return resumed_config(saved.description.configuration, current), saved, state


def _restore(
    saved: Checkpoint,
    state: dict[str, Any] | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    augment: torch.Generator,
    batches_per_epoch: int,
) -> RunPosition:
    """Load the optimizer, scaler and generator states; return where the run stands.

    Without a trainer state the history gives the epochs done, and the schedule step is
    estimated from them. Under torchrun each rank takes its own generator states (saved by
    the same number of processes), or reseeds from the seed, rank and step.
    """
    if state is None:
        history = saved.epochs
        return RunPosition(epoch=len(history), step=len(history) * batches_per_epoch, history=history)
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rng = _rank_rng(state)
    if rng is None:
        seed = distributed.rank_seed(int(state["step"]), distributed.rank())
        seed_everything(seed)
        augment.manual_seed(seed + 1)
        log.info("Rank %d: the trainer state holds no generator state for it (saved by another number of "
                 "processes); reseeded.", distributed.rank())
        return position_from_state(state)
    skipped = restore_rng(rng, augment)
    if skipped:
        log.warning("Not restored on this machine: %s (reseeded).", ", ".join(skipped))
    return position_from_state(state)


def _rank_rng(state: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's generator states in a trainer state: ``rng`` for rank 0, ``rng_ranks[rank]`` for the others."""
    rank = distributed.rank()
    if rank == 0:
        return state["rng"]
    ranks = state.get("rng_ranks") or []
    return ranks[rank] if len(ranks) == distributed.world_size() else None


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
                    entry = {
                        "epoch": p.epoch + 1, "train": result.metrics, "validation": validation, "lr": result.lr,
                        "seconds": round(result.seconds + time.perf_counter() - validation_started, 3),
                        "images_per_second": round(result.images / max(result.seconds, 1e-9), 2), "steps": p.step,
                    }
                    p.history.append(entry)
                    p.epoch, p.batch, p.partial = p.epoch + 1, 0, {}
                    _save(run, tensorboard, entry)
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


def _save(run: Run, tensorboard: outputs.TensorBoardLog, entry: dict[str, Any] | None) -> None:
    """Save the run: after a completed epoch (``entry``), or where an interrupted one stands.

    trainer_state.pt goes first: it alone is what a resume reads, so a kill between the writes
    below leaves at worst user-facing files one save behind it, never a state that mixes saves.
    """
    p, folder = run.position, run.folder
    rank_rngs = distributed.gather_objects(capture_rng(run.augment)) if distributed.active() else None
    if not distributed.is_main():
        run.saved = outputs.describe_position(p)
        return
    keep = entry["epoch"] if entry is not None and run.cfg.training.SAVE_CHECKPOINTS else None
    set_feature_center(run.model, run.images, run.train_rows, run.device)
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


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the instructions that make bf16 autocast faster than float32 on a CPU."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(p) for p in probes):
        return True  # cannot tell: say nothing
    return any(p() for p in probes)


def _rows(
    images: CachedImages, train_paths: list[Path], val_paths: list[Path], root: Path, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache rows of the readable train and validation images; say how validation ends up empty."""
    position = {str(p): i for i, p in enumerate(images.paths)}
    train_rows = [position[str(p)] for p in train_paths if str(p) in position]
    val_rows = [position[str(p)] for p in val_paths if str(p) in position]
    if not train_rows:
        raise FeXTError(
            f"None of the {len(train_paths)} training images in {root} could be read (see the warnings above); "
            "replace or remove the broken files."
        )
    if cfg.dataset.VALIDATION_SIZE == 0:
        log.info("dataset.VALIDATION_SIZE is 0: training without validation.")
    elif not val_paths:
        log.warning("The validation split is empty (%d image(s) is too few for dataset.VALIDATION_SIZE=%g): "
                    "training without validation. Add images to get validation metrics.",
                    len(train_paths), cfg.dataset.VALIDATION_SIZE)
    elif not val_rows:
        log.warning("None of the %d validation images could be read: training without validation.", len(val_paths))
    return torch.tensor(train_rows, dtype=torch.int64), torch.tensor(val_rows, dtype=torch.int64)
