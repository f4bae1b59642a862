"""Across checkpoints: ``checkpoints_summary.csv`` and ``comparison.html``.

``checkpoints_summary.csv`` has one row per checkpoint, its training settings beside its results.

The columns are the seed's (checkpoint name, sample size, validation size, seed, precision bits,
epochs, learning rate, batch size, split seed, image augment, JIT compile, JIT backend, device,
device ID, number of processors, TensorBoard) plus the preset, image size, parameter count, the
last epoch's train and validation loss, and, once a checkpoint has been evaluated, its validation
PSNR/SSIM beside the PCA baseline's. A checkpoint that cannot be read still gets a row, with the
reason in ``status``. ``comparison.html`` puts every evaluated checkpoint side by side.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fext._io import atomic_open, save_figure, write_text
from fext.checkpoint_catalog import CheckpointInfo, inspect_checkpoint, list_checkpoints
from fext.checkpoints import count_parameters
from fext.evaluation import figures, pages
from fext.workspace import Workspace

log = logging.getLogger(__name__)

SUMMARY_FILE = "checkpoints_summary.csv"
METRICS_FILE = "metrics.json"
COMPARISON_FILE = "comparison.html"
COMPARISON_FIGURE = "comparison.png"

SUMMARY_COLUMNS = [
    "checkpoint_name", "status", "sample_size", "validation_size", "seed", "precision_bits", "epochs",
    "learning_rate", "batch_size", "split_seed", "image_augment", "jit_compile", "jit_backend", "device",
    "device_id", "number_of_processors", "tensorboard", "preset", "image_size", "parameters",
    "last_train_loss", "last_validation_loss", "created",
    "eval_validation_mae", "eval_validation_psnr", "eval_validation_ssim",
    "pca_validation_psnr", "pca_validation_ssim", "recipe",
    "features_map", "pca_map", "pixels_map", "features_recall_at_1", "effective_rank", "evaluated",
]


def load_metrics(ws: Workspace, name: str) -> dict[str, Any] | None:
    """The ``metrics.json`` of an evaluated checkpoint, or None."""
    try:
        return json.loads((ws.validation_checkpoints / name / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stat(metrics: dict[str, Any] | None, *keys: str) -> float | None:
    node: Any = metrics
    for k in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(k)
    return node if isinstance(node, (int, float)) else None


def summary_row(info: CheckpointInfo, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The CSV row of one checkpoint (empty cells for what is unknown)."""
    row: dict[str, Any] = {"checkpoint_name": info.name}
    if not info.ok:
        row["status"] = f"unreadable: {info.error}"
        return row
    c = info.checkpoint
    conf, arch = c.description.configuration, c.description.architecture
    history = c.history or {}

    def setting(read: Any) -> Any:
        return read(conf) if conf is not None else None

    row.update({
        "status": "ok" if conf else "ok (no configuration recorded)",
        "sample_size": setting(lambda k: k.dataset.SAMPLE_SIZE),
        "validation_size": setting(lambda k: k.dataset.VALIDATION_SIZE),
        "seed": setting(lambda k: k.SEED),
        "precision_bits": setting(lambda k: 16 if k.device.MIXED_PRECISION else 32),
        "epochs": history.get("total_epochs") or len(c.epochs) or setting(lambda k: k.training.EPOCHS),
        "learning_rate": setting(lambda k: k.training.LR_SCHEDULER.INITIAL_LR),
        "batch_size": setting(lambda k: k.training.BATCH_SIZE),
        "split_seed": setting(lambda k: k.dataset.SPLIT_SEED),
        "image_augment": setting(lambda k: k.dataset.IMG_AUGMENT),
        "jit_compile": setting(lambda k: k.model.JIT_COMPILE),
        "jit_backend": setting(lambda k: k.model.JIT_BACKEND),
        "device": setting(lambda k: k.device.DEVICE),
        "device_id": setting(lambda k: k.device.DEVICE_ID),
        "number_of_processors": setting(lambda k: k.device.NUM_PROCESSORS),
        "tensorboard": setting(lambda k: k.training.USE_TENSORBOARD),
        "recipe": setting(lambda k: k.training.RECIPE),
        "preset": arch.preset,
        "image_size": arch.img_size,
        "parameters": count_parameters(info.path),
        "last_train_loss": c.last("train"),
        "last_validation_loss": c.last("validation"),
        "created": c.description.created,
    })
    if metrics:
        split = (metrics.get("baseline_pca") or {}).get("evaluated_on", "validation")
        row.update({
            "eval_validation_mae": _stat(metrics, "model", split, "mae", "mean"),
            "eval_validation_psnr": _stat(metrics, "model", split, "psnr", "mean"),
            "eval_validation_ssim": _stat(metrics, "model", split, "ssim", "mean"),
            "pca_validation_psnr": _stat(metrics, "baseline_pca", split, "psnr", "mean"),
            "pca_validation_ssim": _stat(metrics, "baseline_pca", split, "ssim", "mean"),
            "features_map": _stat(metrics, "scorecard", "retrieval", "features", "map"),
            "pca_map": _stat(metrics, "scorecard", "retrieval", "pca", "map"),
            "pixels_map": _stat(metrics, "scorecard", "retrieval", "pixels", "map"),
            "features_recall_at_1": _stat(metrics, "scorecard", "retrieval", "features", "recall@1"),
            "effective_rank": _stat(metrics, "scorecard", "effective_rank"),
            "evaluated": metrics.get("evaluated"),
        })
    return row


def workspace_checkpoints(ws: Workspace, extra: Iterable[Path] = ()) -> list[CheckpointInfo]:
    """Every checkpoint of the workspace, plus ``extra`` folders that live elsewhere."""
    infos = list_checkpoints(ws)
    known = {c.path.resolve() for c in infos}
    for path in extra:
        path = Path(path)
        if path.resolve() not in known:
            infos.append(inspect_checkpoint(path))
            known.add(path.resolve())
    return infos


def write_checkpoints_summary(ws: Workspace, extra: Iterable[Path] = ()) -> Path:
    """Rewrite ``checkpoints_summary.csv`` (one row per checkpoint) and return its path."""
    path = ws.validation_checkpoints / SUMMARY_FILE
    rows = [summary_row(c, load_metrics(ws, c.name) if c.ok else None) for c in workspace_checkpoints(ws, extra)]
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in SUMMARY_COLUMNS})
    log.info("Checkpoint summary (%d checkpoints): %s", len(rows), path)
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_comparison(ws: Workspace, extra: Sequence[Path] = ()) -> Path | None:
    """``comparison.html`` (and its chart) over every evaluated checkpoint; None when fewer than two."""
    entries = []
    for info in workspace_checkpoints(ws, extra):
        metrics = load_metrics(ws, info.name) if info.ok else None
        if metrics and (metrics.get("baseline_pca") or {}).get("evaluated_on"):
            entries.append(metrics)
    if len(entries) < 2:
        return None
    model: dict[str, tuple[list[float], list[float]]] = {}
    baseline: dict[str, tuple[list[float], list[float]]] = {}
    for metric in ("psnr", "ssim"):
        for target, source in ((model, "model"), (baseline, "baseline_pca")):
            means, stds = [], []
            for m in entries:
                split = m["baseline_pca"]["evaluated_on"]
                node = m[source][split] if source == "baseline_pca" else (m["model"].get(split) or {})
                s = node.get(metric) or {"mean": float("nan"), "std": 0.0}
                means.append(s["mean"])
                stds.append(s["std"])
            target[metric] = (means, stds)
    figure_path = ws.validation_checkpoints / COMPARISON_FIGURE
    save_figure(figures.comparison_figure([m["checkpoint"] for m in entries], model, baseline), figure_path, dpi=100)
    path = ws.validation_checkpoints / COMPARISON_FILE
    write_text(path, pages.comparison_report(entries, figure_path))
    return path
