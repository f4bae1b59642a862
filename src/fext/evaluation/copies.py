"""The edited copies and crops the scorecard searches for, made from the evaluated images, seeded.

:func:`make_copies`: an image's transformed copies (crop, flip, colour jitter, JPEG, down- and up-scaling),
which a good feature vector finds among all images; :func:`make_crops`: other views of the same photograph.
Pure functions of uint8 image arrays (N, S, S, 3), used by :mod:`fext.evaluation.scorecard`.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

COPIES = 3
"""Transformed copies made of each evaluated image."""
CROP_AREA = (0.5, 0.9)
"""Fraction of the image's area a copy's crop keeps."""
JITTER = 0.25
"""Brightness, contrast and saturation factors are drawn from U(1 - JITTER, 1 + JITTER)."""
JPEG_QUALITY = (30, 70)
"""JPEG re-encoding quality of a copy, drawn uniformly (inclusive)."""
RESCALE = (0.35, 0.7)
"""A copy is scaled down to this fraction of its side, then back up."""
CROPS = 4
"""Crops made of each evaluated image for the same-photograph task."""
CROP_SIDE = (0.3, 1.0)
"""Side of a square crop, as a fraction of the image's side."""

def make_copies(images: np.ndarray, copies: int = COPIES, seed: int = 0) -> np.ndarray:
    """``copies`` transformed copies of every image of ``images`` (N, S, S, 3) uint8.

    Returns (N * copies, S, S, 3) uint8, the copies of image i at rows i*copies ... i*copies +
    copies - 1. Each copy draws its own crop (50–90 % of the area, aspect ratio 3/4 to 4/3,
    resized back to S×S), horizontal flip (p = 0.5), brightness, contrast and saturation factors,
    JPEG quality and down-scaling factor from one generator seeded with ``seed``: the same inputs
    always give the same copies.
    """
    return _variants(images, copies, seed, _transform)


def _variants(images: np.ndarray, count: int, seed: int,
              make: Callable[[Image.Image, np.random.Generator], np.ndarray]) -> np.ndarray:
    """``count`` variants ``make(image, rng)`` of every image, image i's at rows i*count ... i*count + count - 1."""
    rng = np.random.default_rng(seed)
    n, h, w = images.shape[:3]
    out = np.empty((n * count, h, w, 3), dtype=np.uint8)
    for i in range(n):
        source = Image.fromarray(images[i])
        for j in range(count):
            out[i * count + j] = make(source, rng)
    return out


def _transform(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One random copy of ``img`` (see :func:`make_copies`)."""
    from PIL import ImageEnhance

    w, h = img.size
    area = rng.uniform(*CROP_AREA) * w * h
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(round(min(w, np.sqrt(area * ratio))))
    ch = int(round(min(h, area / max(cw, 1))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(1 - JITTER, 1 + JITTER))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    side = max(4, int(round(w * rng.uniform(*RESCALE))))
    out = out.resize((side, max(4, int(round(h * side / w)))), Image.Resampling.BILINEAR)
    return np.asarray(out.resize((w, h), Image.Resampling.BILINEAR))


def make_crops(images: np.ndarray, crops: int = CROPS, seed: int = 0) -> np.ndarray:
    """``crops`` square crops of every image of ``images`` (N, S, S, 3) uint8, at random positions and sides of
    30-100 % of the image's side, resized back to S×S: other views of the same photograph, which a person calls
    similar. Returns (N * crops, S, S, 3), the crops of image i at rows i*crops ... i*crops + crops - 1."""
    return _variants(images, crops, seed, _crop)


def _crop(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One random square crop of ``img`` (see :func:`make_crops`)."""
    w, h = img.size
    side = max(4, int(round(min(h, w) * rng.uniform(*CROP_SIDE))))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return np.asarray(img.crop((left, top, left + side, top + side)).resize((w, h), Image.Resampling.BILINEAR))
