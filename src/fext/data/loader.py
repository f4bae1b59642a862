"""Batches for the model: from the decoded-image cache (training) or straight from files (encoding).

- :func:`iterate_batches` serves training epochs from a :class:`~fext.data.cache.CachedImages`
  in the main process: a batch is one gather from the memory-mapped cache, no decoding.
- :func:`decode_batches` streams the images of a folder of any size through worker
  processes (a ``torch.utils.data.DataLoader``), in order, holding only a few batches in memory.
- :func:`to_float` turns a uint8 (B, S, S, 3) batch into the model's float input.

Batches stay uint8 until :func:`to_float`, so a host-to-GPU copy moves 4x fewer bytes when
the caller moves the batch to the device first and converts there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fext.data import decode

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Images served by position, such as :class:`fext.data.cache.CachedImages` (which imports this module)."""

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) tensor of the images at positions ``indices``."""
        ...


@dataclass
class DecodedBatch:
    """The readable images of a run of consecutive ``paths`` and what went wrong with the others.

    ``images``: uint8 (b, S, S, 3), row i is the file ``paths[positions[i]]`` whose original
    upright size is ``sizes[i]`` = (width, height). ``failures``: (position, reason) of the
    files of this run that could not be decoded.
    """

    images: torch.Tensor
    positions: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float32 (B, 3, S, S) in [0, 1], channels_last memory format.

    The (B, 3, S, S) permuted view of an NHWC tensor already has channels_last strides, so
    the conversion is one pass with no layout copy. On CPU it is done by NumPy, one thread,
    exact division: faster than torch's kernels and immune to the slowdown of OpenMP
    threads competing with data-loading processes for the cores.
    """
    if batch.device.type == "cpu":
        pixels = np.divide(batch.numpy(), np.float32(255.0), dtype=np.float32)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def iterate_batches(
    cached: BatchSource,
    indices: Sequence[int],
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield uint8 (B, S, S, 3) batches of ``cached`` images ``indices`` (positions in ``cached.paths``).

    ``shuffle`` draws a new order from ``generator`` at each call (one call = one epoch), so a
    seeded generator gives a reproducible sequence of epochs. ``drop_last`` skips a last
    partial batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield cached.batch(order[start : start + batch_size])


def decode_batches(
    paths: Sequence[Path],
    img_size: int,
    batch_size: int,
    workers: int,
    log_failures: bool = True,
) -> Iterator[DecodedBatch]:
    """Decode ``paths`` to img_size x img_size in ``workers`` processes, yielding batches in order.

    Batch k covers ``paths[k * batch_size : (k + 1) * batch_size]``; its unreadable files are in
    ``failures`` (one warning line each when ``log_failures``), so positions and failures of
    all batches together account for every path exactly once. ``workers`` 0 decodes in this
    process. Memory: about ``2 * workers`` batches in flight.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    if not paths:
        return
    loader = DataLoader(
        _DecodeDataset(paths, img_size, batch_size),
        batch_size=None,
        shuffle=False,
        num_workers=max(0, workers),
        collate_fn=_keep,
    )
    for batch in loader:
        if log_failures:
            for position, reason in batch.failures:
                log.warning("Skipping %s: %s", paths[position], reason)
        yield batch


class _DecodeDataset(Dataset):
    """Item k is the :class:`DecodedBatch` of the k-th run of ``batch_size`` paths."""

    def __init__(self, paths: list[Path], img_size: int, batch_size: int) -> None:
        self.paths = paths
        self.img_size = img_size
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, k: int) -> DecodedBatch:
        start = k * self.batch_size
        chunk = self.paths[start : start + self.batch_size]
        images = torch.empty((len(chunk), self.img_size, self.img_size, 3), dtype=torch.uint8)
        batch = DecodedBatch(images)
        for position, path in enumerate(chunk, start):
            try:
                pixels, size = decode.decode_image(path, self.img_size)
            except decode.ImageDecodeError as exc:
                batch.failures.append((position, exc.reason))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file never stops a run
                batch.failures.append((position, f"decoding failed ({type(exc).__name__}: {exc})"))
                continue
            images[len(batch.positions)] = torch.from_numpy(pixels)
            batch.positions.append(position)
            batch.sizes.append(size)
        batch.images = images[: len(batch.positions)]
        return batch


def _keep(item: DecodedBatch) -> DecodedBatch:
    return item
