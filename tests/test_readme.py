"""The README and docs/ are the user's manual: the README is short and names every command, docs/configuration.md
every configuration key, and every command line they show runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_images, tiny_config

from fext.cli import build_parser
from fext.config import config_to_dict, describe_keys
from fext.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]}
"""Every page whose command lines are run: the README, docs/*.md and benchmarks/README.md."""
README_LINES = 450
"""A README a newcomer reads in ten minutes; the rest is in docs/."""


def test_every_configuration_key_is_documented_with_its_default():
    for key, default, allowed, meaning in describe_keys():
        assert f"| `{key}` | `{default}` | {allowed} | {meaning} |" in CONFIGURATION, key


def test_the_readme_is_short_and_its_links_to_other_pages_lead_somewhere():
    assert len(README.splitlines()) <= README_LINES
    for page, text in PAGES.items():
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[\w-]+)?\)", text):
            assert (ROOT / page).parent.joinpath(target).resolve().is_file(), (page, target)


def test_every_command_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"fext {name}" in README, name


# Every `fext ...` line of the README's code blocks runs, in a fresh copy of a scratch workspace
# holding what a reader would have by then: a tiny configuration (small preset, 64 px, 1 epoch),
# training images, images to encode, one trained checkpoint and its encoded folder.
# Lines showing a transcript (`$ fext ...` followed by output) must print that output.
# To teach the test a new command: put what it needs into `readme_workspace` (or a SETUP entry)
# and, where the README names a path the scratch workspace lacks, a SUBSTITUTIONS entry.

CHECKPOINT_PLACEHOLDER = "FeXT_20250101T120000"
"""The checkpoint name the README uses in examples; replaced by the scratch checkpoint's name."""

SUBSTITUTIONS = {
    "~/Pictures": "resources/extraction/images",  # the reader's photos: the scratch workspace's images to encode
    "--minutes 30": "--minutes 0.0001",  # a training budget: one epoch stands in
    " --open ": " ",  # no web browser in a test (a console one would wait for keys)
    "/data/photos": "photos",  # another image folder, inside the scratch workspace
    "/data/ws": ".",
    "/shared/fext": ".",
}
"""Paths the README names that a scratch workspace cannot have, and what stands in for them."""


def _stray_comma(ws: Path) -> None:
    """A configuration file with a stray comma at line 3, column 27, as in the README's example."""
    (ws / "settings" / "configurations.json").write_text('{\n    "SEED": 42,\n    "dataset": {"xy": 1.0,}\n}\n')


def _tiny_budget(ws: Path) -> None:
    """`fext atlas` chooses a training budget of minutes: the scratch workspace's configuration sets one epoch's worth."""
    config = ws / "settings" / "configurations.json"
    data = json.loads(config.read_text())
    data["training"]["TIME_BUDGET_MINUTES"] = 0.0001
    config.write_text(json.dumps(data))


SETUP: dict[str, Callable[[Path], None]] = {
    "with a stray comma in the file": _stray_comma,
    "fext atlas": _tiny_budget,
}
"""Extra preparation for a README line, keyed by a piece of that line (its comment, say)."""

SHELLS = {"", "bash", "sh", "shell", "console"}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command line, output lines shown under it) for every `fext ...` line in a shell code block of the pages.

    Usage synopses (``[--option ...]`` or an ellipsis) are skipped: they describe, they are not run.
    """
    commands = []
    blocks = [block for text in PAGES.values() for block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]
    for lang, block in blocks:
        if lang not in SHELLS:
            continue
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            transcript = line.startswith("$ ")
            command = line[2:] if transcript else line
            if not command.startswith("fext ") or re.search(r"\[-|\[[A-Z]|…", command.split("#")[0]):
                continue
            output = []
            for following in lines[i + 1:] if transcript else []:
                if following.startswith("$ "):
                    break
                output.append(following)
            if (command.strip(), output) not in commands:
                commands.append((command.strip(), output))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_commands_to_run():
    names = {c.split()[1] for c, _ in COMMANDS}
    assert {"init", "atlas", "train", "evaluate", "encode", "search", "explore"} <= names, names


@pytest.fixture(scope="session")
def readme_workspace(tmp_path_factory) -> Path:
    """A workspace as a reader of the README has it: configured, with images, a checkpoint, vectors."""
    from fext.cli import main

    root = tmp_path_factory.mktemp("readme") / "ws"
    ws = Workspace(root).ensure()
    config = tiny_config(**{"training.EPOCHS": 1, "training.ADDITIONAL_EPOCHS": 1})
    (root / "settings").mkdir(exist_ok=True)
    (root / "settings" / "configurations.json").write_text(json.dumps(config_to_dict(config), indent=4))
    make_images(ws.dataset, 12)
    make_images(ws.extraction_images, 6, seed=1)
    shutil.copy(ws.extraction_images / "img_00.png", ws.extraction_images / "cat.jpg")  # any name the README uses
    make_images(root / "photos", 8, seed=2)
    assert main(["--workspace", str(root), "--quiet", "train"]) == 0
    assert main(["--workspace", str(root), "--quiet", "encode"]) == 0
    return root


def _prepare(template: Path, tmp_path: Path, command: str) -> tuple[Path, str]:
    """A fresh copy of ``template`` and ``command`` with its placeholders replaced."""
    ws = tmp_path / "ws"
    shutil.copytree(template, ws, symlinks=True)
    checkpoint = next((ws / "resources" / "checkpoints").iterdir()).name
    command = command.replace(CHECKPOINT_PLACEHOLDER, checkpoint)
    for placeholder, stand_in in SUBSTITUTIONS.items():
        command = command.replace(placeholder, stand_in)
    for piece, setup in SETUP.items():
        if piece in command:
            setup(ws)
    return ws, command


@pytest.mark.slow  # a subprocess per line, torchrun among them
@pytest.mark.parametrize("command,output", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_every_readme_command_runs(readme_workspace, tmp_path, command, output):
    ws, line = _prepare(readme_workspace, tmp_path, command)
    env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", "-c", line], cwd=ws, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    shown = proc.stdout + proc.stderr
    if any(o.startswith("error:") for o in output):  # a transcript of a mistake: that message, status 1 or 2
        assert proc.returncode in (1, 2), shown[-3000:]
    else:
        assert proc.returncode == 0, f"`{line}` exited {proc.returncode}:\n{shown[-3000:]}"
    for expected in output:
        pieces = [re.escape(p.strip()) for p in expected.split("…")]
        assert re.search(".*".join(pieces), shown), f"`{line}` should print {expected!r}; it printed:\n{shown[-3000:]}"
