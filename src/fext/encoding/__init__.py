"""Encoding: turning images into feature vectors with a trained checkpoint.

What lives where:

- :mod:`~fext.encoding.inference`: the model at inference (load, compile, ``embed`` a batch)
  and the in-memory API :func:`encode_images`;
- :mod:`~fext.encoding.files`: the embeddings folder format (file names, writers, readers,
  :func:`load_embeddings`, and the one "did the encoding finish?" check, ``is_finished``);
- :mod:`~fext.encoding.records`: its JSON files as typed objects (``EncodingMetadata``,
  ``EncodeState``, ``IndexDescription``);
- :mod:`~fext.encoding.folder`: ``fext encode`` (:func:`encode_folder`);
- :mod:`~fext.encoding.finish`: the steps that end every run (``finalize``, ``clear_output``, ``run_details``);
- :mod:`~fext.encoding.resumable`: the resumable writer and its state;
- :mod:`~fext.encoding.sharding`: the same under ``torchrun``, one block of images per rank;
- :mod:`~fext.encoding.fingerprints`: hashes of the checkpoint and of the input listing;
- :mod:`~fext.encoding.npy_rows`: raw row I/O on ``.npy`` files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    **dict.fromkeys(["EMBEDDINGS", "FAILED", "METADATA", "PARTIAL", "PARTS", "PER_IMAGE", "ROWS_CSV", "STATE", "Encoding",
                     "is_finished", "load_embeddings", "open_encoding", "read_rows_csv"], "fext.encoding.files"),
    **dict.fromkeys(["CheckpointRecord", "EncodingMetadata"], "fext.encoding.records"),
    "checkpoint_identity": "fext.encoding.fingerprints",
    "clear_output": "fext.encoding.finish",
    "encode_folder": "fext.encoding.folder",
    **dict.fromkeys(["compile_encoder", "embed", "encode_images", "load_model"], "fext.encoding.inference"),
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from fext.encoding.files import (
        EMBEDDINGS, FAILED, METADATA, PARTIAL, PARTS, PER_IMAGE, ROWS_CSV, STATE, Encoding, is_finished, load_embeddings,
        open_encoding, read_rows_csv,
    )
    from fext.encoding.records import CheckpointRecord, EncodingMetadata
    from fext.encoding.fingerprints import checkpoint_identity
    from fext.encoding.finish import clear_output
    from fext.encoding.folder import encode_folder
    from fext.encoding.inference import compile_encoder, embed, encode_images, load_model


def __getattr__(name: str):
    """Names are imported on first use, so reading an embeddings folder does not import PyTorch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fext.encoding' has no attribute {name!r}")
