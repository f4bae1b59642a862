"""The evaluation figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Every function returns a :class:`matplotlib.figure.Figure`; the caller saves it with
:func:`fext._io.save_figure`. Images are (H, W, 3) uint8 or float arrays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fext.html_report import shorten

PAIRS_PER_ROW = 3
"""Original/reconstruction pairs per row of a reconstruction sheet."""


def _show(ax: Any, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def reconstruction_sheet(
    title: str,
    names: Sequence[str],
    originals: np.ndarray,
    reconstructions: np.ndarray,
    psnr: Sequence[float],
    ssim: Sequence[float],
    baseline: np.ndarray | None = None,
    baseline_label: str = "PCA",
) -> Figure:
    """Original | reconstruction (| PCA baseline) side by side for N images, titled with PSNR/SSIM.

    ``originals``, ``reconstructions``, ``baseline``: (N, H, W, 3).
    """
    n = len(names)
    per_image = 2 if baseline is None else 3
    pairs = PAIRS_PER_ROW if baseline is None else 2
    cols = min(n, pairs)
    rows = -(-n // pairs)
    height = 2.6 * rows + 0.7
    fig = Figure(figsize=(2.3 * per_image * cols, height))
    fig.suptitle(title, fontsize=12)
    # A fixed grid: image sheets need no layout solver, which is most of the drawing time.
    axes = fig.subplots(rows, per_image * cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / height, wspace=0.06, hspace=0.35)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, pairs)
        row = axes[r]
        row[per_image * c].set_axis_on()
        _show(row[per_image * c], originals[i], f"original\n{shorten(names[i], 24)}")
        row[per_image * c + 1].set_axis_on()
        _show(row[per_image * c + 1], reconstructions[i], f"autoencoder\nPSNR {psnr[i]:.1f} dB · SSIM {ssim[i]:.3f}")
        if baseline is not None:
            row[per_image * c + 2].set_axis_on()
            _show(row[per_image * c + 2], baseline[i], baseline_label)
    return fig


def worst_sheet(
    title: str,
    names: Sequence[str],
    originals: np.ndarray,
    reconstructions: np.ndarray,
    mae: Sequence[float],
    psnr: Sequence[float],
) -> Figure:
    """One row per image: original | reconstruction | absolute error map (mean over RGB), worst first.

    ``originals``, ``reconstructions``: (N, H, W, 3) in [0, 1]. The error maps share one colour
    scale, so rows compare at a glance.
    """
    n = len(names)
    errors = np.abs(np.asarray(originals, np.float32) - np.asarray(reconstructions, np.float32)).mean(-1)
    vmax = max(float(errors.max()), 1e-6)
    height = 2.5 * n + 1.0
    fig = Figure(figsize=(8.4, height))
    fig.suptitle(title, fontsize=12)
    axes = fig.subplots(n, 3, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.86, bottom=0.01, top=1 - 0.9 / height, wspace=0.06, hspace=0.35)
    im = None
    for i in range(n):
        _show(axes[i, 0], originals[i], f"#{i + 1} {shorten(names[i], 24)}")
        _show(axes[i, 1], reconstructions[i], f"reconstruction\nMAE {mae[i]:.4f} · PSNR {psnr[i]:.1f} dB")
        im = axes[i, 2].imshow(errors[i], cmap="inferno", vmin=0.0, vmax=vmax)
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        axes[i, 2].set_title("|error|, mean over RGB", fontsize=8)
    bar = fig.add_axes((0.89, 0.25, 0.025, 0.5))
    fig.colorbar(im, cax=bar, label="absolute error (pixel values in [0, 1])")
    return fig


def latent_pca_figure(
    title: str,
    coords: np.ndarray,
    ratios: Sequence[float],
    color: np.ndarray,
    color_label: str,
    marked: Sequence[int] = (),
) -> Figure:
    """Embeddings on their first 2 principal components (left) and 3 (right, 3-D), coloured by ``color``.

    ``coords``: (n, 3); ``marked``: indices annotated #1, #2, ... (the worst reconstructions).
    """
    fig = Figure(figsize=(13, 5.6), layout="constrained")
    fig.suptitle(title, fontsize=12)
    ax2 = fig.add_subplot(1, 2, 1)
    sc = ax2.scatter(coords[:, 0], coords[:, 1], c=color, cmap="viridis", s=18, alpha=0.85, edgecolors="none")
    for rank, i in enumerate(marked, 1):
        ax2.annotate(f"#{rank}", (coords[i, 0], coords[i, 1]), fontsize=8, color="crimson",
                     xytext=(3, 3), textcoords="offset points")
    ax2.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of variance)")
    ax2.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}% of variance)")
    ax2.set_title("2 principal components", fontsize=10)
    ax2.grid(alpha=0.3)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.scatter(coords[:, 0], coords[:, 1], coords[:, 2], c=color, cmap="viridis", s=14, alpha=0.85)
    ax3.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}%)")
    ax3.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}%)")
    ax3.set_zlabel(f"PC3 ({100 * ratios[2]:.1f}%)")
    ax3.set_title("3 principal components", fontsize=10)
    fig.colorbar(sc, ax=[ax2, ax3], label=color_label, shrink=0.8)
    return fig


def training_curves_figure(title: str, history: dict[str, Any]) -> Figure | None:
    """Train and validation metrics and the learning rate per epoch, from a history.json dict.

    Returns None when the history holds no epoch.
    """
    epochs = history.get("epochs") or []
    if not epochs:
        return None
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    labels = {"loss": "MAE (training loss)", "cosine": "cosine similarity", "psnr": "PSNR (dB)"}
    present = [m for m in labels if any((e.get("train") or {}).get(m) is not None for e in epochs)]
    has_lr = any(e.get("lr") is not None for e in epochs)
    panels = len(present) + int(has_lr)
    fig = Figure(figsize=(4.2 * panels, 3.6), layout="constrained")
    fig.suptitle(title, fontsize=12)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, metric in zip(axes, present):
        for split, style in (("train", "-o"), ("validation", "--s")):
            ys = [(e.get(split) or {}).get(metric) for e in epochs]
            pts = [(a, b) for a, b in zip(x, ys) if b is not None]
            if pts:
                ax.plot(*zip(*pts), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[metric])
        ax.set_title(labels[metric], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if has_lr:
        ax = axes[-1]
        pts = [(a, e["lr"]) for a, e in zip(x, epochs) if e.get("lr") is not None]
        ax.plot(*zip(*pts), "-", color="tab:gray")
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (end of epoch)", fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    return fig


def comparison_figure(names: Sequence[str], model: dict[str, Sequence], baseline: dict[str, Sequence]) -> Figure:
    """Validation PSNR and SSIM per checkpoint: autoencoder bars beside the PCA baseline, ± one std.

    ``model`` / ``baseline``: {"psnr": (means, stds), "ssim": (means, stds)}; NaN where missing.
    """
    n = len(names)
    fig = Figure(figsize=(max(7.0, 1.3 * n + 4), 4.4), layout="constrained")
    fig.suptitle("Validation reconstruction quality per checkpoint", fontsize=12)
    axes = fig.subplots(1, 2)
    x = np.arange(n)
    width = 0.38
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB), higher is better"), (axes[1], "ssim", "SSIM, higher is better")):
        m_mean, m_std = model[metric]
        b_mean, b_std = baseline[metric]
        ax.bar(x - width / 2, m_mean, width, yerr=m_std, capsize=3, label="autoencoder", color="tab:blue")
        ax.bar(x + width / 2, b_mean, width, yerr=b_std, capsize=3, label="PCA baseline", color="tab:orange")
        ax.set_xticks(x, [shorten(nm, 20) for nm in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(metric.upper(), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def names_of(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Paths relative to ``root`` when inside it, else file names: short labels for titles."""
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix() if root else Path(p).name)
        except ValueError:
            out.append(Path(p).name)
    return out
