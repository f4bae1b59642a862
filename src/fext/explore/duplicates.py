"""Near-duplicate groups, and the similarity threshold that defines them, measured on the user's images.

Two images are near-duplicates when the cosine similarity of their vectors reaches the
threshold; groups are the connected components of those pairs among each image's nearest
neighbours. The threshold rule (:func:`choose_threshold`) needs two measurements on a sample
of the collection: how similar each image stays to edited copies of itself (centre crop,
JPEG re-encode, half size; :func:`fext.explore.measure.copy_similarities`), and how similar it
is to its nearest other image. A nearest image at least as close as the image's own least
similar copy counts as a likely duplicate; the others are distinct images, and the threshold
is set so that fewer than ``MAX_FALSE_POSITIVE_RATE`` of those would be grouped, placed
halfway to the similarity that 95% of copies reach when there is room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.search import normalized

MAX_FALSE_POSITIVE_RATE = 0.01
DUPLICATE_NEIGHBOURS = 10
"""Pairs are looked for among this many nearest neighbours of each image."""


@dataclass(frozen=True)
class Threshold:
    """A similarity ``value`` and what was measured at it.

    ``false_positive_rate``: fraction of the sampled distinct images whose nearest image reaches
    ``value``; ``copy_recall``: fraction of the edited copies that reach it (None: no copies were
    measured); ``images``: images sampled; ``distinct``: those counted as distinct; ``by_hand``:
    the value was given, not chosen by the rule.
    """

    value: float
    false_positive_rate: float
    copy_recall: float | None
    images: int
    distinct: int
    by_hand: bool = False

    def describe(self) -> str:
        recall = ("no edited copies measured" if self.copy_recall is None
                  else f"{self.copy_recall:.1%} of edited copies reach it")
        how = "set by hand" if self.by_hand else "measured"
        return (f"Duplicate threshold {self.value:.4f} (cosine similarity, {how}): {self.false_positive_rate:.2%} of "
                f"{self.distinct} sampled distinct images would be grouped, {recall}")


@dataclass(frozen=True)
class Duplicates:
    """``groups``: lists of rows, largest group first, each sorted by row; ``similarity``: float32 (N,)
    similarity of each grouped row to its group's first row (NaN for rows in no group)."""

    groups: list[list[int]]
    similarity: np.ndarray
    threshold: float

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """DataFrame-friendly rows ``{"group", "path", "similarity"}`` (to the group's first image)."""
        return [{"group": g, "path": paths[r], "similarity": float(self.similarity[r])}
                for g, group in enumerate(self.groups, 1) for r in group]


def choose_threshold(
    copy_similarity: np.ndarray | None,
    nearest_similarity: np.ndarray,
    max_false_positive_rate: float = MAX_FALSE_POSITIVE_RATE,
) -> Threshold:
    """The rule of the module docstring.

    ``copy_similarity``: float (m, T) similarity of each sampled image to each of its T edited
    copies, or None when they could not be measured (then every sampled image counts as
    distinct); ``nearest_similarity``: float (m,) similarity of each sampled image to its
    nearest other image in the collection.
    """
    nearest, copies, distinct = _measured(copy_similarity, nearest_similarity)
    if not len(distinct):  # every sampled image has a neighbour closer than its copies: trust the copies
        value = float(np.quantile(copies, 0.05)) if copies is not None else 1.0
    else:
        value = _lowest_safe(distinct, max_false_positive_rate)
        if copies is not None and np.quantile(copies, 0.05) > value:
            value = (value + float(np.quantile(copies, 0.05))) / 2
    return threshold_at(min(value, 1.0), copy_similarity, nearest_similarity)


def threshold_at(
    value: float, copy_similarity: np.ndarray | None, nearest_similarity: np.ndarray, by_hand: bool = False,
) -> Threshold:
    """What the measurements of :func:`choose_threshold` say about the threshold ``value``."""
    nearest, copies, distinct = _measured(copy_similarity, nearest_similarity)
    fp = float((distinct >= value).mean()) if len(distinct) else 0.0
    recall = None if copies is None else float((copies >= value).mean())
    return Threshold(float(value), fp, recall, len(nearest), len(distinct), by_hand)


def _measured(
    copy_similarity: np.ndarray | None, nearest_similarity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(nearest similarities, copy similarities or None, the nearest similarities of the distinct images)."""
    nearest = np.asarray(nearest_similarity, dtype=np.float64)
    if copy_similarity is None:
        return nearest, None, nearest
    copies = np.asarray(copy_similarity, dtype=np.float64)
    return nearest, copies, nearest[nearest < copies.min(axis=1)]


def _lowest_safe(distinct: np.ndarray, rate: float) -> float:
    """The lowest similarity that fewer than ``rate`` of ``distinct`` reach."""
    if not len(distinct):
        return -1.0
    allowed = math.ceil(rate * len(distinct)) - 1  # "fewer than": at most this many at or above
    ordered = np.sort(distinct)[::-1]
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed >= 0 else float(np.nextafter(ordered[0], np.inf))


def find_duplicates(vectors: np.ndarray, threshold: float, neighbours: Neighbours | None = None) -> Duplicates:
    """Groups of rows of ``vectors`` (N, D) whose cosine similarity reaches ``threshold``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    unit = normalized(vectors)
    n = len(unit)
    if neighbours is None:
        neighbours = nearest_neighbours(unit, DUPLICATE_NEIGHBOURS)
    close = neighbours.similarities >= threshold
    rows = np.repeat(np.arange(n), neighbours.k)[close.ravel()]
    cols = neighbours.indices.ravel()[close.ravel()]
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    similarity = np.full(n, np.nan, dtype=np.float32)
    groups = []
    paired = np.unique(np.concatenate([rows, cols]))  # rows with a close pair: exactly the rows of groups
    paired = paired[np.argsort(component[paired], kind="stable")]
    for group in np.split(paired, np.flatnonzero(np.diff(component[paired])) + 1) if len(paired) else []:
        similarity[group] = unit[group] @ unit[group[0]]
        groups.append(group.tolist())
    groups.sort(key=lambda g: (-len(g), g[0]))
    return Duplicates(groups, similarity, float(threshold))
