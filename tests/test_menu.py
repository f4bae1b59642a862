"""The navigation menu, driven through a real pseudo-terminal, and its error handling in-process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest

import fext
from conftest import make_checkpoint, make_images, run_fext, tiny_config
from fext import cli, commands, menu
from fext import select as select_module
from fext._io import write_text
from fext.checkpoints import read_checkpoint
from fext.config import config_from_dict, config_to_dict
from fext.errors import FeXTError
from fext.workspace import Workspace, init_workspace

PROMPT = r"Select an option \(1-(\d)\): "
N_MAIN = 8
MAIN_ENTRIES = ["1) Analyze image dataset", "2) Model training and evaluation", "3) Encode images",
                "4) Setup and Maintenance", "5) Exit", f"6) {menu.ATLAS_LABEL}",
                "7) Select a subset of encoded images, to label or to keep",
                "8) Score new images by how unlike an encoded collection they are"]
TRAINING_ENTRIES = ["1) Train from scratch", "2) Train from checkpoint", "3) Model evaluation", "4) Back"]
SETUP_ENTRIES = ["1) Install project in editable mode", "2) Update project", "3) Remove logs", "4) Back"]


class Menu:
    """A ``fext`` process on a pseudo-terminal, answered one prompt at a time."""

    def __init__(self, ws: Workspace, env: dict | None = None, timeout: float = 60):
        full_env = {k: v for k, v in os.environ.items() if k not in ("FEXT_WORKSPACE", "FEXT_LOG_LEVEL")}
        full_env.update({"PYTHONUNBUFFERED": "1", "TERM": "dumb", **(env or {})})
        self.child = pexpect.spawn(sys.executable, ["-m", "fext", "--workspace", str(ws.root)], env=full_env,
                                   encoding="utf-8", timeout=timeout, dimensions=(40, 200))
        self.seen = ""

    def prompt(self) -> tuple[str, int]:
        """Wait for the next menu prompt; return the text printed since the last one and the option count."""
        self.child.expect(PROMPT)
        before = self.child.before.replace("\r\n", "\n")
        self.seen += before
        return before, int(self.child.match.group(1))

    def choose(self, answer: str) -> None:
        self.child.sendline(answer)

    def answer(self, question: str, reply: str) -> str:
        """Wait for ``question`` (a regular expression), send ``reply``; the text printed before the question."""
        self.child.expect(question)
        before = self.child.before
        self.child.sendline(reply)
        return before

    def finish(self) -> int:
        self.child.expect(pexpect.EOF)
        self.seen += self.child.before.replace("\r\n", "\n")
        self.child.close()
        return self.child.exitstatus


def assert_entries(text: str, entries: list[str]) -> None:
    positions = [text.find(e) for e in entries]
    assert -1 not in positions and positions == sorted(positions), text


@pytest.mark.slow
def test_navigation_invalid_choices_back_and_exit(ws):
    m = Menu(ws)
    text, n = m.prompt()
    assert n == N_MAIN and f"Workspace: {ws.root}" in text
    assert_entries(text, MAIN_ENTRIES)
    for bad in ("", "0", "9", "abc", "1.5"):
        m.choose(bad)
        text, n = m.prompt()
        assert f"Invalid choice {bad!r}: enter a number from 1 to 8." in text and n == N_MAIN
        assert "1) Analyze" not in text  # asked again, not re-shown
    m.choose("2")
    text, n = m.prompt()
    assert n == 4 and "Model training and evaluation" in text
    assert_entries(text, TRAINING_ENTRIES)
    m.choose("5")
    text, n = m.prompt()
    assert "Invalid choice '5': enter a number from 1 to 4." in text
    m.choose("4")
    text, n = m.prompt()
    assert n == N_MAIN
    assert_entries(text, MAIN_ENTRIES)
    m.choose(" 4 ")
    text, n = m.prompt()
    assert n == 4
    assert_entries(text, SETUP_ENTRIES)
    m.choose("4")
    text, n = m.prompt()
    assert n == N_MAIN
    m.choose("5")
    assert m.finish() == 0
    assert "Goodbye." in m.seen and "Traceback" not in m.seen


def tiny_workspace(ws: Workspace, epochs: int = 1) -> dict:
    """Generated images in the dataset and extraction folders; a 64 px small-preset configuration."""
    make_images(ws.dataset, 5)
    make_images(ws.extraction_images, 2, seed=1)
    cfg = tiny_config(**{"dataset.VALIDATION_SIZE": 0.2, "training.EPOCHS": epochs, "training.ADDITIONAL_EPOCHS": 1,
                         "training.BATCH_SIZE": 2})
    write_text(ws.config_file, json.dumps(config_to_dict(cfg), indent=4))
    return config_to_dict(cfg)


def fabricate_checkpoint(ws: Workspace, name: str, configuration: dict) -> Path:
    """A checkpoint as training writes it (weights, config.json, history.json), made without training."""
    return make_checkpoint(ws.checkpoints / name, config_from_dict(configuration), ws.dataset, epochs=1)


@pytest.mark.slow
def test_every_action_runs_and_checkpoints_are_chosen_by_number(ws):
    """Analyze, train, resume, evaluate, encode from the menu; with two checkpoints the numbered choice asks."""
    configuration = tiny_workspace(ws)
    first = fabricate_checkpoint(ws, "FeXT_20240101T000000", configuration)
    second = fabricate_checkpoint(ws, "FeXT_20240102T000000", configuration)
    m = Menu(ws, timeout=120)
    m.prompt()
    m.choose("1")
    text, n = m.prompt()
    assert n == N_MAIN and "Analyze image dataset: done" in text and (ws.validation_dataset / "report.html").is_file(), text

    m.choose("3")  # Encode images: two checkpoints, so the numbered choice
    m.child.expect(r"Checkpoint number \(1-2\): ")
    choice = m.child.before
    assert f"1) {first.name}" in choice and f"2) {second.name}" in choice
    m.child.sendline("3")
    m.child.expect(r"Invalid choice '3': enter a number from 1 to 2\.")
    m.child.expect(r"Checkpoint number \(1-2\): ")
    m.child.sendline("2")
    text, n = m.prompt()
    assert "Encode images: done" in text, text
    assert np.load(ws.extraction / second.name / "embeddings.npy").shape == (2, 128)
    assert not (ws.extraction / first.name).exists()
    before = json.loads((ws.extraction / second.name / "metadata.json").read_text())["checkpoint"]["hash"]

    m.choose("2")
    m.prompt()
    m.choose("3")  # Model evaluation of the first checkpoint
    m.child.expect(r"Checkpoint number \(1-2\): ")
    m.child.sendline("1")
    text, n = m.prompt()
    assert n == 4 and "Model evaluation: done" in text, text
    assert (ws.validation_checkpoints / first.name / "report.html").is_file()
    assert not (ws.validation_checkpoints / second.name).exists()

    m.choose("2")  # Train from checkpoint: one more epoch on the second
    m.child.expect(r"Checkpoint number \(1-2\): ")
    m.child.sendline("2")
    text, n = m.prompt()
    assert "Train from checkpoint: done" in text, text
    assert read_checkpoint(second).history["total_epochs"] == 2

    m.choose("4")
    m.prompt()
    m.choose("3")  # Encode images with the resumed checkpoint: its old embeddings are replaced on request
    m.child.expect(r"Checkpoint number \(1-2\): ")
    m.child.sendline("2")
    m.child.expect(r"replacing the earlier results\? \[y/N\]: ")
    assert "--overwrite" in m.child.before
    m.child.sendline("y")
    text, n = m.prompt()
    assert "Encode images: done" in text, text
    assert json.loads((ws.extraction / second.name / "metadata.json").read_text())["checkpoint"]["hash"] != before

    m.choose("2")
    m.prompt()

    m.choose("1")  # Train from scratch: a third checkpoint
    text, n = m.prompt()
    assert "Train from scratch: done" in text, text
    assert len(list(ws.checkpoints.iterdir())) == 3
    m.choose("4")
    m.prompt()
    m.choose("5")
    assert m.finish() == 0
    assert "Traceback" not in m.seen and "unexpectedly" not in m.seen


@pytest.mark.slow
def test_select_and_score_ask_what_they_need(ws, tmp_path):
    """Select asks a count and a strategy, score a folder of new images; a novel image is a result, not a failure."""
    configuration = tiny_workspace(ws)
    make_images(ws.extraction_images, 6, seed=1)
    fabricate_checkpoint(ws, "FeXT_20240101T000000", configuration)
    assert run_fext("--workspace", str(ws.root), "encode").returncode == 0
    encoded = ws.extraction / "FeXT_20240101T000000"
    make_images(tmp_path / "new", 2, seed=7)
    m = Menu(ws, timeout=120)
    m.prompt()
    m.choose("7")
    m.answer(r"How many images to pick: ", "0")
    assert "Invalid number '0': enter a whole number of at least 1." in m.answer(r"How many images to pick: ", "3")
    assert "1) diverse: one pick per region" in m.answer(r"Strategy \(1-3\): ", "2")
    text, n = m.prompt()
    assert "Select a subset of encoded images, to label or to keep: done" in text, text
    assert "Selected 3 of 6 images (farthest)" in text
    assert len((encoded / "selection.csv").read_text().splitlines()) == 4
    m.choose("8")
    m.answer(r"Folder of the new images to score: ", str(tmp_path / "missing"))
    refused = m.answer(r"Folder of the new images to score: ", str(tmp_path / "new"))
    assert "is not a folder: enter the path of a folder." in refused
    text, n = m.prompt()
    assert "Score new images by how unlike an encoded collection they are: done" in text, text
    assert "stopped with status" not in text and (encoded / "scores" / "new" / "scores.csv").is_file()
    m.choose("5")
    assert m.finish() == 0
    assert "Traceback" not in m.seen and "unexpectedly" not in m.seen


@pytest.mark.slow
def test_ctrl_c_during_training_returns_to_the_menu(ws):
    tiny_workspace(ws, epochs=500)
    m = Menu(ws, timeout=120)
    m.prompt()
    m.choose("2")
    m.prompt()
    m.choose("1")
    m.child.expect(r"Epoch 1/500")  # a checkpoint exists from here on
    m.child.sendintr()
    text, n = m.prompt()
    assert n == 4 and "Interrupted at epoch" in text and "resume with" in text, text
    assert "Train from scratch interrupted; back to the menu." in text
    (checkpoint,) = list(ws.checkpoints.iterdir())
    assert (checkpoint / "model.safetensors").is_file()
    m.child.sendeof()
    assert m.finish() == 0


@pytest.mark.slow
def test_failing_actions_keep_the_menu_and_ctrl_d_leaves(ws):
    """With no images and no checkpoints every action fails with its message, and the menu carries on."""
    m = Menu(ws)
    m.prompt()
    m.choose("1")
    text, n = m.prompt()
    assert n == N_MAIN and "error:" in text and str(ws.dataset) in text, text
    m.choose("2")
    m.prompt()
    for entry in ("2", "3"):
        m.choose(entry)
        text, n = m.prompt()
        assert n == 4 and "error: No checkpoint in" in text, text
    m.choose("4")
    m.prompt()
    m.choose("3")
    text, n = m.prompt()
    assert n == N_MAIN and "error: No checkpoint in" in text
    m.child.sendeof()
    assert m.finish() == 0
    assert "Goodbye." in m.seen and "Traceback" not in m.seen


@pytest.mark.slow
def test_ctrl_c_at_a_prompt_leaves_cleanly(ws):
    m = Menu(ws)
    m.prompt()
    m.choose("4")
    m.prompt()
    m.child.sendintr()
    assert m.finish() == 0
    assert "Goodbye." in m.seen and "Traceback" not in m.seen and "Interrupted" not in m.seen


@pytest.mark.slow
def test_setup_entries(ws, tmp_path):
    """Install and update explain that a package copy is no checkout; remove logs removes only log files.

    The menu runs from a copy of the package outside any checkout, so that no entry touches the
    real installation (install would run pip on it, update would git pull it).
    """
    site = tmp_path / "site-packages"
    shutil.copytree(Path(fext.__file__).parent, site / "fext", ignore=shutil.ignore_patterns("__pycache__", "sample_images"))
    (ws.logs / "old.log").write_text("x\n")
    (ws.logs / "old.log.3").write_text("x\n")
    (ws.logs / "keep.txt").write_text("x\n")
    m = Menu(ws, env={"PYTHONPATH": str(site)})
    m.prompt()
    m.choose("4")
    m.prompt()
    for entry in ("1", "2"):
        m.choose(entry)
        text, n = m.prompt()
        assert n == 4 and "error: FeXT is installed as a package" in text and "not from a source checkout" in text, text
        assert str(site / "fext") in text
    m.choose("3")
    text, n = m.prompt()
    # The two files above and the log file of this menu session.
    assert n == 4 and f"Removed 3 log files from {ws.logs}" in text and "Remove logs: done" in text
    assert sorted(p.name for p in ws.logs.iterdir()) == ["keep.txt"]
    m.choose("5")
    m.prompt()
    m.choose("4")
    m.prompt()
    m.child.sendeof()
    assert m.finish() == 0
    assert "Traceback" not in m.seen


def test_without_a_terminal_fext_prints_help_and_menu_reads_a_pipe(tmp_path):
    init_workspace(Workspace(tmp_path))
    proc = run_fext("--workspace", str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.startswith("usage: fext") and "Select an option" not in proc.stdout
    env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    proc = subprocess.run([sys.executable, "-m", "fext", "--workspace", str(tmp_path), "menu"], input="9\n4\n4\n5\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Invalid choice '9'" in proc.stdout and "3) Remove logs" in proc.stdout and "Goodbye." in proc.stdout


@pytest.fixture
def ctx(ws) -> commands.CommandContext:
    return commands.CommandContext(workspace=ws, interactive=False)


def test_unexpected_error_is_one_line_and_logged(ctx, monkeypatch, capsys, caplog):
    def broken(ctx, args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(commands, "cmd_analyze", broken)
    caplog.set_level("DEBUG")
    assert menu.run_action(ctx, "Analyze image dataset", ["analyze"], cli.build_parser) is False
    failure = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(failure) == 1 and "\n" not in failure[0].getMessage()
    assert "ZeroDivisionError: division by zero" in failure[0].getMessage()
    traced = [r for r in caplog.records if r.exc_info]
    assert traced and traced[0].levelname == "DEBUG"  # the traceback goes to the log file only


def test_action_errors_and_interrupts_return_to_the_menu(ctx, monkeypatch, capsys):
    def fails(ctx, args):
        raise FeXTError("no usable image in the dataset")

    def interrupted(ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_analyze", fails)
    monkeypatch.setattr(commands, "cmd_train", interrupted)
    assert menu.run_action(ctx, "Analyze image dataset", ["analyze"], cli.build_parser) is False
    assert "error: no usable image in the dataset" in capsys.readouterr().out
    assert menu.run_action(ctx, "Train from scratch", ["train"], cli.build_parser) is False
    assert "Train from scratch interrupted; back to the menu." in capsys.readouterr().out


def test_menu_reloads_the_configuration_for_each_action(ctx, monkeypatch):
    seen = []
    monkeypatch.setattr(commands, "cmd_analyze", lambda ctx, args: seen.append(ctx.config.training.EPOCHS) or 0)
    assert menu.run_action(ctx, "Analyze image dataset", ["analyze"], cli.build_parser)
    text = ctx.workspace.config_file.read_text()
    ctx.workspace.config_file.write_text(re.sub(r'"EPOCHS": \d+', '"EPOCHS": 3', text))
    assert menu.run_action(ctx, "Analyze image dataset", ["analyze"], cli.build_parser)
    assert seen == [20, 3]


def test_every_menu_entry_maps_to_a_cli_command():
    parser = cli.build_parser()
    actions = {}

    def walk(m: menu.Menu) -> None:
        for label, action in m[1]:
            if isinstance(action, tuple):
                walk(action)
            elif action is not None:
                answers = {menu.COUNT: "3", menu.STRATEGY: "diverse"}  # what the user would answer
                actions[label] = parser.parse_args([answers.get(a, a) for a in action]).func.__name__

    walk(menu.MAIN_MENU)
    assert actions == {
        "Analyze image dataset": "cmd_analyze", "Train from scratch": "cmd_train",
        "Train from checkpoint": "cmd_train", "Model evaluation": "cmd_evaluate", "Encode images": "cmd_encode",
        "Install project in editable mode": "cmd_setup", "Update project": "cmd_setup", "Remove logs": "cmd_setup",
        menu.ATLAS_LABEL: "cmd_atlas", "Select a subset of encoded images, to label or to keep": "cmd_select",
        "Score new images by how unlike an encoded collection they are": "cmd_score",
    }
    assert [label for label, _ in menu.MAIN_MENU[1]] == [e.split(") ")[1] for e in MAIN_ENTRIES]
    assert [name for name, _ in menu.STRATEGIES] == list(select_module.STRATEGIES)  # the menu offers every strategy
