"""Hashes that tell whether an encoding is still the one asked for: of the checkpoint and of the input listing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from fext.encoding.records import CheckpointRecord
from fext.errors import FeXTError


def checkpoint_identity(ckpt: Path) -> CheckpointRecord:
    """Name, absolute path and a content hash (weights + architecture) of a checkpoint folder."""
    from fext.checkpoints import WEIGHTS, read_description

    digest = hashlib.blake2b(digest_size=16)
    architecture = asdict(read_description(ckpt).architecture)
    digest.update(json.dumps(architecture, sort_keys=True).encode())
    try:
        with open(ckpt / WEIGHTS, "rb") as f:
            while block := f.read(2**22):
                digest.update(block)
    except OSError as e:
        raise FeXTError(f"{ckpt} is not a usable FeXT checkpoint ({e}); pass a folder written by `fext train`") from e
    return CheckpointRecord(ckpt.name, str(ckpt), digest.hexdigest())


def wrote_vectors(ckpt: Path, recorded: CheckpointRecord) -> bool:
    """Whether the checkpoint folder ``ckpt`` is the one ``recorded`` (same content hash): its vectors are comparable.

    Raises FeXTError when ``ckpt`` is not a readable checkpoint.
    """
    return checkpoint_identity(ckpt).comparable(recorded)


def listing_fingerprint(paths: Sequence[Path], names: Sequence[str]) -> str:
    """A hash of the input listing: relative paths, sizes and modification times."""
    digest = hashlib.blake2b(digest_size=16)
    for path, name in zip(paths, names):
        try:
            st = path.stat()
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()
