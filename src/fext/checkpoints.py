"""Checkpoint folders: finding them, choosing one, and listing them.

A checkpoint is ``resources/checkpoints/FeXT_<YYYYmmddTHHMMSS>/`` holding ``model.safetensors``,
``config.json`` (``architecture``, the full ``configuration``, the ``dataset`` used),
``history.json``, ``trainer_state.pt`` and the training figures (see the README).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fext.errors import FeXTError
from fext.workspace import Workspace

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
HISTORY = "history.json"
TRAINER_STATE = "trainer_state.pt"


def new_checkpoint_dir(ws: Workspace) -> Path:
    """A fresh ``FeXT_<timestamp>`` folder name (a suffix avoids clashes within one second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path, n = ws.checkpoints / f"FeXT_{stamp}", 1
    while path.exists():
        n += 1
        path = ws.checkpoints / f"FeXT_{stamp}_{n}"
    return path


@dataclass(frozen=True)
class CheckpointInfo:
    """One row of `fext checkpoints`; ``error`` is set when the folder cannot be read."""

    path: Path
    config: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.error is None

    def last(self, split: str, metric: str = "loss") -> float | None:
        """The last epoch's ``split`` ("train" or "validation") value of ``metric``."""
        epochs = (self.history or {}).get("epochs") or []
        return (epochs[-1].get(split) or {}).get(metric) if epochs else None


def read_checkpoint(path: Path) -> CheckpointInfo:
    """Read a checkpoint's config and history without loading weights; never raises."""
    try:
        if not (path / WEIGHTS).is_file():
            return CheckpointInfo(path, error=f"no {WEIGHTS}")
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        history_file = path / HISTORY
        history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else None
        return CheckpointInfo(path, config, history)
    except FileNotFoundError as e:
        return CheckpointInfo(path, error=f"no {Path(e.filename).name}")
    except (OSError, ValueError) as e:
        return CheckpointInfo(path, error=f"unreadable ({e.__class__.__name__}: {e})")


def list_checkpoints(ws: Workspace) -> list[CheckpointInfo]:
    """Every folder under ``resources/checkpoints``, oldest first; broken ones have ``error`` set."""
    if not ws.checkpoints.is_dir():
        return []
    dirs = sorted(p for p in ws.checkpoints.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [read_checkpoint(p) for p in dirs]


def resolve_checkpoint(ws: Workspace, name_or_path: str | Path | None, interactive: bool = False) -> Path:
    """The checkpoint folder named by ``name_or_path`` (a folder name under the workspace, or a path).

    Omitted: the only checkpoint is used (said in a log line); with several, a numbered choice on a
    terminal, else an error listing them.
    """
    import logging

    log = logging.getLogger(__name__)
    if name_or_path:
        candidates = [Path(name_or_path), ws.checkpoints / str(name_or_path)]
        for path in candidates:
            if path.is_dir():
                if not (path / WEIGHTS).is_file():
                    raise FeXTError(f"{path} is not a FeXT checkpoint: {WEIGHTS} is missing")
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
    for i, c in enumerate(usable, 1):
        print(f"  {i}) {c.name}")
    while True:
        answer = input(f"Checkpoint number (1-{len(usable)}): ").strip()
        if answer.isdigit() and 1 <= int(answer) <= len(usable):
            return usable[int(answer) - 1]
        print(f"Invalid choice {answer!r}: enter a number from 1 to {len(usable)}.")


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
    for c in infos:
        if not c.ok:
            rows.append([c.name, f"unreadable: {c.error}", "", "", "", "", "", ""])
            continue
        arch = c.config.get("architecture", {})
        data = c.config.get("dataset", {})
        epochs = len((c.history or {}).get("epochs") or [])
        images = data.get("train", 0) + data.get("validation", 0) if data else "-"
        rows.append([
            c.name, arch.get("preset", "?"), arch.get("img_size", "?"), epochs, images,
            fmt(c.last("train")), fmt(c.last("validation")), c.config.get("created", "-"),
        ])
    return format_table(["name", "preset", "size", "epochs", "images", "train loss", "val loss", "created"], rows)
