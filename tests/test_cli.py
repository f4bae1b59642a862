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


def test_workspace_comes_from_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FEXT_WORKSPACE", str(tmp_path / "w"))
    assert main(["init"]) == 0
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


def test_global_options_work_before_and_after_the_command_and_add_up(tmp_path, capsys):
    ws = tmp_path / "after"
    assert main(["init", "--workspace", str(ws), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["--set", "SEED=7", "config", "--workspace", str(ws), "--set", "training.EPOCHS=5", "--log-level", "debug"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["SEED"] == 7 and shown["training"]["EPOCHS"] == 5
    assert (ws / "settings" / "configurations.json").is_file() and not (tmp_path / "settings").exists()


def test_an_option_before_the_command_is_not_reset_by_the_subcommand(tmp_path):
    from fext.cli import build_parser

    args = build_parser().parse_args(["--workspace", str(tmp_path), "--quiet", "--log-level", "ERROR", "train"])
    assert (args.workspace, args.quiet, args.log_level) == (tmp_path, True, "ERROR")
    args = build_parser().parse_args(["--workspace", "a", "encode", "--workspace", "b"])
    assert str(args.workspace) == "b"  # the later one wins, as with any repeated option


def test_a_bad_log_level_after_the_command_is_one_clear_error(tmp_path, capsys):
    assert main(["config", "--workspace", str(tmp_path), "--log-level", "LOUD"]) == 2
    assert "log level 'LOUD'" in capsys.readouterr().err


def test_commands_outside_a_workspace_explain_and_write_nothing(tmp_path):
    """Only `fext init` (and the demo) make a workspace; every other command refuses before writing anything,
    even one that would then fail on a rejected --set value."""
    outside = tmp_path / "photos"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"not really")
    for args in (["analyze"], ["--set", "training.EPOCHS=soon", "train"], ["checkpoints"], ["config"],
                 ["encode"], ["explore"], ["search", "somewhere", "--query", "a.jpg"], ["setup", "clean-logs"]):
        proc = run_fext(*args, cwd=outside)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "is not a FeXT workspace" in proc.stderr and "fext init" in proc.stderr, proc.stderr
        assert "--workspace" in proc.stderr and "FEXT_WORKSPACE" in proc.stderr and "Traceback" not in proc.stderr
        assert sorted(p.name for p in outside.iterdir()) == ["a.jpg"], args
    assert run_fext("init", cwd=outside).returncode == 0
    assert (outside / "settings" / "configurations.json").is_file()
