"""Clusters of a collection: k-means (scikit-learn) on unit vectors, K chosen by the silhouette.

K-means runs on the first ``CLUSTER_DIMS`` principal components of the unit vectors (unit
vectors group by direction, i.e. by cosine similarity, the similarity FeXT searches with; the
components keep k-means fast on 100,000 long vectors). Centres and distances are then computed
on the full vectors: a cluster's centre is the normalised mean of its members.

The rule for K, when it is not given: every K of ``CANDIDATE_KS`` up to ``sqrt(N)`` is tried on
a seeded sample of at most ``SILHOUETTE_SAMPLE`` vectors, and the K with the highest mean
silhouette (cosine distance) wins; then k-means with that K runs on all vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fext.errors import FeXTError
from fext.explore.neighbours import principal_components
from fext.vectors import normalized

CANDIDATE_KS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50)
SILHOUETTE_SAMPLE = 2000
CLUSTER_DIMS = 64
MINIBATCH_ABOVE = 10_000
"""Collections above this size use MiniBatchKMeans (same objective, a fraction of the time)."""
TYPICAL = 8
"""Images in a cluster's strip of most typical images."""


@dataclass(frozen=True)
class Clusters:
    """``labels`` int (N,) cluster of each row; ``distances`` float32 (N,) cosine distance to its centre;
    ``centres`` float32 (K, D) unit centre directions; ``silhouette``: mean silhouette of the sample, or None."""

    labels: np.ndarray
    distances: np.ndarray
    centres: np.ndarray
    silhouette: float | None = None

    @property
    def k(self) -> int:
        return len(self.centres)

    def summary(self, typical: int = TYPICAL) -> list[dict[str, Any]]:
        """Per cluster, largest first: ``{"cluster", "size", "spread", "medoid", "typical"}``.

        ``spread``: mean cosine distance of the members to the centre; ``medoid``: the member
        nearest the centre; ``typical``: the ``typical`` members nearest the centre (rows).
        """
        out = []
        for c in range(self.k):
            members = np.flatnonzero(self.labels == c)
            if not len(members):
                continue
            order = members[np.argsort(self.distances[members], kind="stable")]
            out.append({
                "cluster": c, "size": int(len(members)), "spread": float(self.distances[members].mean()),
                "medoid": int(order[0]), "typical": [int(r) for r in order[:typical]],
            })
        return sorted(out, key=lambda s: (-s["size"], s["cluster"]))

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """DataFrame-friendly rows ``{"path", "cluster", "distance"}``, one per image."""
        return [{"path": p, "cluster": int(c), "distance": float(d)} for p, c, d in zip(paths, self.labels, self.distances)]


def find_clusters(vectors: np.ndarray, k: int | None = None, seed: int = 0) -> Clusters:
    """Cluster ``vectors`` (N, D) into ``k`` groups (None: the silhouette rule of this module)."""
    unit = normalized(vectors)
    n = len(unit)
    if k is not None and not 1 <= k <= n:
        raise FeXTError(f"--clusters must be between 1 and the number of images ({n}), got {k}")
    reduced = principal_components(unit, CLUSTER_DIMS, seed)
    score = None
    if k is None:
        k, score = choose_k(reduced, seed)
    labels = _kmeans(k, n, seed).fit_predict(reduced).astype(np.int32)
    centres = normalized(np.stack([unit[labels == c].sum(axis=0) for c in range(k)]))  # (K, D)
    distances = (1.0 - np.einsum("nd,nd->n", unit, centres[labels])).clip(0.0, 2.0).astype(np.float32)
    return Clusters(labels, distances, centres, score)


def choose_k(vectors: np.ndarray, seed: int = 0) -> tuple[int, float | None]:
    """(K, its mean silhouette) for ``vectors`` (N, d) by the rule in the module docstring; 1 cluster when N < 3."""
    from sklearn.metrics import silhouette_score

    n = len(vectors)
    ks = [k for k in CANDIDATE_KS if k <= max(2, math.isqrt(n)) and k < n]
    if not ks:
        return 1, None
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(n, SILHOUETTE_SAMPLE, replace=False))] if n > SILHOUETTE_SAMPLE else vectors
    best = (ks[0], -2.0)
    for k in ks:
        labels = _kmeans(k, len(sample), seed).fit_predict(sample)
        if len(np.unique(labels)) < 2:
            continue
        score = float(silhouette_score(sample, labels, metric="cosine"))
        if score > best[1]:
            best = (k, score)
    return best


def _kmeans(k: int, n: int, seed: int) -> Any:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > MINIBATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=3)
