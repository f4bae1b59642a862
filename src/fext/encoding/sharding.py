"""``fext encode`` under ``torchrun``: each rank encodes one block of the listing, then rank 0 joins them.

Each rank encodes one block of consecutive images of the sorted listing into its own part
folder ``.encode_parts/<rank>-of-<world size>/`` (the resumable machinery of
:mod:`fext.encoding.resumable`, per shard); then rank 0 joins the parts in rank order, which
is the listing's order, into the very files one process writes (vectors equal up to float
rounding, as batches are cut at other places), and removes the parts. ``metadata.json`` then
also says how many processes encoded.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from fext import distributed
from fext.config import Config
from fext.data import Listing
from fext.encoding import calibration, files, inference, npy_rows, resumable
from fext.encoding.fingerprints import listing_fingerprint
from fext.encoding.finish import clear_output, finalize, run_details
from fext.encoding.records import EncodeRun, EncodeState
from fext.errors import FeXTError

log = logging.getLogger(__name__)

def encode_sharded(
    output: Path, run: EncodeRun, ckpt: Path, listing: Listing, names: list[str], stats: list[tuple[int, int]],
    arch: Any, batch_size: int, cfg: Config, per_image: bool, overwrite: bool, progress: bool,
) -> Path:
    """:func:`~fext.encoding.encode_folder` in one of several processes: encode this rank's block, then rank 0 joins the parts."""
    rank, world, n = distributed.rank(), distributed.world_size(), run.images
    paths = listing.images
    # 1. Rank 0 looks at the output folder; every rank gets its verdict, or its error.
    verdict, state = ("error", ""), None
    if rank == 0:
        try:
            if overwrite:
                clear_output(output)
            state = resumable.prepare(output, run, incremental=False)
            listing.write_skipped(output)
            verdict = ("complete", "") if state is None else ("merged", "") if state.done == n else ("encode", "")
            for stale in (output / files.PARTS).glob("*"):  # parts of a run with another number of processes
                if not stale.name.endswith(f"-of-{world:05d}"):
                    shutil.rmtree(stale, ignore_errors=True)
        except FeXTError as e:
            verdict = ("error", str(e))
    kind, message = distributed.broadcast_object(verdict)
    if kind == "error":
        raise FeXTError(message)
    if kind == "complete":
        if rank == 0:
            log.info("%s already holds the embeddings of these %d images (pass --overwrite to encode them again)",
                     output, n)
            if per_image:
                files.write_per_image(output, files.row_paths(output))
        distributed.barrier()
        return output

    # 2. Every rank encodes its block of the listing into its part folder (resumable on its own).
    device = inference.device_of(cfg)
    if kind == "encode":
        start, stop = distributed.contiguous_shard(n)
        log.info("Encoding %d images of %s with %s in %d processes (this one: images %d to %d on %s) into %s",
                 n, run.input, ckpt.name, world, start + 1, stop, device, output)
        if stop > start:
            part = output / files.PARTS / f"{rank:05d}-of-{world:05d}"
            fingerprint = listing_fingerprint(paths[start:stop], names[start:stop])
            part_run = replace(run, listing=fingerprint, images=stop - start)
            part_state = resumable.prepare(part, part_run)
            if part_state is not None and part_state.done < stop - start:
                resumable.encode_missing(part, part_state, ckpt, paths[start:stop], names[start:stop], arch.img_size,
                                         batch_size, cfg, device, progress and rank == 0)
        distributed.barrier()
        if rank == 0:
            state = join_parts(output, run, world)

    # 3. Rank 0 writes the final files exactly as one process would (and removes the parts).
    if rank == 0:
        details = run_details(arch, batch_size, device, cfg, ckpt, listing, processes=world)
        finalize(output, state, paths, names, stats, per_image, details)
        calibration.record_bands(output, ckpt, cfg, cfg.SEED)
    distributed.barrier()
    return output

def join_parts(output: Path, run: EncodeRun, world: int) -> EncodeState:
    """Copy the rows of every rank's part into the output's partial files; return the state of the whole run.

    The output's state says "nothing done" while the rows are copied, so a kill here leaves a
    run that joins the (complete) parts again.
    """
    n, d = run.images, run.embedding_dim
    state = resumable.new_state(output, run)
    failures, seconds = [], 0.0
    for r in range(world):
        start, stop = distributed.contiguous_shard(n, r, world)
        if stop == start:
            continue
        part = output / files.PARTS / f"{r:05d}-of-{world:05d}"
        part_state = _part_state(part)
        if part_state is None or part_state.done != stop - start:
            raise FeXTError(f"The part of rank {r} in {part} is incomplete; run the same command again to finish it")
        for name, row_bytes in ((files.PARTIAL, d * 4), (files.SIZES_PARTIAL, 8)):
            npy_rows.copy_block(part / name, output / name, start, row_bytes)
        failures += [replace(f, position=f.position + start) for f in part_state.failures]
        seconds = max(seconds, part_state.elapsed_seconds)  # the ranks ran side by side
    state.done, state.failures, state.elapsed_seconds = n, failures, seconds
    files.write_state(output, state)
    return state


def _part_state(part: Path) -> EncodeState | None:
    """The state of one rank's part; None when it is missing or damaged (the part is then encoded again)."""
    try:
        return files.read_state(part)
    except ValueError:
        return None
