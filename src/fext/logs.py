"""Where log messages go: the terminal (stderr) and the workspace's ``resources/logs/fext_<date>.log``.

Set up once by the command line (and the demo) before a command runs; the library only logs.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from fext.workspace import Workspace

log = logging.getLogger("fext")


def setup_logging(ws: Workspace, level: str = "INFO", quiet: bool = False) -> None:
    """Log to the terminal (stderr) and to ``resources/logs/fext_<date>.log``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG)
    rank = os.environ.get("RANK", "0")  # set by torchrun: the other ranks only report errors
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO))
    console.setFormatter(logging.Formatter("%(message)s"))
    if rank != "0":
        console.setLevel(logging.ERROR)
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    root.addHandler(console)
    if rank == "0":
        try:
            ws.logs.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(ws.logs / f"fext_{time.strftime('%Y%m%d')}.log", encoding="utf-8")
        except OSError as e:
            log.warning("Cannot write logs to %s (%s)", ws.logs, e.strerror)
        else:
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
    for noisy in ("matplotlib", "PIL", "torch._inductor", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
