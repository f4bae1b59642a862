"""FeXT: a convolutional autoencoder trained on your images, and the feature vectors it extracts.

The public Python API::

    from fext import FeXTAutoEncoder, encode_images, load_embeddings, load_config

Names are imported lazily so that ``fext --help`` does not pay for importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "FeXTAutoEncoder": "fext.model",
    "encode_images": "fext.encoding",
    "load_embeddings": "fext.encoding",
    "load_config": "fext.config",
    "Config": "fext.config",
    "Workspace": "fext.workspace",
    "embedding_map": "fext.explore",
    "find_clusters": "fext.explore",
    "find_outliers": "fext.explore",
    "find_duplicates": "fext.explore",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from fext.config import Config, load_config
    from fext.encoding import encode_images, load_embeddings
    from fext.explore import embedding_map, find_clusters, find_duplicates, find_outliers
    from fext.model import FeXTAutoEncoder
    from fext.workspace import Workspace


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fext' has no attribute {name!r}")
