"""The decoded-image cache's folder: its manifest.json, data file and lock (see :mod:`fext.data.cache`).

The manifest maps an image's absolute path to ``[size, mtime_ns, slot]`` (a decoded image) or to
``[size, mtime_ns, reason, permanent]`` (an unreadable file); ``count`` slots of the data file are
in use. These functions read, change and commit it; :mod:`fext.data.cache` decodes into it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fext import _io
from fext.errors import FeXTError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one builder at a time is then the user's care
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
_OLD_MANIFEST = "index.json"  # its name until the word "index" was kept for the faiss search index
COMPACT_MIN_DEAD = 1024  # never compact for fewer stale slots than this (nor fewer than live ones)
# Failures that depend only on the file's bytes: remembered, not retried until the file changes.
PERMANENT_REASONS = (
    "empty file",
    "not an image",
    "truncated or corrupt image data",
    "unsupported image mode",
)


def map_pixels(path: Path, mode: str, count: int, img_size: int) -> np.memmap:
    """The data file as a (count, S, S, 3) uint8 memory map (``mode`` "r" or "r+")."""
    return np.memmap(path, dtype=np.uint8, mode=mode, shape=(count, img_size, img_size, 3))


def file_key(path: Path) -> tuple[int, int] | str:
    """(size, mtime_ns), or the reason the file cannot be looked at."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    return stat.st_size, stat.st_mtime_ns


def new_manifest(folder: Path, img_size: int) -> dict[str, Any]:
    """An empty manifest with a new (empty) data file."""
    data_file = f"pixels-{secrets.token_hex(4)}.u8"
    (folder / data_file).touch()
    return {
        "format": FORMAT,
        "img_size": img_size,
        "data_file": data_file,
        "count": 0,
        "images": {},  # absolute path -> [size, mtime_ns, slot]
        "failures": {},  # absolute path -> [size, mtime_ns, reason, permanent]
    }


def load_manifest(folder: Path, img_size: int) -> dict[str, Any] | None:
    """The committed manifest, or None when absent, unreadable or not matching its data file."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        data_size = (folder / manifest["data_file"]).stat().st_size
        valid = (
            manifest["format"] == FORMAT
            and manifest["img_size"] == img_size
            and data_size >= manifest["count"] * img_size * img_size * 3
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.info("Ignoring the unreadable decoded-image cache manifest in %s; it will be rebuilt.", folder)
        return None
    return manifest if valid else None


def commit(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` atomically: from now on it is what readers and later builds see."""
    _io.write_json(folder / MANIFEST, manifest)


def forget_changed(manifest: dict[str, Any], paths: list[Path], keys: list[Any]) -> int:
    """Drop entries whose file changed or vanished, and failures worth another try; count them."""
    current = {str(p): k for p, k in zip(paths, keys)}
    dropped = 0
    for table in ("images", "failures"):
        entries = manifest[table]
        for name in list(entries):
            key = current[name] if name in current else file_key(Path(name))
            entry = entries[name]
            permanent = table == "images" or entry[3]
            if isinstance(key, str) or entry[0] != key[0] or entry[1] != key[1] or not permanent:
                del entries[name]
                dropped += 1
    return dropped


def lookup(manifest: dict[str, Any], name: str, key: tuple[int, int]) -> tuple[str, list[Any]] | None:
    """(table, entry) recorded for ``name`` with exactly ``key``: table "images" or "failures"."""
    for table in ("images", "failures"):
        entry = manifest[table].get(name)
        if entry is not None and entry[0] == key[0] and entry[1] == key[1]:
            return table, entry
    return None


def missing_files(manifest: dict[str, Any], paths: list[Path], keys: list[Any]) -> list[tuple[Path, tuple[int, int]]]:
    """(path, key) of the files that can be looked at and have no entry for their current key."""
    missing, seen = [], set()
    for path, key in zip(paths, keys):
        name = str(path)
        if isinstance(key, str) or name in seen:
            continue
        seen.add(name)
        if lookup(manifest, name, key) is None:
            missing.append((path, key))
    return missing


def compact_if_worth_it(folder: Path, manifest: dict[str, Any]) -> None:
    """Copy the live slots to a new data file when dead slots outnumber them (and are many)."""
    live = len(manifest["images"])
    dead = manifest["count"] - live
    if dead <= max(live, COMPACT_MIN_DEAD):
        return
    img_size = manifest["img_size"]
    old = map_pixels(folder / manifest["data_file"], "r", manifest["count"], img_size)
    fresh = new_manifest(folder, img_size)
    names = sorted(manifest["images"], key=lambda name: manifest["images"][name][2])
    if names:
        reserve(folder / fresh["data_file"], len(names) * img_size * img_size * 3)
        new = map_pixels(folder / fresh["data_file"], "r+", len(names), img_size)
        for slot, name in enumerate(names):
            size, mtime_ns, old_slot = manifest["images"][name]
            new[slot] = old[old_slot]
            fresh["images"][name] = [size, mtime_ns, slot]
        new.flush()
        del new
    fresh["count"] = len(names)
    fresh["failures"] = manifest["failures"]
    del old
    commit(folder, fresh)
    log.info("Compacted the decoded-image cache in %s (%d stale images dropped).", folder, dead)
    manifest.clear()
    manifest.update(fresh)


def reserve(path: Path, size: int) -> None:
    """Grow ``path`` to ``size`` bytes with the disk space allocated now.

    A memory-mapped write into a sparse file on a full disk kills the process (SIGBUS);
    allocating first turns a full disk into an error message.
    """
    current = path.stat().st_size
    if current >= size:
        return
    try:
        with open(path, "r+b") as f:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), current, size - current)
            else:
                f.truncate(size)
    except OSError as exc:
        raise FeXTError(
            f"Cannot grow the decoded-image cache {path} to {size / 2**20:.0f} MiB "
            f"({exc.strerror or exc}): free disk space or delete the cache folder."
        ) from exc


def remove_orphans(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete data files no committed manifest names (left by compaction, a killed first build, or a cache
    whose manifest had the old name, which is not read: that cache is decoded again), and that old manifest."""
    for path in folder.glob("pixels-*.u8"):
        if path.name != manifest["data_file"]:
            path.unlink(missing_ok=True)
    (folder / _OLD_MANIFEST).unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock: one builder at a time (it says so when it has to wait)."""
    if fcntl is None:
        yield
        return
    with open(folder / "lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process that is building the decoded-image cache in %s.", folder)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
