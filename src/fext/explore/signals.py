"""What the images themselves say, whatever the model learned: hashes, statistics and raw thumbnails.

A model trained for a few epochs places a blank page, pure noise or a resized copy wherever its
vectors happen to fall; a person spots them at a glance from the pixels. So explore reads every
image once more (at ``SIGNAL_SIZE`` pixels, as the model sees it) and keeps, per image:

- a 64-bit perceptual hash (pHash, :func:`fext.analysis.stats.phash`) of the image and of its
  mirror image, for near-identical copies, flipped ones too;
- four statistics of ``fext analyze`` (:mod:`fext.analysis.stats`): gray-level entropy, noise
  level, sharpness (variance of the Laplacian) and colourfulness, and the share of the image in
  flat 8×8 blocks (:func:`flat_area`), for the outlier score;
- a raw-pixel thumbnail as the scorecard's pixel baseline makes it (:func:`pixel_vectors`, at
  ``THUMB_SIDE`` pixels: 3 KB an image, a tenth of the memory of the vectors at 100,000 images), whose
  nearest-neighbour distance says how unlike the other pictures an image looks.

The byte hash of every file (BLAKE2b, recorded by ``fext encode`` in ``sources.csv``) comes from
the encoding folder, not from here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fext.vectors import normalized

log = logging.getLogger(__name__)

SIGNAL_SIZE = 128
"""Side (pixels) of the square the statistics and hashes are computed on: one scale for every image."""
BATCH = 64
THUMB_SIDE = 16
STATISTICS = ("entropy", "noise", "sharpness", "colourfulness", "flat_area")
FLAT_BLOCK = 8
FLAT_STD = 0.5
"""Gray levels: an 8×8 block whose standard deviation is below this is flat (photographs have grain)."""
CLIPPED = (8, 247)
"""Mean gray levels outside which a flat block is clipped shadow or highlight, common in photographs."""


@dataclass(frozen=True)
class ImageSignals:
    """Row-aligned with the files. ``phash``, ``phash_mirror``: uint64 (N,) pHashes of each image and of
    its left-right mirror image; ``hashed``: bool (N,), False where the image
    was unreadable or too flat for its hash to mean anything; ``statistics``: name -> float32 (N,)
    (NaN where unreadable); ``pixels``: float32 (N, 3·16·16) thumbnails in [0, 1] (zeros where unreadable);
    ``readable``: bool (N,)."""

    phash: np.ndarray
    phash_mirror: np.ndarray
    hashed: np.ndarray
    statistics: dict[str, np.ndarray]
    pixels: np.ndarray
    readable: np.ndarray


def image_signals(files: list[Path], workers: int = 0, progress: bool = False) -> ImageSignals:
    """:class:`ImageSignals` of ``files``, decoded in ``workers`` processes as ``fext encode`` does."""
    from fext.data import decode_batches
    from fext.encoding.inference import with_progress
    from fext.evaluation.scorecard import pixel_vectors

    n = len(files)
    phash = np.zeros(n, dtype=np.uint64)
    phash_mirror = np.zeros(n, dtype=np.uint64)
    hashed = np.zeros(n, dtype=bool)
    stats = {name: np.full(n, np.nan, dtype=np.float32) for name in STATISTICS}
    pixels = np.zeros((n, 3 * THUMB_SIDE * THUMB_SIDE), dtype=np.float32)
    batches = decode_batches(files, SIGNAL_SIZE, BATCH, workers=workers, log_failures=False)
    for batch in with_progress(batches, progress, n, desc="Image signals"):
        if not batch.positions:
            continue
        images = batch.images.numpy()  # (b, S, S, 3) uint8
        pixels[batch.positions] = pixel_vectors(images, THUMB_SIDE)
        for position, rgb in zip(batch.positions, images):
            phash[position], phash_mirror[position], hashed[position], values = measure(rgb)
            for name, value in zip(STATISTICS, values):
                stats[name][position] = value
    readable = ~np.isnan(stats["entropy"])
    if readable.any():
        pixels[~readable] = pixels[readable].mean(axis=0)  # typical, so they are near nothing in particular
    if not readable.all():
        log.warning("%d image(s) could not be read again; their statistics count as typical", int((~readable).sum()))
    return ImageSignals(phash, phash_mirror, hashed, stats, pixels, readable)


def measure(rgb: np.ndarray) -> tuple[int, int, bool, tuple[float, ...]]:
    """(pHash, pHash of the mirror image, whether they are informative, the ``STATISTICS``) of one (S, S, 3) uint8 image."""
    from PIL import Image

    from fext.analysis.stats import colourfulness, histogram_stats, laplacian_variance, luma, noise_std, phash

    gray = luma(rgb)
    code, informative = phash(Image.fromarray(gray))
    mirror, _ = phash(Image.fromarray(np.ascontiguousarray(gray[:, ::-1])))
    entropy = histogram_stats(np.bincount(gray.ravel(), minlength=256))["entropy"]
    return code, mirror, informative, (entropy, noise_std(gray), laplacian_variance(gray), colourfulness(rgb), flat_area(gray))


def flat_area(gray: np.ndarray) -> float:
    """Share of (H, W) uint8 ``gray`` in flat ``FLAT_BLOCK``-pixel blocks (standard deviation below
    ``FLAT_STD``) that are not clipped black or white: 1 for a blank colour, about 0.5 for a photo with a
    gray half (how a truncated JPEG decodes), 0 for almost every photograph, night skies included."""
    h, w = (s - s % FLAT_BLOCK for s in gray.shape)
    blocks = gray[:h, :w].reshape(h // FLAT_BLOCK, FLAT_BLOCK, w // FLAT_BLOCK, FLAT_BLOCK).astype(np.float32)
    mean = blocks.mean(axis=(1, 3))
    flat = (blocks.std(axis=(1, 3)) < FLAT_STD) & (mean > CLIPPED[0]) & (mean < CLIPPED[1])
    return float(flat.mean())


def thumbnail_unit(pixels: np.ndarray) -> np.ndarray:
    """float32 (N, 3·16·16) thumbnails centred on the collection's mean thumbnail, then unit length.

    Centring first keeps what every picture shares (a mean colour) from dominating the cosine
    similarity, as the scorecard's pixel baseline does; a thumbnail equal to the mean (a flat
    mid-gray image) becomes all zeros, similar to nothing.
    """
    return normalized(pixels - pixels.mean(axis=0, keepdims=True))


def mirror_candidates(unit: np.ndarray, k: int, seed: int = 0) -> Any:
    """For every row of ``unit`` (:func:`thumbnail_unit`), the rows whose *mirrored* thumbnails are nearest
    (cosine), as a :class:`~fext.explore.neighbours.Neighbours` whose entries pointing back at the row
    itself mean "none": where a flipped copy's pHash is looked for."""
    from fext.explore.neighbours import Neighbours, nearest_neighbours

    n = len(unit)
    side = int(round((unit.shape[1] // 3) ** 0.5))
    mirrored = unit.reshape(n, side, side, 3)[:, :, ::-1].reshape(n, -1)  # the centring mean flips with them
    both = nearest_neighbours(np.ascontiguousarray(np.concatenate([unit, mirrored])), k, seed)
    indices = both.indices[:n].astype(np.int64)  # (N, k): < n another image, >= n a mirrored one
    rows = np.arange(n)[:, None]
    indices = np.where((indices >= n) & (indices - n != rows), indices - n, rows)
    return Neighbours(indices.astype(np.int32), both.similarities[:n])


def outlier_signals(signals: ImageSignals, thumbnail_neighbours: Any, k: int = 10) -> dict[str, np.ndarray]:
    """The model-independent signals of :data:`fext.explore.outliers.SIGNALS`, by name.

    ``pixel_knn`` is the mean root-mean-square pixel difference (0–1) between an image's thumbnail and
    its ``k`` nearest thumbnails (found by :func:`thumbnail_unit` cosine): a distance, not a cosine,
    so that noise, whose thumbnail is as unlike the others in direction as any photo's but far
    stronger, is far from everything.
    """
    nearest = thumbnail_neighbours.indices[:, :k]  # (N, k)
    pixels = signals.pixels
    pixel_knn = np.empty(len(pixels), dtype=np.float32)
    block = max(1, 2**26 // (4 * nearest.shape[1] * pixels.shape[1]))  # rows per 64 MB of differences
    for lo in range(0, len(pixels), block):
        diff = pixels[lo:lo + block, None, :] - pixels[nearest[lo:lo + block]]  # (b, k, 3·16·16)
        pixel_knn[lo:lo + block] = np.sqrt((diff ** 2).mean(axis=2)).mean(axis=1)
    pixel_knn[~signals.readable] = np.nan
    return {"pixel_knn": pixel_knn, **signals.statistics}
