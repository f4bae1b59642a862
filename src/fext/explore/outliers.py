"""Novelty scores: how unusual each image is within its own collection, and why.

An image is scored on several signals (:data:`SIGNALS`). Two come from the model: the mean
cosine distance of its vector to its ``OUTLIER_NEIGHBOURS`` nearest other vectors (isolated
images are far from everything) and the model's reconstruction error (the autoencoder
reconstructs badly what it saw little of). The others do not depend on how well the model
learned, so a blank page or pure noise ranks high even after a 3-epoch training: the pixel
difference of the raw 16×16 thumbnail to its nearest thumbnails, four statistics of the pixels
(entropy, noise level, sharpness, colourfulness) and the share of the image in flat, unclipped
8×8 blocks (a blank colour, a gray half; :mod:`fext.explore.signals`).

The rule: each signal becomes a robust z-score within the collection, ``(x - median) / (1.4826 *
MAD)`` (0 is typical; 3 is as far from typical as three standard deviations of a normal
distribution, and a few extreme images cannot shift the median or the MAD). Distances, errors and
the flat area are unusual when high; colourfulness when low (a text page or a gray scan among
colour photos; a vivid photo is no junk); entropy, noise and sharpness either way (a blank image
has no entropy, noise has the most), so their absolute value counts. Sharpness spans orders of
magnitude and is scored on a log scale. The flat area is 0 for almost every photograph, so its
MAD is 0: its unit is at least 5 % of the image. The score is the largest of an image's
unusualness: one strongly unusual property is enough, and the signal that gave the score is the
reason shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.vectors import normalized

OUTLIER_NEIGHBOURS = 10
SIGNALS: dict[str, tuple[str, bool, float, str]] = {
    # name: (unusual when "high", "low" or "both", scored on a log scale, smallest scale, what it is)
    "feature_knn": ("high", False, 0.0, "cosine distance of the feature vector to its nearest"),
    "reconstruction_error": ("high", False, 0.0, "the model's reconstruction error"),
    "pixel_knn": ("high", False, 0.0, "pixel difference of the raw 16×16 thumbnail to its nearest"),
    "entropy": ("both", False, 0.0, "gray-level entropy"),
    "noise": ("both", False, 0.0, "noise level"),
    "sharpness": ("both", True, 0.0, "sharpness (variance of the Laplacian)"),
    "colourfulness": ("low", False, 0.0, "colourfulness"),
    "flat_area": ("high", False, 0.05, "share of the image in flat, unclipped 8×8 blocks"),
}
"""Every signal the score may use, in the order outliers.csv lists them."""


@dataclass(frozen=True)
class Outliers:
    """``score``: float32 (N,) (see the module docstring); ``components``: signal name -> float32 (N,)
    raw values, for the signals that were measured; ``z``: the same names -> their robust z-scores
    (signed: below 0 is below typical); ``reason``: (N,) name of the signal that gave each score."""

    score: np.ndarray
    components: dict[str, np.ndarray]
    z: dict[str, np.ndarray]
    reason: list[str]

    @property
    def knn_distance(self) -> np.ndarray:
        return self.components["feature_knn"]

    @property
    def reconstruction_error(self) -> np.ndarray | None:
        return self.components.get("reconstruction_error")

    def ranking(self) -> np.ndarray:
        """Rows from the most unusual to the least."""
        return np.argsort(-self.score, kind="stable")

    def why(self, row: int) -> str:
        """A person's reading of the score of ``row`` (the score is that signal's z): "noise level: high"."""
        name = self.reason[row]
        return f"{SIGNALS[name][3]}: {'high' if self.z[name][row] >= 0 else 'low'}"

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """DataFrame-friendly rows, most unusual first: ``rank, path, score, reason``, then every signal
        of :data:`SIGNALS` (None where not measured) and its z-score as ``<signal>_z``."""
        out = []
        for rank, r in enumerate(self.ranking().tolist(), 1):
            row: dict[str, Any] = {"rank": rank, "path": paths[r], "score": float(self.score[r]), "reason": self.reason[r]}
            for name in SIGNALS:
                measured = name in self.components
                row[name] = float(self.components[name][r]) if measured else None
                row[f"{name}_z"] = float(self.z[name][r]) if measured else None
            out.append(row)
        return out


def columns() -> list[str]:
    """The header of outliers.csv."""
    return ["rank", "path", "score", "reason"] + [c for name in SIGNALS for c in (name, f"{name}_z")]


def find_outliers(
    vectors: np.ndarray,
    reconstruction_error: np.ndarray | None = None,
    neighbours: Neighbours | None = None,
    k: int = OUTLIER_NEIGHBOURS,
    signals: dict[str, np.ndarray] | None = None,
) -> Outliers:
    """Novelty scores of ``vectors`` (N, D) by the rule of the module docstring.

    ``reconstruction_error`` (N,) and ``signals`` (more of :data:`SIGNALS` by name, each (N,), NaN
    where unknown) join the score when given; ``neighbours``: the cosine neighbour graph of the
    same vectors, if already computed.
    """
    if neighbours is None or neighbours.k < min(k, len(vectors) - 1):
        neighbours = nearest_neighbours(normalized(vectors), k)
    components = {"feature_knn": knn_distance(neighbours, k)}
    if reconstruction_error is not None:
        components["reconstruction_error"] = np.asarray(reconstruction_error, dtype=np.float32)
    for name, values in (signals or {}).items():
        if name not in SIGNALS:
            raise ValueError(f"unknown outlier signal {name!r}; known: {', '.join(SIGNALS)}")
        components[name] = np.asarray(values, dtype=np.float32)
    components = {name: components[name] for name in SIGNALS if name in components}
    z = {name: signal_z(name, values) for name, values in components.items()}
    names = list(z)
    unusual = np.stack([unusualness(name, z[name]) for name in names])  # (S, N)
    top = unusual.argmax(axis=0)
    score = unusual[top, np.arange(unusual.shape[1])]
    return Outliers(score.astype(np.float32), components, z, [names[i] for i in top])


def unusualness(name: str, z: np.ndarray) -> np.ndarray:
    """The part of a signal's z-scores that counts as unusual: above typical, below, or either way."""
    direction = SIGNALS[name][0]
    return z if direction == "high" else -z if direction == "low" else np.abs(z)


def knn_distance(neighbours: Neighbours, k: int = OUTLIER_NEIGHBOURS) -> np.ndarray:
    """float32 (N,) mean cosine distance of each row to its ``k`` nearest others."""
    return (1.0 - neighbours.similarities[:, :k]).mean(axis=1).astype(np.float32)


def signal_z(name: str, values: np.ndarray) -> np.ndarray:
    """float32 (N,) robust z-scores of one signal (log scale where :data:`SIGNALS` says); unknown (NaN) values score 0."""
    x = np.asarray(values, dtype=np.float64)
    if SIGNALS[name][1]:
        x = np.log1p(np.maximum(x, 0.0))
    known = np.isfinite(x)
    z = np.zeros(len(x))
    if known.any():
        z[known] = robust_z(x[known], SIGNALS[name][2])
    return z.astype(np.float32)


def robust_z(x: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """``(x - median) / max(1.4826 * MAD, floor)``; a zero scale falls back to the standard deviation, then to 1.

    ``floor``: the smallest difference that counts as one unit, for a signal that is exactly the same
    for most images (no photo has a flat area, so its MAD is 0 and any flat block would be infinitely unusual).
    """
    x = np.asarray(x, dtype=np.float64)
    median = np.median(x)
    scale = max(1.4826 * float(np.median(np.abs(x - median))), floor)
    if scale <= 0:
        scale = float(x.std()) or 1.0
    return (x - median) / scale
