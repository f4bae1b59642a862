"""`fext analyze`: per-image statistics of a dataset and the problems that would spoil training.

:func:`analyze` measures every image of the dataset folder at full resolution in worker
processes (:mod:`fext.analysis.stats`), flags problems (:mod:`fext.analysis.flags`) and writes
into ``resources/validation/dataset/`` (:mod:`fext.analysis.report`):

- ``image_statistics.csv``: the seed's columns, one row per readable image;
- ``issues.csv``: path, issue, value, one row per flagged image and problem;
- ``summary.json``: counts, the formats found, the training split, thresholds, column summaries, timing;
- ``skipped.csv``: path, reason, one row per file of the folder that is not an image;
- ``pixel_intensity_histogram.png`` and ``statistics_distributions.png``;
- ``report.html``: one self-contained page with all of the above and thumbnail galleries.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fext._io import write_json
from fext.analysis import report
from fext.analysis.flags import ISSUES, Issue, find_issues
from fext.analysis.stats import STAT_COLUMNS, ImageRecord, measure_image
from fext.config import Config, config_to_dict
from fext.data import SKIPPED, Listing, list_folder, select_images
from fext.errors import FeXTError
from fext.machine import data_workers
from fext.workspace import Workspace

__all__ = ["ISSUES", "STAT_COLUMNS", "ImageRecord", "Issue", "analyze", "measure_images"]

log = logging.getLogger(__name__)


def _init_worker() -> None:
    """Worker set-up: Ctrl-C is left to the parent (which stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def measure_images(
    paths: Sequence[Path], root: Path, workers: int = 0, gray_tolerance: float = np.inf, progress: bool = True,
) -> Iterator[ImageRecord]:
    """:func:`~fext.analysis.stats.measure_image` of every path, in input order.

    ``workers`` > 0 measures in that many processes (chunked ``imap``); 0 in this process.
    """
    work = functools.partial(measure_image, root=root, gray_tolerance=gray_tolerance)
    workers = min(workers, len(paths))
    bar = tqdm(total=len(paths), desc="Analyzing", unit="img", disable=not progress, dynamic_ncols=True)
    with bar:
        if workers == 0:
            for path in paths:
                yield work(path)
                bar.update()
            return
        chunksize = max(1, min(32, len(paths) // (workers * 8)))
        with multiprocessing.get_context().Pool(workers, initializer=_init_worker) as pool:
            for record in pool.imap(work, paths, chunksize=chunksize):
                yield record
                bar.update()


def analyze(cfg: Config, ws: Workspace, *, dataset: Path | None = None, progress: bool = True) -> Path:
    """Analyze the images of ``dataset`` (default: the workspace's resources/dataset).

    Writes the files listed in the module docstring into ``ws.validation_dataset``, prints the
    summary table, and returns that folder. Unreadable files are listed, never fatal; a folder
    without images, or whose images are all unreadable, raises :class:`~fext.errors.FeXTError`.
    """
    ws.ensure()
    root = Path(dataset if dataset is not None else ws.dataset).expanduser().absolute()
    listing = list_folder(root)
    listing.require_images("Put images there, or pass another folder with --dataset DIR.")
    train, validation = select_images(cfg, root, listing)  # the split `fext train` will use
    measured = _measure(listing.images, root, cfg, progress)
    rel = listing.relative  # relative to root, in posix form
    issues = find_issues(measured.records, cfg.analysis, train={rel(p) for p in train},
                         validation={rel(p) for p in validation})
    summary = _summary(cfg, root, listing, len(train), len(validation), measured, issues)
    out = ws.validation_dataset
    _write_outputs(out, root, listing, measured, issues, summary)
    print(report.summary_table(summary, out))
    sys.stdout.flush()
    return out


@dataclass
class _Measured:
    """Every image's record, the summed histograms, and how long measuring took with how many workers."""

    records: list[ImageRecord]
    gray_hist: np.ndarray
    """(256,) int64"""
    rgb_hist: np.ndarray
    """(768,) int64"""
    seconds: float
    workers: int


def _measure(paths: Sequence[Path], root: Path, cfg: Config, progress: bool) -> _Measured:
    """Measure every image, summing the histograms as they come (a record keeps none: 8 KB per image)."""
    start = time.perf_counter()
    records: list[ImageRecord] = []
    gray_hist, rgb_hist = np.zeros(256, np.int64), np.zeros(768, np.int64)
    workers = data_workers(cfg.device.NUM_PROCESSORS)
    for record in measure_images(paths, root, workers, cfg.analysis.GRAYSCALE_TOLERANCE, progress):
        if record.ok:
            gray_hist += record.gray_hist
            rgb_hist += record.rgb_hist
            record.gray_hist = record.rgb_hist = None  # 8 KB per image: sum, do not keep
        else:
            log.warning("Skipped %s: %s", record.name, record.error)
        records.append(record)
    return _Measured(records, gray_hist, rgb_hist, time.perf_counter() - start, workers)


def _summary(cfg: Config, root: Path, listing: Listing, n_train: int, n_validation: int, measured: _Measured,
             issues: list[Issue]) -> dict[str, Any]:
    """summary.json's content (its "outputs" grow with the figures when any image was readable)."""
    records, seconds = measured.records, measured.seconds
    readable = sum(r.ok for r in records)
    return {
        "dataset": str(root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "images": len(records),
        "readable": readable,
        "unreadable": len(records) - readable,
        "formats": _format_counts(records),
        "multi_frame": len(listing.multi_frame),
        "not_images": len(listing.not_images),
        "split": {"train": n_train, "validation": n_validation,
                  "not_sampled": len(listing.images) - n_train - n_validation,
                  "SAMPLE_SIZE": cfg.dataset.SAMPLE_SIZE, "VALIDATION_SIZE": cfg.dataset.VALIDATION_SIZE,
                  "SEED": cfg.SEED, "SPLIT_SEED": cfg.dataset.SPLIT_SEED},
        "issues": report.issue_counts(issues),
        "flagged_images": len({i.path for i in issues}),
        "thresholds": config_to_dict(cfg.analysis),
        "statistics": report.column_summary(records),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / max(seconds, 1e-9), 1),
        "workers": min(measured.workers, len(records)),
        "outputs": ["image_statistics.csv", "issues.csv", SKIPPED, "summary.json"],
    }


def _write_outputs(out: Path, root: Path, listing: Listing, measured: _Measured, issues: list[Issue],
                   summary: dict[str, Any]) -> None:
    """The CSVs, summary.json, the figures and report.html; :class:`FeXTError` (after the CSVs) if nothing was readable."""
    records = measured.records
    listing.write_skipped(out)
    report.write_statistics_csv(out / "image_statistics.csv", records)
    report.write_issues_csv(out / "issues.csv", issues)
    if not summary["readable"]:
        write_json(out / "summary.json", summary)
        raise FeXTError(
            f"None of the {len(records)} image files in {root} could be read; the reasons are in {out / 'issues.csv'}."
        )
    summary["outputs"] += ["pixel_intensity_histogram.png", "statistics_distributions.png", "report.html"]
    write_json(out / "summary.json", summary)
    figures = {
        "histogram": report.save_png(report.histogram_figure(measured.gray_hist, measured.rgb_hist),
                                     out / "pixel_intensity_histogram.png"),
        "distributions": report.save_png(report.distributions_figure(records), out / "statistics_distributions.png"),
    }
    report.write_report(out / "report.html", summary, issues, root, figures)


def _format_counts(records: Sequence[ImageRecord]) -> dict[str, int]:
    """``{format: readable images}``, most frequent first (the formats Pillow found, not the suffixes)."""
    counts = Counter(r.format for r in records if r.ok)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
