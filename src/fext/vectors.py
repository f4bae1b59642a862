"""Vector maths shared by every command that compares feature vectors: unit length, exact cosine top-k, seeded rows.

A leaf module (NumPy only). Two feature vectors are compared by their cosine similarity, the inner
product of the vectors :func:`normalized` makes; search, the index, explore, select, score, the
scorecard and the similarity bands all use these functions, so a score means the same everywhere.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 65536
"""Rows scored at a time (fewer for long vectors: a block stays within BLOCK_BYTES)."""
BLOCK_BYTES = 64 * 2**20


def normalized(block: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    x = np.array(block, dtype=np.float32)  # a copy, scaled in place: no second (N, D) array
    # einsum sums the squares in one pass; np.linalg.norm first writes them to an (N, D) temporary (2-3x slower).
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    x /= np.where(norms > 0, norms, 1.0)
    return x


def seeded_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """At most ``cap`` of the row numbers 0..n-1, drawn without replacement with ``seed``, in increasing order."""
    return np.sort(np.random.default_rng(seed).choice(n, min(cap, n), replace=False))


def centred_normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows centred on their mean, then scaled to unit length (zero vectors stay zero), float32 (computed in float64).

    Centring first keeps what every vector shares (a mean colour, a constant offset of the latent)
    from dominating the cosine similarity.
    """
    v = vectors.astype(np.float64)
    v = v - v.mean(0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (Q, k) and cosine similarities of the ``k`` stored rows closest to each unit query (Q, D).

    Exact: every row is scored, a block at a time, so memory stays flat for a memory-mapped
    matrix. Ties are ordered by row; all-zero vectors score 0.
    """
    n, d = vectors.shape
    k = min(k, n)
    best_rows = np.empty((len(queries), 0), np.int64)
    best_scores = np.empty((len(queries), 0), np.float32)
    block = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (4 * d)))
    for lo in range(0, n, block):
        scores = queries @ normalized(vectors[lo:lo + block]).T  # (Q, b)
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            keep = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        rows = np.concatenate([best_rows, lo + keep], axis=1)
        values = np.concatenate([best_scores, np.take_along_axis(scores, keep, axis=1)], axis=1)
        order = np.lexsort((rows, -values), axis=1)[:, :k]
        best_rows, best_scores = np.take_along_axis(rows, order, 1), np.take_along_axis(values, order, 1)
    return best_rows, best_scores


def top_k_cosine(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cosine similarities of the ``k`` rows of ``matrix`` (N, D) closest to ``query`` (D,), exactly."""
    rows, scores = exact_top_k(matrix, normalized(np.asarray(query)[None]), k)
    return rows[0], scores[0]
