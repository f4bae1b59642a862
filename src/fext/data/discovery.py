"""Finding the images of a folder, drawing a sample and splitting it into train and validation.

Everything here is deterministic: the same folder and seeds give the same lists on every
machine. The split is *stable*: an image's side depends only on its relative path and the
split seed, so adding or removing other images never moves it.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fext.config import Config
from fext.errors import FeXTError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File suffixes taken as images, compared in lower case (``.JPG`` and ``.Jpeg`` count)."""


@dataclass(frozen=True)
class Split:
    """The images of one run: ``root`` and the sampled ``train`` / ``validation`` lists."""

    root: Path
    train: list[Path]
    validation: list[Path]

    def __len__(self) -> int:
        return len(self.train) + len(self.validation)


def is_image_file(path: Path) -> bool:
    """True when ``path``'s suffix is one of :data:`IMAGE_EXTENSIONS` (any letter case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: Path) -> list[Path]:
    """Return every image file under ``root``, recursively, as absolute paths.

    The list is sorted by the path relative to ``root`` in posix form, so it is the same on
    every file system. Hidden files and folders (name starting with ``.``) are skipped, and so
    are symbolic links to folders (they could form cycles). An existing folder with no image
    gives an empty list; a missing folder (or a file) raises :class:`~fext.errors.FeXTError`.
    """
    root = Path(root).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise FeXTError(f"{root} is a file, not a folder: point to the folder that holds the images.")
    if not root.is_dir():
        raise FeXTError(
            f"Image folder not found: {root}. Create it and put images in it, or point to another folder."
        )
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folder_path = Path(folder)
        for name in filenames:
            if name.startswith(".") or not is_image_file(Path(name)):
                continue
            path = folder_path / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def draw_sample(paths: Sequence[Path], fraction: float, seed: int) -> list[Path]:
    """Draw ``round(fraction * len(paths))`` images (at least one) with ``seed``.

    The sample keeps the order of ``paths``. ``fraction`` 1.0 returns every path.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    paths = list(paths)
    if fraction >= 1.0 or not paths:
        return paths
    count = max(1, round(fraction * len(paths)))
    chosen = sorted(random.Random(seed).sample(range(len(paths)), count))
    return [paths[i] for i in chosen]


def split_score(relative_path: str, split_seed: int) -> float:
    """A uniform number in [0, 1) fixed by the image's relative posix path and the seed."""
    digest = hashlib.blake2b(f"{split_seed}:{relative_path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_images(
    paths: Sequence[Path], root: Path, validation_size: float, split_seed: int
) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into ``(train, validation)``, both in the order of ``paths``.

    An image goes to validation when :func:`split_score` of its path relative to ``root`` is
    below ``validation_size``, so it keeps its side when other images are added or removed.
    When ``validation_size`` > 0 and there are at least two images, each side gets at least
    one image: on a tiny folder the image with the lowest score (or highest, for train) is
    moved over, which is the only case where the split depends on the other images.
    """
    if not 0.0 <= validation_size < 1.0:
        raise ValueError(f"validation_size must be in [0, 1), got {validation_size}")
    root = Path(root).expanduser().absolute()
    paths = list(paths)
    scores = [split_score(_relative_posix(p, root), split_seed) for p in paths]
    in_validation = [s < validation_size for s in scores]
    if validation_size > 0 and len(paths) >= 2:
        if not any(in_validation):
            in_validation[min(range(len(paths)), key=scores.__getitem__)] = True
        if all(in_validation):
            in_validation[max(range(len(paths)), key=scores.__getitem__)] = False
    train = [p for p, v in zip(paths, in_validation) if not v]
    validation = [p for p, v in zip(paths, in_validation) if v]
    return train, validation


def discover_split(
    root: Path, sample_size: float, seed: int, validation_size: float, split_seed: int
) -> Split:
    """Find, sample and split the images of ``root`` in one call (the training data of a run).

    Raises :class:`~fext.errors.FeXTError` when the folder holds no image.
    """
    root = Path(root).expanduser().absolute()
    paths = find_images(root)
    if not paths:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise FeXTError(
            f"No image found in {root} (looked for {extensions} in any letter case, "
            "hidden files skipped). Put images there or point to another folder."
        )
    sampled = draw_sample(paths, sample_size, seed)
    train, validation = split_images(sampled, root, validation_size, split_seed)
    return Split(root=root, train=train, validation=validation)


def select_images(cfg: Config, root: Path) -> tuple[list[Path], list[Path]]:
    """The (train, validation) images of a run on ``root``: found, sampled with SEED, split with SPLIT_SEED.

    Training, evaluation and analysis all call this, so they agree on a checkpoint's split. A split
    too small to hold both sides (one image) puts everything in train. Raises :class:`FeXTError`
    for a missing or empty folder.
    """
    d = cfg.dataset
    split = discover_split(Path(root), d.SAMPLE_SIZE, cfg.SEED, d.VALIDATION_SIZE, d.SPLIT_SEED)
    if not split.train:
        return split.validation, []
    return split.train, split.validation


def _relative_posix(path: Path, root: Path) -> str:
    path = Path(path)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        # Outside ``root``: the absolute path still gives a fixed, per-image score.
        return path.as_posix()
