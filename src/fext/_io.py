"""Crash-safe file writing: every file goes to a temporary name, then is renamed.

A process killed at any moment leaves either the previous file or the new one,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fext.errors import FeXTError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is created with mode 0666 and the kernel applies the process's current
    umask, exactly as ``open(path, "w")`` would: ``tempfile.mkstemp`` would give 0600, and a
    checkpoint shared with a colleague or a service account could not be read. A writer that
    replaces the file itself (safetensors writes its own temporary file and renames it) gets that
    mode back before the rename.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_beside(path)
    except OSError as e:
        raise FeXTError(f"Cannot write {path} ({e.strerror or e}); choose a folder you can write to, "
                        "or fix its permissions") from None
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_beside(path: Path) -> Path:
    """Create an empty, new, hidden file next to ``path`` with the permissions of a normal write."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing whose result only appears at ``path`` once complete."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs)
    finally:
        plt.close(fig)
