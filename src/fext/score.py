"""``fext score``: how unlike an encoded reference collection each new image is, at a calibrated threshold.

The score is built as ``fext explore``'s outlier score (:mod:`fext.explore.outliers`): the largest
of the robust z-score of the mean cosine distance to the :data:`NEIGHBOURS` nearest reference images
and the robust z-score of the model's reconstruction error (when the checkpoint and the images are at
hand): one strongly unusual property is enough. Here the medians and spreads of both z-scores come
from the reference, not from the new images, so a score does not depend on what else arrived with an
image. (The mean of the two, the first rule, let a low reconstruction error hide a far image: on
benchmarks/select_score_quality.py it scored ROC AUC 0.898, the distance alone 0.991.)

Calibration: a seeded sample of up to :data:`CALIBRATION` reference images is held out and scored
as if new, each against the reference without itself (leave-one-out). The threshold is the
conformal quantile of those scores at the asked false-alarm rate: of images like the reference, at
most that share scores above it. An image scoring above it is *novel*. The nearest references come
from the reference's faiss index when it has an up-to-date one (``fext index``), else exact search.

Exit status of the command: 0 when no image is novel, :data:`NOVEL_EXIT` when at least one is.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fext._io import atomic_open, write_json
from fext.config import Config
from fext.encoding.files import Encoding, is_finished, open_encoding, row_paths
from fext.errors import FeXTError
from fext.explore.outliers import OUTLIER_NEIGHBOURS
from fext.index import VectorIndex, open_index
from fext.search import nearest, paths_of_rows
from fext.vectors import normalized, seeded_rows

log = logging.getLogger(__name__)

NEIGHBOURS = OUTLIER_NEIGHBOURS
CALIBRATION = 2000
"""Reference images held out (leave-one-out) to set the threshold."""
MIN_REFERENCE = 3
NOVEL_EXIT = 3
"""Exit status of ``fext score`` when at least one image is novel (0: none; 1 and 2: errors)."""
SHEET = 24
"""Images on the contact sheet of the most novel."""
CSV_NAME, SHEET_NAME, CALIBRATION_NAME = "scores.csv", "most_novel.png", "calibration.json"


@dataclass(frozen=True)
class Scores:
    """Per new image (row-aligned with ``paths``): ``score``, ``nearest`` reference path and its
    ``similarity``, ``reconstruction_error`` (None when not measured), ``novel``; the ``threshold``
    and what calibrated it; where the files went."""

    paths: list[str]
    score: np.ndarray
    nearest: list[str]
    similarity: np.ndarray
    reconstruction_error: np.ndarray | None
    novel: np.ndarray
    threshold: float
    calibration: dict[str, Any]
    output: Path | None

    def summary(self, top: int = 5) -> str:
        """What ``fext score`` prints."""
        c = self.calibration
        lines = [f"Threshold {self.threshold:.3f}: {c['measured_false_alarm_rate']:.2%} of {c['images']} held-out "
                 f"reference images score above it (asked {c['false_alarm_rate']:.2%}); score = {c['components']}"]
        if c.get("note"):
            lines.append(c["note"])
        order = np.argsort(-self.score, kind="stable")[:top]
        lines.append(f"{int(self.novel.sum())} of {len(self.paths)} new images are novel"
                     + (": " + ", ".join(f"{self.paths[i]} ({self.score[i]:.2f})" for i in order if self.novel[i])
                        if self.novel.any() else ""))
        if self.output is not None:
            lines.append(f"Scores: {self.output / CSV_NAME}; most novel: {self.output / SHEET_NAME}")
        return "\n".join(lines)


def score(
    new: str | os.PathLike,
    reference: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    config: Config,
    checkpoint: str | os.PathLike | None = None,
    false_alarm_rate: float = 0.01,
    reconstruction: bool = True,
    progress: bool = False,
) -> Scores:
    """Score the images of ``new`` (a folder of images, or a `fext encode` folder of the same
    checkpoint) against the `fext encode` folder ``reference``; write ``output`` (default
    ``<reference>/scores/<new folder name>``).

    ``config``: device and workers; ``checkpoint``: where the reference's checkpoint is now, if it
    moved; ``reconstruction``: False leaves the reconstruction error out of the score.
    """
    if not 0 < false_alarm_rate < 1:
        raise FeXTError(f"--false-alarm-rate must be between 0 and 1 (e.g. 0.01), got {false_alarm_rate}")
    ref = open_encoding(reference)
    ref_paths = row_paths(ref.folder)
    if len(ref_paths) < MIN_REFERENCE:
        raise FeXTError(f"The reference {ref.folder} holds {len(ref_paths)} images; scoring needs at least "
                        f"{MIN_REFERENCE} to calibrate on. Encode a larger reference collection")
    _refuse_another_checkpoint(Path(new), ref)
    ckpt = _reference_checkpoint(ref, checkpoint)
    model = _load(ckpt, config) if ckpt is not None else None
    vectors, paths, new_root = _new_vectors(Path(new), ref, model, config, progress)
    held = seeded_rows(len(ref_paths), CALIBRATION, config.SEED)
    k = min(NEIGHBOURS, len(ref_paths) - 1)  # a small reference: every other image
    index = open_index(ref.folder)  # once, for both searches
    cal_rows, cal_sims = _leave_one_out(ref, index, held, k)
    new_rows, new_sims = nearest(ref, normalized(vectors), k, index)
    cal_err = new_err = None
    ref_root = Path(ref.metadata.input)
    if reconstruction and model is not None and _at_hand(ref_root, [ref_paths[i] for i in held[:50]]) \
            and _at_hand(new_root, paths[:50]):
        size = ref.metadata.img_size
        cal_err = _errors(model, [ref_root / ref_paths[i] for i in held], size, config, progress)
        new_err = _errors(model, [new_root / p for p in paths], size, config, progress)
    cal_score, new_score = combined([_distance(cal_sims), _distance(new_sims)], [cal_err, new_err])
    threshold, note = calibrated_threshold(cal_score, false_alarm_rate)
    names = paths_of_rows(ref.rows_csv, new_rows[:, 0])
    calibration = {
        "threshold": threshold, "false_alarm_rate": false_alarm_rate, "images": len(held),
        "measured_false_alarm_rate": float((cal_score > threshold).mean()), "neighbours": k,
        "components": "largest of the robust z-scores of the kNN distance" + (
            " and the reconstruction error" if new_err is not None else " (no reconstruction error: "
            + ("--no-reconstruction" if not reconstruction else "checkpoint or images not at hand") + ")"),
        "reference": str(ref.folder), "checkpoint": ref.metadata.checkpoint.name,
        "nearest_from": "faiss index" if index is not None else "exact search", "note": note,
    }
    result = Scores(paths, new_score, [names[r] for r in new_rows[:, 0].tolist()], new_sims[:, 0], new_err,
                    new_score > threshold, threshold, calibration, None)
    out = Path(output) if output is not None else ref.folder / "scores" / Path(new).resolve().name
    write_scores(result, out, new_root)
    return replace(result, output=out)


def combined(knn: list[np.ndarray], errors: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(calibration scores, new scores): explore's rule (the largest robust z-score), with medians and spreads
    of the calibration part."""
    (cal_knn, new_knn), (cal_err, new_err) = knn, errors
    cal, new = robust_z(cal_knn, cal_knn), robust_z(new_knn, cal_knn)
    if cal_err is not None and new_err is not None:
        cal, new = np.maximum(cal, robust_z(cal_err, cal_err)), np.maximum(new, robust_z(new_err, cal_err))
    return cal.astype(np.float32), new.astype(np.float32)


def robust_z(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)`` with the median and MAD of ``reference``, as
    :func:`fext.explore.outliers.robust_z` (a zero MAD falls back to the standard deviation, then 1)."""
    reference = np.asarray(reference, np.float64)
    median = np.median(reference)
    scale = 1.4826 * np.median(np.abs(reference - median))
    if scale <= 0:
        scale = float(reference.std()) or 1.0
    return (np.asarray(x, np.float64) - median) / scale


def calibrated_threshold(calibration: np.ndarray, rate: float) -> tuple[float, str]:
    """The conformal threshold: the ``ceil((n + 1)(1 - rate))``-th smallest calibration score, and a
    note when ``n`` is too small for ``rate`` (then the largest score: the lowest rate ``n`` can show)."""
    n = len(calibration)
    k = math.ceil((n + 1) * (1 - rate))
    ordered = np.sort(calibration)
    if k > n:
        return float(ordered[-1]), (f"{n} held-out reference images cannot show a false-alarm rate of {rate:.2%} "
                                    f"(the lowest they can is about {1 / (n + 1):.2%}): the threshold is their highest "
                                    "score. Encode a larger reference for a finer calibration")
    return float(ordered[k - 1]), ""


def write_scores(scores: Scores, out: Path, root: Path) -> None:
    """scores.csv (most novel first), calibration.json and the contact sheet of the most novel images."""
    import csv

    order = np.argsort(-scores.score, kind="stable").tolist()
    errors = scores.reconstruction_error
    with atomic_open(out / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "nearest_reference", "similarity", "reconstruction_error", "novel"])
        writer.writerows([scores.paths[i], f"{scores.score[i]:.4f}", scores.nearest[i], f"{scores.similarity[i]:.6f}",
                          "" if errors is None else f"{errors[i]:.6f}", "yes" if scores.novel[i] else "no"]
                         for i in order)
    write_json(out / CALIBRATION_NAME, scores.calibration)
    _write_sheet(out / SHEET_NAME, [(root / scores.paths[i], f"{scores.score[i]:.2f}"
                                     + (" NOVEL" if scores.novel[i] else "")) for i in order[:SHEET]])


def _reference_checkpoint(ref: Encoding, checkpoint: str | os.PathLike | None) -> Path | None:
    """The checkpoint that wrote the reference, if at hand; ``checkpoint`` must be that one."""
    from fext.checkpoints import is_checkpoint
    from fext.encoding.fingerprints import wrote_vectors

    recorded = ref.metadata.checkpoint
    path = recorded.location(checkpoint)
    if checkpoint is None and not is_checkpoint(path):
        return None
    if not wrote_vectors(path, recorded):
        if checkpoint is None:
            return None
        raise FeXTError(f"{checkpoint} is not the checkpoint that wrote the reference {ref.folder} "
                        f"({recorded.name or 'unknown'}): its vectors would not be comparable. "
                        f"Pass the checkpoint {recorded.name or ''} with --checkpoint, or encode the reference again")
    return path


def _load(ckpt: Path, config: Config) -> Any:
    from fext.device import select_device
    from fext.encoding.inference import load_model

    return load_model(ckpt, select_device(config.device.DEVICE, config.device.DEVICE_ID))


def _refuse_another_checkpoint(new: Path, ref: Encoding) -> None:
    """When ``new`` is a `fext encode` folder: one clear error unless the reference's checkpoint wrote it."""
    if not is_finished(new):
        return
    mine, theirs = open_encoding(new).metadata.checkpoint, ref.metadata.checkpoint
    if not mine.comparable(theirs):
        raise FeXTError(f"{new} was encoded with the checkpoint {mine.name or 'unknown'} and the reference "
                        f"{ref.folder} with {theirs.name or 'unknown'}: vectors of two checkpoints are not "
                        "comparable. Score the images folder itself, or encode it with the reference's checkpoint")


def _new_vectors(new: Path, ref: Encoding, model: Any, config: Config, progress: bool) -> tuple[np.ndarray, list[str], Path]:
    """(vectors (Q, D), paths, the folder the paths are relative to) of the new images."""
    from fext.encoding.inference import encode_images

    if is_finished(new):
        enc = open_encoding(new)
        return np.asarray(enc.vectors, np.float32), row_paths(enc.folder), Path(enc.metadata.input)
    if not new.is_dir():
        raise FeXTError(f"{new} is not a folder; pass a folder of new images (or a `fext encode` folder)")
    if model is None:
        name = ref.metadata.checkpoint.name or "unknown"
        raise FeXTError(f"The checkpoint that wrote {ref.folder} ({name}) is not at hand, so new images cannot be "
                        "encoded comparably; pass where it is now with --checkpoint")
    vectors, rows = encode_images(model, new, config=config, progress=progress)
    if not rows:
        raise FeXTError(f"No readable image in {new}; pass a folder of new images")
    return vectors, [row["path"] for row in rows], new


def _leave_one_out(ref: Encoding, index: VectorIndex | None, held: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest rows and similarities (H, k) of each held-out reference row among the others."""
    rows, sims = nearest(ref, normalized(ref.rows.take(held)), k + 1, index)
    own = rows == held[:, None]
    keep = np.argsort(own, axis=1, kind="stable")[:, :k]  # its own row last, the others in order
    return np.take_along_axis(rows, keep, 1), np.take_along_axis(sims, keep, 1)


def _distance(similarities: np.ndarray) -> np.ndarray:
    """Mean cosine distance (Q,) to the nearest references (Q, k)."""
    return (1.0 - similarities).mean(axis=1)


def _errors(model: Any, files: list[Path], size: int, config: Config, progress: bool) -> np.ndarray:
    """Reconstruction errors of ``files``; an unreadable file's counts as the median."""
    from fext.encoding.inference import workers
    from fext.explore import measure

    device = next(model.parameters()).device
    errors = measure.reconstruction_errors(model, files, size, device, workers(config, len(files), measure.BATCH), progress)
    missing = np.isnan(errors)
    if missing.any():
        errors[missing] = np.nanmedian(errors) if (~missing).any() else 0.0
    return errors


def _at_hand(root: Path, paths: list[str]) -> bool:
    return root.is_dir() and any((root / p).is_file() for p in paths)


def _write_sheet(path: Path, tiles: list[tuple[Path, str]]) -> None:
    """A PNG grid of ``(image, title)`` tiles, most novel first."""
    from matplotlib.figure import Figure

    from fext._io import save_figure
    from fext.data import thumbnail
    from fext.html_report import shorten

    cols = max(1, min(6, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.6 * rows), layout="constrained")
    for ax, (file, title) in zip(fig.subplots(rows, cols, squeeze=False).flat, tiles + [(None, "")] * (rows * cols)):
        ax.axis("off")
        if file is None:
            continue
        thumb = thumbnail(file, 192)
        if thumb is None:
            ax.text(0.5, 0.5, "not at hand", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(np.asarray(thumb))
        ax.set_title(f"{title}\n{shorten(file.name, 28)}", fontsize=8, color="red" if "NOVEL" in title else "black")
    save_figure(fig, path, dpi=100)
