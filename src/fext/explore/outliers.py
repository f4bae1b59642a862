"""Novelty scores: how unusual each image is within its own collection.

The score of an image is the robust z-score of its mean cosine distance to its
``OUTLIER_NEIGHBOURS`` nearest other images (a kNN novelty score: isolated images are far
from everything), averaged with the robust z-score of the model's reconstruction error of
the image when the checkpoint is at hand (the autoencoder reconstructs badly what it saw
little of). A robust z-score is ``(x - median) / (1.4826 * MAD)``: 0 is a typical image, and
a score of 3 is as far above typical as three standard deviations of a normal distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.search import normalized

OUTLIER_NEIGHBOURS = 10


@dataclass(frozen=True)
class Outliers:
    """float32 (N,) arrays: ``score`` (see the module docstring), ``knn_distance``, and
    ``reconstruction_error`` (mean absolute error per image) or None."""

    score: np.ndarray
    knn_distance: np.ndarray
    reconstruction_error: np.ndarray | None = None

    def ranking(self) -> np.ndarray:
        """Rows from the most unusual to the least."""
        return np.argsort(-self.score, kind="stable")

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """DataFrame-friendly rows, most unusual first: ``{"rank", "path", "score", "knn_distance",
        "reconstruction_error"}`` (the last None without a checkpoint)."""
        errors = self.reconstruction_error
        return [
            {"rank": rank, "path": paths[r], "score": float(self.score[r]), "knn_distance": float(self.knn_distance[r]),
             "reconstruction_error": None if errors is None else float(errors[r])}
            for rank, r in enumerate(self.ranking().tolist(), 1)
        ]


def find_outliers(
    vectors: np.ndarray,
    reconstruction_error: np.ndarray | None = None,
    neighbours: Neighbours | None = None,
    k: int = OUTLIER_NEIGHBOURS,
) -> Outliers:
    """Novelty scores of ``vectors`` (N, D); ``reconstruction_error`` (N,) joins the score when given.

    ``neighbours``: the cosine neighbour graph of the same vectors, if already computed.
    """
    if neighbours is None or neighbours.k < min(k, len(vectors) - 1):
        neighbours = nearest_neighbours(normalized(vectors), k)
    knn = (1.0 - neighbours.similarities[:, :k]).mean(axis=1).astype(np.float32)
    score = robust_z(knn)
    if reconstruction_error is not None:
        reconstruction_error = np.asarray(reconstruction_error, dtype=np.float32)
        score = (score + robust_z(reconstruction_error)) / 2
    return Outliers(score.astype(np.float32), knn, reconstruction_error)


def robust_z(x: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)``; a zero MAD falls back to the standard deviation, then to 1."""
    x = np.asarray(x, dtype=np.float64)
    median = np.median(x)
    scale = 1.4826 * np.median(np.abs(x - median))
    if scale <= 0:
        scale = float(x.std()) or 1.0
    return (x - median) / scale
