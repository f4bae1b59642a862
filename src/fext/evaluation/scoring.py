"""Scoring one split of a checkpoint's images: the model's per-image metrics and latents, the PCA baseline.

:func:`score_model` runs the model once over a :class:`SplitImages` and keeps what the figures
need; :func:`fit_baseline` and :func:`score_pca` give the PCA baseline's per-image metrics on the
same images; :func:`summarize` turns per-image scores into the statistics of metrics.json.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fext.data import CachedImages, to_float
from fext.device import autocast
from fext.evaluation.baseline import PCABaseline, fit_pca
from fext.metrics import METRICS

log = logging.getLogger(__name__)

PCA_MAX_IMAGES = 2000
"""Training images the PCA baseline is fitted on at most."""
PCA_MAX_BYTES = 1 << 30
"""Memory of the (n, 3·S·S) float32 matrix the PCA is fitted on: lowers n for large images."""


@dataclass
class SplitImages:
    """One split of a checkpoint's images: all its paths, the sample evaluated, and the results."""

    name: str
    paths: list[Path]
    sample: list[Path] = field(default_factory=list)
    cached: CachedImages | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    latents: np.ndarray | None = None
    shown: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Rows of ``cached`` drawn for the reconstruction figure."""
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    """Reconstructions (S, S, 3) of the shown rows and of the worst ones, kept from the scoring pass."""

    @property
    def evaluated(self) -> int:
        return len(self.cached) if self.cached is not None else 0

    @property
    def failures(self) -> list[tuple[Path, str]]:
        return list(self.cached.failures) if self.cached is not None else []


def score_model(
    model: torch.nn.Module,
    split: SplitImages,
    device: torch.device,
    mixed: bool,
    batch_size: int,
    worst: int,
    progress: bool,
) -> None:
    """One pass of the model over ``split.cached``: fills ``scores`` (n,) per metric, ``latents`` (n, D),
    and ``kept``, the reconstructions of the ``shown`` rows and of the ``worst`` highest-MAE rows
    (so the figures need no second pass)."""
    cached = split.cached
    n = len(cached)
    scores = {m: np.empty(n, dtype=np.float64) for m in METRICS}
    latents: np.ndarray | None = None
    shown = set(split.shown.tolist())
    worst_kept: dict[int, np.ndarray] = {}
    show = progress and sys.stdout.isatty()
    with torch.inference_mode(), tqdm(total=n, desc=f"Evaluating {split.name}", unit="img", disable=not show) as bar:
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(n, lo + batch_size))
            x = to_float(cached.batch(rows).to(device, non_blocking=True))  # (B, 3, S, S)
            with autocast(device, mixed):
                out = model(x)
            recon = out["reconstruction"].float()  # (B, 3, S, S)
            for m, fn in METRICS.items():
                scores[m][rows] = fn(x, recon).cpu().numpy()
            z = out["latent"].float().flatten(1).cpu().numpy()  # (B, D)
            if latents is None:
                latents = np.empty((n, z.shape[1]), dtype=np.float32)
            latents[rows] = z
            # Keep this batch's candidates for the worst images, then drop all but the ``worst`` highest MAE.
            floor = min(scores["mae"][r] for r in worst_kept) if len(worst_kept) >= worst else -np.inf
            wanted = [i for i, r in enumerate(rows) if r in shown or scores["mae"][r] > floor]
            if wanted:
                for i, image in zip(wanted, to_hwc(recon[wanted])):
                    r = int(rows[i])
                    if r in shown:
                        split.kept[r] = image
                    if scores["mae"][r] > floor:
                        worst_kept[r] = image
                for r in sorted(worst_kept, key=lambda r: scores["mae"][r])[: max(0, len(worst_kept) - worst)]:
                    del worst_kept[r]
            bar.update(len(rows))
    split.kept.update(worst_kept)
    split.scores, split.latents = scores, latents


def original_images(cached: CachedImages, rows: np.ndarray) -> np.ndarray:
    """Images at ``rows`` as (N, S, S, 3) float arrays in [0, 1]."""
    return cached.batch(rows).numpy().astype(np.float32) / 255.0


def to_hwc(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def fit_baseline(fit_split: SplitImages, held_out: SplitImages, latent_dim: int,
                  device: torch.device) -> tuple[PCABaseline, str]:
    """PCA with ``latent_dim`` components (or fewer) fitted on up to PCA_MAX_IMAGES of ``fit_split``."""
    cached = fit_split.cached
    d = 3 * cached.img_size**2
    n = min(len(cached), PCA_MAX_IMAGES, max(2, PCA_MAX_BYTES // (4 * d)))
    # The evaluated sample is already drawn with SEED: its first n images are a seeded sample too.
    x = torch.empty(n, d, dtype=torch.float32)
    for lo in range(0, n, 256):
        hi = min(n, lo + 256)
        x[lo:hi] = to_float(cached.batch(np.arange(lo, hi))).flatten(1)
    t0 = time.perf_counter()
    pca = fit_pca(x, latent_dim, device=device)
    log.info("PCA baseline: %d components fitted on %d %s images in %.1f s (%.1f%% of their variance)",
             pca.k, n, fit_split.name, time.perf_counter() - t0, 100 * pca.explained_variance_ratio)
    notes = []
    if fit_split is held_out:
        notes.append(f"The PCA was fitted on the same {held_out.name} images it is scored on (there was no "
                     "separate set to fit or to score on), which flatters the baseline.")
    if pca.k < latent_dim:
        notes.append(f"The PCA has {pca.k} components, fewer than the model's {latent_dim} latent numbers: "
                     f"it was fitted on {n} images, and n images span at most n - 1 dimensions.")
    return pca, " ".join(notes)


def score_pca(pca: PCABaseline, cached: CachedImages, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """Per-image metrics (n,) of the PCA reconstructions of ``cached``."""
    n = len(cached)
    scores = {m: np.empty(n, dtype=np.float64) for m in METRICS}
    step = max(batch_size, 64)
    on_device = pca.to(device)
    with torch.inference_mode():
        for lo in range(0, n, step):
            rows = np.arange(lo, min(n, lo + step))
            x = to_float(cached.batch(rows).to(device))  # (B, 3, S, S)
            recon = on_device.reconstruct(x)
            for m, fn in METRICS.items():
                scores[m][rows] = fn(x, recon).cpu().numpy()
    return scores


def summarize(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean, std, min, median and max of each per-image metric."""
    return {
        m: {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "median": float(np.median(v)), "max": float(v.max())}
        for m, v in scores.items()
    }
