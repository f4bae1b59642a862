"""Encoding: turning images into feature vectors with a trained checkpoint.

:func:`encode_folder` is ``fext encode``: it writes, into one output folder,

- ``embeddings.npy``: float32 (N, D), row i is the image on row i of the index;
  ``np.load(path, allow_pickle=False, mmap_mode="r")`` reads it without loading it;
- ``embeddings_index.csv``: ``row, path, width, height`` (path relative to the input folder,
  original width and height in pixels, EXIF orientation applied);
- ``failed.csv``: ``path, reason`` for every file that could not be read;
- ``metadata.json``: the checkpoint, the model, counts, date and speed (written last: its
  presence means the folder is complete);
- with ``per_image``, ``per_image/<relative path>.npy``: one (D,) vector per image.

Memory stays at a few batches whatever the number of images: vectors are written as they come
into ``embeddings.partial.npy``, an ``.npy`` file pre-sized to one row per discovered image,
through ordinary file writes (a growing memory map would count towards resident memory).

A run is resumable. Every couple of seconds the written rows are synced to disk and then
``.encode_state.json`` records how many images are done (atomically), with the checkpoint's
identity (a hash of its weights and architecture) and a fingerprint of the input listing.
Re-running the same command after Ctrl-C or a kill encodes only the rest, starting on a batch
boundary of the uninterrupted run, so the final files are byte for byte those of one run
(vectors do not depend on the other images of a batch beyond float rounding, ~1e-6, and a
resumed run even keeps the same batches). ``overwrite`` starts again; a different checkpoint or
a changed input folder is refused rather than mixed into existing results.

:func:`encode_images` and :func:`load_embeddings` are the in-memory Python API.

Under ``torchrun`` (several processes) each rank encodes one block of consecutive images of
the sorted listing into its own part folder ``.encode_parts/<rank>-of-<world size>/`` (the same
resumable machinery, per shard); then rank 0 joins the parts in rank order, which is the
listing's order, into the very files one process writes (vectors equal up to float rounding,
as batches are cut at other places), and removes the parts. ``metadata.json`` then also says
how many processes encoded.

Testing hook: the environment variable ``FEXT_DEBUG_ENCODE_SLEEP`` (seconds, read once per
run in :func:`_encode_missing`) sleeps after every batch and records progress after every batch,
so a test can kill a run midway at a known point.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fext import distributed
from fext._allocator import keep_freed_memory
from fext._io import atomic_open, atomic_path, write_json
from fext.config import Config
from fext.errors import FeXTError
from fext.workspace import Workspace

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
INDEX = "embeddings_index.csv"
FAILED = "failed.csv"
METADATA = "metadata.json"
PER_IMAGE = "per_image"
PARTIAL = "embeddings.partial.npy"
PARTS = ".encode_parts"
SIZES_PARTIAL = "sizes.partial.npy"
STATE = ".encode_state.json"
STATE_VERSION = 1

FLUSH_SECONDS = 2.0
"""Sync the written rows and record progress at most this often (and at the end)."""
COPY_BYTES = 16 * 2**20
"""Rows are copied and scanned in blocks of about this many bytes."""
DEBUG_SLEEP_ENV = "FEXT_DEBUG_ENCODE_SLEEP"


def load_model(ckpt: str | os.PathLike, device: torch.device, compile_backend: str | None = None) -> torch.nn.Module:
    """The checkpoint's FeXTAutoEncoder in eval mode (dropout off) on ``device``; see :func:`compile_encoder`."""
    from fext.model import FeXTAutoEncoder

    if device.type == "cpu":
        keep_freed_memory()  # batch activations are not re-mapped for every batch
    model = FeXTAutoEncoder.from_pretrained(ckpt).eval().to(device)
    if compile_backend:
        compile_encoder(model, compile_backend)
    return model


def compile_encoder(model: torch.nn.Module, backend: str = "inductor") -> None:
    """Compile ``model``'s encoder for inference, in place, with ``torch.compile`` (``model.JIT_COMPILE``).

    Each encoder stage and the compression stack is compiled on its own, so the chunked
    high-resolution stages of CPU inference (``fext.model.INFERENCE_CHUNK_BYTES``) stay a Python
    loop over compiled code. With inductor the weights are frozen into the compiled code, which
    then fuses the layer norm, ReLU, addition and padding passes around each convolution: base
    encoding on a 2-core CPU runs about 15% faster, after 20-30 s of compiling on the first batch.
    Shapes are static (no recompiling for dynamic shapes): :func:`embed` pads a short last batch.
    """
    options = {"freezing": True} if backend == "inductor" else None
    for module in (*model.encoder, model.compress):
        module.compile(backend=backend, dynamic=False, options=options)


def embed(
    model: torch.nn.Module, images: Any, device: torch.device, mixed_precision: bool = False, pad_to: int = 0,
) -> np.ndarray:
    """uint8 images (B, S, S, 3) -> float32 feature vectors (B, D) as a NumPy array.

    Pixels travel to the device as uint8 (4x less to copy) and become floats there. Under
    MIXED_PRECISION the model runs in bf16/fp16 autocast and the vectors are returned as float32.
    A batch shorter than ``pad_to`` is padded with black images, so a compiled model sees one shape.
    """
    from fext.data import to_float
    from fext.device import autocast, explain_compile_failure

    x = torch.as_tensor(images).to(device, non_blocking=True)
    count = len(x)
    if count < pad_to:
        x = torch.cat([x, x.new_zeros((pad_to - count, *x.shape[1:]))])
    with torch.inference_mode(), autocast(device, mixed_precision), explain_compile_failure():
        z = model.encode(to_float(x))[:count]  # (B, D)
    return z.float().cpu().numpy()


def _device_of(cfg: Config) -> torch.device:
    """The configured device (under torchrun, ``cuda:LOCAL_RANK`` on GPUs)."""
    return distributed.device_for(cfg.device.DEVICE, cfg.device.DEVICE_ID)


def encode_images(
    ckpt: str | os.PathLike | torch.nn.Module,
    paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike],
    batch_size: int = 64,
    *,
    config: Config | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Encode images in memory; return ``(vectors (N, D) float32, index rows)``.

    ``ckpt`` is a checkpoint folder (run on ``config``'s device, default configuration when None)
    or an already loaded FeXTAutoEncoder (run where it is, in eval mode). ``paths_or_folder`` is
    a folder (every image under it, paths in the index relative to it) or a list of image files
    (paths in the index as given). Index rows are ``{"row", "path", "width", "height"}``. Files
    that cannot be read are left out with a warning. Meant for sets that fit in memory; use
    :func:`encode_folder` for large folders.
    """
    from fext.data import decode_batches, find_images

    cfg = config or Config()
    if batch_size < 1:
        raise FeXTError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(paths_or_folder, (str, os.PathLike)) and Path(paths_or_folder).is_dir():
        root = Path(paths_or_folder).expanduser().absolute()
        paths = find_images(root)
        names = [p.relative_to(root).as_posix() for p in paths]
    elif isinstance(paths_or_folder, (str, os.PathLike)):
        raise FeXTError(f"{paths_or_folder} is not a folder; pass a folder, or a list of image files such as [path]")
    else:
        paths = [Path(p) for p in paths_or_folder]
        names = [str(p) for p in paths_or_folder]
    if isinstance(ckpt, torch.nn.Module):
        model, was_training = ckpt, ckpt.training
        device = next(model.parameters()).device
        model.eval()
    else:
        device, was_training = _device_of(cfg), False
        model = load_model(ckpt, device, _compile_backend(cfg))
    pad_to = 0 if isinstance(ckpt, torch.nn.Module) else _pad_to(cfg, batch_size)
    vectors, index = [], []
    try:
        workers = _workers(cfg, len(paths), batch_size)
        batches = decode_batches(paths, model.arch.img_size, batch_size, workers, log_failures=False)
        for batch in _batches(batches, progress, len(paths)):
            for position, reason in _failures(batch):
                log.warning("Skipped %s: %s", names[position], reason)
            if len(batch.positions):
                vectors.append(embed(model, batch.images, device, cfg.device.MIXED_PRECISION, pad_to))
            for position, (width, height) in zip(batch.positions, batch.sizes):
                index.append({"row": len(index), "path": names[position], "width": int(width), "height": int(height)})
    finally:
        model.train(was_training)
    matrix = np.concatenate(vectors) if vectors else np.empty((0, model.arch.feature_dim), np.float32)
    return matrix, index


def _compile_backend(cfg: Config) -> str | None:
    """The torch.compile backend to encode with (``model.JIT_COMPILE``), or None."""
    return cfg.model.JIT_BACKEND if cfg.model.JIT_COMPILE else None


def _pad_to(cfg: Config, batch_size: int) -> int:
    """Pad short batches to ``batch_size`` for a compiled model (one shape, one compilation)."""
    return batch_size if cfg.model.JIT_COMPILE else 0


def _workers(cfg: Config, images: int, batch_size: int) -> int:
    """NUM_PROCESSORS decoding workers, but none to start for a single batch."""
    return max(0, min(cfg.device.NUM_PROCESSORS, -(-images // batch_size) - 1))


def _batches(batches: Iterator[Any], progress: bool, total: int, initial: int = 0, desc: str = "Encoding") -> Iterator[Any]:
    """Pass the decoded batches through, advancing a progress bar in images (read or failed) per second."""
    from tqdm import tqdm

    with tqdm(total=total, initial=initial, unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch.positions) + len(batch.failures))


def _failures(batch: Any) -> list[tuple[int, str]]:
    """``(position, reason)`` of every file of ``batch`` that could not be decoded."""
    return [(int(position), str(reason)) for position, reason in batch.failures]


def checkpoint_identity(ckpt: Path) -> dict[str, str]:
    """Name, absolute path and a content hash (weights + architecture) of a checkpoint folder."""
    from fext.model import CONFIG_NAME, WEIGHTS_NAME

    digest = hashlib.blake2b(digest_size=16)
    try:
        architecture = json.loads((ckpt / CONFIG_NAME).read_text(encoding="utf-8"))["architecture"]
        digest.update(json.dumps(architecture, sort_keys=True).encode())
        with open(ckpt / WEIGHTS_NAME, "rb") as f:
            while block := f.read(2**22):
                digest.update(block)
    except (OSError, ValueError, KeyError) as e:
        raise FeXTError(f"{ckpt} is not a usable FeXT checkpoint ({e}); pass a folder written by `fext train`") from e
    return {"name": ckpt.name, "path": str(ckpt), "hash": digest.hexdigest()}


def listing_fingerprint(paths: Sequence[Path], names: Sequence[str]) -> str:
    """A hash of the input listing: relative paths, sizes and modification times."""
    digest = hashlib.blake2b(digest_size=16)
    for path, name in zip(paths, names):
        try:
            st = path.stat()
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()


def encode_folder(
    ckpt: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    config: Config | None = None,
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
    torchrun every process calls this and encodes its share (see the module docstring).
    """
    from fext.data import find_images
    from fext.model import CONFIG_NAME, architecture_from_config

    cfg = config or Config()
    if batch_size < 1:
        raise FeXTError(f"--batch-size must be at least 1, got {batch_size}")
    if distributed.launched() and not distributed.active():
        # Under torchrun: open the process group (gloo: ranks only exchange a few small messages), then shard.
        with distributed.session(cfg.device.DEVICE, cfg.device.DEVICE_ID, gpu_collectives=False):
            return encode_folder(ckpt, input_dir, output_dir, config=cfg, workspace=workspace, batch_size=batch_size,
                                 per_image=per_image, overwrite=overwrite, progress=progress)
    if workspace is not None:
        workspace.ensure()
    ckpt = Path(ckpt).expanduser().resolve()
    input_dir = Path(input_dir).expanduser().resolve()
    if output_dir is None:
        output_dir = (workspace or Workspace.resolve()).extraction / ckpt.name
    output = Path(output_dir).expanduser().resolve()
    if output == input_dir:
        raise FeXTError(f"The output folder {output} is the input folder; pass another --output")

    paths = find_images(input_dir)
    if not paths:
        raise FeXTError(f"No image found in {input_dir}. Put images there or pass --input with another folder.")
    names = [p.relative_to(input_dir).as_posix() for p in paths]
    arch = architecture_from_config(ckpt / CONFIG_NAME)
    run = {
        "checkpoint": checkpoint_identity(ckpt),
        "input": str(input_dir),
        "listing": listing_fingerprint(paths, names),
        "images": len(paths),
        "embedding_dim": arch.feature_dim,
    }
    if distributed.active():
        return _encode_sharded(output, run, ckpt, paths, names, arch, batch_size, cfg, per_image, overwrite, progress)
    if overwrite:
        clear_output(output)
    state = _prepare(output, run)
    if state is None:
        log.info("%s already holds the embeddings of these %d images (pass --overwrite to encode them again)", output, len(paths))
        if per_image:
            _write_per_image(output, _final_names(output))
        return output

    device = _device_of(cfg)
    log.info(
        "Encoding %d images of %s with %s (%s, %d px, D=%d) on %s%s into %s",
        len(paths), input_dir, ckpt.name, arch.preset, arch.img_size, arch.feature_dim, device,
        " with mixed precision" if cfg.device.MIXED_PRECISION else "", output,
    )
    if state["done"] < len(paths):
        if state["done"]:
            log.info("Resuming: %d of %d images were already done", state["done"], len(paths))
        _encode_missing(output, state, ckpt, paths, names, arch.img_size, batch_size, cfg, device, progress)
    _finalize(output, state, names, per_image, extra={
        "preset": arch.preset, "img_size": arch.img_size, "batch_size": batch_size, "device": str(device),
        "mixed_precision": cfg.device.MIXED_PRECISION,
    })
    return output


def clear_output(output: Path) -> None:
    """Remove every file a previous ``fext encode`` wrote into ``output`` (nothing else)."""
    for name in (METADATA, EMBEDDINGS, INDEX, FAILED, STATE, PARTIAL, SIZES_PARTIAL):
        (output / name).unlink(missing_ok=True)
    shutil.rmtree(output / PER_IMAGE, ignore_errors=True)
    shutil.rmtree(output / PARTS, ignore_errors=True)


def _encode_sharded(
    output: Path, run: dict[str, Any], ckpt: Path, paths: list[Path], names: list[str], arch: Any, batch_size: int,
    cfg: Config, per_image: bool, overwrite: bool, progress: bool,
) -> Path:
    """:func:`encode_folder` in one of several processes: encode this rank's block, then rank 0 joins the parts."""
    rank, world, n = distributed.rank(), distributed.world_size(), run["images"]
    # 1. Rank 0 looks at the output folder; every rank gets its verdict, or its error.
    verdict, state = ("error", ""), None
    if rank == 0:
        try:
            if overwrite:
                clear_output(output)
            state = _prepare(output, run)
            verdict = ("complete", "") if state is None else ("merged", "") if state["done"] == n else ("encode", "")
            for stale in (output / PARTS).glob("*"):  # parts of a run with another number of processes
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
                _write_per_image(output, _final_names(output))
        distributed.barrier()
        return output

    # 2. Every rank encodes its block of the listing into its part folder (resumable on its own).
    device = _device_of(cfg)
    if kind == "encode":
        start, stop = distributed.contiguous_shard(n)
        log.info("Encoding %d images of %s with %s in %d processes (this one: images %d to %d on %s) into %s",
                 n, run["input"], ckpt.name, world, start + 1, stop, device, output)
        if stop > start:
            part = output / PARTS / f"{rank:05d}-of-{world:05d}"
            listing = listing_fingerprint(paths[start:stop], names[start:stop])
            part_run = {**run, "listing": listing, "images": stop - start}
            part_state = _prepare(part, part_run)
            if part_state is not None and part_state["done"] < stop - start:
                _encode_missing(part, part_state, ckpt, paths[start:stop], names[start:stop], arch.img_size,
                                batch_size, cfg, device, progress and rank == 0)
        distributed.fail_point()
        distributed.barrier()
        if rank == 0:
            state = _join_parts(output, run, world)

    # 3. Rank 0 writes the final files exactly as one process would (and removes the parts).
    if rank == 0:
        _finalize(output, state, names, per_image, extra={
            "preset": arch.preset, "img_size": arch.img_size, "batch_size": batch_size, "device": str(device),
            "mixed_precision": cfg.device.MIXED_PRECISION, "processes": world,
        })
    distributed.barrier()
    return output


def _join_parts(output: Path, run: dict[str, Any], world: int) -> dict[str, Any]:
    """Copy the rows of every rank's part into the output's partial files; return the state of the whole run.

    The output's state says "nothing done" while the rows are copied, so a kill here leaves a
    run that joins the (complete) parts again.
    """
    n, d = run["images"], run["embedding_dim"]
    state = {"version": STATE_VERSION, **run, "done": 0, "failures": [], "elapsed_seconds": 0.0}
    write_json(output / STATE, state)
    for name, dtype, width in ((PARTIAL, np.float32, d), (SIZES_PARTIAL, np.int32, 2)):
        np.lib.format.open_memmap(output / name, mode="w+", dtype=dtype, shape=(n, width))
    failures, seconds = [], 0.0
    for r in range(world):
        start, stop = distributed.contiguous_shard(n, r, world)
        if stop == start:
            continue
        part = output / PARTS / f"{r:05d}-of-{world:05d}"
        part_state = _read_json(part / STATE)
        if part_state is None or part_state.get("done") != stop - start:
            raise FeXTError(f"The part of rank {r} in {part} is incomplete; run the same command again to finish it")
        for name, row_bytes in ((PARTIAL, d * 4), (SIZES_PARTIAL, 8)):
            _copy_block(part / name, output / name, start, row_bytes)
        failures += [{**f, "position": f["position"] + start} for f in part_state["failures"]]
        seconds = max(seconds, part_state["elapsed_seconds"])  # the ranks ran side by side
    state.update(done=n, failures=failures, elapsed_seconds=seconds)
    write_json(output / STATE, state)
    return state


def _copy_block(src: Path, dst: Path, first_row: int, row_bytes: int) -> None:
    """Copy every row of the ``.npy`` file ``src`` into ``dst`` from row ``first_row`` on, and sync ``dst``."""
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        fin.seek(_npy_offset(src))
        fout.seek(_npy_offset(dst) + first_row * row_bytes)
        while block := fin.read(COPY_BYTES):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("Ignoring unreadable %s", path)
        return None


def _check_same_run(output: Path, recorded: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse to mix the results of another checkpoint or of a different set of images."""
    theirs, ours = recorded.get("checkpoint") or {}, run["checkpoint"]
    if theirs.get("hash") != ours["hash"]:
        origin = (
            f"an earlier version of checkpoint {ours['name']} (its weights changed since)"
            if (theirs.get("name"), theirs.get("path")) == (ours["name"], ours["path"])
            else f"checkpoint {theirs.get('name', '?')} ({theirs.get('path', '?')}), not of {ours['name']}"
        )
        raise FeXTError(
            f"{output} holds embeddings of {origin}; results of different checkpoints are never mixed. "
            "Pass --overwrite to replace them, or --output to write to another folder."
        )
    if recorded.get("listing") != run["listing"]:
        raise FeXTError(
            f"The images in {run['input']} changed since {output} was written "
            f"({recorded.get('images', '?')} files then, {run['images']} now, or files modified). "
            "Pass --overwrite to encode them all again, or --output to write to another folder."
        )


def _prepare(output: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """The state to continue from (a fresh one when nothing is there); None when already complete."""
    metadata = _read_json(output / METADATA)
    if metadata is not None:
        _check_same_run(output, metadata, run)
        for leftover in (STATE, PARTIAL, SIZES_PARTIAL):
            (output / leftover).unlink(missing_ok=True)
        return None
    state = _read_json(output / STATE)
    if state is not None and state.get("version") == STATE_VERSION:
        _check_same_run(output, state, run)
        if _partial_usable(output, state):
            return state
        log.warning("The unfinished encoding in %s lost its partial files; starting again", output)
    elif (output / EMBEDDINGS).exists() or (output / PARTIAL).exists():
        raise FeXTError(
            f"{output} already holds embeddings whose origin is unknown (no {METADATA}). "
            "Pass --overwrite to replace them, or --output to write to another folder."
        )
    output.mkdir(parents=True, exist_ok=True)
    state = {"version": STATE_VERSION, **run, "done": 0, "failures": [], "elapsed_seconds": 0.0}
    for name, dtype, width in ((PARTIAL, np.float32, run["embedding_dim"]), (SIZES_PARTIAL, np.int32, 2)):
        (output / name).unlink(missing_ok=True)
        # A pre-sized .npy (header + N rows); on most file systems the rows take no disk until written.
        np.lib.format.open_memmap(output / name, mode="w+", dtype=dtype, shape=(run["images"], width))
    write_json(output / STATE, state)
    return state


def _partial_usable(output: Path, state: dict[str, Any]) -> bool:
    """The partial files match the state, or (interrupted while finishing) the rows already moved into place."""
    n, d = state["images"], state["embedding_dim"]
    shapes = {name: _npy_shape(output / name) for name in (PARTIAL, SIZES_PARTIAL, EMBEDDINGS)}
    if shapes[SIZES_PARTIAL] != (n, 2):
        return False
    if shapes[PARTIAL] == (n, d):
        return True
    return state["done"] == n and shapes[EMBEDDINGS] == (n - len(state["failures"]), d)


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError):
        return None


def _npy_offset(path: Path) -> int:
    """Byte offset of the first row of an ``.npy`` file."""
    return int(np.load(path, mmap_mode="r", allow_pickle=False).offset)


def _encode_missing(
    output: Path, state: dict[str, Any], ckpt: Path, paths: list[Path], names: list[str], img_size: int,
    batch_size: int, cfg: Config, device: torch.device, progress: bool,
) -> None:
    """Encode images ``state["done"]:`` into the partial files, recording progress as it goes."""
    from fext.data import decode_batches

    debug_sleep = float(os.environ.get(DEBUG_SLEEP_ENV) or 0)
    flush_seconds = 0.0 if debug_sleep else FLUSH_SECONDS
    model, pad_to = load_model(ckpt, device, _compile_backend(cfg)), _pad_to(cfg, batch_size)
    start = state["done"]
    # An interruption between recording a batch's failures and its progress must not list them twice.
    state["failures"] = [f for f in state["failures"] if f["position"] < start]
    started, last_flush, elapsed_before = time.perf_counter(), time.perf_counter(), state["elapsed_seconds"]
    row_bytes = state["embedding_dim"] * 4
    with open(output / PARTIAL, "r+b") as vec_file, open(output / SIZES_PARTIAL, "r+b") as size_file:
        vec_offset, size_offset = _npy_offset(output / PARTIAL), _npy_offset(output / SIZES_PARTIAL)

        def flush() -> None:
            for f in (vec_file, size_file):
                f.flush()
                os.fsync(f.fileno())
            state["elapsed_seconds"] = round(elapsed_before + time.perf_counter() - started, 3)
            write_json(output / STATE, state)

        try:
            workers = _workers(cfg, len(paths) - start, batch_size)
            batches = decode_batches(paths[start:], img_size, batch_size, workers, log_failures=False)
            for batch in _batches(batches, progress, len(paths), initial=start):
                positions = start + np.asarray(batch.positions, dtype=np.int64)
                failed = [(start + p, reason) for p, reason in _failures(batch)]
                if len(positions):
                    vectors = embed(model, batch.images, device, cfg.device.MIXED_PRECISION, pad_to)
                    sizes = np.asarray(batch.sizes, dtype=np.int32).reshape(-1, 2)
                    _write_rows(vec_file, vec_offset, row_bytes, positions, vectors)
                    _write_rows(size_file, size_offset, 8, positions, sizes)
                for position, reason in failed:
                    log.warning("Skipped %s: %s", names[position], reason)
                state["failures"] += [{"position": p, "path": names[p], "reason": reason} for p, reason in failed]
                state["done"] = max([state["done"], *(p + 1 for p, _ in failed), *(positions + 1).tolist()])
                if debug_sleep:
                    time.sleep(debug_sleep)
                if time.perf_counter() - last_flush >= flush_seconds:
                    flush()
                    last_flush = time.perf_counter()
            flush()
        except BaseException as e:  # Ctrl-C or an error: keep what is done for the next run
            flush()
            if isinstance(e, KeyboardInterrupt):
                log.warning("Interrupted after %d of %d images; run the same command again to encode the rest",
                            state["done"], len(paths))
            else:
                log.warning("Stopped after %d of %d images; they are kept, and a later run goes on from there",
                            state["done"], len(paths))
            raise
    if state["done"] < len(paths):
        raise FeXTError(f"Decoding stopped after {state['done']} of {len(paths)} images; run the same command again to resume")


def _write_rows(f: Any, offset: int, row_bytes: int, positions: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows[i]`` at row ``positions[i]`` of an open ``.npy`` file, one write per contiguous run."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for run_positions, run_rows in zip(np.split(positions, breaks), np.split(rows, breaks)):
        f.seek(offset + int(run_positions[0]) * row_bytes)
        f.write(np.ascontiguousarray(run_rows).tobytes())


def _finalize(output: Path, state: dict[str, Any], names: list[str], per_image: bool, extra: dict[str, Any]) -> None:
    """Write the final files from the partial ones (each atomically, metadata.json last), then tidy up."""
    n, d = state["images"], state["embedding_dim"]
    failures = sorted(state["failures"], key=lambda f: f["position"])
    failed = np.zeros(n, dtype=bool)
    failed[[f["position"] for f in failures]] = True
    kept = np.flatnonzero(~failed)

    with atomic_open(output / FAILED, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([fail["path"], fail["reason"]] for fail in failures)
    if not len(kept):
        raise FeXTError(f"None of the {n} files in {state['input']} could be read; see {output / FAILED}")

    sizes = np.load(output / SIZES_PARTIAL, allow_pickle=False)[kept]  # (N_ok, 2): 8 bytes per image
    with atomic_open(output / INDEX, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "width", "height"])
        writer.writerows([row, names[p], int(w), int(h)] for row, (p, (w, h)) in enumerate(zip(kept, sizes)))

    partial = output / PARTIAL
    if partial.exists():
        if len(kept) == n:
            os.replace(partial, output / EMBEDDINGS)  # already synced, complete and in order: no copy needed
        else:
            with atomic_path(output / EMBEDDINGS) as tmp:
                _copy_rows(partial, tmp, kept, d)
    if per_image:
        _write_per_image(output, [names[p] for p in kept])

    seconds = state["elapsed_seconds"]
    write_json(output / METADATA, {
        "checkpoint": state["checkpoint"],
        **extra,
        "embedding_dim": d,
        "images": int(len(kept)),
        "failed": len(failures),
        "files": n,
        "input": state["input"],
        "listing": state["listing"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "elapsed_seconds": seconds,
        "images_per_second": round(len(kept) / seconds, 2) if seconds > 0 else None,
        "fext_version": _version(),
    })
    for leftover in (STATE, PARTIAL, SIZES_PARTIAL):
        (output / leftover).unlink(missing_ok=True)
    shutil.rmtree(output / PARTS, ignore_errors=True)
    log.info(
        "Wrote %d vectors of %d floats to %s in %.1f s (%s images/s)%s", len(kept), d, output / EMBEDDINGS, seconds,
        f"{len(kept) / seconds:.1f}" if seconds > 0 else "-",
        f"; {len(failures)} file(s) could not be read, listed in {FAILED}" if failures else "",
    )


def _copy_rows(src: Path, dst: Path, rows: np.ndarray, d: int) -> None:
    """Write ``src[rows]`` (float32 (N, d) .npy) as a new .npy at ``dst``, a block at a time."""
    np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=(len(rows), d))
    block = max(1, COPY_BYTES // (d * 4))
    src_offset, dst_offset = _npy_offset(src), _npy_offset(dst)
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        fout.seek(dst_offset)
        for lo in range(0, len(rows), block):
            wanted = rows[lo:lo + block]
            first, last = int(wanted[0]), int(wanted[-1])
            fin.seek(src_offset + first * d * 4)
            chunk = np.frombuffer(fin.read((last - first + 1) * d * 4), dtype=np.float32).reshape(-1, d)
            fout.write(chunk[wanted - first].tobytes())


def _write_per_image(output: Path, names: list[str]) -> None:
    """Write ``per_image/<relative path>.npy`` (one (D,) float32 vector per image) from embeddings.npy."""
    from tqdm import tqdm

    matrix = np.load(output / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    for row, name in enumerate(tqdm(names, unit="file", desc="Per-image files", disable=len(names) < 1000)):
        with atomic_path(output / PER_IMAGE / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(matrix[row]), allow_pickle=False)


def _final_names(output: Path) -> list[str]:
    with open(output / INDEX, newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f)]


def _version() -> str:
    from fext import __version__

    return __version__


def read_index(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``embeddings_index.csv`` as ``{"row", "path", "width", "height"}`` dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"row": int(r["row"]), "path": r["path"], "width": int(r["width"]), "height": int(r["height"])}
            for r in csv.DictReader(f)
        ]


def load_embeddings(folder: str | os.PathLike) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The vectors (a read-only memory map, (N, D) float32) and index rows of a `fext encode` folder."""
    folder = Path(folder)
    if not (folder / METADATA).is_file():
        if (folder / STATE).is_file():
            raise FeXTError(f"The encoding into {folder} did not finish; run the same `fext encode` command again to complete it")
        raise FeXTError(f"{folder} holds no embeddings ({METADATA} missing); write them with `fext encode`")
    try:
        matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
        index = read_index(folder / INDEX)
    except (OSError, ValueError, KeyError) as e:
        raise FeXTError(f"{folder}: unreadable embeddings ({e}); encode the images again with `fext encode --overwrite`") from e
    if matrix.ndim != 2 or matrix.shape[0] != len(index):
        raise FeXTError(
            f"{folder}: {EMBEDDINGS} has shape {matrix.shape} but {INDEX} has {len(index)} rows; "
            "encode the images again with `fext encode --overwrite`"
        )
    return matrix, index
