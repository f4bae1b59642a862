"""``fext encode``: every image of a folder into the files of an embeddings folder, resumably.

:func:`encode_folder` lists the images, checks what the output folder already holds
(:mod:`fext.encoding.resumable`), encodes what is missing, and writes the final files
(:mod:`fext.encoding.finish`, through :mod:`fext.encoding.files`), ``metadata.json`` last. Under ``torchrun`` it hands over to
:mod:`fext.encoding.sharding`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fext import distributed
from fext._io import atomic_path
from fext.architecture import ModelArchitecture
from fext.checkpoints import read_checkpoint
from fext.config import Config
from fext.data import Listing, list_folder
from fext.encoding import calibration, files, incremental, inference, npy_rows, resumable
from fext.encoding.finish import clear_output, finalize, run_details
from fext.encoding.fingerprints import checkpoint_identity, listing_fingerprint
from fext.encoding.records import EncodeRun, EncodeState, Failure
from fext.encoding.sharding import encode_sharded
from fext.errors import FeXTError
from fext.index import refresh_index
from fext.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """One ``fext encode``: the checkpoint, the folders, the listing, and ``run``, what the state records of it."""

    ckpt: Path
    input_dir: Path
    output: Path
    listing: Listing
    names: list[str]
    """The listing's paths relative to ``input_dir``, as embeddings_index.csv writes them."""
    stats: list[incremental.Stat]
    arch: ModelArchitecture
    run: EncodeRun

    @property
    def paths(self) -> list[Path]:
        return self.listing.images


def encode_folder(
    ckpt: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    config: Config,
    workspace: Workspace | None = None,
    batch_size: int = 64,
    per_image: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every image under ``input_dir`` with checkpoint ``ckpt``; return the output folder.

    The output defaults to ``resources/extraction/<checkpoint name>`` of ``workspace`` (the
    current one when None). Device, MIXED_PRECISION and NUM_PROCESSORS (decoding workers) come
    from ``config.device``; the image size from the checkpoint. An unfinished run in the output
    folder is resumed; a finished one is left as it is (``overwrite`` starts again). Under
    torchrun every process calls this and encodes its share (:mod:`fext.encoding.sharding`).
    """
    if batch_size < 1:
        raise FeXTError(f"--batch-size must be at least 1, got {batch_size}")
    if distributed.launched() and not distributed.active():
        # Under torchrun: open the process group (gloo: ranks only exchange a few small messages), then shard.
        with distributed.session(config.device.DEVICE, config.device.DEVICE_ID, gpu_collectives=False):
            return encode_folder(ckpt, input_dir, output_dir, config=config, workspace=workspace, batch_size=batch_size,
                                 per_image=per_image, overwrite=overwrite, progress=progress)
    if workspace is not None:
        workspace.ensure()
    job = _describe_job(ckpt, input_dir, output_dir, workspace)
    if distributed.active():
        return encode_sharded(job.output, job.run, job.ckpt, job.listing, job.names, job.stats, job.arch, batch_size,
                              config, per_image, overwrite, progress)
    state = _open_state(job, overwrite)
    if state is None:
        _leave_as_it_is(job, per_image)
        return job.output
    device = inference.device_of(config)
    _encode_what_is_missing(job, state, batch_size, config, device, progress)
    _finish(job, state, batch_size, config, device, per_image)
    return job.output


def _describe_job(ckpt: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike | None,
                  workspace: Workspace | None) -> _Job:
    """Resolve the folders, list the images, read the checkpoint's architecture and fingerprint the run."""
    ckpt = Path(ckpt).expanduser().resolve()
    input_dir = Path(input_dir).expanduser().resolve()
    if output_dir is None:
        output_dir = (workspace or Workspace.resolve()).extraction / ckpt.name
    output = Path(output_dir).expanduser().resolve()
    if output == input_dir:
        raise FeXTError(f"The output folder {output} is the input folder; pass another --output")

    listing = list_folder(input_dir)
    listing.require_images("Put images there or pass --input with another folder.")
    paths = listing.images
    names = [p.relative_to(input_dir).as_posix() for p in paths]
    stats = incremental.stat_files(paths)
    arch = read_checkpoint(ckpt).description.architecture
    run = EncodeRun(checkpoint_identity(ckpt), str(input_dir), listing_fingerprint(paths, names), len(paths),
                    arch.feature_dim)
    return _Job(ckpt, input_dir, output, listing, names, stats, arch, run)


def _open_state(job: _Job, overwrite: bool) -> EncodeState | None:
    """The state to go on from (fresh, resumed or incremental), or None when the output already holds this run."""
    if overwrite:
        clear_output(job.output)
    elif files.is_finished(job.output):
        files.load_embeddings(job.output)  # a damaged earlier encoding is refused (it says how to start again), never extended
    state = resumable.prepare(job.output, job.run)
    job.listing.write_skipped(job.output)
    return state


def _leave_as_it_is(job: _Job, per_image: bool) -> None:
    """Nothing to encode: say so, and write the per-image files if they are asked for now."""
    log.info("%s already holds the embeddings of these %d images (pass --overwrite to encode them again)%s",
             job.output, len(job.paths), "".join(f"; {note}" for note in job.listing.notes()))
    if per_image:
        files.write_per_image(job.output, files.row_paths(job.output))


def _encode_what_is_missing(job: _Job, state: EncodeState, batch_size: int, config: Config, device: Any,
                            progress: bool) -> None:
    """Encode the images the state has not done yet (an incremental run: only the new and changed ones)."""
    arch = job.arch
    log.info(
        "Encoding %d images of %s with %s (%s, %d px, D=%d) on %s%s into %s",
        len(job.paths), job.input_dir, job.ckpt.name, arch.preset, arch.img_size, arch.feature_dim, device,
        " with mixed precision" if config.device.MIXED_PRECISION else "", job.output,
    )
    todo = _plan_update(job.output, state, job.paths, job.names, job.stats) if state.incremental else None
    if state.done < state.todo:
        if state.done:
            log.info("Resuming: %d of %d images were already done", state.done, state.todo)
        resumable.encode_missing(job.output, state, job.ckpt, job.paths, job.names, arch.img_size, batch_size, config,
                                 device, progress, todo)


def _finish(job: _Job, state: EncodeState, batch_size: int, config: Config, device: Any, per_image: bool) -> None:
    """The final files and metadata.json, the similarity bands, and (after an update) a refreshed faiss index."""
    finalize(job.output, state, job.paths, job.names, job.stats, per_image,
             run_details(job.arch, batch_size, device, config, job.ckpt, job.listing))
    calibration.record_bands(job.output, job.ckpt, config, config.SEED)
    if state.incremental:
        refresh_index(job.output)


def _plan_update(output: Path, state: EncodeState, paths: list[Path], names: list[str],
                 stats: list[incremental.Stat]) -> np.ndarray:
    """An incremental run's to-do list; planned once (reused rows copied into the partial files), then reloaded."""
    if state.planned:
        return np.load(output / files.TODO, allow_pickle=False)
    plan = incremental.plan(output, paths, names, stats)
    with atomic_path(output / files.TODO) as tmp, open(tmp, "wb") as f:
        np.save(f, plan.todo, allow_pickle=False)
    if plan.reuse_rows:
        new, old = (np.asarray(column, dtype=np.int64) for column in zip(*plan.reuse_rows))
        npy_rows.copy_rows_into(output / files.EMBEDDINGS, output / files.PARTIAL, old, new)
        old_sizes = np.asarray([(r["width"], r["height"]) for r in files.read_rows_csv(output / files.ROWS_CSV)], np.int32)
        with open(output / files.SIZES_PARTIAL, "r+b") as f:
            order = np.argsort(new)
            npy_rows.write_rows(f, npy_rows.offset(output / files.SIZES_PARTIAL), 8, new[order], old_sizes[old[order]])
    state.failures = [Failure(p, names[p], r) for p, r in plan.reuse_failures]
    state.todo, state.counts, state.planned = len(plan.todo), plan.counts, True
    files.write_state(output, state)
    log.info("Updating %s: %s; %d images to encode", output, incremental.summary(plan.counts), len(plan.todo))
    return plan.todo
