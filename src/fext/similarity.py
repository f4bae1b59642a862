"""What a similarity score means for one collection: bands measured on edited copies of its own images.

Two feature vectors are compared by their cosine similarity (:meth:`fext.model.FeXTAutoEncoder.features`
makes them; :func:`fext.vectors.normalized` scales them). A bare number says little: how close must two
images be to be the same picture? That depends on the model and the images. So every encoded folder records
its own bands (``metadata.json``, ``"bands"``), measured when it is written (:mod:`fext.encoding.calibration`):

- **duplicate**: at least the similarity that 95 % of re-saved copies reach (JPEG at quality 50, half size);
- **near-duplicate**: at least what 95 % of slightly cropped copies reach (90 % of each side);
- **similar**: at least what only 5 % of pairs of different images of the collection reach;
- **unrelated**: below that.

Search, explore and the atlas read scores against the same bands.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fext.encoding.records import BAND_NAMES
from fext.vectors import normalized

EDITS = ("centre crop to 90% of each side", "JPEG re-encode at quality 50", "half size")
"""The edits of :func:`edited_copies`, in order."""
BANDS = (*BAND_NAMES, "unrelated")
COPY_QUANTILE = 0.05
"""A copy band starts where this share of the copies falls below it."""
PAIR_QUANTILE = 0.95
"""The "similar" band starts where this share of pairs of different images falls below it."""


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


def bands_from(copy_similarities: np.ndarray, pair_similarities: np.ndarray) -> dict[str, float]:
    """The lower edge of each band but the last, from the similarities of edited copies to their originals
    (m, len(EDITS)) and of pairs of different images (p,); NaN entries are ignored. Edges never increase
    from one band to the next, and never exceed 1 - 1e-6, so exact copies always reach "duplicate"."""
    resaved = copy_similarities[:, 1:][np.isfinite(copy_similarities[:, 1:])]
    cropped = copy_similarities[:, 0][np.isfinite(copy_similarities[:, 0])]
    pairs = pair_similarities[np.isfinite(pair_similarities)]
    duplicate = min(float(np.quantile(resaved, COPY_QUANTILE)) if resaved.size else 1.0, 1 - 1e-6)
    near = min(float(np.quantile(cropped, COPY_QUANTILE)) if cropped.size else duplicate, duplicate)
    similar = min(float(np.quantile(pairs, PAIR_QUANTILE)) if pairs.size else near, near)
    return {"duplicate": round(duplicate, 4), "near-duplicate": round(near, 4), "similar": round(similar, 4)}


def band_of(score: float, bands: dict[str, float] | None) -> str:
    """The word for ``score`` under ``bands`` (:func:`bands_from`); "" when the folder has none."""
    if not bands:
        return ""
    return next((name for name in BANDS[:-1] if score >= bands[name]), BANDS[-1])


def copy_similarities(embed: Callable[[np.ndarray], np.ndarray], files: list[Path], vectors: np.ndarray,
                      img_size: int, batch: int = 32) -> np.ndarray:
    """float (m, len(EDITS)) cosine similarity of each stored vector (m, D) to the vectors of its file's edited
    copies; ``embed`` turns uint8 images (B, S, S, 3) into feature vectors (B, D). Rows of unreadable files are NaN."""
    from fext.data import ImageDecodeError

    out = np.full((len(files), len(EDITS)), np.nan)
    unit = normalized(vectors)
    per_batch = max(1, batch // len(EDITS))
    for lo in range(0, len(files), per_batch):
        rows, copies = [], []
        for i in range(lo, min(lo + per_batch, len(files))):
            try:
                copies.append(edited_copies(files[i], img_size))
            except (ImageDecodeError, OSError):
                continue
            rows.append(i)
        if rows:
            z = normalized(embed(np.concatenate(copies))).reshape(len(rows), len(EDITS), -1)
            out[rows] = np.einsum("med,md->me", z, unit[rows])
    return out
