"""``fext select``: a diverse or a typical subset of an encoded collection (to label, or to keep).

Distances are cosine distances, ``1 - cosine similarity`` of the feature vectors as
:func:`fext.vectors.normalized` makes them, the similarity every other command uses.

- ``diverse``: greedy k-center (farthest-point) selection on *relative* distances: the cosine
  distance of two images over the geometric mean of their local scales, ``d(i, j) / sqrt(s_i s_j)``
  (local scaling, Zelnik-Manor & Perona 2004), where an image's local scale ``s`` is its mean cosine
  distance to its :data:`DENSITY_NEIGHBOURS` nearest other images (as ``typical`` measures it; no
  scale counts as less than :data:`SCALE_FLOOR` of the median one). A region whose images are alike
  (one star field) and one whose images differ widely (crops of one busy street) each count as one
  region, so the picks spread over the regions of the collection rather than over the widest one.
  The first pick is the image nearest the mean direction of the collection (its most central image,
  so a collection always starts from the same image, whatever the seed); each next pick is the image
  farthest, in relative distance, from every earlier pick. A pick's ``distance`` is that relative
  distance to the nearest earlier pick when it was picked (the first's: its cosine distance to the
  mean direction).
- ``farthest``: the same greedy k-center on plain cosine distances. Its *coverage radius* (the
  largest distance from any image to its nearest pick) is within twice the best any subset of that
  size can reach, but it spends picks on the widest regions and on lone outliers.
- ``typical``: the most typical image of each region: the collection is split into ``count``
  regions around the ``diverse`` picks (each image joins its nearest pick, in relative distance),
  and each region gives its image of highest local density, the largest region first. Local
  density is the mean cosine similarity to the :data:`DENSITY_NEIGHBOURS` nearest other images
  (above :data:`DENSITY_SAMPLE` images, nearest among a seeded sample of that many, scanned
  exactly). ``diverse`` picks the far edges of the regions, ``typical`` their centres.
  ``distance``: 1 - that density.

``--skip-duplicates`` never picks two members of one near-duplicate group: the groups of
``fext explore`` (its duplicates.csv), or groups found at ``--duplicate-threshold``.

Scale: exact greedy k-center scores every image against each new pick. Here only a pool of the
:data:`POOL` farthest images is updated per pick; the others are brought up to date in one
matrix product per refresh, for all the picks made since the previous one, and a refresh comes
only when the best of the pool falls below the largest stale distance outside it. Distances
only shrink as picks are added, so the stale ones are upper bounds and the picks are exactly
those of plain greedy selection (up to ties), at the cost of a few passes over the vectors.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fext.encoding.files import Encoding, open_encoding
from fext.errors import FeXTError
from fext.search import paths_of_rows
from fext.vectors import normalized, seeded_rows

log = logging.getLogger(__name__)

STRATEGIES = ("diverse", "farthest", "typical")
POOL = 65536
"""Farthest images updated at every pick (the rest at each refresh)."""
BLOCK_ROWS = 16384
"""Rows scored at a time in a pass over the collection."""
CENTRE_BLOCK = 2048
"""Picks scored at a time against a block of rows (a block of scores stays within 128 MB)."""
DENSITY_NEIGHBOURS = 10
DENSITY_SAMPLE = 10_000
"""Above this many images, local density is measured against a seeded sample of this many."""
SCALE_FLOOR = 0.1
"""The smallest local scale ``diverse`` uses, as a share of the median one: a group of identical
copies is one region picked early, not a region infinitely far from everything."""
QUERY_BLOCK = 2048


@dataclass(frozen=True)
class Selection:
    """The picks in pick order: ``rows`` (int64), ``paths``, ``distances`` (see the module docstring);
    ``coverage_radius`` of the picks and ``random_radius`` of a seeded random subset of the same size
    (cosine distances); for ``diverse``, the same two radii in relative distance."""

    strategy: str
    rows: np.ndarray
    paths: list[str]
    distances: np.ndarray
    coverage_radius: float
    random_radius: float
    asked: int
    collection: int
    duplicates_note: str = ""
    output: Path | None = None
    relative_radius: float | None = None
    random_relative_radius: float | None = None

    def summary(self) -> str:
        """What ``fext select`` prints."""
        lines = [f"Selected {len(self.rows)} of {self.collection} images ({self.strategy})"
                 + ("" if len(self.rows) == self.asked else f"; {self.asked} were asked for, "
                    f"{'the collection holds fewer' if not self.duplicates_note else 'no more without duplicates'}")]
        if self.duplicates_note:
            lines.append(self.duplicates_note)
        if self.relative_radius is None:
            lines.append(f"Coverage radius (largest cosine distance from any image to its nearest pick): "
                         f"{self.coverage_radius:.4f}; a random subset of the same size: {self.random_radius:.4f}")
        else:
            lines.append(f"Relative coverage radius (largest distance from any image to its nearest pick, each "
                         f"distance over the local scales of both images; what diverse makes small): "
                         f"{self.relative_radius:.4f}; a random subset of the same size: {self.random_relative_radius:.4f}")
            lines.append(f"Coverage radius in cosine distance: {self.coverage_radius:.4f}; the random subset: "
                         f"{self.random_radius:.4f} (--strategy farthest makes this one small)")
        if self.output is not None:
            lines.append(f"Selection: {self.output}")
        return "\n".join(lines)


def select(
    embeddings: str | os.PathLike,
    count: int,
    strategy: str = "diverse",
    output: str | os.PathLike | None = None,
    *,
    skip_duplicates: bool = False,
    duplicate_threshold: float | None = None,
    seed: int = 42,
) -> Selection:
    """Pick ``count`` images of the `fext encode` folder ``embeddings``; write ``output`` (CSV) if given.

    ``skip_duplicates``: at most one image of each near-duplicate group (groups of ``fext
    explore``, or found at ``duplicate_threshold``); ``seed``: of the random subset compared
    with and of the density sample. A ``count`` above what can be picked picks everything there is.
    """
    from fext.explore.selection import write_selection

    if strategy not in STRATEGIES:
        raise FeXTError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if count < 1:
        raise FeXTError(f"--count must be at least 1, got {count}")
    encoding = open_encoding(embeddings)
    rows = encoding.rows
    n = len(rows)
    if n == 0:
        raise FeXTError(f"{encoding.folder} holds no image; encode a folder with images first")
    groups, note = duplicate_groups(encoding, duplicate_threshold) if skip_duplicates else (None, "")
    picker = _Picker(n, groups)
    relative = random_relative = None
    if strategy == "farthest":
        picks, distances, nearest = farthest_first(rows, count, picker)
    else:
        density = local_density(rows, DENSITY_NEIGHBOURS, seed)
        scale = local_scale(density)
        if strategy == "diverse":
            picks, distances, nearest = farthest_first(rows, count, picker, scale)
        else:
            picks, distances = most_typical(rows, count, picker, density, scale, groups)
    if skip_duplicates:
        note = f"Skipped {picker.skipped} image(s) of duplicate groups already picked from ({note})"
    picks_arr = np.asarray(picks, np.int64)
    names = paths_of_rows(encoding.rows_csv, picks_arr)
    paths = [names[r] for r in picks]
    random = seeded_rows(n, len(picks), seed)
    if strategy == "diverse":
        relative, random_relative = float(nearest.max()), float(distance_to_picks(rows, random, scale).max())
    coverage = nearest.max() if strategy == "farthest" else distance_to_picks(rows, picks_arr).max()
    written = write_selection(output, paths, distances) if output is not None else None
    return Selection(strategy, picks_arr, paths, np.asarray(distances, np.float32), float(coverage),
                     float(distance_to_picks(rows, random).max()), count, n, note, written, relative, random_relative)


class _Picker:
    """Which rows may still be picked: not picked yet, and (with groups) of no group already picked from."""

    def __init__(self, n: int, groups: np.ndarray | None) -> None:
        self.eligible = np.ones(n, dtype=bool)
        self.skipped = 0
        self.members: dict[int, np.ndarray] = {}
        if groups is not None:
            grouped = np.flatnonzero(groups >= 0)
            order = grouped[np.argsort(groups[grouped], kind="stable")]
            starts = np.flatnonzero(np.diff(groups[order], prepend=-2))
            self.members = {int(groups[c[0]]): c for c in np.split(order, starts[1:]) if len(c)}
            self.groups = groups

    def pick(self, row: int) -> None:
        self.eligible[row] = False
        if self.members and self.groups[row] >= 0:
            others = self.members[int(self.groups[row])]
            self.skipped += int(self.eligible[others].sum())
            self.eligible[others] = False


def farthest_first(rows: np.ndarray, count: int, picker: _Picker,
                   scale: np.ndarray | None = None) -> tuple[list[int], list[float], np.ndarray]:
    """Greedy k-center picks, their distances, and every row's final distance to its nearest pick (N,).

    ``rows``: (N, D) vectors (an array or a RowReader), normalised a block at a time; ``scale``:
    (N,) the square root of each row's local scale, for relative distances (None: cosine distances).
    """
    mean = _mean_direction(rows)
    first = _most_central(rows, mean, picker.eligible)
    picks = [first]
    distances = [float(1.0 - (normalized(rows[first:first + 1]) @ mean)[0])]
    picker.pick(first)
    nearest = np.full(len(rows), np.inf, np.float32)
    pending = [first]
    while pending:
        _lower(nearest, rows, np.array(pending), scale)  # refresh: the rest catch up
        pending = []
        if len(picks) >= count:
            break
        pool, bound = _pool(nearest, picker.eligible)
        if not len(pool):
            break
        vectors, pool_nearest = normalized(_take(rows, pool)), nearest[pool]
        pool_scale = np.ones(len(pool), np.float32) if scale is None else scale[pool]
        while len(picks) < count:
            live = np.where(picker.eligible[pool], pool_nearest, -np.inf)
            j = int(np.argmax(live))
            if live[j] == -np.inf or live[j] < bound:
                break  # a stale row outside the pool might be farther: refresh first
            picks.append(int(pool[j]))
            distances.append(float(live[j]))
            pending.append(int(pool[j]))
            picker.pick(int(pool[j]))
            np.minimum(pool_nearest, (1.0 - vectors @ vectors[j]) / (pool_scale * pool_scale[j]), out=pool_nearest)
    return picks, distances, nearest


def most_typical(rows: np.ndarray, count: int, picker: _Picker, density: np.ndarray, scale: np.ndarray,
                 groups: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """The eligible row of highest ``density`` in each region around ``count`` diverse picks (made with
    the duplicate ``groups``, if any), largest region first, and their distances (see the module docstring)."""
    centres, _, _ = farthest_first(rows, count, _Picker(len(rows), groups), scale)
    region = np.full(len(rows), -1, np.int64)
    _lower(np.full(len(rows), np.inf, np.float32), rows, np.asarray(centres), scale, owner=region)
    region[centres] = np.arange(len(centres))  # each pick in its own region, even one identical to another
    by_region = np.lexsort((-density, region))  # each region's rows, densest first
    starts = np.searchsorted(region[by_region], np.arange(len(centres) + 1))
    picks, distances = [], []
    for c in np.argsort(-np.diff(starts), kind="stable"):  # the largest region first
        members = by_region[starts[c]:starts[c + 1]]
        eligible = members[picker.eligible[members]]
        if len(eligible):
            picks.append(int(eligible[0]))
            distances.append(float(1.0 - density[eligible[0]]))
            picker.pick(int(eligible[0]))
    return picks, distances


def local_density(rows: np.ndarray, k: int = DENSITY_NEIGHBOURS, seed: int = 42) -> np.ndarray:
    """float32 (N,) mean cosine similarity of each row to its ``k`` nearest other rows (see the module docstring)."""
    import torch

    from fext.explore.neighbours import nearest_neighbours

    n = len(rows)
    if n < 2:
        return np.zeros(n, np.float32)
    if n <= DENSITY_SAMPLE:
        return nearest_neighbours(normalized(rows[0:n]), k, seed).similarities.mean(axis=1).astype(np.float32)
    sample = seeded_rows(n, DENSITY_SAMPLE, seed)
    sampled = np.zeros(n, dtype=bool)
    sampled[sample] = True
    reference = torch.from_numpy(normalized(_take(rows, sample)))
    density = np.empty(n, np.float32)
    for lo in range(0, n, QUERY_BLOCK):
        queries = torch.from_numpy(normalized(rows[lo:lo + QUERY_BLOCK]))
        top = torch.topk(queries @ reference.T, k + 1, dim=1).values.numpy()  # (q, k + 1), largest first
        own = sampled[lo:lo + len(queries)]  # a sampled row's largest similarity is its own: not a neighbour
        density[lo:lo + len(queries)] = np.where(own, top[:, 1:].mean(axis=1), top[:, :k].mean(axis=1))
    return density


def local_scale(density: np.ndarray) -> np.ndarray:
    """float32 (N,) square root of each row's local scale, from its :func:`local_density` (see the module docstring)."""
    distance = np.maximum(1.0 - density, 0.0)
    return np.sqrt(np.maximum(distance, max(SCALE_FLOOR * float(np.median(distance)), 1e-6))).astype(np.float32)


def distance_to_picks(rows: np.ndarray, picks: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """float32 (N,) distance of every row to its nearest row of ``picks``: cosine, or relative with ``scale``."""
    nearest = np.full(len(rows), np.inf, np.float32)
    _lower(nearest, rows, np.asarray(picks), scale)
    return nearest


def _lower(nearest: np.ndarray, rows: np.ndarray, centres: np.ndarray, scale: np.ndarray | None,
           owner: np.ndarray | None = None) -> None:
    """``nearest`` (N,) lowered, in place, to each row's distance to its nearest row of ``centres`` (C,):
    cosine, or relative with ``scale`` (see :func:`farthest_first`); ``owner`` (N,), if given, set to
    the position in ``centres`` of each row's nearest one where it lowered."""
    unit = normalized(_take(rows, centres))
    for lo in range(0, len(rows), BLOCK_ROWS):
        block = normalized(rows[lo:lo + BLOCK_ROWS])
        here = slice(lo, lo + len(block))
        for c in range(0, len(centres), CENTRE_BLOCK):
            distance = 1.0 - block @ unit[c:c + CENTRE_BLOCK].T  # (b, c)
            if scale is not None:
                distance /= scale[centres[c:c + CENTRE_BLOCK]]
            which = distance.argmin(axis=1) if owner is not None else None
            closest = distance.min(axis=1) if which is None else distance[np.arange(len(block)), which]
            if scale is not None:
                closest /= scale[here]
            if owner is not None:
                owner[here] = np.where(closest < nearest[here], c + which, owner[here])
            np.minimum(nearest[here], closest, out=nearest[here])


def _pool(nearest: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, float]:
    """The eligible rows of the :data:`POOL` largest distances, and the largest distance of the others."""
    candidates = np.flatnonzero(eligible)
    if len(candidates) <= POOL:
        return candidates, -np.inf
    order = np.argpartition(-nearest[candidates], POOL)
    return np.sort(candidates[order[:POOL]]), float(nearest[candidates[order[POOL:]]].max())


def _mean_direction(rows: np.ndarray) -> np.ndarray:
    """The unit mean of the unit rows (D,)."""
    total = np.zeros(rows.shape[1], np.float64)
    for lo in range(0, len(rows), BLOCK_ROWS):
        total += normalized(rows[lo:lo + BLOCK_ROWS]).sum(axis=0)
    return normalized(total[None])[0]


def _most_central(rows: np.ndarray, mean: np.ndarray, eligible: np.ndarray) -> int:
    """The eligible row most similar to ``mean`` (the first of equals)."""
    best, best_row = -np.inf, -1
    for lo in range(0, len(rows), BLOCK_ROWS):
        sims = np.where(eligible[lo:lo + BLOCK_ROWS], normalized(rows[lo:lo + BLOCK_ROWS]) @ mean, -np.inf)
        j = int(np.argmax(sims))
        if sims[j] > best:
            best, best_row = float(sims[j]), lo + j
    return best_row


def _take(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows ``wanted`` of an array or a RowReader (whose ``take`` reads only those rows)."""
    return rows[wanted] if isinstance(rows, np.ndarray) else rows.take(wanted)


def duplicate_groups(encoding: Encoding, threshold: float | None) -> tuple[np.ndarray, str]:
    """(N,) near-duplicate group of each row (-1: in none), and where the groups came from.

    At ``threshold``: found as ``fext explore`` finds them; without: read from the duplicates.csv
    of a ``fext explore`` run at least as recent as the embeddings.
    """
    from fext.encoding.files import METADATA, row_paths
    from fext.explore import find_duplicates
    from fext.explore.run import OUTPUT

    n = len(encoding.vectors)
    groups = np.full(n, -1, np.int64)
    if threshold is not None:
        found = find_duplicates(normalized(encoding.vectors), threshold)
        for g, members in enumerate(found.groups):
            groups[members] = g
        return groups, f"groups at cosine similarity >= {threshold}"
    table = encoding.folder / OUTPUT / "duplicates.csv"
    if not table.is_file() or table.stat().st_mtime < (encoding.folder / METADATA).stat().st_mtime:
        raise FeXTError(
            f"--skip-duplicates needs the near-duplicate groups of {encoding.folder}: run `fext explore "
            f"{encoding.folder}` first (it measures the threshold on edited copies of your images), "
            "or pass --duplicate-threshold SIM")
    row_of = {p: i for i, p in enumerate(row_paths(encoding.folder))}
    with open(table, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            if record["path"] in row_of:
                groups[row_of[record["path"]]] = int(record["group"])
    return groups, f"groups of {table}"

