"""``fext evaluate``: metrics, pictures, the PCA baseline and the report of one or more checkpoints.

For each checkpoint, :func:`evaluate_checkpoint`:

1. loads the model and finds its images: its own training folder and train/validation split
   (rebuilt from the saved configuration by :func:`fext.data.select_images`), or
   ``--dataset DIR`` whose images all count as validation;
2. decodes them through the decoded-image cache and runs the model in batches under
   ``torch.inference_mode`` (device and mixed precision from the current configuration);
3. computes MAE, cosine, PSNR and SSIM per image on both splits;
4. fits the PCA baseline on training images and scores it on the same validation images, then
   computes the feature scorecard (:mod:`~fext.evaluation.scorecard`) of the model's vectors beside
   that PCA and raw pixels;
5. writes ``metrics.json``, ``per_image_metrics.csv``, the figures and ``report.html`` into
   ``resources/validation/checkpoints/<name>/``.

:func:`evaluate_checkpoints` does that for every checkpoint asked for, then rewrites
``checkpoints_summary.csv`` (every checkpoint of the workspace) and, once two or more
checkpoints have been evaluated, ``comparison.html``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fext
from fext._io import atomic_open, save_figure, write_json, write_text
from fext.checkpoints import HISTORY, Checkpoint, missing_file
from fext.config import Config
from fext.data import Listing, prepare_images
from fext.device import select_device
from fext.errors import FeXTError
from fext.machine import data_workers
from fext.metrics import PSNR_CAP
from fext.model import load_checkpoint
from fext.evaluation import figures, pages
from fext.evaluation.baseline import PCABaseline, project_2d_3d
from fext.evaluation.scorecard import folder_labels, score_checkpoint
from fext.evaluation.scoring import (
    METRICS, SplitImages, fit_baseline, original_images, score_model, score_pca, summarize, to_hwc,
)
from fext.evaluation.splits import seeded_sample, select_splits
from fext.evaluation.summary import METRICS_FILE, write_checkpoints_summary, write_comparison
from fext.workspace import Workspace

log = logging.getLogger(__name__)

MAX_TRAIN_IMAGES = 2000
"""Training images evaluated per checkpoint at most: a sample drawn with SEED (enough for a mean ± 2 %)."""
MAX_VALIDATION_IMAGES = 10000
"""Validation (or ``--dataset``) images evaluated at most, also a sample drawn with SEED."""
REPORT_FILE = "report.html"
PER_IMAGE_FILE = "per_image_metrics.csv"


def evaluate_checkpoints(
    ckpts: Sequence[Path],
    cfg: Config,
    ws: Workspace,
    *,
    dataset: Path | None = None,
    images: int = 6,
    progress: bool = True,
    labels_from_folders: bool = False,
) -> list[Path]:
    """Evaluate each checkpoint folder of ``ckpts``; return their output folders.

    ``dataset``: evaluate on every image of this folder instead of each checkpoint's own
    validation split. ``images``: images per reconstruction figure. ``labels_from_folders``: the
    first folder of each image under the dataset is its class (k-NN accuracy in the scorecard).
    The summary CSV is rewritten
    even when an evaluation fails; with several checkpoints, one that fails is reported and the
    others are still evaluated (a :class:`FeXTError` listing the failures is raised at the end).
    """
    ws.ensure()
    if images < 1:
        raise FeXTError(f"--images must be at least 1 (got {images}): it is the number of images per figure")
    if not ckpts:
        raise FeXTError("No checkpoint to evaluate; train one with `fext train` or name one (see `fext checkpoints`)")
    if dataset is not None and not Path(dataset).is_dir():
        raise FeXTError(f"--dataset {dataset}: no such folder. Pass a folder of images.")
    device = select_device(cfg.device.DEVICE, cfg.device.DEVICE_ID)
    done: list[Path] = []
    failed: list[str] = []
    try:
        for ckpt in ckpts:
            try:
                done.append(evaluate_checkpoint(Path(ckpt), cfg, ws, device=device, dataset=dataset,
                                                images=images, progress=progress,
                                                labels_from_folders=labels_from_folders))
            except FeXTError as e:
                if len(ckpts) == 1:
                    raise
                log.error("Could not evaluate %s: %s", Path(ckpt).name, e)
                failed.append(f"{Path(ckpt).name}: {e}")
    finally:
        write_checkpoints_summary(ws, extra=[Path(c) for c in ckpts])
    comparison = write_comparison(ws, extra=[Path(c) for c in ckpts])
    if comparison:
        log.info("Comparison of the evaluated checkpoints: %s", comparison)
    if failed:
        raise FeXTError(f"{len(failed)} of {len(ckpts)} checkpoints could not be evaluated:\n  " + "\n  ".join(failed))
    return done


@dataclass
class _Evaluation:
    """One checkpoint's evaluation as it goes: the model loaded, the images of each side, where results go."""

    ckpt: Path
    model: torch.nn.Module
    checkpoint: Checkpoint
    device: torch.device
    train: SplitImages
    validation: SplitImages
    listing: Listing
    source: str
    """Where the images came from: the checkpoint's recorded dataset, or "--dataset"."""
    out: Path
    start: float
    """``time.perf_counter()`` when the evaluation began."""

    @property
    def splits(self) -> tuple[SplitImages, SplitImages]:
        return self.train, self.validation

    @property
    def held_out(self) -> SplitImages:
        """The validation side, or the training side when nothing was held out."""
        return self.validation if self.validation.evaluated else self.train


def _caps() -> dict[str, int]:
    """The most images evaluated on each side (read at call time: tests lower them)."""
    return {"train": MAX_TRAIN_IMAGES, "validation": MAX_VALIDATION_IMAGES}


def evaluate_checkpoint(
    ckpt: Path,
    cfg: Config,
    ws: Workspace,
    *,
    device: torch.device | None = None,
    dataset: Path | None = None,
    images: int = 6,
    progress: bool = True,
    labels_from_folders: bool = False,
) -> Path:
    """Evaluate one checkpoint folder and write its outputs; return ``validation/checkpoints/<name>``."""
    ev = _start(Path(ckpt).absolute(), cfg, ws, device, dataset)
    _score_splits(ev, cfg, ws, images, progress)
    pca, pca_note = fit_baseline(ev.train if ev.train.evaluated else ev.held_out, ev.held_out,
                                 ev.model.arch.feature_dim, ev.device)
    pca_scores = score_pca(pca, ev.held_out.cached, cfg.training.BATCH_SIZE, ev.device)
    card = _scorecard(ev, pca, cfg, labels_from_folders)
    history = ev.checkpoint.history or {}
    if ev.checkpoint.history is None:
        log.warning("%s has no history.json: the report has no training curves", ev.ckpt)
    _write_figures(ev.out, ev.model.arch, ev.train, ev.validation, ev.held_out, pca, images, cfg, ev.listing.root,
                   history, ev.ckpt.name)
    result = _result(ev, cfg, history, pca, pca_note, pca_scores, card)
    write_json(ev.out / METRICS_FILE, result)
    _write_per_image(ev.out / PER_IMAGE_FILE, ev.train, ev.validation, ev.held_out, pca_scores)
    write_text(ev.out / REPORT_FILE, pages.checkpoint_report(ev.out, result, ev.checkpoint.description.to_json()))
    log.info("Feature scorecard: %s", card["verdict"])
    _log_result(result, ev.held_out.name, ev.out)
    return ev.out


def _start(ckpt: Path, cfg: Config, ws: Workspace, device: torch.device | None, dataset: Path | None) -> _Evaluation:
    """Load the checkpoint for inference on ``device``, choose the images of each side, make the output folder."""
    start = time.perf_counter()
    if not ckpt.is_dir():
        raise FeXTError(f"Checkpoint folder {ckpt} not found; list the checkpoints with `fext checkpoints`")
    missing = missing_file(ckpt)
    if missing:
        raise FeXTError(
            f"{ckpt} has no {missing}: it is not a usable checkpoint (a run stopped before its first save?). "
            "Evaluate another one (see `fext checkpoints`)."
        )
    try:
        model, checkpoint = load_checkpoint(ckpt)
    except FeXTError as e:
        raise FeXTError(f"Cannot read checkpoint {ckpt}: {e} Evaluate another one (see `fext checkpoints`).") from None
    device = device or select_device(cfg.device.DEVICE, cfg.device.DEVICE_ID)
    model = model.to(device).eval().enable_fast_inference()  # same values, faster (inference only)
    train, validation, listing, source = select_splits(ckpt, checkpoint.description, dataset)
    out = ws.validation_checkpoints / ckpt.name
    out.mkdir(parents=True, exist_ok=True)
    log.info("Evaluating %s on %s (%d train, %d validation images) -> %s",
             ckpt.name, listing.root, len(train.paths), len(validation.paths), out)
    return _Evaluation(ckpt, model, checkpoint, device, train, validation, listing, source, out, start)


def _score_splits(ev: _Evaluation, cfg: Config, ws: Workspace, images: int, progress: bool) -> None:
    """Decode a seeded sample of each side, draw the rows the figures show, and score the model's reconstructions."""
    workers = data_workers(cfg.device.NUM_PROCESSORS)
    caps = _caps()
    rng = np.random.default_rng(cfg.SEED)
    for split in ev.splits:
        if not split.paths:
            continue
        split.sample = seeded_sample(split.paths, caps[split.name], cfg.SEED)
        if len(split.sample) < len(split.paths):
            log.info("Evaluating a sample of %d of the %d %s images (drawn with SEED=%d)",
                     len(split.sample), len(split.paths), split.name, cfg.SEED)
        split.cached = prepare_images(split.sample, ev.model.arch.img_size, ws.cache, workers, progress=progress,
                                      desc=f"Decoding {split.name} images")
        split.shown = np.sort(rng.choice(split.evaluated, size=_figure_count(images, split), replace=False))
        score_model(ev.model, split, ev.device, cfg.device.MIXED_PRECISION, cfg.training.BATCH_SIZE, images, progress)
    if ev.held_out is ev.train:
        log.warning("No validation image (VALIDATION_SIZE is 0, or too few images to split): the PCA baseline, "
                    "the worst reconstructions and the latent plot use training images.")


def _scorecard(ev: _Evaluation, pca: PCABaseline, cfg: Config, labels_from_folders: bool) -> dict[str, Any]:
    """The feature scorecard of the model against the PCA baseline on the held-out images."""
    held_out = ev.held_out
    labels = folder_labels(held_out.cached.paths, ev.listing.root) if labels_from_folders else None
    return score_checkpoint(ev.model, pca, held_out.cached.array, ev.device, mixed=cfg.device.MIXED_PRECISION,
                            batch_size=max(cfg.training.BATCH_SIZE, 64), seed=cfg.SEED, labels=labels)


def _result(ev: _Evaluation, cfg: Config, history: dict[str, Any], pca: PCABaseline, pca_note: str,
            pca_scores: dict[str, np.ndarray], card: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's content."""
    arch, held_out, caps = ev.model.arch, ev.held_out, _caps()
    return {
        "checkpoint": ev.ckpt.name,
        "checkpoint_path": str(ev.ckpt),
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "fext_version": fext.__version__,
        "device": str(ev.device),
        "mixed_precision": cfg.device.MIXED_PRECISION,
        "preset": arch.preset,
        "image_size": arch.img_size,
        "latent_dim": arch.feature_dim,
        "parameters": sum(p.numel() for p in ev.model.parameters()),
        "epochs": history.get("total_epochs") or len(history.get("epochs") or []) or None,
        "dataset": {"root": str(ev.listing.root), "source": ev.source},
        "splits": {s.name: _split_facts(s, caps[s.name]) for s in ev.splits},
        "model": {s.name: summarize(s.scores) if s.evaluated else None for s in ev.splits},
        "baseline_pca": {
            "components": pca.k,
            "requested": pca.requested,
            "fitted_on": pca.fitted_on,
            "explained_variance": pca.explained_variance_ratio,
            "evaluated_on": held_out.name,
            held_out.name: summarize(pca_scores),
            "note": pca_note,
        },
        "model_beats_pca": {
            m: bool(held_out.scores[m].mean() < pca_scores[m].mean()) if m == "mae"
            else bool(held_out.scores[m].mean() > pca_scores[m].mean())
            for m in METRICS
        },
        "failed": [{"path": str(p), "reason": r} for s in ev.splits for p, r in s.failures],
        "not_images": [{"path": ev.listing.relative(p), "reason": r} for p, r in ev.listing.not_images],
        "multi_frame": len(ev.listing.multi_frame),
        "psnr_cap_db": PSNR_CAP,
        "scorecard": card,
        "seconds": time.perf_counter() - ev.start,
    }


def _figure_count(images: int, split: SplitImages) -> int:
    """``images``, or fewer when the split holds fewer (said in a log line)."""
    if split.evaluated < images:
        log.info("Only %d %s image(s) available: its figures show %d instead of %d",
                 split.evaluated, split.name, split.evaluated, images)
    return min(images, split.evaluated)


def _write_figures(
    out: Path, arch: Any, train: SplitImages, validation: SplitImages, held_out: SplitImages,
    pca: PCABaseline, n: int, cfg: Config, root: Path, history: dict[str, Any], name: str,
) -> None:
    """Every figure of the evaluation into ``out`` (PNG), from the scores and kept reconstructions."""
    for split in (train, validation):
        target = out / f"{split.name}_reconstructions.png"
        if not split.evaluated:
            target.unlink(missing_ok=True)
            continue
        rows = split.shown
        originals, recons = original_images(split.cached, rows), np.stack([split.kept[int(r)] for r in rows])
        baseline = None
        if split is held_out:
            baseline = to_hwc(pca.reconstruct(torch.from_numpy(originals).permute(0, 3, 1, 2)))
        fig = figures.reconstruction_sheet(
            f"{name}: {split.name} images ({len(rows)} drawn with SEED={cfg.SEED})",
            figures.names_of([split.cached.paths[i] for i in rows], root),
            originals, recons, split.scores["psnr"][rows], split.scores["ssim"][rows],
            baseline=baseline, baseline_label=f"PCA baseline ({pca.k} components)",
        )
        save_figure(fig, target, dpi=100)

    worst = np.argsort(-held_out.scores["mae"], kind="stable")[: min(n, held_out.evaluated)]
    originals, recons = original_images(held_out.cached, worst), np.stack([held_out.kept[int(r)] for r in worst])
    fig = figures.worst_sheet(
        f"{name}: the {len(worst)} {held_out.name} images reconstructed worst (highest MAE)",
        figures.names_of([held_out.cached.paths[i] for i in worst], root),
        originals, recons, held_out.scores["mae"][worst], held_out.scores["psnr"][worst],
    )
    save_figure(fig, out / "worst_reconstructions.png", dpi=100)

    coords, ratios = project_2d_3d(torch.from_numpy(held_out.latents))
    fig = figures.latent_pca_figure(
        f"{name}: {held_out.evaluated} {held_out.name} embeddings ({arch.feature_dim} numbers each) "
        "on their principal components",
        coords.numpy(), ratios, held_out.scores["mae"], "reconstruction MAE", marked=list(worst),
    )
    save_figure(fig, out / "latent_pca.png", dpi=100)

    curves = figures.training_curves_figure(f"{name}: training history", history) if history else None
    if curves is not None:
        save_figure(curves, out / "training_curves.png", dpi=100)
    else:
        (out / "training_curves.png").unlink(missing_ok=True)
        log.info("No %s with epochs in the checkpoint: no training curves", HISTORY)


def _split_facts(split: SplitImages, cap: int) -> dict[str, Any] | None:
    if not split.paths:
        return None
    return {"images": len(split.paths), "evaluated": split.evaluated, "failed": len(split.failures), "cap": cap}


def _write_per_image(path: Path, train: SplitImages, validation: SplitImages, held_out: SplitImages,
                     pca_scores: dict[str, np.ndarray]) -> None:
    """One row per evaluated image: split, path, the model's metrics and, on held-out images, PCA's."""
    names = list(METRICS)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "path", *names, *[f"pca_{m}" for m in names]])
        for split in (train, validation):
            if not split.evaluated:
                continue
            for i, p in enumerate(split.cached.paths):
                pca = [f"{pca_scores[m][i]:.6g}" for m in names] if split is held_out else [""] * len(names)
                writer.writerow([split.name, str(p), *[f"{split.scores[m][i]:.6g}" for m in names], *pca])


def _log_result(result: dict[str, Any], split: str, out: Path) -> None:
    model = result["model"][split]
    base = result["baseline_pca"][split]
    log.info(
        "%s %s: MAE %.4f  PSNR %.2f dB  SSIM %.4f  cosine %.4f | PCA(%d): MAE %.4f  PSNR %.2f dB  SSIM %.4f",
        result["checkpoint"], split, model["mae"]["mean"], model["psnr"]["mean"], model["ssim"]["mean"],
        model["cosine"]["mean"], result["baseline_pca"]["components"], base["mae"]["mean"], base["psnr"]["mean"],
        base["ssim"]["mean"],
    )
    log.info("Report: %s", out / REPORT_FILE)
