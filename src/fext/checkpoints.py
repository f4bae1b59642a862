"""The checkpoint format: its file names, and how a checkpoint is written, read and recognised.

A checkpoint is a folder, ``resources/checkpoints/FeXT_<YYYYmmddTHHMMSS>/`` by default, holding

- ``model.safetensors``: the weights (never pickle);
- ``config.json``: a :class:`CheckpointDescription` (the architecture, the full run configuration,
  the dataset used, when it was created and by which FeXT version);
- ``history.json``: per completed epoch, train and validation metrics, learning rate, seconds and
  images/second (written by training);
- ``trainer_state.pt``: what an exact resume needs (see :mod:`fext.training.state`), loadable with
  ``torch.load(..., weights_only=True)``;
- ``training_history.png``, ``summary.txt``, ``tensorboard/`` and, with SAVE_CHECKPOINTS, one
  ``epoch_NNN.safetensors`` per epoch.

This module alone names these files and reads or writes ``config.json``, ``model.safetensors`` and
``trainer_state.pt`` (:mod:`fext.checkpoint_catalog` lists a workspace's checkpoints and chooses one): :func:`save_checkpoint`, :func:`read_checkpoint` (no weights),
:func:`read_weights` and :func:`is_checkpoint`. Every file is written to a temporary name and renamed.
It knows the model only by its :class:`~fext.architecture.ModelArchitecture` and state dict: the model
(:mod:`fext.model`) builds itself from a checkpoint with :func:`fext.model.load_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fext._io import atomic_path, write_json
from fext.architecture import ModelArchitecture
from fext.config import Config, config_from_dict, config_to_dict
from fext.errors import ConfigError, FeXTError
from fext.workspace import Workspace

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "history.json"
TRAINER_STATE = "trainer_state.pt"
PLOT = "training_history.png"
SUMMARY = "summary.txt"
TENSORBOARD = "tensorboard"

TRAINER_STATE_FORMAT = 1
"""Version of the trainer_state.pt layout (its ``format`` key)."""


def epoch_weights_name(epoch: int) -> str:
    """The file of one epoch's weights kept with training.SAVE_CHECKPOINTS."""
    return f"epoch_{epoch:03d}.safetensors"


@dataclass(frozen=True)
class DatasetRecord:
    """The images a checkpoint was trained on: the folder and how many went to each side."""

    root: str | None = None
    """Absolute path of the image folder (the split is rebuilt from it and the configuration)."""
    train: int = 0
    validation: int = 0
    failed: int = 0
    """Images that could not be read."""


@dataclass(frozen=True)
class CheckpointDescription:
    """What ``config.json`` says: everything about a checkpoint except its weights and history."""

    architecture: ModelArchitecture
    """Rebuilds the model (``FeXTAutoEncoder(architecture)``)."""
    configuration: Config | None = None
    """The resolved run configuration; None for a model saved outside `fext train`."""
    dataset: DatasetRecord | None = None
    created: str | None = None
    """``YYYY-mm-ddTHH:MM:SS`` of the first save."""
    fext_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` object; keys that are None are left out."""
        data: dict[str, Any] = {"architecture": asdict(self.architecture)}
        if self.configuration is not None:
            data["configuration"] = config_to_dict(self.configuration)
        if self.dataset is not None:
            data["dataset"] = asdict(self.dataset)
        data.update({k: v for k, v in (("created", self.created), ("fext_version", self.fext_version)) if v})
        return data

    @classmethod
    def from_json(cls, data: Any, source: Path) -> CheckpointDescription:
        """Parse and validate a ``config.json`` object; :class:`FeXTError` naming ``source`` if unusable."""
        try:
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            spec = data["architecture"]
            unknown = set(spec) - {f.name for f in fields(ModelArchitecture)}
            if unknown:
                raise ValueError(f"unknown architecture keys {sorted(unknown)}")
            architecture = ModelArchitecture(**spec)
        except (ValueError, KeyError, TypeError) as e:
            raise FeXTError(
                f"{source} does not describe a FeXT model ({type(e).__name__}: {e}). "
                "The checkpoint is damaged or from another program; train a new one with `fext train`."
            ) from e
        saved = data.get("configuration")
        if isinstance(saved, dict) and isinstance(saved.get("training", {}), dict):
            # Checkpoints from before training.RECIPE existed were trained with the seed's recipe: they resume with it.
            saved = {**saved, "training": {"RECIPE": "seed", **saved.get("training", {})}}
            # Views checkpoints from before SHARED_FLIP and PROJECTOR_DIM existed were trained without either.
            views = saved["training"].get("VIEWS")
            if isinstance(views, dict):
                saved["training"] = {**saved["training"], "VIEWS": {"SHARED_FLIP": False, "PROJECTOR_DIM": 0, **views}}
        try:
            configuration = config_from_dict(saved) if saved else None
        except ConfigError as e:
            raise FeXTError(f"{source}: the saved configuration is invalid ({e}); the checkpoint is damaged") from None
        dataset = data.get("dataset")
        if dataset:
            known = {f.name for f in fields(DatasetRecord)}
            dataset = DatasetRecord(**{k: v for k, v in dataset.items() if k in known})
        return cls(architecture, configuration, dataset or None, data.get("created"), data.get("fext_version"))


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder as read from disk (weights not loaded)."""

    path: Path
    description: CheckpointDescription
    history: dict[str, Any] | None = None
    """history.json (``{"total_epochs": N, "epochs": [...]}``), None when absent."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return (self.history or {}).get("epochs") or []

    def last(self, split: str, metric: str = "loss") -> float | None:
        """The last epoch's ``split`` ("train" or "validation") value of ``metric``."""
        return (self.epochs[-1].get(split) or {}).get(metric) if self.epochs else None


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a checkpoint's weights and ``config.json`` (their content is not checked)."""
    folder = Path(folder)
    return (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file()


def missing_file(folder: Path) -> str | None:
    """The first checkpoint file ``folder`` lacks (weights, then config.json), or None."""
    return next((name for name in (WEIGHTS, CONFIG) if not (folder / name).is_file()), None)


def save_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module,
    description: CheckpointDescription | None = None,
    *,
    history: list[dict[str, Any]] | None = None,
    trainer_state: dict[str, Any] | None = None,
    keep_epoch: int | None = None,
) -> None:
    """Write a checkpoint into ``folder``: weights and ``config.json``, and what training adds.

    ``description`` defaults to the model's architecture alone. ``trainer_state`` (a dict of
    tensors, numbers, strings, lists and dicts) is written first: it alone is what a resume reads,
    so a kill between the writes below leaves at worst the other files one save behind it.
    ``history``: the completed epochs for history.json; ``keep_epoch``: also keep these weights as
    ``epoch_NNN.safetensors``.
    """
    folder = Path(folder)
    description = description or CheckpointDescription(model.arch)
    if description.architecture != model.arch:
        raise ValueError("the description's architecture is not the model's")
    if trainer_state is not None:
        with atomic_path(folder / TRAINER_STATE) as tmp:
            torch.save({"format": TRAINER_STATE_FORMAT, **trainer_state}, tmp)
    save_weights(model.state_dict(), folder / WEIGHTS)
    write_json(folder / CONFIG, description.to_json())
    if keep_epoch is not None:
        save_weights(model.state_dict(), folder / epoch_weights_name(keep_epoch))
    if history is not None:
        write_json(folder / HISTORY, {"total_epochs": len(history), "epochs": history})


def read_description(folder: str | os.PathLike) -> CheckpointDescription:
    """The typed ``config.json`` of a checkpoint folder; :class:`FeXTError` if missing or unusable."""
    path = Path(folder) / CONFIG
    return CheckpointDescription.from_json(_read_json(path), path)


def read_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """A checkpoint's description and history, without its weights; :class:`FeXTError` if unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FeXTError(f"{folder} is not a FeXT checkpoint: no such folder. Pass a checkpoint folder.")
    missing = missing_file(folder)
    if missing:
        raise FeXTError(f"{folder} is not a FeXT checkpoint: {missing} missing. "
                        "Pass a folder written by `fext train` (or save_checkpoint).")
    history = _read_history(folder / HISTORY) if (folder / HISTORY).is_file() else None
    description = read_description(folder)
    _check_weights_header(folder / WEIGHTS)
    return Checkpoint(folder, description, history)


def _check_weights_header(path: Path) -> None:
    """Read only the safetensors header: a truncated, empty or overwritten weights file is found before any work."""
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise FeXTError(f"{path} is not a valid safetensors weights file ({e}): it is damaged or not FeXT's "
                        "(FeXT never loads pickled weights). Pick another checkpoint (see `fext checkpoints`), "
                        "or train again with `fext train`.") from None


def _read_history(path: Path) -> dict[str, Any]:
    """history.json: ``{"total_epochs": N, "epochs": [{...}, ...]}``; :class:`FeXTError` naming it when damaged."""
    history = _read_json(path)
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
        raise FeXTError(f"{path} is damaged (no list of epochs); delete it to use the checkpoint without its history "
                        "(resuming rewrites it from trainer_state.pt)")
    return history


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint folder's weights file, on the CPU; :class:`FeXTError` if unusable."""
    return load_weights_file(Path(folder) / WEIGHTS)


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """trainer_state.pt of ``folder`` without unpickling arbitrary objects; None if absent."""
    path = Path(folder) / TRAINER_STATE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file of any kind is one message
        raise FeXTError(
            f"{path} cannot be read ({type(e).__name__}: {e}); the checkpoint cannot be resumed. "
            "Its model.safetensors can still be evaluated or used for encoding; start a new run with `fext train`."
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAINER_STATE_FORMAT:
        raise FeXTError(f"{path} is not a trainer state written by this version of FeXT; start a new run with `fext train`.")
    return state


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict as safetensors, atomically (contiguous CPU copies, so channels_last is fine)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors weights file onto the CPU; :class:`FeXTError` if missing or not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FeXTError(f"{path} not found: expected a {WEIGHTS}-style weights file.")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise FeXTError(
            f"{path} is not a valid safetensors weights file ({e}). FeXT never loads pickled weights; "
            "use a file written by FeXT."
        ) from e


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``; :class:`FeXTError` naming the mismatch when it does not fit."""
    if "feature_center" not in state:  # saved before the feature centre existed: its features stay uncentred
        state = {**state, "feature_center": torch.zeros_like(model.feature_center)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FeXTError(f"weights do not match the {model.arch.preset} architecture: {e}") from e


def has_feature_center(folder: Path) -> bool:
    """Whether the checkpoint's weights hold a feature centre set by training (read from the file, nothing else)."""
    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            return "feature_center" in f.keys() and bool(f.get_tensor("feature_center").any())
    except (SafetensorError, OSError):
        return False


def count_parameters(folder: Path) -> int | None:
    """Number of weights in ``model.safetensors``, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k != "feature_center")  # a buffer
    except Exception:  # noqa: BLE001 - a damaged file only leaves the value unknown
        return None


def _read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; :class:`FeXTError` naming the file when it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeXTError(f"{path.parent} is not a FeXT checkpoint: {path.name} is missing") from None
    except (OSError, ValueError) as e:
        raise FeXTError(f"Cannot read {path} ({e.__class__.__name__}: {e}); is {path.parent} a FeXT checkpoint?") from None


def new_checkpoint_dir(ws: Workspace) -> Path:
    """A fresh ``FeXT_<timestamp>`` folder name (a suffix avoids clashes within one second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path, n = ws.checkpoints / f"FeXT_{stamp}", 1
    while path.exists():
        n += 1
        path = ws.checkpoints / f"FeXT_{stamp}_{n}"
    return path
