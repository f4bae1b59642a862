"""Setup and maintenance: finding the checkout, pip install -e / git pull errors, removing logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fext
from conftest import run_fext
from fext import maintenance
from fext.cli import main
from fext.errors import FeXTError
from fext.workspace import Workspace

PYPROJECT = '[project]\nname = "fext"\nversion = "0.0.0"\n'


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(
        ["git", "-c", "user.name=FeXT test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main",
         *args], cwd=cwd, env=env, capture_output=True, text=True, check=True,
    )
    return proc.stdout


def fake_checkout(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    return folder


def test_the_running_package_is_found_in_its_checkout():
    checkout = maintenance.find_checkout()
    assert (checkout / "pyproject.toml").is_file()
    assert Path(fext.__file__).resolve().is_relative_to(checkout)


def test_install_uses_pip_of_the_running_interpreter(tmp_path):
    checkout = fake_checkout(tmp_path / "src")
    assert maintenance.install_command(checkout) == [sys.executable, "-m", "pip", "install", "-e", str(checkout)]


def test_a_folder_without_fext_pyproject_is_not_a_checkout(tmp_path, ws):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    for folder in (tmp_path / "other", tmp_path / "empty"):
        with pytest.raises(FeXTError, match="is not a FeXT source checkout"):
            maintenance.install_editable(ws, checkout=folder)
        with pytest.raises(FeXTError, match="is not a FeXT source checkout"):
            maintenance.update_project(ws, checkout=folder)


def test_update_outside_a_git_checkout_says_so(tmp_path, ws):
    checkout = fake_checkout(tmp_path / "plain")
    with pytest.raises(FeXTError, match="is not a git checkout"):
        maintenance.update_project(ws, checkout=checkout)


def test_update_pulls_new_commits(tmp_path, ws):
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--bare", str(origin))
    author = fake_checkout(tmp_path / "author")
    git(author, "init")
    git(author, "add", "pyproject.toml")
    git(author, "commit", "-m", "first")
    git(author, "remote", "add", "origin", str(origin))
    git(author, "push", "-u", "origin", "main")
    git(tmp_path, "clone", str(origin), "user")
    (author / "NEWS").write_text("new\n")
    git(author, "add", "NEWS")
    git(author, "commit", "-m", "second")
    git(author, "push")

    message = maintenance.update_project(ws, checkout=tmp_path / "user")
    assert message.startswith(f"Updated {tmp_path / 'user'}")
    assert (tmp_path / "user" / "NEWS").read_text() == "new\n"
    assert "Already up to date" in maintenance.update_project(ws, checkout=tmp_path / "user")


def test_a_failing_pull_reports_git_message(tmp_path, ws):
    checkout = fake_checkout(tmp_path / "local")
    git(checkout, "init")
    git(checkout, "add", "pyproject.toml")
    git(checkout, "commit", "-m", "only commit, no remote")
    with pytest.raises(FeXTError, match=r"git pull in .* failed: .*(remote|tracking)"):
        maintenance.update_project(ws, checkout=checkout)


def test_cli_setup_outside_a_checkout_explains(tmp_path):
    """A copy of the package outside any checkout behaves like an install from a wheel."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(fext.__file__).parent, site / "fext",
                    ignore=shutil.ignore_patterns("__pycache__", "sample_images"))
    env = {"PYTHONPATH": str(site)}
    for action in ("install", "update"):
        proc = run_fext("--workspace", str(tmp_path / "w"), "setup", action, cwd=tmp_path, env=env)
        assert proc.returncode == 1, proc.stderr
        assert "installed as a package" in proc.stderr and "not from a source checkout" in proc.stderr
        assert "Traceback" not in proc.stderr


def make_logs(ws: Workspace) -> list[Path]:
    ws.logs.mkdir(parents=True, exist_ok=True)
    (ws.logs / "archive").mkdir()
    keep = [ws.logs / "notes.txt", ws.logs / "fext.log.bak", ws.logs / "archive" / "old.log", ws.logs / "catalog"]
    for path in [ws.logs / "fext_20240101.log", ws.logs / "fext_20240101.log.1", ws.logs / "fext_20240101.log.12",
                 ws.logs / "worker.log", *keep]:
        path.write_text("x\n")
    return keep


def test_clean_logs_removes_only_log_files(ws):
    keep = make_logs(ws)
    assert maintenance.clean_logs(ws) == f"Removed 4 log files from {ws.logs}"
    assert sorted(p for p in ws.logs.rglob("*") if p.is_file()) == sorted(keep)
    assert maintenance.clean_logs(ws) == f"Removed 0 log files from {ws.logs}"


def test_clean_logs_command_keeps_logging_afterwards(ws, capsys):
    keep = make_logs(ws)
    assert main(["--workspace", str(ws.root), "setup", "clean-logs"]) == 0
    # The four files above plus the log file this very run had opened.
    assert f"Removed 5 log files from {ws.logs}" in capsys.readouterr().out
    assert all(p.exists() for p in keep)
    assert maintenance.log_files(ws) == []
