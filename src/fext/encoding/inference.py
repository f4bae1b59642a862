"""The model at inference: loading a checkpoint for encoding, compiling it, and images -> vectors.

:func:`encode_images` is the in-memory Python API; :func:`embed` is the one step every route
(folders, shards, search queries) runs per batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fext import distributed
from fext.config import Config
from fext.errors import FeXTError
from fext.machine import data_workers

log = logging.getLogger("fext.encoding")


def load_model(ckpt: str | os.PathLike, device: torch.device, compile_backend: str | None = None) -> torch.nn.Module:
    """The checkpoint's FeXTAutoEncoder in eval mode (dropout off), fast inference on, on ``device``; see :func:`compile_encoder`."""
    from fext.model import FeXTAutoEncoder

    model = FeXTAutoEncoder.from_pretrained(ckpt).eval().to(device).enable_fast_inference()
    if compile_backend:
        compile_encoder(model, compile_backend)
    return model


def compile_encoder(model: torch.nn.Module, backend: str = "inductor") -> None:
    """Compile ``model``'s encoder for inference, in place, with ``torch.compile`` (``model.JIT_COMPILE``).

    Each encoder stage and the compression stack is compiled on its own, so the chunked
    high-resolution stages of CPU inference (``fext.model.INFERENCE_CHUNK_BYTES``) stay a Python
    loop over compiled code. With inductor the weights are frozen into the compiled code, which
    then fuses the layer norm, ReLU, addition and padding passes around each convolution (faster
    encoding after a compilation of tens of seconds on the first batch; figures in the README).
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
        z = model.features(to_float(x))[:count]  # (B, D)
    return z.float().cpu().numpy()


def device_of(cfg: Config) -> torch.device:
    """The configured device (under torchrun, ``cuda:LOCAL_RANK`` on GPUs)."""
    return distributed.device_for(cfg.device.DEVICE, cfg.device.DEVICE_ID)


def compile_backend(cfg: Config) -> str | None:
    """The torch.compile backend to encode with (``model.JIT_COMPILE``), or None."""
    return cfg.model.JIT_BACKEND if cfg.model.JIT_COMPILE else None


def pad_to(cfg: Config, batch_size: int) -> int:
    """Pad short batches to ``batch_size`` for a compiled model (one shape, one compilation)."""
    return batch_size if cfg.model.JIT_COMPILE else 0


def workers(cfg: Config, images: int, batch_size: int) -> int:
    """NUM_PROCESSORS decoding workers (see :func:`fext.machine.data_workers`), but none to start for a single batch."""
    return max(0, min(data_workers(cfg.device.NUM_PROCESSORS), -(-images // batch_size) - 1))


def with_progress(batches: Iterator[Any], progress: bool, total: int, initial: int = 0, desc: str = "Encoding") -> Iterator[Any]:
    """Pass the decoded batches through, advancing a progress bar in images (read or failed) per second."""
    from tqdm import tqdm

    with tqdm(total=total, initial=initial, unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch.positions) + len(batch.failures))


def failures(batch: Any) -> list[tuple[int, str]]:
    """``(position, reason)`` of every file of ``batch`` that could not be decoded."""
    return [(int(position), str(reason)) for position, reason in batch.failures]


def encode_images(
    ckpt: str | os.PathLike | torch.nn.Module,
    paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike],
    batch_size: int = 64,
    *,
    config: Config,
    progress: bool = False,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Encode images in memory; return ``(vectors (N, D) float32, rows)``.

    ``config`` is the resolved configuration (``load_config(...)``, or ``Config()`` for the
    documented defaults): its device, precision, workers and compile settings are used. ``ckpt``
    is a checkpoint folder (run on ``config``'s device) or an already loaded FeXTAutoEncoder
    (run where it is, in eval mode). ``paths_or_folder`` is a folder (every image under it, paths
    relative to it; files that are not images are counted in one log line) or a list of image
    files (paths as given). Rows are ``{"row", "path", "width", "height"}``, as in embeddings_index.csv. Files that cannot be read are left out with a warning. Meant for sets that fit
    in memory; use :func:`~fext.encoding.encode_folder` for
    large folders.
    """
    from fext.data import decode_batches, list_folder

    if batch_size < 1:
        raise FeXTError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(paths_or_folder, (str, os.PathLike)) and Path(paths_or_folder).is_dir():
        root = Path(paths_or_folder).expanduser().absolute()
        listing = list_folder(root)
        for note in listing.notes(where=None):
            log.info("%s: %s", root, note)
        paths = listing.images
        names = [p.relative_to(root).as_posix() for p in paths]
    elif isinstance(paths_or_folder, (str, os.PathLike)):
        raise FeXTError(f"{paths_or_folder} is not a folder; pass a folder, or a list of image files such as [path]")
    else:
        paths = [Path(p) for p in paths_or_folder]
        names = [str(p) for p in paths_or_folder]
    if isinstance(ckpt, torch.nn.Module):
        model, was_training, was_fast = ckpt, ckpt.training, ckpt.fast_inference
        device = next(model.parameters()).device
        model.eval().enable_fast_inference()
    else:
        device, was_training, was_fast = device_of(config), False, True
        model = load_model(ckpt, device, compile_backend(config))
    padding = 0 if isinstance(ckpt, torch.nn.Module) else pad_to(config, batch_size)
    vectors, rows = [], []
    try:
        batches = decode_batches(paths, model.arch.img_size, batch_size, workers(config, len(paths), batch_size),
                                 log_failures=False)
        for batch in with_progress(batches, progress, len(paths)):
            for position, reason in failures(batch):
                log.warning("Skipped %s: %s", names[position], reason)
            if len(batch.positions):
                vectors.append(embed(model, batch.images, device, config.device.MIXED_PRECISION, padding))
            for position, (width, height) in zip(batch.positions, batch.sizes):
                rows.append({"row": len(rows), "path": names[position], "width": int(width), "height": int(height)})
    finally:
        model.train(was_training).enable_fast_inference(was_fast)
    matrix = np.concatenate(vectors) if vectors else np.empty((0, model.arch.feature_dim), np.float32)
    return matrix, rows
