"""Finding the images of a folder, drawing a sample and splitting it into train and validation.

:func:`list_folder` is the one place that decides what under a folder is an image, for every
command: a file is an image when Pillow can open it, whatever its name. The suffix is only a
fast path (a file named like an image is taken without being opened, and decoding still
decides: if it is not readable it is listed as failed), every other file has its header sniffed.
What is not an image is counted and listed (``skipped.csv``), never dropped without a word.

Everything here is deterministic: the same folder and seeds give the same lists on every
machine. The split is *stable*: an image's side depends only on its relative path and the
split seed, so adding or removing other images never moves it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

from fext._io import atomic_open
from fext.config import Config
from fext.errors import FeXTError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".mpo",
    ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".jp2", ".j2k", ".jpx",
})
"""Suffixes (any letter case) taken as images without opening the file: the fast path only.

Files with any other suffix, or none, are sniffed with Pillow; a file named like an image that
Pillow cannot decode is listed as failed by the command that decodes it."""

MULTI_FRAME_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".mpo"})
"""Fast-path suffixes of formats that can hold several frames: their header is read when the frames are counted."""

SKIPPED = "skipped.csv"
"""The file, beside a command's ``failed.csv``, that lists the files that are not images."""

NOT_AN_IMAGE = "not an image"


@dataclass(frozen=True)
class Listing:
    """Every file under ``root``, accounted for: each is in ``images`` or ``not_images``, or is hidden.

    ``images`` and ``not_images`` are sorted by relative posix path; ``hidden`` counts the hidden
    files and folders skipped (a folder counts once); ``frame_candidates``: the images that may
    hold several frames (a .gif, .tif, .tiff or .mpo suffix, or a sniffed header that showed
    several frames), from which :attr:`multi_frame` is counted.
    """

    root: Path
    images: list[Path]
    not_images: list[tuple[Path, str]] = field(default_factory=list)
    frame_candidates: frozenset[Path] = frozenset()
    hidden: int = 0

    @functools.cached_property
    def multi_frame(self) -> list[Path]:
        """The images that hold several frames (animation, pages, stereo pair), of which the first is used.

        Counted on first use, not while listing: it reads the header of every .gif, .tif, .tiff and
        .mpo file (about 0.1 ms for a GIF, 0.5 ms for a TIFF), a cost listing alone must not pay.
        """
        if not self.frame_candidates:
            return []
        return [p for p in self.images if p in self.frame_candidates and _sniff(p)[1]]

    def notes(self, where: str | None = SKIPPED) -> list[str]:
        """What a command says about the files it does not use whole (:func:`count_notes`).

        ``where``: the file in which the command listed the non-images, or None to name an example.
        """
        example = f"e.g. {self.relative(self.not_images[0][0])}" if self.not_images else ""
        return count_notes(len(self.not_images), len(self.multi_frame), where or example)

    def relative(self, path: Path) -> str:
        """``path`` relative to ``root``, in posix form (the form every output file uses)."""
        return _relative_posix(path, self.root)

    def require_images(self, hint: str = "Put images there or point to another folder.") -> None:
        """Raise the one clear :class:`FeXTError` of a folder without any image; ``hint`` says what to do."""
        if self.images:
            return
        if self.not_images:
            examples = ", ".join(self.relative(p) for p, _ in self.not_images[:3])
            more = f" and {len(self.not_images) - 3} more" if len(self.not_images) > 3 else ""
            raise FeXTError(
                f"No image found in {self.root}: none of its {len(self.not_images)} files is an image Pillow "
                f"can open ({examples}{more}). {hint}"
            )
        hidden = f" but {self.hidden} hidden file(s) or folder(s), which are skipped" if self.hidden else ""
        raise FeXTError(f"No image found in {self.root}: it holds no file{hidden}. {hint}")

    def write_skipped(self, folder: Path) -> Path:
        """Write ``skipped.csv`` (``path, reason``, paths relative to ``root``) into ``folder``; return it."""
        path = Path(folder) / SKIPPED
        with atomic_open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows([self.relative(p), reason] for p, reason in self.not_images)
        return path


@dataclass(frozen=True)
class Split:
    """The images of one run: ``root`` and the sampled ``train`` / ``validation`` lists."""

    root: Path
    train: list[Path]
    validation: list[Path]

    def __len__(self) -> int:
        return len(self.train) + len(self.validation)


def count_notes(not_images: int, multi_frame: int, where: str = SKIPPED) -> list[str]:
    """The sentences every command uses for files it does not use whole; none when there are none.

    ``"3 files are not images (skipped.csv)"``, ``"2 images have several frames: the first frame
    is used"``. ``where`` goes in the brackets: the file that lists the non-images.
    """
    notes = []
    if not_images:
        plural = not_images != 1
        notes.append(f"{not_images} file{'s are' if plural else ' is'} not {'images' if plural else 'an image'} ({where})")
    if multi_frame:
        plural = multi_frame != 1
        notes.append(f"{multi_frame} image{'s have' if plural else ' has'} several frames: the first frame is used")
    return notes


def list_folder(root: Path) -> Listing:
    """Every file under ``root``, recursively, sorted into images and not images (see :class:`Listing`).

    Paths are absolute, sorted by the path relative to ``root`` in posix form, so the lists are
    the same on every file system. Hidden files and folders (name starting with ``.``) are
    skipped, and so are symbolic links to folders (they could form cycles). A missing folder
    (or a file) raises :class:`~fext.errors.FeXTError`; a folder without images gives empty
    ``images`` (:meth:`Listing.require_images` turns that into the error).
    """
    root = _existing_folder(root)
    images: list[tuple[str, Path]] = []
    others: list[tuple[str, Path, str]] = []
    frame_candidates: list[Path] = []
    hidden = 0
    for folder, dirnames, filenames in os.walk(root):
        hidden += sum(d.startswith(".") for d in dirnames) + sum(n.startswith(".") for n in filenames)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folder_path = Path(folder)
        for name in filenames:
            if name.startswith("."):
                continue
            path = folder_path / name
            suffix = os.path.splitext(name)[1].lower()  # a string operation: Path.suffix costs more than the walk
            if suffix in IMAGE_EXTENSIONS:  # the fast path: not read
                images.append((path.relative_to(root).as_posix(), path))
                if suffix in MULTI_FRAME_EXTENSIONS:
                    frame_candidates.append(path)
                continue
            is_image, several_frames, reason = _sniff(path)
            if is_image:
                images.append((path.relative_to(root).as_posix(), path))
                if several_frames:
                    frame_candidates.append(path)
            else:
                others.append((path.relative_to(root).as_posix(), path, reason))
    images.sort(key=lambda item: item[0])
    others.sort(key=lambda item: item[0])
    return Listing(root, [p for _, p in images], [(p, r) for _, p, r in others], frozenset(frame_candidates), hidden)


def find_images(root: Path) -> list[Path]:
    """The images of :func:`list_folder` (absolute paths, sorted), for callers that report nothing else."""
    return list_folder(root).images


def _sniff(path: Path) -> tuple[bool, bool, str]:
    """Open ``path``'s header with every Pillow opener; ``(is an image, several frames, reason if not)``."""
    try:
        if path.stat().st_size == 0:
            return False, False, "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if isinstance(im, ImageFile.StubImageFile):
                    return False, False, f"{im.format} data, which Pillow identifies but cannot decode"
                return True, bool(getattr(im, "is_animated", False)), ""
    except Image.DecompressionBombError:
        return True, False, ""  # an image, too large: decoding lists it with that reason
    except PermissionError:
        return False, False, "permission denied"
    except OSError as exc:  # UnidentifiedImageError is an OSError
        if isinstance(exc, Image.UnidentifiedImageError):
            return False, False, NOT_AN_IMAGE
        return False, False, f"cannot read file ({exc.strerror or exc})"
    except Exception:  # noqa: BLE001 - a header a plugin chokes on: identified as that format, but broken
        return True, False, ""


def _existing_folder(root: Path) -> Path:
    """``root`` as an absolute path, or the clear error for a missing folder or a file."""
    root = Path(root).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise FeXTError(f"{root} is a file, not a folder: point to the folder that holds the images.")
    if not root.is_dir():
        raise FeXTError(
            f"Image folder not found: {root}. Create it and put images in it, or point to another folder."
        )
    return root


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
    root: Path, sample_size: float, seed: int, validation_size: float, split_seed: int,
    listing: Listing | None = None,
) -> Split:
    """Find, sample and split the images of ``root`` in one call (the training data of a run).

    ``listing``: :func:`list_folder` of ``root`` when the caller already has it (not listed again).
    Raises :class:`~fext.errors.FeXTError` when the folder holds no image.
    """
    root = Path(root).expanduser().absolute()
    listing = listing if listing is not None else list_folder(root)
    listing.require_images()
    sampled = draw_sample(listing.images, sample_size, seed)
    train, validation = split_images(sampled, root, validation_size, split_seed)
    return Split(root=root, train=train, validation=validation)


def select_images(cfg: Config, root: Path, listing: Listing | None = None) -> tuple[list[Path], list[Path]]:
    """The (train, validation) images of a run on ``root``: found, sampled with SEED, split with SPLIT_SEED.

    Training, evaluation and analysis all call this, so they agree on a checkpoint's split. A split
    too small to hold both sides (one image) puts everything in train. ``listing``: the folder's
    :func:`list_folder`, when the caller already has it. Raises :class:`FeXTError` for a missing or
    empty folder.
    """
    d = cfg.dataset
    split = discover_split(Path(root), d.SAMPLE_SIZE, cfg.SEED, d.VALIDATION_SIZE, d.SPLIT_SEED, listing)
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
