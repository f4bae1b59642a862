"""The decoded-image cache: every training image decoded once, kept as uint8 pixels on disk.

Layout, one folder per image size under the caller's ``cache_dir``::

    images_<S>px/
      manifest.json       {"format", "img_size", "data_file", "count", "images", "failures"}
      pixels-<id>.u8      slots of S*S*3 bytes, memory-mapped as a (count, S, S, 3) uint8 array
      lock                held (flock) by the one process that builds

An image is keyed by its absolute path, file size and mtime_ns: the same key is a cache hit
(a second epoch or a second run decodes nothing); a changed file gets a new key and is
decoded again. Unreadable files are remembered too, with their reason, so a second run does
not retry a corrupt file (only reasons that depend on the content are remembered; "permission
denied" or the decompression-bomb guard, whose limit a user may raise, are tried again).

Crash safety: the data file is append-only. New pixels go to slots past ``count``, which no
manifest on disk refers to; the pixels are flushed (msync) before the manifest that names them is
atomically replaced, so a killed build loses at most the images decoded since its last
commit and never maps a key to wrong pixels. Disk space is allocated before pixels are
written, so a full disk is an error message, not a crash.

Stale slots (of changed or deleted files) are left in place; when they outnumber the live
ones (and number over 1024) the live pixels are copied to a new data file, and the old one
is deleted once the new manifest is written (readers that still map it keep working).

The manifest and its folder are handled by :mod:`fext.data.cache_manifest`; this module decodes into
it and reads images back.

Concurrency: builders take an exclusive lock, so two processes never write at once and the
second one finds the first one's work done. Readers (:func:`open_readonly`, for DDP ranks
other than 0) take no lock: they only read slots below the ``count`` of the manifest they
loaded, which nobody rewrites.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fext.data import cache_manifest
from fext.data.loader import decode_batches
from fext.errors import FeXTError

log = logging.getLogger(__name__)

_COMMIT_SECONDS = 30.0
_DECODE_BATCH = 32


class CachedImages:
    """Images decoded to uint8 (S, S, 3) in the cache, aligned with ``paths``.

    ``paths``: the readable images, in the order they were given; ``failures``: (path, reason)
    of the unreadable ones. ``batch(indices)`` gathers rows fast; ``array`` is the (N, S, S, 3)
    view of all rows.
    """

    def __init__(
        self,
        paths: list[Path],
        slots: np.ndarray,
        failures: list[tuple[Path, str]],
        data_file: Path,
        count: int,
        img_size: int,
    ) -> None:
        self.paths = paths
        self.slots = slots
        self.failures = failures
        self.img_size = img_size
        self.data_file = data_file
        self._count = count
        self._data = cache_manifest.map_pixels(data_file, "r", count, img_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the location, not the pixels (for worker processes and spawned ranks).
        args = (self.paths, self.slots, self.failures, self.data_file, self._count, self.img_size)
        return (CachedImages, args)

    @property
    def array(self) -> np.ndarray:
        """(N, S, S, 3) uint8, row i = ``paths[i]``.

        A zero-copy memory-mapped view when the images sit in consecutive slots (a cache built
        in one go); otherwise a gathered copy in RAM of N * S * S * 3 bytes.
        """
        slots = self.slots
        if len(slots) and np.array_equal(slots, np.arange(slots[0], slots[0] + len(slots))):
            return self._data[slots[0] : slots[0] + len(slots)]
        return np.asarray(self._data[slots])

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) tensor of the images at positions ``indices`` of ``paths``.

        One NumPy gather from the memory map (a copy; single-threaded on purpose, see
        :func:`fext.data.loader.to_float`).
        """
        rows = self.slots[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.take(self._data, rows, axis=0).view(np.ndarray))


def cache_folder(cache_dir: Path, img_size: int) -> Path:
    """The folder of the cache of ``img_size`` images under ``cache_dir``."""
    return Path(cache_dir) / f"images_{img_size}px"


def prepare_images(
    paths: list[Path],
    img_size: int,
    cache_dir: Path,
    workers: int,
    progress: bool = True,
    desc: str = "Decoding",
) -> CachedImages:
    """Make sure every image of ``paths`` is in the cache, decoding the missing ones.

    Decoding runs in ``workers`` processes (0: in this process) with a progress bar (rate and
    time left; off when ``progress`` is False or stdout is not a terminal). Each unreadable
    file is logged as one warning and listed in ``failures``. Raises
    :class:`~fext.errors.FeXTError` when no image at all is readable.
    """
    paths = [Path(p).absolute() for p in paths]
    folder = cache_folder(cache_dir, img_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeXTError(
            f"Cannot create the decoded-image cache folder {folder} ({exc.strerror or exc}): "
            "make it writable or choose another workspace."
        ) from exc
    with cache_manifest.exclusive_lock(folder):
        manifest = cache_manifest.load_manifest(folder, img_size)
        changed = manifest is None
        if manifest is None:
            manifest = cache_manifest.new_manifest(folder, img_size)
        keys = [cache_manifest.file_key(p) for p in paths]
        changed |= cache_manifest.forget_changed(manifest, paths, keys) > 0
        cache_manifest.compact_if_worth_it(folder, manifest)
        missing = cache_manifest.missing_files(manifest, paths, keys)
        if missing:
            _decode_into(folder, manifest, missing, workers, progress, desc)
        elif changed:
            cache_manifest.commit(folder, manifest)
        cache_manifest.remove_orphans(folder, manifest)
    return _assemble(folder, manifest, paths, keys, log_failures=True)


def open_readonly(
    paths: list[Path], img_size: int, cache_dir: Path, log_failures: bool = False
) -> CachedImages:
    """Open the cache built by :func:`prepare_images` for ``paths`` without writing anything.

    For processes that must not build (DDP ranks other than 0, after a barrier). Raises
    :class:`~fext.errors.FeXTError` when an image is not in the cache.
    """
    paths = [Path(p).absolute() for p in paths]
    folder = cache_folder(cache_dir, img_size)
    keys = [cache_manifest.file_key(p) for p in paths]
    for attempt in range(3):
        manifest = cache_manifest.load_manifest(folder, img_size)
        if manifest is None:
            raise FeXTError(f"No decoded-image cache in {folder}: build it first (prepare_images).")
        missing = cache_manifest.missing_files(manifest, paths, keys)
        if missing:
            raise FeXTError(
                f"{len(missing)} image(s) are not in the decoded-image cache {folder} "
                f"(first: {missing[0][0]}): build it first (prepare_images)."
            )
        try:
            return _assemble(folder, manifest, paths, keys, log_failures=log_failures)
        except FileNotFoundError:
            # A builder compacted the cache between our manifest read and the mapping: read again.
            time.sleep(0.1 * (attempt + 1))
    raise FeXTError(f"The decoded-image cache in {folder} keeps changing; try again when no build runs.")


def _decode_into(
    folder: Path,
    manifest: dict[str, Any],
    missing: list[tuple[Path, tuple[int, int]]],
    workers: int,
    progress: bool,
    desc: str,
) -> None:
    """Decode ``missing`` into new slots past ``count``, committing every ``_COMMIT_SECONDS``.

    Entries get the key read *before* decoding: a file rewritten meanwhile then no longer
    matches its entry and is decoded again next time, instead of keeping stale pixels.
    """
    img_size = manifest["img_size"]
    data_path = folder / manifest["data_file"]
    capacity = manifest["count"] + len(missing)
    slot_bytes = img_size * img_size * 3
    cache_manifest.reserve(data_path, capacity * slot_bytes)
    data = cache_manifest.map_pixels(data_path, "r+", capacity, img_size)
    missing_paths = [path for path, _ in missing]
    show = progress and sys.stdout.isatty()
    last_commit = time.monotonic()
    with _maybe_redirect(show), tqdm(total=len(missing), desc=desc, unit="img", disable=not show) as bar:
        for batch in decode_batches(missing_paths, img_size, _DECODE_BATCH, workers, log_failures=False):
            start = manifest["count"]
            data[start : start + len(batch.positions)] = batch.images.numpy()
            for slot, position in enumerate(batch.positions, start):
                path, key = missing[position]
                manifest["images"][str(path)] = [*key, slot]
            manifest["count"] = start + len(batch.positions)
            for position, reason in batch.failures:
                path, key = missing[position]
                manifest["failures"][str(path)] = [*key, reason, reason.startswith(cache_manifest.PERMANENT_REASONS)]
            bar.update(len(batch.positions) + len(batch.failures))
            if time.monotonic() - last_commit > _COMMIT_SECONDS:
                data.flush()
                cache_manifest.commit(folder, manifest)
                last_commit = time.monotonic()
    data.flush()
    del data
    cache_manifest.commit(folder, manifest)


def _assemble(
    folder: Path, manifest: dict[str, Any], paths: list[Path], keys: list[Any], log_failures: bool
) -> CachedImages:
    readable, slots, failures = [], [], []
    for path, key in zip(paths, keys):
        name = str(path)
        if isinstance(key, str):
            failures.append((path, key))
            continue
        found = cache_manifest.lookup(manifest, name, key)
        if found is None:
            failures.append((path, "not decoded"))
        elif found[0] == "images":
            slots.append(found[1][2])
            readable.append(path)
        else:
            failures.append((path, found[1][2]))
    if log_failures:
        for path, reason in failures:
            log.warning("Skipping %s: %s", path, reason)
    if not readable:
        raise FeXTError(_no_readable_message(paths, failures))
    slot_array = np.asarray(slots, dtype=np.int64)
    data_file = folder / manifest["data_file"]
    return CachedImages(readable, slot_array, failures, data_file, manifest["count"], manifest["img_size"])


def _no_readable_message(paths: list[Path], failures: list[tuple[Path, str]]) -> str:
    if not paths:
        return "No image to load: the list of images is empty. Put images in the dataset folder."
    try:
        where = Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:
        where = paths[0].parent
    first_path, first_reason = failures[0]
    return (
        f"No readable image in {where}: {len(failures)} files could not be decoded "
        f"(first: {first_path}: {first_reason}). Check that the folder holds real image files."
    )


@contextlib.contextmanager
def _maybe_redirect(active: bool) -> Iterator[None]:
    # Warnings printed while a bar is drawn would break it: route them through tqdm.write.
    if active:
        with logging_redirect_tqdm():
            yield
    else:
        yield
