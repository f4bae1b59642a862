"""The environment variables FeXT reads, named and parsed in one place, for the command line's edge.

FeXT's own (``FEXT_WORKSPACE``, ``FEXT_LOG_LEVEL``, ``FEXT_DIST_TIMEOUT``) are read by :func:`fext.cli.main`
when a command starts, through the functions here; torchrun's ``WORLD_SIZE`` and ``RANK`` are the launcher's
contract, read here too and by :mod:`fext.distributed`. A leaf without torch, so ``fext --help`` stays fast.
"""

from __future__ import annotations

import os

WORKSPACE = "FEXT_WORKSPACE"
"""The workspace folder when --workspace is not given."""
LOG_LEVEL = "FEXT_LOG_LEVEL"
"""The log level when --log-level is not given."""
DIST_TIMEOUT = "FEXT_DIST_TIMEOUT"
"""Seconds a process of a torchrun launch waits for the others (:func:`fext.distributed.set_timeout`)."""


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> str:
    """This process's rank in a torchrun launch, as torchrun wrote it ("0" outside one)."""
    return os.environ.get("RANK", "0")


def first_process() -> bool:
    """True except in the ranks other than 0 of a torchrun launch (which say things once, through rank 0)."""
    return launch_rank() == "0"


def workspace() -> str | None:
    """``$FEXT_WORKSPACE``, or None when unset or empty."""
    return os.environ.get(WORKSPACE) or None


def log_level() -> str | None:
    """``$FEXT_LOG_LEVEL``, or None when unset or empty."""
    return os.environ.get(LOG_LEVEL) or None


def dist_timeout() -> float | None:
    """``$FEXT_DIST_TIMEOUT`` in seconds, or None when unset; ValueError with the message for people when not a number."""
    text = os.environ.get(DIST_TIMEOUT, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{DIST_TIMEOUT}={text!r} is not a number of seconds; set it to e.g. 1800") from None


def set_missing(values: dict[str, str]) -> dict[str, str]:
    """Put ``values`` that are not set yet into ``os.environ`` (a workspace's .env file: the shell wins); return those."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    return added
