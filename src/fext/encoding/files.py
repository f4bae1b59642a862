"""The embeddings folder format: its file names, its writers and readers, and whether a folder is one.

This module alone names the folder's files and opens them; the JSON files come back as the typed
objects of :mod:`fext.encoding.records` (:class:`EncodingMetadata`, :class:`EncodeState`,
:class:`IndexDescription`), so every other module reads fields, never keys.

A finished ``fext encode`` folder holds

- ``embeddings.npy``: float32 (N, D), row i is the image on row i of ``embeddings_index.csv``;
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
- with ``per_image``, ``per_image/<relative path>.npy``: one (D,) vector per image;
- after ``fext index``, ``faiss.index`` and its description ``index.json`` (:mod:`fext.index`).

While a run is under way the folder also holds its resumable state (``.encode_state.json``)
and partial files; :mod:`fext.encoding.resumable` writes those.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fext._io import atomic_open, atomic_path, write_json
from fext.encoding.records import EncodeState, EncodingMetadata, Failure, IndexDescription
from fext.errors import FeXTError

log = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
ROWS_CSV = "embeddings_index.csv"
"""The image of each row (the file keeps the name it had when "index" meant it too)."""
FAILED = "failed.csv"
METADATA = "metadata.json"
PER_IMAGE = "per_image"
STATE = ".encode_state.json"
PARTIAL = "embeddings.partial.npy"
SIZES_PARTIAL = "sizes.partial.npy"
PARTS = ".encode_parts"
SOURCES = "sources.csv"
TODO = ".encode_todo.npy"
INDEX_FILE = "faiss.index"
INDEX_JSON = "index.json"


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
    """A finished encoding folder: its metadata and its memory-mapped vectors (the rows CSV is read on demand)."""

    folder: Path
    metadata: EncodingMetadata
    vectors: np.ndarray  # (N, D) float32, read-only memory map

    @property
    def rows_csv(self) -> Path:
        return self.folder / ROWS_CSV

    @property
    def rows(self) -> Any:
        """The vectors as a :class:`~fext.encoding.npy_rows.RowReader`, for scans that must not grow resident memory."""
        from fext.encoding.npy_rows import RowReader

        return RowReader(self.folder / EMBEDDINGS)

    def read_rows_csv(self) -> list[dict[str, Any]]:
        """The rows of embeddings_index.csv, as many as there are vectors (one clear error otherwise)."""
        rows = read_rows_csv(self.rows_csv)
        if len(rows) != len(self.vectors):
            raise damaged(self.folder, ROWS_CSV, f"{len(rows)} rows for the {len(self.vectors)} vectors of {EMBEDDINGS}")
        return rows


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


def _say_what_similarity_means(folder: Path, metadata: EncodingMetadata) -> None:
    """One log line per folder whose scores are uncentred cosines: they run high for any pair of images."""
    if metadata.similarity == SIMILARITY or folder in _said_uncentred:
        return
    _said_uncentred.add(folder)
    log.info("%s holds uncentred latents (%s): similarities between any two images run high; "
             "train with this FeXT and encode again for scores that tell images apart",
             folder, "written before feature centring" if metadata.similarity is None else "its checkpoint has no centre")


def open_encoding(folder: str | os.PathLike) -> Encoding:
    """The finished encoding in ``folder``, its vectors memory-mapped; one clear error otherwise.

    Every file the readers rely on is checked here, once: metadata.json's keys and types, the shape and
    dtype of embeddings.npy against it, finite values, and an index at least as long as the vectors.
    """
    folder = Path(folder)
    require_finished(folder)
    metadata = read_metadata(folder)
    vectors = _read_vectors(folder, metadata)
    _say_what_similarity_means(folder, metadata)
    if _line_count(folder / ROWS_CSV) < len(vectors) + 1:
        raise damaged(folder, ROWS_CSV, f"fewer rows than the {len(vectors)} vectors of {EMBEDDINGS}")
    return Encoding(folder, metadata, vectors)


def read_metadata(folder: Path) -> EncodingMetadata:
    """``folder``'s metadata.json, checked (its keys and types); one clear error naming the file otherwise."""
    try:
        data = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise damaged(folder, METADATA, f"not readable JSON: {e}") from e
    try:
        return EncodingMetadata.from_json(data)
    except ValueError as e:
        raise damaged(folder, METADATA, str(e)) from None


def embeddings_version(folder: Path) -> str:
    """A hash of metadata.json: it changes whenever `fext encode` writes the folder again."""
    return hashlib.blake2b((folder / METADATA).read_bytes(), digest_size=16).hexdigest()


def _read_vectors(folder: Path, metadata: EncodingMetadata) -> np.ndarray:
    from fext.encoding.npy_rows import first_non_finite_row

    try:
        matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise damaged(folder, EMBEDDINGS, str(e) or type(e).__name__) from e
    expected = (metadata.images, metadata.embedding_dim)
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
    """The vectors (a read-only memory map, (N, D) float32) and the rows of embeddings_index.csv of a `fext encode` folder."""
    encoding = open_encoding(folder)
    return encoding.vectors, encoding.read_rows_csv()


def read_rows_csv(path: Path) -> list[dict[str, Any]]:
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


def stream_row_paths(path: Path) -> Iterator[tuple[int, str]]:
    """``(row, path)`` of an ``embeddings_index.csv`` in order, read as it goes (for files too large to hold);
    a row out of order is one clear error naming the file."""
    with open(path, newline="", encoding="utf-8") as f:
        for number, record in enumerate(csv.DictReader(f)):
            if record.get("row") != str(number):
                raise damaged(path.parent, path.name, f"line {number + 2} is not row {number}")
            yield number, record["path"]


def row_paths(folder: Path) -> list[str]:
    """The relative paths of embeddings_index.csv, in row order."""
    return [row["path"] for row in read_rows_csv(folder / ROWS_CSV)]


def read_failed(folder: Path) -> dict[str, str]:
    """``{path: reason}`` of ``failed.csv`` (empty when there is none)."""
    try:
        with open(folder / FAILED, newline="", encoding="utf-8") as f:
            return {row["path"]: row["reason"] for row in csv.DictReader(f)}
    except FileNotFoundError:
        return {}


class UnreadableFile(ValueError):
    """A JSON file of the folder that is there but does not parse."""


def _read_json(path: Path) -> Any:
    """A JSON file of the folder, or None when it is missing; :class:`UnreadableFile` when it does not parse."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UnreadableFile(f"{path.name} unreadable") from e


def ignore_unreadable(path: Path) -> None:
    """The warning for a JSON file of the folder that is skipped because it does not parse."""
    log.warning("Ignoring unreadable %s", path)


def read_state(folder: Path) -> EncodeState | None:
    """The resumable state of an unfinished run in ``folder``, or None when there is none.

    ValueError when the file is there but damaged or of another version (unreadable JSON also says so in a warning).
    """
    try:
        data = _read_json(folder / STATE)
    except UnreadableFile:
        ignore_unreadable(folder / STATE)
        data = None
    if data is None and not (folder / STATE).exists():
        return None
    return EncodeState.from_json(data)


def write_state(folder: Path, state: EncodeState) -> None:
    """Record ``state`` in ``folder``'s .encode_state.json, atomically."""
    write_json(folder / STATE, state.to_json())


def read_index_description(folder: Path) -> IndexDescription | None:
    """index.json of ``folder``, or None when there is none; :class:`UnreadableFile` when it does not parse,
    ValueError when it describes no index."""
    data = _read_json(folder / INDEX_JSON)
    return None if data is None else IndexDescription.from_json(data)


def write_index_description(folder: Path, description: IndexDescription) -> None:
    write_json(folder / INDEX_JSON, description.to_json())


def write_failed(folder: Path, failures: Iterable[Failure]) -> None:
    with atomic_open(folder / FAILED, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([fail.path, fail.reason] for fail in failures)


def write_rows_csv(folder: Path, paths: Sequence[str], sizes: np.ndarray) -> None:
    """``embeddings_index.csv`` for ``paths`` (row order) and their (width, height) ``sizes`` (N, 2)."""
    with atomic_open(folder / ROWS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path", "width", "height"])
        writer.writerows([row, path, int(w), int(h)] for row, (path, (w, h)) in enumerate(zip(paths, sizes)))


def write_metadata(folder: Path, metadata: EncodingMetadata) -> None:
    """Write metadata.json: the last file of a run, which marks the folder finished."""
    write_json(folder / METADATA, metadata.to_json())


def write_per_image(folder: Path, names: list[str]) -> None:
    """Write ``per_image/<relative path>.npy`` (one (D,) float32 vector per image) from embeddings.npy."""
    from tqdm import tqdm

    matrix = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
    for row, name in enumerate(tqdm(names, unit="file", desc="Per-image files", disable=len(names) < 1000)):
        with atomic_path(folder / PER_IMAGE / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(matrix[row]), allow_pickle=False)
