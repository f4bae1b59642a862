"""Where log messages go: the terminal (stderr) and the workspace's ``resources/logs/fext_<date>.log``.

Set up once by the command line (and the demo) before a command runs; the library only logs.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

from fext.environment import launch_rank
from fext.workspace import Workspace

log = logging.getLogger("fext")


def setup_logging(ws: Workspace, level: str = "INFO", quiet: bool = False) -> None:
    """Log to the terminal (stderr) and to ``resources/logs/fext_<date>.log``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG)
    rank = launch_rank()  # set by torchrun: the other ranks only report errors
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO))
    console.setFormatter(logging.Formatter("%(message)s"))
    if rank != "0":
        console.setLevel(logging.ERROR)
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    root.addHandler(console)
    if rank == "0" and ws.exists:  # outside a workspace (fext init, setup install) nothing is written
        try:
            ws.logs.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(ws.logs / f"fext_{time.strftime('%Y%m%d')}.log", encoding="utf-8")
        except OSError as e:
            log.warning("Cannot write logs to %s (%s)", ws.logs, e.strerror)
        else:
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
    route_library_warnings([h for h in root.handlers if isinstance(h, logging.FileHandler)], rank == "0")
    # faiss's loader logs every CPU variant it tries at INFO.
    for noisy in ("matplotlib", "PIL", "torch._inductor", "torch._dynamo", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_warnings_log = logging.getLogger("py.warnings")
_seen_warnings: set[tuple[str, str]] = set()
_ORIGINAL_SHOWWARNING = warnings.showwarning
_warnings_level = logging.WARNING


def route_library_warnings(files: list[logging.Handler], main_process: bool) -> None:
    """Send the warnings module's warnings (PyTorch's, NumPy's, ...) to the log file only, each once per run.

    They speak to a library's users, not to FeXT's: on the terminal a person can act on none of them,
    yet they would repeat on every command. FeXT's own warnings are log records and still reach the
    terminal. Without a log file (outside a workspace) they reach the terminal at DEBUG level only
    (``--log-level DEBUG``); the other ranks of a torchrun launch drop them (rank 0 writes them once).
    """
    global _warnings_level
    _warnings_log.handlers = list(files) if files or main_process else [logging.NullHandler()]
    _warnings_log.propagate = not files and main_process
    _warnings_level = logging.WARNING if files else logging.DEBUG
    warnings.showwarning = _log_library_warning


def _log_library_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` that logs a warning the first time its category and text are seen."""
    if file is not None:  # an explicit stream was asked for: honour it
        _ORIGINAL_SHOWWARNING(message, category, filename, lineno, file, line)
        return
    key = (category.__name__, str(message))
    if key not in _seen_warnings:
        _seen_warnings.add(key)
        _warnings_log.log(_warnings_level, "%s: %s (%s:%d)", category.__name__, message, filename, lineno)
