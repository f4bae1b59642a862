"""Questions asked on a terminal: a yes/no, a numbered choice, a count and a folder, asked again until the
answer is valid.

A leaf module: the menu, the checkpoint choice and the choice of an encoded folder all ask through it,
so every prompt reads and answers the same way. EOFError and KeyboardInterrupt propagate to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def ask_yes_no(question: str) -> bool:
    """Ask a yes/no question (default no)."""
    while True:
        answer = input(f"{question} [y/N]: ").strip().lower()
        if answer in ("", "n", "no"):
            return False
        if answer in ("y", "yes"):
            return True
        print(f"Invalid answer {answer!r}: enter y or n.")


def ask_number(label: str, n: int) -> int:
    """Ask ``label (1-n):`` until a number in 1..n is given; that number."""
    while True:
        answer = input(f"{label} (1-{n}): ").strip()
        if answer.isdigit() and 1 <= int(answer) <= n:
            return int(answer)
        print(f"Invalid choice {answer!r}: enter a number from 1 to {n}.")


def ask_count(label: str) -> int:
    """Ask ``label:`` until a whole number of at least 1 is given; that number."""
    while True:
        answer = input(f"{label}: ").strip()
        if answer.isdigit() and int(answer) >= 1:
            return int(answer)
        print(f"Invalid number {answer!r}: enter a whole number of at least 1.")


def ask_folder(label: str) -> str:
    """Ask ``label:`` until the path of an existing folder is given (``~`` expanded); that path."""
    while True:
        answer = os.path.expanduser(input(f"{label}: ").strip())
        if answer and os.path.isdir(answer):
            return answer
        print(f"{answer!r} is not a folder: enter the path of a folder.")


def choose(names: Sequence[str], label: str) -> int:
    """List ``names`` numbered from 1, then ask for one (:func:`ask_number`); its position in ``names``."""
    for i, name in enumerate(names, 1):
        print(f"  {i}) {name}")
    return ask_number(label, len(names)) - 1
