"""The README is the user's manual: it must name every configuration key and every command."""

from __future__ import annotations

from pathlib import Path

from fext.cli import build_parser
from fext.config import describe_keys

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_configuration_key_is_documented_with_its_default():
    for key, default, allowed, meaning in describe_keys():
        assert f"| `{key}` | `{default}` | {allowed} | {meaning} |" in README, key


def test_every_command_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"fext {name}" in README, name
