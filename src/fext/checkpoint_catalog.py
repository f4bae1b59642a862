"""The workspace's checkpoints: listing them, the `fext checkpoints` table, and choosing one by name or path.

Every folder under ``resources/checkpoints`` is read with :func:`fext.checkpoints.read_checkpoint` (the
format's owner); a broken one is listed with why. :func:`resolve_checkpoint` is the one way a command
turns a checkpoint name, a path or nothing into a checkpoint folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fext.checkpoints import Checkpoint, missing_file, read_checkpoint
from fext.errors import FeXTError
from fext.prompts import choose
from fext.workspace import Workspace

log = logging.getLogger("fext.checkpoints")


@dataclass(frozen=True)
class CheckpointInfo:
    """One folder under ``resources/checkpoints``: the checkpoint read, or why it could not be."""

    path: Path
    checkpoint: Checkpoint | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.error is None


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """:func:`read_checkpoint` that never raises: a broken folder gets ``error`` set."""
    try:
        return CheckpointInfo(path, read_checkpoint(path))
    except FeXTError as e:
        missing = missing_file(path)
        return CheckpointInfo(path, error=f"no {missing}" if missing else str(e))


def list_checkpoints(ws: Workspace) -> list[CheckpointInfo]:
    """Every folder under ``resources/checkpoints``, oldest first; broken ones have ``error`` set."""
    if not ws.checkpoints.is_dir():
        return []
    dirs = sorted(p for p in ws.checkpoints.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [inspect_checkpoint(p) for p in dirs]


def resolve_checkpoint(ws: Workspace, name_or_path: str | Path | None, interactive: bool = False) -> Path:
    """The checkpoint folder named by ``name_or_path`` (a folder name under the workspace, or a path).

    Omitted: the only checkpoint is used (said in a log line); with several, a numbered choice on a
    terminal, else an error listing them.
    """
    if name_or_path:
        for path in (Path(name_or_path), ws.checkpoints / str(name_or_path)):
            if path.is_dir():
                missing = missing_file(path)
                if missing:
                    raise FeXTError(f"{path} is not a FeXT checkpoint: {missing} is missing")
                return path.resolve()
        names = ", ".join(c.name for c in list_checkpoints(ws) if c.ok) or "none"
        raise FeXTError(f"Checkpoint {name_or_path!s} not found (looked for a path and in {ws.checkpoints}); available: {names}")
    usable = [c for c in list_checkpoints(ws) if c.ok]
    if not usable:
        raise FeXTError(f"No checkpoint in {ws.checkpoints}; train one with `fext train` or pass a checkpoint path")
    if len(usable) == 1:
        log.info("Using checkpoint %s (the only one)", usable[0].name)
        return usable[0].path
    if not interactive:
        listing = "\n".join(f"  {c.name}" for c in usable)
        raise FeXTError(f"Several checkpoints in {ws.checkpoints}; name one:\n{listing}")
    return choose_checkpoint(usable).path


def choose_checkpoint(usable: list[CheckpointInfo]) -> CheckpointInfo:
    """The seed's numbered checkpoint choice on a terminal; asks again on an invalid answer."""
    print("Select a checkpoint:")
    return usable[choose([c.name for c in usable], "Checkpoint number")]


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def checkpoints_table(ws: Workspace) -> str:
    """The `fext checkpoints` table: name, preset, size, epochs, images, last losses, created."""
    infos = list_checkpoints(ws)
    if not infos:
        return f"No checkpoint in {ws.checkpoints}; train one with `fext train`."

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = []
    for info in infos:
        c = info.checkpoint
        if c is None:
            rows.append([info.name, f"unreadable: {info.error}", "", "", "", "", "", ""])
            continue
        d = c.description
        images = d.dataset.train + d.dataset.validation if d.dataset else "-"
        rows.append([c.name, d.architecture.preset, d.architecture.img_size, len(c.epochs), images,
                     fmt(c.last("train")), fmt(c.last("validation")), d.created or "-"])
    return format_table(["name", "preset", "size", "epochs", "images", "train loss", "val loss", "created"], rows)
