"""The selection file of ``fext select`` (``path, rank, distance``): its one writer and its one reader.

``fext select`` writes it; ``fext explore --selection FILE.csv`` reads it back to mark the
selected images in the atlas. Any CSV with a ``path`` column (the atlas's own "Download
selected paths" file among them) reads too: rows keep the file's order when it has no ``rank``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from fext._io import atomic_open
from fext.errors import FeXTError

log = logging.getLogger(__name__)

COLUMNS = ("path", "rank", "distance")


def write_selection(output: str | os.PathLike, paths: list[str], distances: list[float]) -> Path:
    """``path, rank, distance`` rows (rank from 1, in pick order) to ``output``, atomically."""
    output = Path(output)
    with atomic_open(output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([p, rank, f"{d:.6f}"] for rank, (p, d) in enumerate(zip(paths, distances), 1))
    return output


def read_selection(path: str | os.PathLike, paths: list[str]) -> list[int]:
    """Rows (into ``paths``) of the images listed in the selection file ``path``, in rank order.

    Paths that are not in ``paths`` are left out with one warning line, so a selection made on an
    older encoding of the folder still marks what it can.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    except OSError as e:
        raise FeXTError(f"Cannot read the selection {path}: {e.strerror or e}; pass a CSV written by `fext select`") from e
    if not records or "path" not in records[0]:
        raise FeXTError(f"{path} has no 'path' column (or no rows); pass a CSV written by `fext select`")
    if "rank" in records[0]:
        records.sort(key=lambda r: int(r["rank"]) if str(r["rank"]).isdigit() else len(records))
    row_of = {p: i for i, p in enumerate(paths)}
    rows = [row_of[r["path"]] for r in records if r["path"] in row_of]
    if len(rows) < len(records):
        log.warning("%d of the %d images of %s are not in these embeddings; they are not marked",
                    len(records) - len(rows), len(records), path)
    return rows
