"""What a training run writes for people: history.json, the curves, summary.txt and TensorBoard logs.

Every file goes through :mod:`fext._io` (temporary name, then rename). TensorBoard's event files
are the one exception: they are append-only logs written by ``SummaryWriter``, and a resumed run
purges the events after its starting epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fext._io import save_figure, write_json, write_text

HISTORY_METRICS = ("loss", "cosine", "psnr")
"""Metrics recorded per epoch for the train and validation images (``loss`` is the MAE)."""

_LABELS = {"loss": "loss (mean absolute error)", "cosine": "cosine similarity", "psnr": "PSNR (dB)"}


def write_history(path: Path, epochs: list[dict[str, Any]]) -> None:
    """history.json: ``{"total_epochs": N, "epochs": [...]}`` with one entry per completed epoch."""
    write_json(path, {"total_epochs": len(epochs), "epochs": epochs})


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
) -> str:
    """summary.txt: the architecture, its cost, the images used and the full configuration."""
    lines = [f"FeXT training run {name}", environment, "", "Model", model_description, "", "Images"]
    lines.append(f"  folder: {dataset['root']}")
    lines.append(f"  train: {dataset['train']}  validation: {dataset['validation']}  unreadable (skipped): {dataset['failed']}")
    for path, reason in failures[:50]:
        lines.append(f"    skipped {path}: {reason}")
    if len(failures) > 50:
        lines.append(f"    ... and {len(failures) - 50} more (see the log file)")
    lines += ["", "Configuration", json.dumps(configuration, indent=2), ""]
    return "\n".join(lines)


def write_summary(path: Path, text: str) -> None:
    write_text(path, text)


def append_summary(path: Path, line: str) -> None:
    """Add a line at the end of summary.txt (a resumed run records itself)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old.rstrip("\n") + "\n" + line + "\n")


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
