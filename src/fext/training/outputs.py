"""What a training run writes and says for people: the curves, summary.txt, epoch log lines, TensorBoard logs.

Every file goes through :mod:`fext._io` (temporary name, then rename). TensorBoard's event files
are the one exception: they are append-only logs written by ``SummaryWriter``, and a resumed run
purges the events after its starting epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import fext
from fext._io import save_figure, write_text
from fext.checkpoints import CheckpointDescription
from fext.config import Config, config_to_dict
from fext.device import autocast_dtype
from fext.model import FeXTAutoEncoder, describe
from fext.training.state import RunPosition

log = logging.getLogger(__name__)

HISTORY_METRICS = ("loss", "cosine", "psnr")
"""Metrics recorded per epoch for the train and validation images (``loss`` is the MAE)."""

_LABELS = {"loss": "loss (mean absolute error)", "cosine": "cosine similarity", "psnr": "PSNR (dB)"}


def plot_history(path: Path, epochs: list[dict[str, Any]], title: str) -> None:
    """training_history.png: train and validation curves of every metric, and the learning rate."""
    from matplotlib.figure import Figure

    # Fixed margins: a constrained layout would draw the figure twice, at every epoch.
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2, gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.07, "top": 0.9,
                                           "hspace": 0.35, "wspace": 0.18}).ravel()
    x = [e["epoch"] for e in epochs]
    for ax, metric in zip(axes, HISTORY_METRICS):
        ax.plot(x, [e["train"][metric] for e in epochs], "o-", label="train", markersize=3)
        val = [(e["epoch"], e["validation"][metric]) for e in epochs if e.get("validation")]
        if val:
            ax.plot(*zip(*val), "s-", label="validation", markersize=3)
        ax.set_title(_LABELS[metric])
        ax.legend()
    axes[3].plot(x, [e["lr"] for e in epochs], "o-", color="tab:green", markersize=3)
    axes[3].set_title("learning rate (last batch of the epoch)")
    axes[3].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        # Epochs are whole numbers: no 1.5 ticks on short runs.
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    save_figure(fig, path, dpi=100)


def summary_text(
    name: str,
    model_description: str,
    dataset: dict[str, Any],
    failures: list[tuple[str, str]],
    configuration: dict[str, Any],
    environment: str,
    not_images: Sequence[tuple[str, str]] = (),
) -> str:
    """summary.txt: the architecture, its cost, the images used, the files that are not images and the configuration."""
    lines = [f"FeXT training run {name}", environment, "", "Model", model_description, "", "Images"]
    lines.append(f"  folder: {dataset['root']}")
    lines.append(f"  train: {dataset['train']}  validation: {dataset['validation']}  unreadable (skipped): {dataset['failed']}")
    for path, reason in failures[:50]:
        lines.append(f"    skipped {path}: {reason}")
    if len(failures) > 50:
        lines.append(f"    ... and {len(failures) - 50} more (see the log file)")
    if not_images:
        lines.append(f"  not images (skipped): {len(not_images)}")
        lines += [f"    {path}: {reason}" for path, reason in not_images]
    lines += ["", "Configuration", json.dumps(configuration, indent=2), ""]
    return "\n".join(lines)


def append_summary(path: Path, line: str) -> None:
    """Add a line at the end of summary.txt (a resumed run records itself)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old.rstrip("\n") + "\n" + line + "\n")


def write_run_summary(
    path: Path, fresh: bool, cfg: Config, model: FeXTAutoEncoder, device: torch.device,
    description: CheckpointDescription, failures: list[tuple[Path, str]], p: RunPosition,
    not_images: Sequence[tuple[str, str]] = (),
) -> None:
    """summary.txt: written by a new run, a line appended by each resume; ``not_images``: (relative path, reason)."""
    environment = (f"fext {fext.__version__}, torch {torch.__version__}, device {device}, mixed precision "
                   f"{autocast_dtype(device) if cfg.device.MIXED_PRECISION else 'off'}, "
                   f"torch.compile {cfg.model.JIT_BACKEND if cfg.model.JIT_COMPILE else 'off'}")
    data = description.dataset
    if fresh:
        skipped = [(str(image), reason) for image, reason in failures]
        write_text(path, summary_text(
            path.parent.name, describe(model), asdict(data), skipped, config_to_dict(cfg),
            f"created {description.created}, {environment}", not_images))
    else:
        append_summary(path, (
            f"Resumed {time.strftime('%Y-%m-%dT%H:%M:%S')} at {describe_position(p)} (step {p.step}) for "
            f"{cfg.training.ADDITIONAL_EPOCHS} more epochs; {environment}; {data.train} train, "
            f"{data.validation} validation images, {data.failed} unreadable"))


def describe_position(p: RunPosition) -> str:
    """Where a run stands, for people: "epoch 3", "epoch 3 + 12 batches of epoch 4"."""
    batches = f"{p.batch} batch" + ("es" if p.batch > 1 else "")
    return f"epoch {p.epoch}" + (f" + {batches} of epoch {p.epoch + 1}" if p.batch else "")


EPOCH_ENTRY = "epoch_entry"
"""The attribute of :func:`log_epoch`'s record that holds the epoch's history entry, for a progress display."""


def log_epoch(entry: dict[str, Any], epochs: int | None) -> None:
    """One log line per completed epoch: its metrics, learning rate and speed (``epochs`` None: a time budget).

    The record carries the entry itself (``record.epoch_entry``), so a display (the demo's bar) reads the
    numbers instead of the text.
    """
    t, v = entry["train"], entry["validation"]
    text = f"Epoch {entry['epoch']}{'' if epochs is None else f'/{epochs}'}: train loss {t['loss']:.4f} cosine {t['cosine']:.4f} psnr {t['psnr']:.2f}"
    if v:
        text += f" | validation loss {v['loss']:.4f} cosine {v['cosine']:.4f} psnr {v['psnr']:.2f}"
    log.info("%s | lr %.2e | %.1f s, %.1f img/s", text, entry["lr"], entry["seconds"], entry["images_per_second"],
             extra={EPOCH_ENTRY: entry})


class TensorBoardLog:
    """Per-epoch scalars in ``<checkpoint>/tensorboard`` (global step = epoch); a no-op when disabled."""

    def __init__(self, directory: Path, enabled: bool, first_epoch: int) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after its last saved epoch.
            self.writer = SummaryWriter(log_dir=str(directory), purge_step=first_epoch)

    def log_epoch(self, entry: dict[str, Any]) -> None:
        if self.writer is None:
            return
        epoch = entry["epoch"]
        for split in ("train", "validation"):
            for metric, value in (entry.get(split) or {}).items():
                self.writer.add_scalar(f"{metric}/{split}", value, epoch)
        self.writer.add_scalar("lr", entry["lr"], epoch)
        self.writer.add_scalar("images_per_second", entry["images_per_second"], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
