"""The 2-D map of a collection: UMAP (umap-learn, cosine, seeded), or PCA for a handful of images.

UMAP is given the exact cosine neighbour graph of :mod:`fext.explore.neighbours`, so it does
not search for neighbours again; large collections run fewer optimisation epochs, which
keeps 100,000 points within minutes on two cores (see benchmarks/explore_throughput.py).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from fext.explore.neighbours import Neighbours, nearest_neighbours, principal_components
from fext.vectors import normalized

log = logging.getLogger(__name__)

MAP_NEIGHBOURS = 15
"""UMAP's n_neighbors: its default, a balance of local and global structure."""
MIN_UMAP_IMAGES = 3 * MAP_NEIGHBOURS
"""Below this many images UMAP has too few neighbours to work with: PCA is used."""
LARGE = 10_000
"""Collections above this size get ``LARGE_EPOCHS`` optimisation epochs (UMAP's own rule uses 200)."""
SMALL_EPOCHS, LARGE_EPOCHS = 200, 100


def embedding_map(vectors: np.ndarray, seed: int = 0, neighbours: Neighbours | None = None) -> np.ndarray:
    """float32 (N, 2) map coordinates of ``vectors`` (N, D), scaled into [0, 1] x [0, 1].

    ``neighbours``: the cosine neighbour graph of the same vectors, if already computed (at least
    ``MAP_NEIGHBOURS - 1`` per row). The same vectors and seed give the same map.
    """
    unit = normalized(vectors)
    n = len(unit)
    if n < MIN_UMAP_IMAGES:
        log.info("Map: PCA (%d images; UMAP needs at least %d)", n, MIN_UMAP_IMAGES)
        xy = principal_components(unit, 2, seed)
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    else:
        xy = _umap(unit, seed, neighbours)
    return _to_unit_square(xy)


def _umap(unit: np.ndarray, seed: int, neighbours: Neighbours | None) -> np.ndarray:
    import umap

    k = MAP_NEIGHBOURS - 1
    if neighbours is None or neighbours.k < k:
        neighbours = nearest_neighbours(unit, k, seed)
    n = len(unit)
    # umap-learn wants each row's own index first, with distance 0, then the others nearest first.
    indices = np.concatenate([np.arange(n, dtype=np.int32)[:, None], neighbours.indices[:, :k]], axis=1)
    distances = np.concatenate([np.zeros((n, 1), np.float32), np.clip(1.0 - neighbours.similarities[:, :k], 0.0, 2.0)], axis=1)
    epochs = SMALL_EPOCHS if n <= LARGE else LARGE_EPOCHS
    log.info("Map: UMAP of %d images (%d epochs)", n, epochs)
    reducer = umap.UMAP(
        n_neighbors=MAP_NEIGHBOURS, metric="cosine", random_state=seed, n_epochs=epochs,
        precomputed_knn=(indices, distances, None), low_memory=True,
    )
    with warnings.catch_warnings():
        # A seed forces one thread (reproducible maps); umap-learn warns about it, and about the missing search index.
        warnings.simplefilter("ignore", UserWarning)
        return reducer.fit_transform(unit).astype(np.float32)


def _to_unit_square(xy: np.ndarray) -> np.ndarray:
    """Shift and scale both axes by the same factor into [0, 1] (shape kept; a single point sits at 0.5)."""
    xy = np.asarray(xy, dtype=np.float32)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float((hi - lo).max())
    if span <= 0:
        return np.full_like(xy, 0.5)
    return (xy - lo) / span + (1.0 - (hi - lo) / span) / 2
