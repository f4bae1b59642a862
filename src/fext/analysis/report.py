"""What `fext analyze` writes and prints: CSV files, figures, the summary table, report.html.

The HTML page is self-contained (figures as base64 PNG, thumbnails as base64 JPEG, inline
CSS), built with the shared helpers of :mod:`fext.html_report`.
"""

from __future__ import annotations

import base64
import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fext._io import atomic_open, save_figure
from fext.analysis.flags import ISSUES, Issue
from fext.analysis.stats import STAT_COLUMNS, ImageRecord
from fext.data import count_notes, thumbnail
from fext.html_report import Raw, escape, html_image, html_page, html_paragraph, html_table, png_file_to_data_uri

GALLERY_CAP = 24
"""Thumbnails shown per issue in report.html (issues.csv lists every flagged image)."""
THUMBNAIL_SIDE = 160
_DISTRIBUTIONS = ("mean", "std", "noise_ratio", "entropy", "laplacian_var")


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def write_statistics_csv(path: Path, records: Sequence[ImageRecord]) -> None:
    """image_statistics.csv: one row per readable image, the seed's columns."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STAT_COLUMNS)
        for r in records:
            if r.ok:
                writer.writerow([_format(v) for v in r.row().values()])


def write_issues_csv(path: Path, issues: Sequence[Issue]) -> None:
    """issues.csv: one row per flagged image and problem (path, issue, value)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "issue", "value"))
        writer.writerows((i.path, i.issue, i.value) for i in issues)


def column_summary(records: Sequence[ImageRecord]) -> dict[str, dict[str, float]]:
    """min, median, mean and max of every numeric statistic over the readable images."""
    ok = [r for r in records if r.ok]
    out = {}
    for column in (*STAT_COLUMNS[1:], "entropy", "laplacian_var"):
        values = np.array([getattr(r, column) for r in ok], dtype=np.float64)
        if values.size:
            out[column] = {"min": float(values.min()), "median": float(np.median(values)),
                           "mean": float(values.mean()), "max": float(values.max())}
    return out


def histogram_figure(gray: np.ndarray, rgb: np.ndarray) -> Figure:
    """The pixel intensity histogram: all images' gray levels (256 bins) and R, G, B channels."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax_gray, ax_rgb = fig.subplots(1, 2)
    levels = np.arange(256)
    total = max(int(gray.sum()), 1)
    ax_gray.bar(levels, gray / total, width=1.0, color="0.35")
    ax_gray.set(title="Grayscale (all images)", xlabel="pixel intensity", ylabel="fraction of pixels", xlim=(0, 255))
    for channel, colour in zip(rgb.reshape(3, 256), ("tab:red", "tab:green", "tab:blue")):
        ax_rgb.plot(levels, channel / total, color=colour, label=colour[4:], linewidth=1.2)
    ax_rgb.set(title="RGB channels (all images)", xlabel="pixel intensity", xlim=(0, 255))
    ax_rgb.legend()
    fig.suptitle("Pixel intensity histogram")
    return fig


def distributions_figure(records: Sequence[ImageRecord]) -> Figure:
    """Histograms of the per-image statistics and a width x height scatter."""
    ok = [r for r in records if r.ok]
    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    bins = min(50, max(5, len(ok) // 4))
    for ax, column in zip(axes, _DISTRIBUTIONS):
        values = np.array([getattr(r, column) for r in ok], dtype=np.float64)
        if column == "laplacian_var":
            values = np.log10(values + 1.0)
            column = "log10(1 + Laplacian variance)"
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.85)
        ax.set(title=column, ylabel="images")
    ax = axes[-1]
    ax.scatter([r.width for r in ok], [r.height for r in ok], s=8, alpha=0.5)
    ax.set(title="image sizes", xlabel="width (px)", ylabel="height (px)")
    fig.suptitle("Distributions of the per-image statistics")
    return fig


def save_png(fig: Figure, path: Path) -> str:
    """Save ``fig`` to ``path`` and return it as a data URI for the HTML report."""
    save_figure(fig, path, dpi=100)
    return png_file_to_data_uri(path)


def _thumbnail(path: Path) -> str | None:
    """The image as a small JPEG data URI, or None if unreadable."""
    image = thumbnail(path, THUMBNAIL_SIDE)
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _gallery(issues: Sequence[Issue], root: Path, cache: dict[str, str | None]) -> Raw:
    cells = []
    for issue in issues[:GALLERY_CAP]:
        if issue.path not in cache:
            cache[issue.path] = _thumbnail(root / issue.path)
        uri = cache[issue.path]
        img = f'<img src="{uri}" alt="{escape(issue.path)}">' if uri else "<div class='missing'>no preview</div>"
        cells.append(f"<figure class='thumb'>{img}<figcaption>{escape(issue.path)}<br>"
                     f"<b>{escape(issue.value)}</b></figcaption></figure>")
    more = len(issues) - GALLERY_CAP
    note = html_paragraph(f"Showing {GALLERY_CAP} of {len(issues)}; issues.csv lists all.", "note") if more > 0 else ""
    return Raw(f"<div class='gallery'>{''.join(cells)}</div>{note}")


_GALLERY_CSS = Raw(
    "<style>.gallery{display:flex;flex-wrap:wrap;gap:10px}"
    ".thumb{width:170px;margin:0;font-size:.78em;word-break:break-all}"
    ".thumb img{max-width:160px;max-height:160px;border:1px solid #ccc}"
    ".missing{width:160px;height:60px;background:#eee;color:#777;text-align:center;line-height:60px}</style>"
)


def threshold_text(issue: str, thresholds: dict) -> str:
    """``KEY = value`` of the configuration key that sets an issue's threshold, or "-"."""
    key = ISSUES[issue][1]
    return f"analysis.{key} = {thresholds[key]}" if key else "-"


def write_report(path: Path, summary: dict, issues: Sequence[Issue], root: Path, figures: dict[str, str]) -> None:
    """report.html: overview, problems, figures, thumbnail galleries of flagged images."""
    by_issue: dict[str, list[Issue]] = {name: [] for name in ISSUES}
    for issue in issues:
        by_issue[issue.issue].append(issue)
    split = summary["split"]
    overview = html_table(("", "value"), [
        ("dataset folder", summary["dataset"]),
        ("image files", summary["images"]),
        ("readable", summary["readable"]),
        ("unreadable", summary["unreadable"]),
        ("training split: train", split["train"]),
        ("training split: validation", split["validation"]),
        ("not sampled (dataset.SAMPLE_SIZE)", split["not_sampled"]),
        ("images with at least one issue", summary["flagged_images"]),
        ("analysis time (s)", summary["seconds"]),
        ("images / second", summary["images_per_second"]),
    ])
    problems = html_table(
        ("issue", "images", "threshold", "meaning"),
        [(name, summary["issues"][name], threshold_text(name, summary["thresholds"]), ISSUES[name][0])
         for name in ISSUES],
    )
    stats = html_table(
        ("statistic", "min", "median", "mean", "max"),
        [(name, v["min"], v["median"], v["mean"], v["max"]) for name, v in summary["statistics"].items()],
    )
    sections: list = [
        _GALLERY_CSS,
        html_paragraph(f"Created {summary['created']} by fext analyze.", "note"),
        ("Overview", overview),
        ("Problems found", problems),
        ("Statistics (gray levels 0-255, computed at full resolution)", stats),
        ("Pixel intensity histogram", html_image(figures["histogram"], "Pixel intensity histogram")),
        ("Distributions", html_image(figures["distributions"], "Per-image statistics")),
    ]
    cache: dict[str, str | None] = {}
    for name, flagged in by_issue.items():
        if not flagged:
            continue
        heading = f"{name}: {len(flagged)} image{'s' if len(flagged) != 1 else ''}"
        intro = html_paragraph(f"{ISSUES[name][0]} ({threshold_text(name, summary['thresholds'])}).", "note")
        if name == "unreadable":
            body = html_table(("path", "reason"), [(i.path, i.value) for i in flagged[:500]])
        else:
            body = _gallery(flagged, root, cache)
        sections.append((heading, [intro, body]))
    page = html_page("FeXT dataset analysis", sections)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)


def summary_table(summary: dict, out_dir: Path) -> str:
    """The terminal summary: counts, the split, and one line per issue with its threshold."""
    split = summary["split"]
    lines = [
        f"Analyzed {summary['images']} image files in {summary['dataset']} "
        f"({summary['seconds']:.1f} s, {summary['images_per_second']:.0f} images/s)",
        f"  readable {summary['readable']}, unreadable {summary['unreadable']}",
        "  formats: " + (", ".join(f"{name} {n}" for name, n in summary["formats"].items()) or "none readable"),
        *(f"  {note}" for note in count_notes(summary["not_images"], summary["multi_frame"])),
        f"  training split: {split['train']} train, {split['validation']} validation"
        + (f", {split['not_sampled']} not sampled" if split["not_sampled"] else ""),
        "",
        f"  {'issue':<18} {'images':>7}  threshold",
    ]
    for name in ISSUES:
        lines.append(f"  {name:<18} {summary['issues'][name]:>7}  {threshold_text(name, summary['thresholds'])}")
    lines += ["", f"Outputs in {out_dir}{os.sep}: " + ", ".join(summary["outputs"])]
    return "\n".join(lines)


def issue_counts(issues: Sequence[Issue]) -> dict[str, int]:
    """Flagged images per issue, every issue listed (0 when none)."""
    counts = Counter(i.issue for i in issues)
    return {name: counts.get(name, 0) for name in ISSUES}
