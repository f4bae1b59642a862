"""The embeddings folder format: its file names, its writers and readers, and whether a folder is one.

A finished ``fext encode`` folder holds

- ``embeddings.npy``: float32 (N, D), row i is the image on row i of the index;
  ``np.load(path, allow_pickle=False, mmap_mode="r")`` reads it without loading it;
- ``embeddings_index.csv``: ``row, path, width, height`` (path relative to the input folder,
  original width and height in pixels, EXIF orientation applied);
- ``failed.csv``: ``path, reason`` for every file that could not be read;
- ``skipped.csv``: ``path, reason`` for every file of the input folder that is not an image
  (written by :meth:`fext.data.Listing.write_skipped`, the owner of what an image is);
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
from collections.abc import Iterable, Iterator, Sequence
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
        """The index rows, as many as there are vectors (one clear error otherwise)."""
        index = read_index(self.index_file)
        if len(index) != len(self.vectors):
            raise damaged(self.folder, INDEX, f"{len(index)} rows for the {len(self.vectors)} vectors of {EMBEDDINGS}")
        return index


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


def damaged(folder: Path, name: str, what: str) -> FeXTError:
    """The one message for a damaged file of an embeddings folder: which file, what is wrong, what to do."""
    return FeXTError(f"{folder / name} is damaged ({what}); encode the images again with "
                     f"`fext encode --overwrite --output {folder}` (the images themselves are untouched)")


SIMILARITY = "cosine of feature vectors centred on the training images' mean latent"
"""What metadata.json's ``similarity`` says of vectors written by a checkpoint with a feature centre."""
UNCENTRED = "cosine of uncentred latents (a checkpoint without a feature centre)"
"""... and of vectors written by a checkpoint trained before the feature centre existed."""
_said_uncentred: set[Path] = set()


def _say_what_similarity_means(folder: Path, metadata: dict[str, Any]) -> None:
    """One log line per folder whose scores are uncentred cosines: they run high for any pair of images."""
    if metadata.get("similarity") == SIMILARITY or folder in _said_uncentred:
        return
    _said_uncentred.add(folder)
    log.info("%s holds uncentred latents (%s): similarities between any two images run high; "
             "train with this FeXT and encode again for scores that tell images apart",
             folder, "written before feature centring" if "similarity" not in metadata else "its checkpoint has no centre")


REQUIRED_METADATA = {"checkpoint": dict, "embedding_dim": int, "images": int, "img_size": int, "input": str}
"""The keys of metadata.json that readers rely on, with their types."""


def open_encoding(folder: str | os.PathLike) -> Encoding:
    """The finished encoding in ``folder``, its vectors memory-mapped; one clear error otherwise.

    Every file the readers rely on is checked here, once: metadata.json's keys and types, the shape and
    dtype of embeddings.npy against it, finite values, and an index at least as long as the vectors.
    """
    folder = Path(folder)
    require_finished(folder)
    metadata = _read_metadata(folder)
    vectors = _read_vectors(folder, metadata)
    _say_what_similarity_means(folder, metadata)
    if _line_count(folder / INDEX) < len(vectors) + 1:
        raise damaged(folder, INDEX, f"fewer rows than the {len(vectors)} vectors of {EMBEDDINGS}")
    return Encoding(folder, metadata, vectors)


def _read_metadata(folder: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise damaged(folder, METADATA, f"not readable JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise damaged(folder, METADATA, "not a JSON object")
    for key, kind in REQUIRED_METADATA.items():
        if not isinstance(metadata.get(key), kind):
            raise damaged(folder, METADATA, f"no {kind.__name__} {key!r}")
    return metadata


def _read_vectors(folder: Path, metadata: dict[str, Any]) -> np.ndarray:
    from fext.encoding.npy_rows import first_non_finite_row

    try:
        matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise damaged(folder, EMBEDDINGS, str(e) or type(e).__name__) from e
    expected = (metadata["images"], metadata["embedding_dim"])
    if matrix.dtype != np.float32 or matrix.shape != expected:
        raise damaged(folder, EMBEDDINGS, f"{matrix.dtype} of shape {matrix.shape}, "
                                          f"where {METADATA} says float32 of shape {expected}")
    bad = first_non_finite_row(folder / EMBEDDINGS)
    if bad is not None:
        raise FeXTError(f"{folder / EMBEDDINGS} is damaged (row {bad} holds NaN or infinite values): encode the images "
                        f"again with `fext encode --overwrite --output {folder}`, and if the values come back, the "
                        "checkpoint itself is broken: use another one")
    return matrix


def _line_count(path: Path) -> int:
    """Newlines in a file, counted a block at a time (a path with a newline in it only adds to the count)."""
    count = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(2**20):
                count += block.count(b"\n")
    except OSError:
        return 0
    return count


def load_embeddings(folder: str | os.PathLike) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The vectors (a read-only memory map, (N, D) float32) and index rows of a `fext encode` folder."""
    encoding = open_encoding(folder)
    return encoding.vectors, encoding.read_index()


def read_index(path: Path) -> list[dict[str, Any]]:
    """The rows of an ``embeddings_index.csv`` as ``{"row", "path", "width", "height"}`` dicts, numbered 0, 1, ...

    A row that does not parse or is out of order is one clear error naming the file.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [
                {"row": int(r["row"]), "path": r["path"], "width": int(r["width"]), "height": int(r["height"])}
                for r in csv.DictReader(f)
            ]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, csv.Error) as e:
        raise damaged(path.parent, path.name, f"unreadable: {type(e).__name__} {e}") from e
    if any(r["row"] != i for i, r in enumerate(rows)):
        raise damaged(path.parent, path.name, "its rows are not numbered 0, 1, 2, ...")
    return rows


def stream_index_paths(path: Path) -> Iterator[tuple[int, str]]:
    """``(row, path)`` of an ``embeddings_index.csv`` in order, read as it goes (for indexes too large to hold);
    a row out of order is one clear error naming the file."""
    with open(path, newline="", encoding="utf-8") as f:
        for number, record in enumerate(csv.DictReader(f)):
            if record.get("row") != str(number):
                raise damaged(path.parent, path.name, f"line {number + 2} is not row {number}")
            yield number, record["path"]


def index_paths(folder: Path) -> list[str]:
    """The relative paths of the index, in row order."""
    return [row["path"] for row in read_index(folder / INDEX)]


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
