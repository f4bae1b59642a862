"""Incremental ``fext encode``: reuse the vectors of images that did not change, encode the rest.

Every finished encoding records each listed file (read or not) in ``sources.csv``: relative
path, size, modification time and a BLAKE2b hash of its bytes. When the same checkpoint encodes
the folder again and the listing changed, :func:`plan` compares the folder with that record:

- same path, same size and modification time: unchanged (not even read again);
- otherwise the file is hashed: the same bytes as a recorded file (under its own path, or under
  a path that is gone: a rename or a copy) reuse that file's vector, or its failure;
- anything else is encoded: ``changed`` when its path was recorded, ``added`` when new.

Paths recorded but no longer listed are ``removed``. The final files follow the rule of a fresh
run (rows in the sorted listing's order, one per readable image), so they equal a fresh run's
files up to float rounding (a vector does not depend on the rest of its batch beyond that).
A folder encoded before ``sources.csv`` existed is encoded again in full, once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fext.encoding import files

log = logging.getLogger(__name__)

Stat = tuple[int, int]  # (size in bytes, modification time in ns)


def stat_files(paths: Sequence[Path]) -> list[Stat]:
    """``(size, mtime_ns)`` of every file ((-1, -1) when it cannot be read)."""
    stats = []
    for path in paths:
        try:
            st = path.stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    return stats


def content_hash(path: Path) -> str:
    """BLAKE2b (16 bytes, hex) of the file's bytes; "" when it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(2**20):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def describe_sources(paths: Sequence[Path], names: Sequence[str], stats: Sequence[Stat],
                     known: dict[str, files.Source]) -> list[files.Source]:
    """The ``sources.csv`` records of the listing, with the stats the run started from.

    A file whose size and modification time match ``known`` keeps its recorded hash; the others
    are hashed now. One that changed since the run started gets an empty hash, so the next run
    encodes it again.
    """
    sources = []
    for path, name, stat in zip(paths, names, stats):
        old = known.get(name)
        if old is not None and (old.size, old.mtime_ns) == stat and old.hash:
            digest = old.hash
        else:
            digest = content_hash(path)
            if stat_files([path])[0] != stat:
                digest = ""
        sources.append(files.Source(name, stat[0], stat[1], digest))
    return sources


@dataclass
class Plan:
    """What an incremental run does: positions (in the new listing) to encode, and what it takes from the old output."""

    todo: np.ndarray  # (T,) int64 positions to encode, ascending
    reuse_rows: list[tuple[int, int]] = field(default_factory=list)  # (new position, old embeddings row)
    reuse_failures: list[tuple[int, str]] = field(default_factory=list)  # (new position, reason)
    counts: dict[str, int] = field(default_factory=dict)  # reused, added, changed, removed (and renamed)


def plan(output: Path, paths: Sequence[Path], names: Sequence[str], stats: Sequence[Stat]) -> Plan:
    """Compare the listing with the finished encoding in ``output`` (see the module docstring)."""
    old_sources = files.read_sources(output)
    old_names = set(files.row_paths(output)) | set(files.read_failed(output))
    if old_sources is None:
        log.warning("%s has no %s (encoded by an earlier FeXT): encoding every image again, once", output, files.SOURCES)
        removed = len(old_names - set(names))
        return Plan(np.arange(len(paths), dtype=np.int64),
                    counts={"reused": 0, "added": len(paths), "changed": 0, "removed": removed, "renamed": 0})
    old_rows = {name: row for row, name in enumerate(files.row_paths(output))}
    old_failed = files.read_failed(output)
    by_hash = {s.hash: s.path for s in old_sources.values() if s.hash}
    current = set(names)
    todo, result = [], Plan(np.empty(0, np.int64))
    counts = dict.fromkeys(("reused", "added", "changed", "removed", "renamed"), 0)
    for position, (path, name, stat) in enumerate(zip(paths, names, stats)):
        old = old_sources.get(name)
        if old is not None and (old.size, old.mtime_ns) == stat and old.hash:
            source = name
        else:
            digest = content_hash(path)
            source = name if old is not None and digest and digest == old.hash else by_hash.get(digest) if digest else None
        if source is not None and (source in old_rows or source in old_failed):
            counts["reused"] += 1
            counts["renamed"] += source != name and source not in current
            if source in old_rows:
                result.reuse_rows.append((position, old_rows[source]))
            else:
                result.reuse_failures.append((position, old_failed[source]))
        else:
            counts["changed" if old is not None else "added"] += 1
            todo.append(position)
    counts["removed"] = len(set(old_sources) - current)
    result.todo, result.counts = np.asarray(todo, dtype=np.int64), counts
    return result


def summary(counts: dict[str, int]) -> str:
    """``"12 reused (1 renamed), 3 added, 1 changed, 2 removed"``."""
    renamed = f" ({counts['renamed']} renamed)" if counts.get("renamed") else ""
    return (f"{counts['reused']} reused{renamed}, {counts['added']} added, {counts['changed']} changed, "
            f"{counts['removed']} removed")
