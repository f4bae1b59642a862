"""resources/variables/.env: parsed, loaded at start-up, and its values take effect."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import run_fext
from fext.workspace import ENV_TEMPLATE, Workspace, init_workspace, parse_env_file

INFO_LINE = "From "  # `fext config` says at INFO level which file it showed


def workspace(root) -> Workspace:
    ws = Workspace(root)
    init_workspace(ws)
    return ws


def write_env(ws: Workspace, text: str) -> None:
    ws.env_file.parent.mkdir(parents=True, exist_ok=True)
    ws.env_file.write_text(text)


def test_template_documents_every_variable(tmp_path):
    assert run_fext("--workspace", str(tmp_path), "init").returncode == 0
    template = Workspace(tmp_path).env_template.read_text()
    assert template == ENV_TEMPLATE
    for name in ("FEXT_WORKSPACE", "FEXT_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "FEXT_DIST_TIMEOUT"):
        assert f"# {name}=" in template
    assert parse_env_file(Workspace(tmp_path).env_template) == {}  # everything commented out


def test_parse_env_file_syntax(tmp_path):
    path = tmp_path / ".env"
    path.write_text('# comment\n\nA=1\nexport B = two words \nC="quoted # not a comment"\nD=\'x\'\nnot a line\n1X=bad\n')
    assert parse_env_file(path) == {"A": "1", "B": "two words", "C": "quoted # not a comment", "D": "x"}


def test_log_level_from_env_file_takes_effect(tmp_path):
    """`fext config`'s INFO line follows FEXT_LOG_LEVEL from .env."""
    quiet, plain = workspace(tmp_path / "quiet"), workspace(tmp_path / "plain")
    write_env(quiet, "FEXT_LOG_LEVEL=WARNING\n")
    write_env(plain, "# nothing set\n")
    proc = run_fext("--workspace", str(quiet.root), "config")
    assert proc.returncode == 0 and INFO_LINE not in proc.stderr, proc.stderr
    proc = run_fext("--workspace", str(plain.root), "config")
    assert proc.returncode == 0 and INFO_LINE in proc.stderr, proc.stderr


def test_shell_variables_win_over_the_env_file(tmp_path):
    ws = workspace(tmp_path)
    write_env(ws, "FEXT_LOG_LEVEL=WARNING\n")
    proc = run_fext("--workspace", str(ws.root), "config", env={"FEXT_LOG_LEVEL": "DEBUG"})
    assert INFO_LINE in proc.stderr, proc.stderr


def test_invalid_log_level_is_a_clear_error(tmp_path):
    ws = Workspace(tmp_path)
    write_env(ws, "FEXT_LOG_LEVEL=loud\n")
    proc = run_fext("--workspace", str(ws.root), "config")
    assert proc.returncode == 2
    assert "log level 'LOUD'" in proc.stderr and "FEXT_LOG_LEVEL" in proc.stderr and "Traceback" not in proc.stderr


def test_fext_workspace_from_the_env_file(tmp_path):
    """A .env in the current folder may send every command to another workspace."""
    here, there = Workspace(tmp_path / "here"), Workspace(tmp_path / "there")
    write_env(here, f"FEXT_WORKSPACE={there.root}\n")
    proc = run_fext("init", cwd=here.root)
    assert proc.returncode == 0, proc.stderr
    assert there.config_file.is_file() and not here.config_file.exists()


def test_torch_sees_the_env_file_threads(tmp_path):
    """OMP_NUM_THREADS from .env is set before PyTorch is imported by a command."""
    ws = workspace(tmp_path)
    write_env(ws, "OMP_NUM_THREADS=1\n")
    code = (
        "import sys; from fext.cli import main; assert 'torch' not in sys.modules;"
        f"main(['--workspace', {str(ws.root)!r}, 'config']); import torch; print('threads', torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FEXT_WORKSPACE")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("threads 1")
