"""Shared fixtures and helpers: one image generator, a tiny configuration, checkpoints, the real CLI.

- :func:`make_images` writes generated PNGs (every Pillow mode on request); ``image_folder`` is 12 of them.
- :func:`blob_image` is a smooth scene; :func:`make_image_tree` writes a nested PNG/JPEG tree of them (encoding, search);
  ``encoded_scenes`` is an encoded folder of them with planted near-duplicates (explore).
- :func:`tiny_config` is the small preset at 64 px on the CPU; ``tiny_cfg`` is it as a fixture.
- :func:`make_checkpoint` writes an untrained, seeded checkpoint with :func:`fext.checkpoints.save_checkpoint`
  (no training: fast); ``trained_checkpoint`` is one real training run, made once per session.
- ``ws`` is an initialised empty workspace; :func:`run_fext` runs ``python -m fext`` in a subprocess.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fext.checkpoints import CheckpointDescription, DatasetRecord, save_checkpoint
from fext.config import Config, with_overrides
from fext.data import select_images
from fext.model import FeXTAutoEncoder
from fext.workspace import Workspace

# A runner that starts the suite as a background job may leave SIGINT ignored, and an ignored signal
# is inherited by every subprocess (Python then installs no KeyboardInterrupt handler). The Ctrl-C
# tests need the usual disposition here and in the processes they start.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolate_logging():
    """Undo what a test's in-process `fext` run did to logging (handlers on captured streams, levels)."""
    root, fext = logging.getLogger(), logging.getLogger("fext")
    handlers, levels = list(root.handlers), (root.level, fext.level)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(levels[0])
    fext.setLevel(levels[1])


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An initialised, empty workspace."""
    from fext.workspace import init_workspace

    workspace = Workspace(tmp_path / "ws")
    init_workspace(workspace)
    return workspace


def run_fext(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fext ARGS` in a real subprocess; return the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "fext", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


TINY = {
    "model.PRESET": "small", "model.IMG_SIZE": 64, "device.DEVICE": "CPU", "device.NUM_PROCESSORS": 0,
    "training.EPOCHS": 2, "training.BATCH_SIZE": 4, "training.USE_TENSORBOARD": False,
    "dataset.VALIDATION_SIZE": 0.25,
}
"""On the 12 images of :func:`make_images`: 7 train, 5 validation (the split hashes the names), 2 batches per epoch."""

PIL_MODES = ("RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "1")
"""Modes :func:`make_images` can write; CMYK goes to JPEG (PNG cannot hold it), the others to PNG."""


def tiny_config(**overrides: object) -> Config:
    """The small preset at 64 px on the CPU, 2 epochs of batches of 4, no TensorBoard; ``overrides`` by key path."""
    return with_overrides(Config(), {**TINY, **overrides})


@pytest.fixture
def tiny_cfg() -> Config:
    return tiny_config()


def make_images(folder: Path, n: int = 12, seed: int = 0, modes: tuple[str, ...] = ("RGB",)) -> list[Path]:
    """``n`` images of smooth colour gradients plus noise, of varied sizes (48-64 x 64-88), named img_NN.

    Image ``i`` is stored in ``modes[i % len(modes)]``; the pixels drawn do not depend on the modes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = 48 + 8 * (i % 3), 64 + 8 * (i % 4)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([xx, yy, (xx + yy) / 2], -1) * rng.uniform(0.3, 1.0, 3) * 255
        pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        image, mode = Image.fromarray(pixels), modes[i % len(modes)]
        if mode == "I;16":
            image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
        elif mode != "RGB":
            image = image.convert(mode)
        paths.append(folder / f"img_{i:02d}.{'jpg' if mode == 'CMYK' else 'png'}")
        image.save(paths[-1])
    return paths


def photos(n: int = 12, size: int = 48, seed: int = 0) -> np.ndarray:
    """``n`` distinct uint8 (size, size, 3) images: smooth gradients of random colours plus texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = np.stack([xx, yy, xx * yy], -1) * rng.uniform(0.2, 1.0, 3) + rng.uniform(0, 0.3, 3)
        blobs = np.sin(xx * rng.uniform(3, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(3, 12))
        out.append(np.clip((base + 0.3 * blobs[..., None]) * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def blob_image(rng: np.random.Generator, height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth uint8 (H, W, 3) picture: a flat colour with three soft coloured blobs.

    For tests that need a scene a model sees as one (a shifted or cropped copy stays its nearest
    neighbour), which the noisy gradients of :func:`make_images` are not.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32) + rng.uniform(0, 1, 3)
    for _ in range(3):
        cy, cx, r = rng.uniform(8, height - 8), rng.uniform(8, width - 8), rng.uniform(6, 16)
        mask = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - mask) + rng.uniform(0, 1, 3) * mask
    return (img * 255).round().astype(np.uint8)


def make_image_tree(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` :func:`blob_image` pictures of various sizes, as a nested tree; return their sorted relative paths.

    Image ``i`` is ``sub/imgNNN.png`` when ``i % 3 == 0``, ``imgNNN.jpg`` when 1, ``imgNNN.png`` when 2,
    of 40 + i by 70 - i pixels: the folders, formats and sizes that encoding must keep apart.
    """
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = f"sub/img{i:03d}.png" if i % 3 == 0 else f"img{i:03d}.jpg" if i % 3 == 1 else f"img{i:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob_image(rng, 40 + i, 70 - i)).save(folder / name)
        names.append(name)
    return sorted(names)


@pytest.fixture(scope="module")
def encoded_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 distinct :func:`blob_image` scenes plus an exact copy of d00.png and a half-size copy of d01.png, encoded.

    With an untrained, seeded checkpoint, for the explore tests (near-duplicates to find, a browser page).
    Module-scoped: a test may write beside the encoded files (``explore/``), not into them.
    """
    import shutil

    from fext.encoding import encode_folder

    root = tmp_path_factory.mktemp("explore")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(blob_image(rng, 96, 128)).save(images / ("sub" if i % 4 == 0 else "") / f"d{i:02d}.png")
    shutil.copy(images / "sub" / "d00.png", images / "d00_copy.png")
    with Image.open(images / "d01.png") as im:
        im.resize((64, 48), Image.Resampling.BILINEAR).save(images / "d01_half.jpg", quality=90)
    ckpt = make_checkpoint(root / "FeXT_20240101T000000")
    return encode_folder(ckpt, images, root / "out", config=tiny_config(), batch_size=16, progress=False)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of the 12 RGB images of :func:`make_images`."""
    make_images(tmp_path / "images")
    return tmp_path / "images"


def fake_history(epochs: int = 2, val_loss: float | None = 0.25) -> list[dict]:
    """history.json entries with plausible metrics (loss falling as 0.5 / epoch)."""
    return [{"epoch": e, "train": {"loss": 0.5 / e, "cosine": 0.9, "psnr": 10.0 + e},
             "validation": None if val_loss is None else {"loss": val_loss, "cosine": 0.9, "psnr": 9.5 + e},
             "lr": 1e-4, "seconds": 1.0, "images_per_second": 9.0} for e in range(1, epochs + 1)]


def make_checkpoint(
    folder: Path, cfg: Config | None = None, root: Path | None = None, *, seed: int = 0, epochs: int = 0,
    created: str = "2024-01-01T00:00:00",
) -> Path:
    """An untrained checkpoint of ``cfg``'s preset (default :func:`tiny_config`), written by save_checkpoint.

    ``root``: the image folder recorded as its dataset (split as training would); ``epochs`` > 0 adds a
    :func:`fake_history`. Without ``cfg`` and ``root`` it is a bare model (architecture only).
    """
    torch.manual_seed(seed)
    config = cfg or tiny_config()
    model = FeXTAutoEncoder.from_preset(config.model.PRESET, config.model.IMG_SIZE)
    dataset = None
    if root is not None:
        train, validation = select_images(config, root) if Path(root).is_dir() else ([], [])
        dataset = DatasetRecord(str(root), len(train), len(validation), 0)
    description = CheckpointDescription(model.arch, cfg, dataset, created, "0.1.0") if cfg or root else None
    save_checkpoint(folder, model, description, history=fake_history(epochs) if epochs else None)
    return folder


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: :func:`tiny_config` trained 1 epoch on :func:`make_images` (made once per session).

    Shared: tests must not write into it (copy it first).
    """
    from fext.training import train

    ws = Workspace(tmp_path_factory.mktemp("trained")).ensure()
    make_images(ws.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(tiny_config(**{"training.EPOCHS": 1}), ws, progress=False)
    finally:
        torch.set_num_threads(threads)
