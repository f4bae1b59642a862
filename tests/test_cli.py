"""The command line: workspace resolution, init, help, python -m fext."""

from __future__ import annotations

import json

from conftest import run_fext
from fext.cli import main
from fext.workspace import Workspace


def test_init_creates_the_workspace_layout(tmp_path):
    assert main(["--workspace", str(tmp_path), "init"]) == 0
    ws = Workspace(tmp_path)
    for d in (ws.dataset, ws.extraction_images, ws.checkpoints, ws.validation_dataset, ws.validation_checkpoints, ws.logs):
        assert d.is_dir(), d
    assert json.loads(ws.config_file.read_text())["SEED"] == 42
    assert ws.env_template.read_text().startswith("# FeXT environment variables")


def test_workspace_comes_from_the_environment_variable(tmp_path):
    proc = run_fext("init", env={"FEXT_WORKSPACE": str(tmp_path / "w")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w" / "settings" / "configurations.json").is_file()


def test_set_overrides_apply_to_one_run_only(tmp_path, capsys):
    main(["--workspace", str(tmp_path), "init"])
    capsys.readouterr()
    assert main(["--workspace", str(tmp_path), "--set", "training.EPOCHS=5", "--set", "SEED=1", "config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["training"]["EPOCHS"] == 5 and shown["SEED"] == 1
    assert json.loads(Workspace(tmp_path).config_file.read_text())["training"]["EPOCHS"] == 20


def test_python_dash_m_without_terminal_prints_help(tmp_path):
    proc = run_fext(cwd=tmp_path)
    assert proc.returncode == 0
    assert "usage: fext" in proc.stdout
    for command in ("analyze", "train", "evaluate", "encode", "setup", "checkpoints", "search"):
        assert command in proc.stdout
