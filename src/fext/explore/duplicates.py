"""Duplicate groups at three levels, and the similarity threshold of the last one, measured on the user's images.

A person cleaning a photo collection expects the same file saved twice, and the same photo
resized or re-saved, to be found whatever the model learned. So two images are linked when

- ``exact``: their files have the same bytes (the BLAKE2b hash ``fext encode`` records in
  sources.csv);
- ``perceptual``: their 64-bit pHashes differ in at most ``HASH_DISTANCE`` bits (resized,
  re-encoded, brightness-changed copies; hash and distance chosen by
  ``benchmarks/perceptual_hash.py``), or one's pHash and the other's mirror image's do (flipped
  copies), looked for among each image's nearest raw thumbnails, mirrored thumbnails and feature
  vectors;
- ``feature``: the cosine similarity of their vectors reaches the threshold;

and groups are the connected components of those links. A group's kind is the strictest level
that holds it together: ``exact`` when all its files are byte-identical, ``perceptual`` when
exact and perceptual links alone join it, else ``feature``.

The threshold rule (:func:`choose_threshold`) needs two measurements on a sample of the
collection: how similar each image stays to edited copies of itself (centre crop, JPEG
re-encode, half size; :func:`fext.similarity.copy_similarities`), and how similar it is to
its nearest other image. A nearest image that is a known duplicate (same bytes, same picture by
the hash, or an equal vector) or at least as close as the image's own most similar copy counts
as a likely duplicate; the others are distinct images, and the threshold is set so that fewer
than ``MAX_FALSE_POSITIVE_RATE`` of those would be grouped, placed halfway to the similarity
that 95% of copies reach when there is room. It is never above ``EQUAL_SIMILARITY``, which equal
vectors always reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.vectors import normalized

MAX_FALSE_POSITIVE_RATE = 0.01
DUPLICATE_NEIGHBOURS = 10
"""Pairs are looked for among this many nearest neighbours of each image."""
HASH_DISTANCE = 6
"""Most differing pHash bits of near-identical copies (0 of 240 distinct pictures, 96-99 % of copies)."""
EQUAL_SIMILARITY = 1.0 - 1e-5
"""Cosine similarity that equal vectors always reach despite float32 rounding: the highest threshold."""
KINDS = ("exact", "perceptual", "feature")


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
class Identity:
    """What says two files hold the same picture, whatever the model: row-aligned with the vectors.

    ``file_hash``: the BLAKE2b of each file's bytes ("" unknown), or None; ``phash``, ``phash_mirror``:
    uint64 (N,) pHashes of each image and of its mirror image, and ``hashed``: bool (N,), False where an
    image's hash means nothing (unreadable, flat), or all None when the images are not at hand.
    """

    file_hash: list[str] | None = None
    phash: np.ndarray | None = None
    hashed: np.ndarray | None = None
    phash_mirror: np.ndarray | None = None

    def exact_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, first rows): every file linked to the first file with the same bytes."""
        first: dict[str, int] = {}
        pairs = [(i, first.setdefault(h, i)) for i, h in enumerate(self.file_hash or []) if h]
        pairs = [(i, j) for i, j in pairs if i != j]
        return np.array([i for i, _ in pairs], dtype=np.int64), np.array([j for _, j in pairs], dtype=np.int64)

    def hash_distance(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """int (P,) differing pHash bits of each pair, the image or its mirror image (a flipped copy);
        255 where either image has no meaningful hash."""
        if self.phash is None:
            return np.full(len(rows), 255, dtype=np.int64)
        distance = np.bitwise_count(self.phash[rows] ^ self.phash[cols]).astype(np.int64)
        if self.phash_mirror is not None:
            distance = np.minimum(distance, np.bitwise_count(self.phash[rows] ^ self.phash_mirror[cols]))
        distance[~(self.hashed[rows] & self.hashed[cols])] = 255
        return distance

    def same_picture(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """bool (P,): the pairs known to be one picture (same bytes, or pHashes within ``HASH_DISTANCE``)."""
        known = self.hash_distance(rows, cols) <= HASH_DISTANCE
        if self.file_hash is not None:
            known |= np.array([bool(self.file_hash[r]) and self.file_hash[r] == self.file_hash[c]
                               for r, c in zip(rows.tolist(), cols.tolist())], dtype=bool)
        return known


@dataclass(frozen=True)
class Duplicates:
    """``groups``: lists of rows, largest group first, each sorted by row; ``kinds``: each group's kind
    (``KINDS``, see the module docstring). Per row, float32 (N,) ``similarity`` of its vector to its
    group's first row's (NaN for rows in no group); int (N,) ``hash_distance``, differing pHash bits to
    the first row (-1: no group or no meaningful hash); bool (N,) ``same_file``, same bytes as the first row."""

    groups: list[list[int]]
    similarity: np.ndarray
    threshold: float
    kinds: list[str] = field(default_factory=list)
    hash_distance: np.ndarray | None = None
    same_file: np.ndarray | None = None

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """DataFrame-friendly rows ``{"group", "kind", "path", "similarity", "hash_distance", "same_file"}``,
        each compared with the group's first image."""
        return [{"group": g, "kind": kind, "path": paths[r], "similarity": float(self.similarity[r]),
                 "hash_distance": None if self.hash_distance[r] < 0 else int(self.hash_distance[r]),
                 "same_file": int(self.same_file[r])}
                for g, (group, kind) in enumerate(zip(self.groups, self.kinds), 1) for r in group]


def choose_threshold(
    copy_similarity: np.ndarray | None,
    nearest_similarity: np.ndarray,
    max_false_positive_rate: float = MAX_FALSE_POSITIVE_RATE,
    known: np.ndarray | None = None,
) -> Threshold:
    """The rule of the module docstring.

    ``copy_similarity``: float (m, T) similarity of each sampled image to each of its T edited
    copies, or None when they could not be measured (then every sampled image not ``known`` counts
    as distinct); ``nearest_similarity``: float (m,) similarity of each sampled image to its
    nearest other image in the collection; ``known``: bool (m,), True where that nearest image is
    known to be the same picture (:meth:`Identity.same_picture`).
    """
    nearest, copies, distinct = _measured(copy_similarity, nearest_similarity, known)
    if not len(distinct):  # every sampled image has a neighbour closer than its copies: trust the copies
        value = float(np.quantile(copies, 0.05)) if copies is not None else EQUAL_SIMILARITY
    else:
        value = _lowest_safe(distinct, max_false_positive_rate)
        if copies is not None and np.quantile(copies, 0.05) > value:
            value = (value + float(np.quantile(copies, 0.05))) / 2
    return threshold_at(min(value, EQUAL_SIMILARITY), copy_similarity, nearest_similarity, known=known)


def threshold_at(
    value: float, copy_similarity: np.ndarray | None, nearest_similarity: np.ndarray, by_hand: bool = False,
    known: np.ndarray | None = None,
) -> Threshold:
    """What the measurements of :func:`choose_threshold` say about the threshold ``value``."""
    nearest, copies, distinct = _measured(copy_similarity, nearest_similarity, known)
    fp = float((distinct >= value).mean()) if len(distinct) else 0.0
    recall = None if copies is None else float((copies >= value).mean())
    return Threshold(float(value), fp, recall, len(nearest), len(distinct), by_hand)


def _measured(
    copy_similarity: np.ndarray | None, nearest_similarity: np.ndarray, known: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(nearest similarities, copy similarities or None, the nearest similarities of the distinct images).

    Never distinct: a nearest image known to be the same picture, or with an equal vector.
    """
    nearest = np.asarray(nearest_similarity, dtype=np.float64)
    distinct = nearest < EQUAL_SIMILARITY
    if known is not None:
        distinct &= ~np.asarray(known, dtype=bool)
    if copy_similarity is None:
        return nearest, None, nearest[distinct]
    copies = np.asarray(copy_similarity, dtype=np.float64)
    return nearest, copies, nearest[distinct & (nearest < copies.max(axis=1))]


def _lowest_safe(distinct: np.ndarray, rate: float) -> float:
    """The lowest similarity that fewer than ``rate`` of ``distinct`` reach."""
    if not len(distinct):
        return -1.0
    allowed = math.ceil(rate * len(distinct)) - 1  # "fewer than": at most this many at or above
    ordered = np.sort(distinct)[::-1]
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed >= 0 else float(np.nextafter(ordered[0], np.inf))


def find_duplicates(
    vectors: np.ndarray, threshold: float, neighbours: Neighbours | None = None,
    identity: Identity | None = None, candidates: list[Neighbours] | None = None,
) -> Duplicates:
    """Duplicate groups of the rows of ``vectors`` (N, D) at the three levels of the module docstring.

    ``threshold``: the cosine similarity of feature-level pairs; ``neighbours``: the vectors' own
    neighbour graph, if computed; ``identity``: byte and perceptual hashes (None: features only);
    ``candidates``: more neighbour graphs among which perceptual pairs are looked for (the raw thumbnails').
    """
    unit = normalized(vectors)
    n = len(unit)
    identity = identity or Identity()
    if neighbours is None:
        neighbours = nearest_neighbours(unit, DUPLICATE_NEIGHBOURS)
    exact = identity.exact_pairs()
    perceptual = _perceptual_pairs(identity, [neighbours, *(candidates or [])])
    close = neighbours.similarities >= threshold
    feature = (np.repeat(np.arange(n), neighbours.k)[close.ravel()], neighbours.indices.ravel()[close.ravel()])
    levels = [_components(n, [exact]), _components(n, [exact, perceptual]), _components(n, [exact, perceptual, feature])]
    groups = _groups(levels[-1], np.unique(np.concatenate([*exact, *perceptual, *feature])))
    kinds = [next(kind for kind, labels in zip(KINDS, levels) if len(set(labels[g].tolist())) == 1) for g in groups]
    return _described(groups, kinds, unit, float(threshold), identity)


def _perceptual_pairs(identity: Identity, graphs: list[Neighbours]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the neighbour pairs whose pHashes are within ``HASH_DISTANCE`` bits."""
    if identity.phash is None or not graphs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows = np.concatenate([np.repeat(np.arange(len(nb.indices)), nb.k) for nb in graphs])
    cols = np.concatenate([nb.indices.ravel().astype(np.int64) for nb in graphs])
    close = (identity.hash_distance(rows, cols) <= HASH_DISTANCE) & (rows != cols)
    return rows[close], cols[close]


def _components(n: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """int (N,) connected-component label of every row in the graph of ``pairs``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([np.asarray(r, np.int64) for r, _ in pairs])
    cols = np.concatenate([np.asarray(c, np.int64) for _, c in pairs])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _groups(component: np.ndarray, paired: np.ndarray) -> list[list[int]]:
    """The rows of ``paired`` (every row with a link) split by component, largest group first."""
    paired = paired[np.argsort(component[paired], kind="stable")]
    groups = [g.tolist() for g in np.split(paired, np.flatnonzero(np.diff(component[paired])) + 1)] if len(paired) else []
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _described(groups: list[list[int]], kinds: list[str], unit: np.ndarray, threshold: float,
               identity: Identity) -> Duplicates:
    """The :class:`Duplicates` of ``groups``, each row compared with its group's first row."""
    n = len(unit)
    similarity = np.full(n, np.nan, dtype=np.float32)
    hash_distance = np.full(n, -1, dtype=np.int64)
    same_file = np.zeros(n, dtype=bool)
    for group in groups:
        rows, first = np.array(group), np.full(len(group), group[0])
        similarity[rows] = unit[rows] @ unit[group[0]]
        distance = identity.hash_distance(rows, first)
        hash_distance[rows] = np.where(distance == 255, -1, distance)
        hashes = identity.file_hash
        same_file[rows] = [bool(hashes and hashes[r]) and hashes[r] == hashes[group[0]] for r in group]
    return Duplicates(groups, similarity, threshold, kinds, hash_distance, same_file)
