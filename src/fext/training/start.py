"""What a training run needs before its first epoch, fresh or resumed: the steps :func:`fext.training.train` takes.

The configuration and trainer state of a resumed checkpoint (:func:`starting_point`, :func:`resumed_config`),
the images decoded into the cache and split into rows (:func:`training_images`), the model and the recipe's
projector (:func:`model_and_projector`), the optimizer, grad scaler, generators and position
(:func:`optimizer_and_position`), torch.compile and DistributedDataParallel (:func:`wrapped_for_training`),
and a new checkpoint folder (:func:`new_folder`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fext import distributed
from fext._allocator import keep_freed_memory
from fext.checkpoints import (
    TRAINER_STATE, WEIGHTS, Checkpoint, load_trainer_state, load_weights, load_weights_file, new_checkpoint_dir,
    read_checkpoint,
)
from fext.config import Config
from fext.data import CachedImages, Listing, list_folder, open_readonly, prepare_images, select_images
from fext.device import needs_grad_scaler
from fext.errors import FeXTError
from fext.machine import data_workers
from fext.model import FeXTAutoEncoder
from fext.training.objectives import recipe_projector
from fext.training.state import RunPosition, position_from_state, restore_rng, seed_everything
from fext.workspace import Workspace

log = logging.getLogger(__name__)


def resumed_config(saved: Config, current: Config) -> Config:
    """The checkpoint's configuration, with ADDITIONAL_EPOCHS, ACTIVATION_CHECKPOINTING (a memory
    setting of this machine, values unchanged) and the device section from ``current``, and
    TIME_BUDGET_MINUTES from ``current`` when set there (a total: a larger one extends the run)."""
    budget = current.training.TIME_BUDGET_MINUTES or saved.training.TIME_BUDGET_MINUTES
    training = replace(saved.training, ADDITIONAL_EPOCHS=current.training.ADDITIONAL_EPOCHS,
                       ACTIVATION_CHECKPOINTING=current.training.ACTIVATION_CHECKPOINTING,
                       TIME_BUDGET_MINUTES=budget)
    return replace(saved, training=training, device=current.device)


def starting_point(cfg: Config, ws: Workspace, resume: Path | None, dataset: Path | None
                    ) -> tuple[Config, Checkpoint | None, dict[str, Any] | None, Path]:
    """(configuration, the checkpoint resumed or None, its trainer state or None, the image folder)."""
    if resume is None:
        return cfg, None, None, Path(dataset or ws.dataset)
    cfg, saved, state = _open_checkpoint(Path(resume), cfg)
    recorded = saved.description.dataset
    return cfg, saved, state, Path(dataset or (recorded.root if recorded else None) or ws.dataset)


def training_images(cfg: Config, ws: Workspace, root: Path, resume: Path | None, saved: Checkpoint | None,
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


def model_and_projector(cfg: Config, device: torch.device, resume: Path | None, saved: Checkpoint | None,
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


def optimizer_and_position(
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


def wrapped_for_training(cfg: Config, device: torch.device, model: FeXTAutoEncoder,
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


def new_folder(ws: Workspace) -> Path:
    """A new checkpoint folder, named and made by rank 0, its name shared with every rank."""
    folder = None
    if distributed.is_main():
        folder = new_checkpoint_dir(ws)
        folder.mkdir(parents=True)
    return Path(distributed.broadcast_object(str(folder) if distributed.is_main() else None))


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
