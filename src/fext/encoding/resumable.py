"""The resumable writer: encode into pre-sized partial files and record progress, so a run survives a kill.

Memory stays at a few batches whatever the number of images: vectors are written as they come
into ``embeddings.partial.npy``, an ``.npy`` file pre-sized to one row per discovered image,
through ordinary file writes (:mod:`fext.encoding.npy_rows`).

Every couple of seconds the written rows are synced to disk and then ``.encode_state.json``
records how many images are done (atomically), with the checkpoint's identity and a
fingerprint of the input listing. Re-running the same command after Ctrl-C or a kill encodes
only the rest, starting on a batch boundary of the uninterrupted run, so the final files are
byte for byte those of one run (a resumed run keeps the same batches). A different checkpoint
or a changed input folder is refused rather than mixed into existing results.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from fext.config import Config
from fext.encoding import inference, npy_rows
from fext.encoding.files import (
    EMBEDDINGS, METADATA, PARTIAL, SIZES_PARTIAL, STATE, TODO, is_finished, read_metadata, read_state, write_state,
)
from fext.encoding.records import CheckpointRecord, EncodeRun, EncodeState, EncodingMetadata, Failure
from fext.errors import FeXTError

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0
"""Sync the written rows and record progress at most this often (and at the end)."""


def check_same_checkpoint(output: Path, theirs: CheckpointRecord, ours: CheckpointRecord) -> None:
    """Refuse to mix the results of another checkpoint into ``output``."""
    if not theirs.comparable(ours):
        origin = (
            f"an earlier version of checkpoint {ours.name} (its weights changed since)"
            if (theirs.name, theirs.path) == (ours.name, ours.path)
            else f"checkpoint {_or_unknown(theirs.name)} ({_or_unknown(theirs.path)}), not of {ours.name}"
        )
        raise FeXTError(
            f"{output} holds embeddings of {origin}; results of different checkpoints are never mixed. "
            "Pass --overwrite to replace them, or --output to write to another folder."
        )


def _or_unknown(value: str | None) -> str:
    return "?" if value is None else value


def prepare(output: Path, run: EncodeRun, incremental: bool = True) -> EncodeState | None:
    """The state to continue from; None when the folder already holds this very encoding.

    An unfinished run of the same checkpoint and listing is resumed. A finished encoding of the
    same checkpoint but another listing starts an incremental run (``state.incremental``;
    refused when ``incremental`` is False); anything of another checkpoint is refused.
    """
    state = _unfinished_state(output)
    metadata = read_metadata(output) if is_finished(output) else None
    if state is not None:
        check_same_checkpoint(output, state.run.checkpoint, run.checkpoint)
        if state.run.listing == run.listing:
            if partial_usable(output, state):
                return state
            log.warning("The unfinished encoding in %s lost its partial files; starting again", output)
        elif metadata is None:
            raise FeXTError(
                f"The images in {run.input} changed since the unfinished encoding in {output} began "
                f"({state.run.images} files then, {run.images} now, or files modified). "
                "Pass --overwrite to encode them all again, or --output to write to another folder."
            )
    if metadata is not None:
        return _after_finished(output, metadata, run, incremental)
    if state is None and ((output / EMBEDDINGS).exists() or (output / PARTIAL).exists()):
        raise FeXTError(
            f"{output} already holds embeddings whose origin is unknown (no {METADATA}). "
            "Pass --overwrite to replace them, or --output to write to another folder."
        )
    output.mkdir(parents=True, exist_ok=True)
    return new_state(output, run)


def _unfinished_state(output: Path) -> EncodeState | None:
    """The state of an unfinished run; a damaged one (or one of another version) is removed, out loud."""
    try:
        return read_state(output)
    except ValueError:
        log.warning("%s is damaged or from another version of FeXT: the unfinished encoding starts again",
                    output / STATE)
        for leftover in (STATE, PARTIAL, SIZES_PARTIAL, TODO):
            (output / leftover).unlink(missing_ok=True)
        return None


def _after_finished(output: Path, metadata: EncodingMetadata, run: EncodeRun, incremental: bool) -> EncodeState | None:
    """Beside a finished encoding of the same checkpoint: nothing to do (None), or an incremental run."""
    check_same_checkpoint(output, metadata.checkpoint, run.checkpoint)
    if metadata.listing == run.listing:
        for leftover in (STATE, PARTIAL, SIZES_PARTIAL, TODO):
            (output / leftover).unlink(missing_ok=True)
        return None
    if not incremental:
        raise FeXTError(f"The images in {run.input} changed since {output} was written; an incremental update "
                        "runs in one process: run the same `fext encode` without torchrun, or pass --overwrite")
    return new_state(output, run, incremental=True)


def new_state(output: Path, run: EncodeRun, incremental: bool = False) -> EncodeState:
    """Record a run with nothing done yet, beside empty pre-sized partial files.

    ``done`` counts the images of the run's to-do list that are done: every image of the listing
    for a fresh run, the new and changed ones (``.encode_todo.npy``) for an incremental one.
    """
    state = EncodeState(run, todo=run.images, incremental=incremental)
    write_state(output, state)
    npy_rows.create(output / PARTIAL, np.float32, (run.images, run.embedding_dim))
    npy_rows.create(output / SIZES_PARTIAL, np.int32, (run.images, 2))
    return state


def partial_usable(output: Path, state: EncodeState) -> bool:
    """The partial files match the state, or (interrupted while finishing) the rows already moved into place."""
    n, d = state.run.images, state.run.embedding_dim
    shapes = {name: npy_rows.shape(output / name) for name in (PARTIAL, SIZES_PARTIAL, EMBEDDINGS)}
    if shapes[SIZES_PARTIAL] != (n, 2):
        return False
    if shapes[PARTIAL] == (n, d):
        return True
    return state.done == state.todo and shapes[EMBEDDINGS] == (n - len(state.failures), d)


def encode_missing(
    output: Path, state: EncodeState, ckpt: Path, paths: list[Path], names: list[str], img_size: int,
    batch_size: int, cfg: Config, device: torch.device, progress: bool, todo: np.ndarray | None = None,
) -> None:
    """Encode the images ``todo[state.done:]`` (positions in the listing; all when None) into the partial files.

    Progress is recorded as it goes, at most every :data:`FLUSH_SECONDS`.
    """
    from fext.data import decode_batches

    model = inference.load_model(ckpt, device, inference.compile_backend(cfg))
    pad_to = inference.pad_to(cfg, batch_size)
    todo = np.arange(len(paths), dtype=np.int64) if todo is None else todo
    start = state.done
    # An interruption between recording a batch's failures and its progress must not list them twice.
    pending = set(todo[start:].tolist())
    state.failures = [f for f in state.failures if f.position not in pending]
    started, last_flush, elapsed_before = time.perf_counter(), time.perf_counter(), state.elapsed_seconds
    row_bytes = state.run.embedding_dim * 4
    with open(output / PARTIAL, "r+b") as vec_file, open(output / SIZES_PARTIAL, "r+b") as size_file:
        vec_offset, size_offset = npy_rows.offset(output / PARTIAL), npy_rows.offset(output / SIZES_PARTIAL)

        def flush() -> None:
            for f in (vec_file, size_file):
                f.flush()
                os.fsync(f.fileno())
            state.elapsed_seconds = round(elapsed_before + time.perf_counter() - started, 3)
            write_state(output, state)

        try:
            workers = inference.workers(cfg, len(todo) - start, batch_size)
            batches = decode_batches([paths[p] for p in todo[start:]], img_size, batch_size, workers, log_failures=False)
            for batch in inference.with_progress(batches, progress, len(todo), initial=start):
                steps = start + np.asarray(batch.positions, dtype=np.int64)  # indices into todo
                positions = todo[steps]
                failed = [(int(todo[start + p]), reason) for p, reason in inference.failures(batch)]
                failed_steps = [start + p for p, _ in inference.failures(batch)]
                if len(positions):
                    vectors = inference.embed(model, batch.images, device, cfg.device.MIXED_PRECISION, pad_to)
                    sizes = np.asarray(batch.sizes, dtype=np.int32).reshape(-1, 2)
                    npy_rows.write_rows(vec_file, vec_offset, row_bytes, positions, vectors)
                    npy_rows.write_rows(size_file, size_offset, 8, positions, sizes)
                for position, reason in failed:
                    log.warning("Skipped %s: %s", names[position], reason)
                state.failures += [Failure(p, names[p], reason) for p, reason in failed]
                state.done = max([state.done, *(p + 1 for p in failed_steps), *(steps + 1).tolist()])
                if time.perf_counter() - last_flush >= FLUSH_SECONDS:
                    flush()
                    last_flush = time.perf_counter()
            flush()
        except BaseException as e:  # Ctrl-C or an error: keep what is done for the next run
            flush()
            _log_stop(e, state.done, len(todo))
            raise
    if state.done < len(todo):
        raise FeXTError(f"Decoding stopped after {state.done} of {len(todo)} images; run the same command again to resume")


def _log_stop(error: BaseException, done: int, total: int) -> None:
    """Say where an interrupted or failed encoding stopped: its rows are kept for the next run."""
    if isinstance(error, KeyboardInterrupt):
        log.warning("Interrupted after %d of %d images; run the same command again to encode the rest", done, total)
    else:
        log.warning("Stopped after %d of %d images; they are kept, and a later run goes on from there", done, total)
