"""Exploring a collection of encoded images: the map, clusters, outliers, near-duplicates and atlas.html.

What lives where:

- :mod:`~fext.explore.neighbours`: every image's nearest neighbours (computed once, used by all);
- :mod:`~fext.explore.maps`: the 2-D map (UMAP, or PCA for a handful of images);
- :mod:`~fext.explore.clusters`: k-means clusters and the rule that picks K;
- :mod:`~fext.explore.signals`: what the images say whatever the model learned (hashes, statistics, thumbnails);
- :mod:`~fext.explore.outliers`: the novelty score and why;
- :mod:`~fext.explore.duplicates`: duplicate groups (same bytes, same picture by pHash, close vectors) and
  the measured threshold;
- :mod:`~fext.explore.measure`: reconstruction errors and edited copies, with the checkpoint;
- :mod:`~fext.explore.thumbnails`: sprite sheets; :mod:`~fext.explore.page`: atlas.html;
- :mod:`~fext.explore.run`: ``fext explore`` (:func:`explore`).

The functions of the Python API take the (N, D) vectors (``fext.load_embeddings``) and return
arrays, or objects with a ``rows(paths)`` method giving DataFrame-friendly rows.
"""

from __future__ import annotations

from fext.explore.clusters import Clusters, find_clusters
from fext.explore.duplicates import Duplicates, Identity, Threshold, choose_threshold, find_duplicates, threshold_at
from fext.explore.maps import embedding_map
from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.explore.outliers import Outliers, find_outliers
from fext.explore.run import Exploration, explore

__all__ = [
    "Clusters", "Duplicates", "Exploration", "Identity", "Neighbours", "Outliers", "Threshold", "choose_threshold",
    "embedding_map", "explore", "find_clusters", "find_duplicates", "find_outliers", "nearest_neighbours",
    "threshold_at",
]
