"""What explore measures with the model itself: reconstruction errors and edited copies' similarities.

Both need the checkpoint that wrote the embeddings (recorded in metadata.json, checked by its
content hash so the vectors stay comparable) and the encoded images (paths in the index are
relative to the input folder recorded in metadata.json).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BATCH = 32
EDITS = ("centre crop to 90% of each side", "JPEG re-encode at quality 50", "half size")


def recorded_checkpoint(metadata: dict[str, Any], override: str | Path | None = None) -> Path | None:
    """The checkpoint that wrote the embeddings, if it is at hand (``override``: where it is now); else None, logged."""
    from fext.encoding import checkpoint_identity
    from fext.errors import FeXTError

    recorded = metadata.get("checkpoint") or {}
    path = Path(override).expanduser().resolve() if override else Path(recorded.get("path", ""))
    try:
        same = bool(recorded.get("hash")) and checkpoint_identity(path)["hash"] == recorded["hash"]
    except (FeXTError, OSError, ValueError, KeyError):
        same = False
    if not same:
        log.info("The checkpoint that wrote the embeddings (%s) is not at hand: no reconstruction errors, "
                 "and the duplicate threshold is not measured on edited copies", recorded.get("name", "unknown"))
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


def edited_copies(path: Path, img_size: int) -> np.ndarray:
    """uint8 (len(EDITS), S, S, 3): the image at ``path`` after each edit of ``EDITS``, resized for the model."""
    from PIL import Image

    from fext.data import open_rgb
    from fext.data.decode import resize_rgb

    image = open_rgb(path)
    w, h = image.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    crop = image.crop((dx, dy, w - dx, h - dy))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=50)
    buffer.seek(0)
    with Image.open(buffer) as reencoded:
        reencoded = reencoded.convert("RGB")
    half = image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR)
    return np.stack([resize_rgb(edit, img_size) for edit in (crop, reencoded, half)])


def copy_similarities(model: Any, files: list[Path], vectors: np.ndarray, img_size: int, device: Any) -> np.ndarray:
    """float (m, len(EDITS)) cosine similarity of each stored vector (m, D) to the vectors of its file's
    edited copies; rows of unreadable files are NaN."""
    from fext.data import ImageDecodeError
    from fext.encoding import embed
    from fext.search import normalized

    out = np.full((len(files), len(EDITS)), np.nan)
    unit = normalized(vectors)
    per_batch = max(1, BATCH // len(EDITS))
    for lo in range(0, len(files), per_batch):
        rows, copies = [], []
        for i in range(lo, min(lo + per_batch, len(files))):
            try:
                copies.append(edited_copies(files[i], img_size))
            except (ImageDecodeError, OSError):
                continue
            rows.append(i)
        if rows:
            z = normalized(embed(model, np.concatenate(copies), device)).reshape(len(rows), len(EDITS), -1)
            out[rows] = np.einsum("med,md->me", z, unit[rows])
    return out
