"""Shared fixtures: a workspace in a temporary folder, a subprocess runner for the real CLI."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fext.workspace import Workspace

# A runner that starts the suite as a background job may leave SIGINT ignored, and an ignored signal
# is inherited by every subprocess (Python then installs no KeyboardInterrupt handler). The Ctrl-C
# tests need the usual disposition here and in the processes they start.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolate_logging():
    """Undo what a test's in-process `fext` run did to logging (handlers on captured streams, levels)."""
    root, fext = logging.getLogger(), logging.getLogger("fext")
    handlers, levels = list(root.handlers), (root.level, fext.level)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(levels[0])
    fext.setLevel(levels[1])


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An initialised, empty workspace."""
    from fext.workspace import init_workspace

    workspace = Workspace(tmp_path / "ws")
    init_workspace(workspace)
    return workspace


def run_fext(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fext ARGS` in a real subprocess; return the completed process (text output)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "fext", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )
