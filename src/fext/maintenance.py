"""Setup and maintenance: what ``fext setup install|update|clean-logs`` (menu 4) does.

``install_editable`` and ``update_project`` act on FeXT's own source checkout, found by walking
up from the installed package to a ``pyproject.toml`` that names the project ``fext``; an install
from a wheel has no checkout, and says so. ``clean_logs`` removes the workspace's log files.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

from fext.errors import FeXTError
from fext.workspace import Workspace

log = logging.getLogger(__name__)

# fext_20250101.log, and the rotated fext_20250101.log.1, .log.2, ...
_LOG_FILE = re.compile(r".+\.log(\.\d+)?")


def _is_fext_checkout(folder: Path) -> bool:
    """``folder/pyproject.toml`` exists and declares ``[project] name = "fext"``."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the name line of the [project] table is enough
        project = re.search(r"(?ms)^\[project\]\s*$(.*?)(?=^\[|\Z)", text)
        return bool(project and re.search(r"""(?m)^name\s*=\s*["']fext["']""", project.group(1)))
    try:
        return tomllib.loads(text).get("project", {}).get("name") == "fext"
    except tomllib.TOMLDecodeError:
        return False


def find_checkout(checkout: Path | None = None) -> Path:
    """The source checkout FeXT runs from (``checkout`` when given, after checking it).

    Raises FeXTError when FeXT was installed from a package rather than from a checkout.
    """
    if checkout is not None:
        checkout = Path(checkout).resolve()
        if not _is_fext_checkout(checkout):
            raise FeXTError(f"{checkout} is not a FeXT source checkout (no pyproject.toml naming the project \"fext\")")
        return checkout
    import fext

    package = Path(fext.__file__).resolve().parent
    for folder in package.parents:
        if _is_fext_checkout(folder):
            return folder
    raise FeXTError(
        f"FeXT is installed as a package ({package}), not from a source checkout, so there is nothing to "
        "install in editable mode or update; clone the repository and run `pip install -e .` in the clone"
    )


def install_command(checkout: Path) -> list[str]:
    """The command run by :func:`install_editable`: pip of the running interpreter."""
    return [sys.executable, "-m", "pip", "install", "-e", str(checkout)]


def _first_line(text: str, prefer: str = "") -> str:
    """The first line of ``text`` starting with ``prefer`` (else the first non-empty line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    preferred = [ln for ln in lines if prefer and ln.startswith(prefer)]
    return (preferred or lines or ["(no message)"])[0]


def install_editable(ws: Workspace, checkout: Path | None = None) -> str:
    """``pip install -e <checkout>`` with the running interpreter; return what was done.

    Run it after moving the project folder (seed §4): the editable install points at the old path.
    """
    checkout = find_checkout(checkout)
    cmd = install_command(checkout)
    print(f"Running {' '.join(cmd)} ...", flush=True)
    log.info("Running %s", cmd)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.debug("pip output:\n%s\n%s", proc.stdout, proc.stderr)
    if proc.returncode != 0:
        raise FeXTError(
            f"pip install -e {checkout} failed (exit {proc.returncode}): {_first_line(proc.stderr, 'ERROR')}; "
            "the full output is in the log file"
        )
    return f"Installed FeXT from {checkout} in editable mode for {sys.executable}"


def _git(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise FeXTError("git is not installed (or not on PATH); install git to update the project") from None


def update_project(ws: Workspace, checkout: Path | None = None) -> str:
    """``git pull --ff-only`` in FeXT's source checkout; return git's summary line.

    ``--ff-only`` never opens an editor for a merge commit, so the menu cannot get stuck;
    diverged local changes are reported instead of merged.
    """
    checkout = find_checkout(checkout)
    inside = _git(checkout, "rev-parse", "--is-inside-work-tree")
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise FeXTError(f"{checkout} is not a git checkout, so it cannot be updated with git pull; "
                        "download the new version or clone the repository with git")
    print(f"Running git pull --ff-only in {checkout} ...", flush=True)
    proc = _git(checkout, "pull", "--ff-only")
    log.debug("git pull output:\n%s\n%s", proc.stdout, proc.stderr)
    if proc.returncode != 0:
        raise FeXTError(f"git pull in {checkout} failed: {_first_line(proc.stderr, 'fatal')}")
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else "done"
    return f"Updated {checkout}: {summary}"


def log_files(ws: Workspace) -> list[Path]:
    """The log files (``*.log``, rotated ``*.log.N``) directly in ``resources/logs``."""
    if not ws.logs.is_dir():
        return []
    return sorted(p for p in ws.logs.iterdir() if p.is_file() and _LOG_FILE.fullmatch(p.name))


def _release_log_files(folder: Path) -> None:
    """Close this process's open log files in ``folder``; the handlers reopen them on the next record."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder.resolve():
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                    handler.stream = None
            finally:
                handler.release()


def clean_logs(ws: Workspace) -> str:
    """Delete the log files in ``resources/logs`` (nothing else there); say how many."""
    files = log_files(ws)
    _release_log_files(ws.logs)
    removed = 0
    for path in files:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("Could not remove %s (%s)", path, e.strerror)
    return f"Removed {removed} log file{'s' if removed != 1 else ''} from {ws.logs}"
