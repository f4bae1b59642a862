"""The embeddings folder format: its file names, its writers and readers, and whether a folder is one.

A finished ``fext encode`` folder holds

- ``embeddings.npy``: float32 (N, D), row i is the image on row i of the index;
  ``np.load(path, allow_pickle=False, mmap_mode="r")`` reads it without loading it;
- ``embeddings_index.csv``: ``row, path, width, height`` (path relative to the input folder,
  original width and height in pixels, EXIF orientation applied);
- ``failed.csv``: ``path, reason`` for every file that could not be read;
- ``sources.csv``: ``path, size, mtime_ns, blake2b`` of every listed file (read or not), what
  an incremental run compares the folder with (:mod:`fext.encoding.incremental`);
- ``metadata.json``: the checkpoint, the model, counts, date and speed. It is written last, so
  its presence is what "the encoding finished" means (:func:`is_finished`);
- with ``per_image``, ``per_image/<relative path>.npy``: one (D,) vector per image.

While a run is under way the folder also holds its resumable state (``.encode_state.json``)
and partial files; :mod:`fext.encoding.resumable` owns those.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fext._io import atomic_open, atomic_path, write_json
from fext.errors import FeXTError

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
INDEX = "embeddings_index.csv"
FAILED = "failed.csv"
METADATA = "metadata.json"
PER_IMAGE = "per_image"
STATE = ".encode_state.json"
PARTIAL = "embeddings.partial.npy"
SIZES_PARTIAL = "sizes.partial.npy"
PARTS = ".encode_parts"
SOURCES = "sources.csv"
TODO = ".encode_todo.npy"


@dataclass(frozen=True)
class Source:
    """One listed file as ``sources.csv`` records it."""

    path: str
    size: int
    mtime_ns: int
    hash: str  # BLAKE2b of the bytes, hex; "" when unknown


def read_sources(folder: Path) -> dict[str, Source] | None:
    """``{path: Source}`` of ``sources.csv``, or None when the folder has none (encoded by an earlier FeXT)."""
    try:
        with open(folder / SOURCES, newline="", encoding="utf-8") as f:
            return {r["path"]: Source(r["path"], int(r["size"]), int(r["mtime_ns"]), r["blake2b"]) for r in csv.DictReader(f)}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):
        log.warning("Ignoring unreadable %s", folder / SOURCES)
        return None


def write_sources(folder: Path, sources: Iterable[Source]) -> None:
    with atomic_open(folder / SOURCES, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "size", "mtime_ns", "blake2b"])
        writer.writerows([s.path, s.size, s.mtime_ns, s.hash] for s in sources)


@dataclass(frozen=True)
class Encoding:
    """A finished encoding folder: its metadata and its memory-mapped vectors (the index is read on demand)."""

    folder: Path
    metadata: dict[str, Any]
    vectors: np.ndarray  # (N, D) float32, read-only memory map

    @property
    def index_file(self) -> Path:
        return self.folder / INDEX

    @property
    def rows(self) -> Any:
        """The vectors as a :class:`~fext.encoding.npy_rows.RowReader`, for scans that must not grow resident memory."""
        from fext.encoding.npy_rows import RowReader

        return RowReader(self.folder / EMBEDDINGS)

    def read_index(self) -> list[dict[str, Any]]:
        return read_index(self.index_file)


def is_finished(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished encoding (its metadata.json, written last, is there)."""
    return (Path(folder) / METADATA).is_file()


def require_finished(folder: Path) -> None:
    """Raise the one clear error for a folder that holds no finished encoding."""
    if is_finished(folder):
        return
    if (folder / STATE).is_file():
        raise FeXTError(f"The encoding into {folder} did not finish; run the same `fext encode` command again to complete it")
    raise FeXTError(f"{folder} is not a folder written by `fext encode` ({METADATA} missing); write one with `fext encode`")


def open_encoding(folder: str | os.PathLike) -> Encoding:
    """The finished encoding in ``folder``, its vectors memory-mapped; one clear error otherwise."""
    folder = Path(folder)
    require_finished(folder)
    try:
        metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
        matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeXTError(f"{folder}: unreadable embeddings ({e}); encode the images again with `fext encode --overwrite`") from e
    if matrix.ndim != 2:
        raise FeXTError(f"{folder}: {EMBEDDINGS} has shape {matrix.shape}; encode the images again with `fext encode --overwrite`")
    return Encoding(folder, metadata, matrix)


def load_embeddings(folder: str | os.PathLike) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The vectors (a read-only memory map, (N, D) float32) and index rows of a `fext encode` folder."""
    encoding = open_encoding(folder)
    try:
        index = encoding.read_index()
    except (OSError, ValueError, KeyError) as e:
        raise FeXTError(f"{folder}: unreadable embeddings ({e}); encode the images again with `fext encode --overwrite`") from e
    if encoding.vectors.shape[0] != len(index):
        raise FeXTError(
            f"{folder}: {EMBEDDINGS} has shape {encoding.vectors.shape} but {INDEX} has {len(index)} rows; "
            "encode the images again with `fext encode --overwrite`"
        )
    return encoding.vectors, index


def read_index(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``embeddings_index.csv`` as ``{"row", "path", "width", "height"}`` dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"row": int(r["row"]), "path": r["path"], "width": int(r["width"]), "height": int(r["height"])}
            for r in csv.DictReader(f)
        ]


def index_paths(folder: Path) -> list[str]:
    """The relative paths of the index, in row order."""
    with open(folder / INDEX, newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f)]


def read_failed(folder: Path) -> dict[str, str]:
    """``{path: reason}`` of ``failed.csv`` (empty when there is none)."""
    try:
        with open(folder / FAILED, newline="", encoding="utf-8") as f:
            return {row["path"]: row["reason"] for row in csv.DictReader(f)}
    except FileNotFoundError:
        return {}


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of the folder, or None when it is missing (or unreadable, with a warning)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("Ignoring unreadable %s", path)
        return None


def write_failed(folder: Path, failures: Iterable[dict[str, Any]]) -> None:
    with atomic_open(folder / FAILED, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([fail["path"], fail["reason"]] for fail in failures)


def write_index(folder: Path, paths: Sequence[str], sizes: np.ndarray) -> None:
    """``embeddings_index.csv`` for ``paths`` (row order) and their (width, height) ``sizes`` (N, 2)."""
    with atomic_open(folder / INDEX, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "width", "height"])
        writer.writerows([row, path, int(w), int(h)] for row, (path, (w, h)) in enumerate(zip(paths, sizes)))


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    """Write metadata.json: the last file of a run, which marks the folder finished."""
    write_json(folder / METADATA, metadata)


def write_per_image(folder: Path, names: list[str]) -> None:
    """Write ``per_image/<relative path>.npy`` (one (D,) float32 vector per image) from embeddings.npy."""
    from tqdm import tqdm

    matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    for row, name in enumerate(tqdm(names, unit="file", desc="Per-image files", disable=len(names) < 1000)):
        with atomic_path(folder / PER_IMAGE / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(matrix[row]), allow_pickle=False)
