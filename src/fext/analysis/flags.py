"""Dataset-level checks of `fext analyze`: which images would spoil training, and why.

:func:`find_issues` turns the per-image records into :class:`Issue` rows (path, issue, value),
one row per flagged image and problem. The thresholds are ``analysis.*`` configuration keys
(:class:`~fext.config.AnalysisConfig`); :data:`ISSUES` says what each flag means.

Near duplicates use a 64-bit difference hash (dHash, see :func:`fext.analysis.stats.dhash`):
two images are near duplicates when the hashes differ in at most ``NEAR_DUPLICATE_DISTANCE``
bits. All pairs are compared, vectorised: XOR of uint64 hashes and a popcount, a block of rows
at a time, so memory stays bounded (about 50,000 images take a few seconds).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fext.analysis.stats import ImageRecord
from fext.config import AnalysisConfig

ISSUES: dict[str, tuple[str, str]] = {
    "unreadable": ("the file cannot be decoded; value: the reason", ""),
    "exact_duplicate": ("same decoded pixels as an earlier image; value: that image", ""),
    "near_duplicate": ("perceptual hash within the distance of an earlier image; value: that image and the distance",
                       "NEAR_DUPLICATE_DISTANCE"),
    "split_duplicate": ("validation image with an exact or near duplicate in the training split "
                        "(inflates validation scores); value: the training image", "NEAR_DUPLICATE_DISTANCE"),
    "dark": ("mean gray level below the threshold; value: the mean", "DARK_MEAN"),
    "bright": ("mean gray level above the threshold; value: the mean", "BRIGHT_MEAN"),
    "low_entropy": ("little information: gray-level entropy (bits) below the threshold; value: the entropy",
                    "LOW_ENTROPY"),
    "blurry": ("variance of the Laplacian below BLUR_RATIO x the dataset median; value: the variance", "BLUR_RATIO"),
    "small": ("shorter side below the threshold; value: width x height", "MIN_SIDE"),
    "aspect_ratio": ("long / short side above the threshold; value: the ratio", "MAX_ASPECT_RATIO"),
    "grayscale_as_rgb": ("stored with colour channels that differ by at most the tolerance on average; "
                         "value: the mean channel difference", "GRAYSCALE_TOLERANCE"),
}
"""Issue name -> (what it means, the ``analysis.*`` key of its threshold, or "")."""

_FAR = np.uint8(255)
_BLOCK_ELEMENTS = 1 << 22  # pairwise distances computed per block: 4M pairs, about 40 MB of temporaries


@dataclass(frozen=True)
class Issue:
    """One row of issues.csv: the image (relative path), the issue name, a value that explains it."""

    path: str
    issue: str
    value: str


def hamming_nearest(
    queries: np.ndarray, refs: np.ndarray, exclude: tuple[np.ndarray, np.ndarray] | None = None,
    earlier_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the nearest reference hash by Hamming distance.

    ``queries`` (Q,) and ``refs`` (R,) are uint64 hashes. ``exclude``, a pair of (Q,) and (R,)
    integer labels, skips the pairs whose labels are equal (the same image, exact duplicates).
    ``earlier_only`` (queries and refs are the same list) compares each hash only with the
    ones before it. Returns (Q,) indices into ``refs`` and (Q,) uint8 distances; a query with
    no candidate gets distance 255.
    """
    q_labels, r_labels = exclude if exclude is not None else (None, None)
    best_index = np.zeros(len(queries), dtype=np.int64)
    best_dist = np.full(len(queries), _FAR, dtype=np.uint8)
    if len(queries) == 0 or len(refs) == 0:
        return best_index, best_dist
    rows = max(1, _BLOCK_ELEMENTS // len(refs))
    for start in range(0, len(queries), rows):
        stop = min(start + rows, len(queries))
        width = min(stop - 1, len(refs)) if earlier_only else len(refs)
        if width <= 0:
            continue
        dist = np.bitwise_count(queries[start:stop, None] ^ refs[None, :width])  # (rows, width) uint8
        if q_labels is not None:
            dist[q_labels[start:stop, None] == r_labels[None, :width]] = _FAR
        if earlier_only:
            dist[np.arange(start, stop)[:, None] <= np.arange(width)[None, :]] = _FAR
        best = dist.argmin(axis=1)
        best_index[start:stop] = best
        best_dist[start:stop] = dist[np.arange(stop - start), best]
    return best_index, best_dist


def _duplicate_groups(records: Sequence[ImageRecord]) -> np.ndarray:
    """(N,) label per record: equal labels = same decoded pixels (hash of the RGB bytes and shape)."""
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(r.pixel_hash, i) for i, r in enumerate(records)], dtype=np.int64)


def find_issues(
    records: Sequence[ImageRecord], cfg: AnalysisConfig, *, train: set[str] = frozenset(),
    validation: set[str] = frozenset(),
) -> list[Issue]:
    """Every problem found, in the order of :data:`ISSUES` then of ``records``.

    ``records`` are all analysed files (unreadable ones included); ``train`` and ``validation``
    hold the relative paths of the split training will use.
    """
    found: dict[str, list[Issue]] = defaultdict(list)
    ok = [r for r in records if r.ok]
    for r in records:
        if not r.ok:
            found["unreadable"].append(Issue(r.name, "unreadable", r.error))

    groups = _duplicate_groups(ok)
    for i, g in enumerate(groups):
        if g != i:
            found["exact_duplicate"].append(Issue(ok[i].name, "exact_duplicate", ok[g].name))

    # Flat thumbnails all hash to 0 whatever their brightness: they are left out of the comparison.
    informative = np.array([i for i, r in enumerate(ok) if r.dhash_informative], dtype=np.int64)
    hashes = np.array([ok[i].dhash for i in informative], dtype=np.uint64)
    labels = groups[informative]
    nearest, dist = hamming_nearest(hashes, hashes, (labels, labels), earlier_only=True)
    for k in np.flatnonzero(dist <= cfg.NEAR_DUPLICATE_DISTANCE):
        image, other = ok[informative[k]], ok[informative[nearest[k]]]
        found["near_duplicate"].append(Issue(image.name, "near_duplicate", f"{other.name} (distance {dist[k]})"))

    found["split_duplicate"] = _split_duplicates(ok, groups, informative, hashes, cfg, train, validation)

    for r in ok:
        if r.mean < cfg.DARK_MEAN:
            found["dark"].append(Issue(r.name, "dark", f"{r.mean:.2f}"))
        if r.mean > cfg.BRIGHT_MEAN:
            found["bright"].append(Issue(r.name, "bright", f"{r.mean:.2f}"))
        if r.entropy < cfg.LOW_ENTROPY:
            found["low_entropy"].append(Issue(r.name, "low_entropy", f"{r.entropy:.3f}"))
    if ok:
        blur_limit = cfg.BLUR_RATIO * float(np.median([r.laplacian_var for r in ok]))
        for r in ok:
            if r.laplacian_var < blur_limit:
                found["blurry"].append(Issue(r.name, "blurry", f"{r.laplacian_var:.2f}"))
    for r in ok:
        short, long = sorted((r.width, r.height))
        if short < cfg.MIN_SIDE:
            found["small"].append(Issue(r.name, "small", f"{r.width}x{r.height}"))
        if long / short > cfg.MAX_ASPECT_RATIO:
            found["aspect_ratio"].append(Issue(r.name, "aspect_ratio", f"{long / short:.2f}"))
        if r.channel_diff is not None and r.channel_diff <= cfg.GRAYSCALE_TOLERANCE:
            found["grayscale_as_rgb"].append(Issue(r.name, "grayscale_as_rgb", f"{r.channel_diff:.3f}"))
    return [issue for name in ISSUES for issue in found[name]]


def _split_duplicates(
    ok: Sequence[ImageRecord], groups: np.ndarray, informative: np.ndarray, hashes: np.ndarray,
    cfg: AnalysisConfig, train: set[str], validation: set[str],
) -> list[Issue]:
    """Validation images whose exact or near duplicate is a training image."""
    if not train or not validation:
        return []
    issues: dict[int, Issue] = {}
    train_of_group: dict[int, int] = {}
    for i, r in enumerate(ok):
        if r.name in train:
            train_of_group.setdefault(int(groups[i]), i)
    for i, r in enumerate(ok):
        if r.name in validation and int(groups[i]) in train_of_group:
            issues[i] = Issue(r.name, "split_duplicate", f"{ok[train_of_group[int(groups[i])]].name} (exact)")
    side = np.array([ok[i].name in validation for i in informative], dtype=bool)
    in_train = np.array([ok[i].name in train for i in informative], dtype=bool)
    q, t = np.flatnonzero(side), np.flatnonzero(in_train)
    nearest, dist = hamming_nearest(hashes[q], hashes[t])
    for k in np.flatnonzero(dist <= cfg.NEAR_DUPLICATE_DISTANCE):
        i = int(informative[q[k]])
        if i not in issues:
            other = ok[int(informative[t[nearest[k]]])]
            issues[i] = Issue(ok[i].name, "split_duplicate", f"{other.name} (distance {dist[k]})")
    return [issues[i] for i in sorted(issues)]
