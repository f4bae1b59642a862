"""The workspace: where FeXT reads its configuration and images and writes its outputs.

The root is ``--workspace``, else ``FEXT_WORKSPACE``, else the current directory.
A folder is a workspace once it holds ``settings/configurations.json``: only ``fext init`` and the demo
make one, and no other command writes anything in a folder that is not one (see :func:`require_workspace`).
Inside a workspace, every command creates the folders it needs with :meth:`Workspace.ensure`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fext import environment

log = logging.getLogger(__name__)

ENV_TEMPLATE = """\
# FeXT environment variables, loaded at start-up from resources/variables/.env.
# Copy this file to resources/variables/.env and uncomment what you need.
# Variables already set in the shell take precedence over this file.

# Workspace folder (default: the current directory).
# FEXT_WORKSPACE=/path/to/workspace

# Log level of the terminal and the log file: DEBUG, INFO, WARNING, ERROR.
# FEXT_LOG_LEVEL=INFO

# GPUs visible to PyTorch, e.g. 0 or 0,1.
# CUDA_VISIBLE_DEVICES=0

# CPU threads used by PyTorch's operators.
# OMP_NUM_THREADS=2

# Seconds a process of `fext train --nproc N` waits for the others before failing (default 1800).
# FEXT_DIST_TIMEOUT=1800
"""


@dataclass(frozen=True)
class Workspace:
    """Paths of a FeXT workspace (see the README's "Workspace" section)."""

    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None) -> Workspace:
        """``root``, else ``$FEXT_WORKSPACE``, else the current directory."""
        root = root or environment.workspace() or os.getcwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def config_file(self) -> Path:
        return self.root / "settings" / "configurations.json"

    @property
    def resources(self) -> Path:
        return self.root / "resources"

    @property
    def dataset(self) -> Path:
        return self.resources / "dataset"

    @property
    def extraction(self) -> Path:
        return self.resources / "extraction"

    @property
    def extraction_images(self) -> Path:
        return self.extraction / "images"

    @property
    def checkpoints(self) -> Path:
        return self.resources / "checkpoints"

    @property
    def validation_dataset(self) -> Path:
        return self.resources / "validation" / "dataset"

    @property
    def validation_checkpoints(self) -> Path:
        return self.resources / "validation" / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.resources / "logs"

    @property
    def cache(self) -> Path:
        return self.resources / "cache"

    @property
    def env_file(self) -> Path:
        return self.resources / "variables" / ".env"

    @property
    def env_template(self) -> Path:
        return self.resources / "templates" / ".env"

    @property
    def exists(self) -> bool:
        """True when the folder is a workspace: it holds the configuration file."""
        return self.config_file.is_file()

    def ensure(self) -> Workspace:
        """Create every workspace folder that does not exist yet."""
        for d in (
            self.config_file.parent, self.dataset, self.extraction_images, self.checkpoints,
            self.validation_dataset, self.validation_checkpoints, self.logs, self.env_file.parent,
            self.env_template.parent,
        ):
            d.mkdir(parents=True, exist_ok=True)
        return self


def init_workspace(ws: Workspace, overwrite: bool = False) -> list[Path]:
    """Create the folders, the default configuration and the .env template; return what was written."""
    from fext._io import write_text
    from fext.config import default_config_text

    ws.ensure()
    written = []
    for path, text in ((ws.config_file, default_config_text()), (ws.env_template, ENV_TEMPLATE)):
        if overwrite or not path.exists():
            write_text(path, text)
            written.append(path)
    return written


def require_workspace(ws: Workspace) -> None:
    """Refuse to run in a folder that is not a workspace, before anything is written there."""
    if not ws.exists:
        from fext.errors import NotAWorkspace

        raise NotAWorkspace(
            f"{ws.root} is not a FeXT workspace (it has no {ws.config_file.relative_to(ws.root)}). "
            f"Run `fext init` there to make one, or point to one with --workspace DIR or FEXT_WORKSPACE=DIR."
        )


def parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file; blank lines and ``#`` comments are ignored, quotes stripped."""
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            log.warning("%s:%d: ignored (expected KEY=value): %s", path, number, line)
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a .env file ({} when there is none); the command line puts them in the environment."""
    return parse_env_file(path) if path.is_file() else {}
