"""Cosine nearest neighbours of every vector, shared by the map, the outliers, the duplicates and the page.

The search multiplies blocks of unit vectors on the CPU with torch (already a FeXT dependency,
multi-threaded BLAS and a fast ``topk``). When an exact all-pairs search would cost more than
``EXACT_BUDGET`` multiply-adds, candidates are found in the first principal components and
re-scored exactly on the full vectors, so the similarities reported are always exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_BUDGET = 6.4e11
"""Multiply-adds (N * N * D) above which candidates come from principal components first."""
MIN_COMPONENTS = 64
CANDIDATES = 2
"""Candidates per wanted neighbour on the principal-component route."""
BLOCK_BYTES = 256 * 2**20
"""Size of one block of similarity scores (rows x N float32): memory stays flat as collections grow."""


@dataclass(frozen=True)
class Neighbours:
    """The ``k`` nearest other rows of every row, nearest first.

    ``indices``: int32 (N, k); ``similarities``: float32 (N, k) cosine similarities.
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def first(self, k: int) -> Neighbours:
        """The ``k`` nearest of each row (all there are, if fewer)."""
        return Neighbours(self.indices[:, :k], self.similarities[:, :k])


def principal_components(unit: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """float32 (N, min(dims, D, N)) projection of ``unit`` on its first principal components."""
    from sklearn.decomposition import PCA

    dims = min(dims, unit.shape[1], unit.shape[0])
    if dims >= unit.shape[1]:
        return unit - unit.mean(axis=0)
    return PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(unit).astype(np.float32)


def nearest_neighbours(unit: np.ndarray, k: int, seed: int = 0) -> Neighbours:
    """The ``k`` nearest other rows of every row of ``unit`` (float32 (N, D), unit rows) by cosine similarity.

    Exact when N * N * D is within ``EXACT_BUDGET``; otherwise the ``CANDIDATES * k`` nearest in
    enough principal components to fill the budget are re-scored exactly.
    """
    n, d = unit.shape
    k = min(k, n - 1)
    if float(n) * n * d <= EXACT_BUDGET:
        return _top_k(unit, unit, k)
    dims = max(MIN_COMPONENTS, int(EXACT_BUDGET / (float(n) * n)))
    reduced = principal_components(unit, dims, seed)
    candidates = _top_k(reduced, reduced, min(n - 1, CANDIDATES * k)).indices
    return _rescore(unit, candidates, k)


def _top_k(queries: np.ndarray, base: np.ndarray, k: int) -> Neighbours:
    """Exact top-``k`` inner products of every query row against ``base`` (same rows), self excluded."""
    import torch

    q_all, b = torch.from_numpy(queries), torch.from_numpy(base)
    indices = np.empty((len(queries), k), dtype=np.int32)
    sims = np.empty((len(queries), k), dtype=np.float32)
    block = _block_rows(len(base))
    for lo in range(0, len(queries), block):
        scores = q_all[lo:lo + block] @ b.T  # (block, N)
        rows = torch.arange(lo, lo + len(scores))
        scores[torch.arange(len(scores)), rows] = -torch.inf  # never one's own neighbour
        values, found = torch.topk(scores, k, dim=1)  # sorted, largest first
        indices[lo:lo + len(scores)] = found.numpy()
        sims[lo:lo + len(scores)] = values.numpy()
    return Neighbours(indices, sims)


def _rescore(unit: np.ndarray, candidates: np.ndarray, k: int) -> Neighbours:
    """Exact similarities of each row to its candidate rows; the best ``k``, nearest first."""
    indices = np.empty((len(unit), k), dtype=np.int32)
    sims = np.empty((len(unit), k), dtype=np.float32)
    block = _block_rows(candidates.shape[1] * unit.shape[1])  # the gathered candidate vectors dominate
    for lo in range(0, len(unit), block):
        cand = candidates[lo:lo + block]  # (b, c)
        scores = np.einsum("bd,bcd->bc", unit[lo:lo + len(cand)], unit[cand])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        indices[lo:lo + len(cand)] = np.take_along_axis(cand, order, axis=1)
        sims[lo:lo + len(cand)] = np.take_along_axis(scores, order, axis=1)
    return Neighbours(indices, sims)


def _block_rows(row_floats: int) -> int:
    """Rows per block when each row holds ``row_floats`` float32 values."""
    return max(1, min(4096, BLOCK_BYTES // (4 * row_floats)))
