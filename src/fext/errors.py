"""User-facing errors: one message that says what is wrong and what to do.

Raise :class:`FeXTError` (or a subclass) at the boundary where bad input enters;
the CLI prints its message without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class FeXTError(Exception):
    """An expected failure caused by the user's input or environment."""

    exit_code = 1


class ConfigError(FeXTError):
    """The configuration file or a ``--set`` override is invalid."""

    exit_code = 2


class NotAWorkspace(FeXTError):
    """A command that reads or writes a workspace was run in a folder that is not one."""

    exit_code = 2
