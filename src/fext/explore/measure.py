"""What explore measures with the model itself: reconstruction errors (edited copies: :mod:`fext.similarity`).

Both need the checkpoint that wrote the embeddings (recorded in metadata.json, checked by its
content hash so the vectors stay comparable) and the encoded images (paths in the index are
relative to the input folder recorded in metadata.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fext.encoding.records import EncodingMetadata

log = logging.getLogger(__name__)

BATCH = 32


def recorded_checkpoint(metadata: EncodingMetadata, override: str | Path | None = None) -> Path | None:
    """The checkpoint that wrote the embeddings, if it is at hand (``override``: where it is now); else None, logged."""
    from fext.encoding.fingerprints import wrote_vectors
    from fext.errors import FeXTError

    recorded = metadata.checkpoint
    path = recorded.location(override)
    try:
        same = wrote_vectors(path, recorded)
    except (FeXTError, OSError, ValueError, KeyError):
        same = False
    if not same:
        log.info("The checkpoint that wrote the embeddings (%s) is not at hand: no reconstruction errors, "
                 "and the duplicate threshold is not measured on edited copies", recorded.name or "unknown")
        return None
    return path


def reconstruction_errors(
    model: Any, files: list[Path], img_size: int, device: Any, workers: int = 0, progress: bool = False,
) -> np.ndarray:
    """float32 (N,) mean absolute error of the model's reconstruction of each file (NaN: unreadable).

    ``workers``: decoding processes (``device.NUM_PROCESSORS``), as for ``fext encode``.
    """
    import torch

    from fext.data import decode_batches, to_float
    from fext.encoding.inference import with_progress

    log.info("Reconstruction errors: one pass of the autoencoder over %d images (--no-reconstruction skips it)", len(files))
    errors = np.full(len(files), np.nan, dtype=np.float32)
    batches = decode_batches(files, img_size, BATCH, workers=workers, log_failures=False)
    total = -(-len(files) // BATCH)
    for batch in with_progress(batches, progress, total, desc="Reconstruction errors"):
        if not batch.positions:
            continue
        with torch.inference_mode():
            x = to_float(batch.images).to(device)
            out = model(x)["reconstruction"]
            errors[batch.positions] = (out - x).abs().mean(dim=(1, 2, 3)).float().cpu().numpy()
    return errors
