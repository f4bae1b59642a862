"""Raw row I/O on ``.npy`` files: pre-sized files written and copied a block of rows at a time.

Vectors go to disk through ordinary file writes at a row's byte offset rather than through a
memory map, because the pages of a growing memory map count towards resident memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

COPY_BYTES = 16 * 2**20
"""Rows are copied and scanned in blocks of about this many bytes."""


def create(path: Path, dtype: Any, shape: tuple[int, int]) -> None:
    """A pre-sized ``.npy`` (header + rows); on most file systems the rows take no disk until written."""
    path.unlink(missing_ok=True)
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def shape(path: Path) -> tuple[int, ...] | None:
    """The array shape of an ``.npy`` file, or None when it is missing or unreadable."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError):
        return None


def offset(path: Path) -> int:
    """Byte offset of the first row of an ``.npy`` file."""
    return int(np.load(path, mmap_mode="r", allow_pickle=False).offset)


def write_rows(f: Any, start: int, row_bytes: int, positions: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows[i]`` at row ``positions[i]`` of an open ``.npy`` file whose rows begin at byte ``start``.

    One write per run of consecutive positions.
    """
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for run_positions, run_rows in zip(np.split(positions, breaks), np.split(rows, breaks)):
        f.seek(start + int(run_positions[0]) * row_bytes)
        f.write(np.ascontiguousarray(run_rows).tobytes())


def copy_block(src: Path, dst: Path, first_row: int, row_bytes: int) -> None:
    """Copy every row of the ``.npy`` file ``src`` into ``dst`` from row ``first_row`` on, and sync ``dst``."""
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        fin.seek(offset(src))
        fout.seek(offset(dst) + first_row * row_bytes)
        while block := fin.read(COPY_BYTES):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


def copy_rows(src: Path, dst: Path, rows: np.ndarray, d: int) -> None:
    """Write ``src[rows]`` (float32 (N, d) .npy, ``rows`` ascending) as a new .npy at ``dst``, a block at a time."""
    np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=(len(rows), d))
    block = max(1, COPY_BYTES // (d * 4))
    src_offset, dst_offset = offset(src), offset(dst)
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        fout.seek(dst_offset)
        for lo in range(0, len(rows), block):
            wanted = rows[lo:lo + block]
            first, last = int(wanted[0]), int(wanted[-1])
            fin.seek(src_offset + first * d * 4)
            chunk = np.frombuffer(fin.read((last - first + 1) * d * 4), dtype=np.float32).reshape(-1, d)
            fout.write(chunk[wanted - first].tobytes())


class RowReader:
    """Read-only rows of a 2-D ``.npy`` file through file reads: ``reader[lo:hi]`` -> (hi - lo, D) array.

    For scans over every row: the pages of a memory map count towards resident memory, these
    reads do not (the kernel's page cache still serves repeated scans).
    """

    def __init__(self, path: Path) -> None:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
        self.path, self.shape, self.dtype, self._start = path, tuple(header.shape), header.dtype, int(header.offset)
        self._row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi, _ = rows.indices(len(self))
        with open(self.path, "rb") as f:
            f.seek(self._start + lo * self._row_bytes)
            data = f.read(max(0, hi - lo) * self._row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, *self.shape[1:])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at ``rows`` (any order, repeats allowed), one read per row."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                out[i] = np.frombuffer(os.pread(fd, self._row_bytes, self._start + row * self._row_bytes), self.dtype)
        finally:
            os.close(fd)
        return out


def first_non_finite_row(path: Path) -> int | None:
    """The first row of a 2-D float ``.npy`` file that holds NaN or an infinity, or None; a block at a time."""
    reader = RowReader(path)
    block = max(1, COPY_BYTES // max(1, reader._row_bytes))
    for lo in range(0, len(reader), block):
        bad = np.flatnonzero(~np.isfinite(reader[lo:lo + block]).all(axis=1))
        if bad.size:
            return lo + int(bad[0])
    return None


def copy_rows_into(src: Path, dst: Path, src_rows: np.ndarray, dst_rows: np.ndarray) -> None:
    """Copy row ``src_rows[i]`` of ``src`` to row ``dst_rows[i]`` of the pre-sized ``dst`` (same dtype and width), then sync."""
    reader = RowReader(src)
    order = np.argsort(dst_rows, kind="stable")
    block = max(1, COPY_BYTES // max(1, reader._row_bytes))
    with open(dst, "r+b") as f:
        for lo in range(0, len(order), block):
            chosen = order[lo:lo + block]
            write_rows(f, offset(dst), reader._row_bytes, dst_rows[chosen], reader.take(src_rows[chosen]))
        f.flush()
        os.fsync(f.fileno())
