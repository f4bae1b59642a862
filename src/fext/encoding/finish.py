"""The steps that end every ``fext encode``, in one process or under ``torchrun``: clear, finish, describe.

:func:`clear_output` removes what an earlier run wrote (``--overwrite``); :func:`finalize` turns the
partial files into the final ones through :mod:`fext.encoding.files`, ``metadata.json`` last; and
:class:`RunDetails` is what ``metadata.json`` records about the model and the settings. Both
:mod:`fext.encoding.folder` (one process) and :mod:`fext.encoding.sharding` (rank 0) call them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fext import __version__
from fext._io import atomic_path
from fext.checkpoints import has_feature_center
from fext.config import Config
from fext.data import SKIPPED, count_notes
from fext.encoding import files, incremental, npy_rows
from fext.encoding.records import EncodeState, EncodingMetadata
from fext.errors import FeXTError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDetails:
    """The model and settings a run records in metadata.json, what its vectors are, and what the listing skipped."""

    preset: str
    img_size: int
    batch_size: int
    device: str
    mixed_precision: bool
    similarity: str
    """files.SIMILARITY or files.UNCENTRED."""
    not_images: int
    multi_frame: int
    processes: int | None = None
    """How many processes encoded, under torchrun."""


def run_details(arch: Any, batch_size: int, device: Any, config: Config, ckpt: Path, listing: Any,
                processes: int | None = None) -> RunDetails:
    """The :class:`RunDetails` of a run of the checkpoint ``ckpt`` (architecture ``arch``) over ``listing``."""
    return RunDetails(arch.preset, arch.img_size, batch_size, str(device), config.device.MIXED_PRECISION,
                      files.SIMILARITY if has_feature_center(ckpt) else files.UNCENTRED,
                      len(listing.not_images), len(listing.multi_frame), processes)


def clear_output(output: Path) -> None:
    """Remove every file a previous ``fext encode`` wrote into ``output`` (nothing else)."""
    for name in (files.METADATA, files.EMBEDDINGS, files.ROWS_CSV, files.FAILED, SKIPPED, files.STATE, files.PARTIAL,
                 files.SIZES_PARTIAL, files.SOURCES, files.TODO):
        (output / name).unlink(missing_ok=True)
    shutil.rmtree(output / files.PER_IMAGE, ignore_errors=True)
    shutil.rmtree(output / files.PARTS, ignore_errors=True)


def finalize(output: Path, state: EncodeState, paths: list[Path], names: list[str], stats: list[incremental.Stat],
             per_image: bool, details: RunDetails) -> None:
    """Write the final files from the partial ones (each atomically, metadata.json last), then tidy up.

    An incremental run first removes the old metadata.json: while the files are replaced the folder
    is not a finished encoding, and the same command finishes the job.
    """
    n, d = state.run.images, state.run.embedding_dim
    known = (files.read_sources(output) or {}) if state.incremental else {}
    (output / files.METADATA).unlink(missing_ok=True)
    failures = sorted(state.failures, key=lambda f: f.position)
    failed = np.zeros(n, dtype=bool)
    failed[[f.position for f in failures]] = True
    kept = np.flatnonzero(~failed)

    files.write_failed(output, failures)
    if not len(kept):
        raise FeXTError(f"None of the {n} files in {state.run.input} could be read; see {output / files.FAILED}")
    sizes = np.load(output / files.SIZES_PARTIAL, allow_pickle=False)[kept]  # (N_ok, 2): 8 bytes per image
    files.write_rows_csv(output, [names[p] for p in kept], sizes)

    partial = output / files.PARTIAL
    if partial.exists():
        if len(kept) == n:
            os.replace(partial, output / files.EMBEDDINGS)  # already synced, complete and in order: no copy needed
        else:
            with atomic_path(output / files.EMBEDDINGS) as tmp:
                npy_rows.copy_rows(partial, tmp, kept, d)
    if per_image:
        files.write_per_image(output, [names[p] for p in kept])
    files.write_sources(output, incremental.describe_sources(paths, names, stats, known))

    seconds = state.elapsed_seconds
    files.write_metadata(output, EncodingMetadata(
        checkpoint=state.run.checkpoint, preset=details.preset, img_size=details.img_size,
        batch_size=details.batch_size, device=details.device, mixed_precision=details.mixed_precision,
        similarity=details.similarity, processes=details.processes, not_images=details.not_images,
        multi_frame=details.multi_frame, embedding_dim=d, images=int(len(kept)), failed=len(failures), files=n,
        input=state.run.input, listing=state.run.listing, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        elapsed_seconds=seconds, fext_version=__version__, update=state.counts if state.incremental else None,
    ))
    for leftover in (files.STATE, files.PARTIAL, files.SIZES_PARTIAL, files.TODO):
        (output / leftover).unlink(missing_ok=True)
    shutil.rmtree(output / files.PARTS, ignore_errors=True)
    log.info(
        "Wrote %d vectors of %d floats to %s in %.1f s (%s images/s)%s%s%s", len(kept), d, output / files.EMBEDDINGS,
        seconds, f"{len(kept) / seconds:.1f}" if seconds > 0 else "-",
        f"; {len(failures)} file(s) could not be read, listed in {files.FAILED}" if failures else "",
        "".join(f"; {note}" for note in count_notes(details.not_images, details.multi_frame)),
        f"; {incremental.summary(state.counts)}" if state.incremental else "",
    )
