"""Damaged files never end in a traceback: every command that reads an embeddings or a checkpoint folder,
given a file of it missing, empty, truncated, overwritten with garbage, of the wrong shape or type, disagreeing
with the others or holding NaN, either stops with one message that names the file and says what to do, or takes
a documented fallback that it says out loud. Nothing the user had is overwritten on the way.

Each case copies one prepared workspace, damages one file, runs the real command line in-process (an exception
other than the handled ones would fail the test with its traceback) and compares every file before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, make_image_tree, tiny_config

from fext.cli import main
from fext.workspace import Workspace, init_workspace

CKPT = "FeXT_20240101T000000"
EMB = f"resources/extraction/{CKPT}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A workspace with a checkpoint (with history and trainer state), its vectors of 10 images and a faiss index."""
    from fext.encoding import encode_folder
    from fext.index import build_index
    from fext.training import train

    root = tmp_path_factory.mktemp("damage") / "ws"
    ws = Workspace(root)
    init_workspace(ws)
    make_image_tree(ws.dataset, 8, seed=3)
    config = tiny_config(**{"training.EPOCHS": 1})
    ckpt = train(config, ws, progress=False)
    ckpt.rename(ws.checkpoints / CKPT)
    make_image_tree(ws.extraction_images, 10, seed=1)
    out = encode_folder(ws.checkpoints / CKPT, ws.extraction_images, config=config, workspace=ws, progress=False)
    build_index(out, "flat")
    return root


def _vectors(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _npy_with(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


def _nan_row(path: Path) -> None:
    v = _vectors(path).copy()
    v[3] = np.nan
    _npy_with(path, v)


def _short_csv(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))


DAMAGES = {
    "missing": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)]),
    "garbage": lambda p: p.write_bytes(bytes(range(256)) * 4),
}
SPECIFIC = {
    "embeddings.npy": {
        "nan-row": _nan_row,
        "float64": lambda p: _npy_with(p, _vectors(p).astype(np.float64)),
        "one-dim": lambda p: _npy_with(p, _vectors(p).ravel()),
        "fewer-rows": lambda p: _npy_with(p, _vectors(p)[:-2]),
    },
    "embeddings_index.csv": {"short": _short_csv, "renumbered": lambda p: p.write_text(p.read_text().replace("\n0,", "\n7,"))},
    "metadata.json": {"a-list": lambda p: p.write_text("[1, 2]"),
                      "wrong-dim": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "embedding_dim": 5}))},
    "index.json": {"wrong-kind": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "kind": "tree"}))},
    "config.json": {"a-list": lambda p: p.write_text("[]")},
    "history.json": {"an-object": lambda p: p.write_text('{"epochs": "many"}')},
}

EMBEDDING_COMMANDS = {
    "search": ["search", EMB, "--query", "img001.jpg", "-k", "3"],
    "index": ["index", EMB],
    "explore": ["explore", EMB, "--no-reconstruction", "--output", "atlas"],
    "export-embeddings": ["export-embeddings", EMB, "--output", "vectors.parquet"],
    "encode": ["encode", CKPT],
    "select": ["select", EMB, "--count", "3"],
}
CHECKPOINT_COMMANDS = {
    "evaluate": ["evaluate", CKPT],
    "train --resume": ["--set", "training.ADDITIONAL_EPOCHS=1", "train", "--resume", CKPT],
    "checkpoints": ["checkpoints"],
    "export": ["export", CKPT, "--format", "torchscript", "--output", "encoder.pt"],
    "encode": ["encode", CKPT],
}
READERS = {  # file -> the commands that read it
    "embeddings.npy": ["search", "index", "explore", "export-embeddings", "encode", "select"],
    "embeddings_index.csv": ["search", "index", "explore", "export-embeddings", "encode", "select"],
    "metadata.json": ["search", "index", "explore", "export-embeddings", "encode", "select"],
    "sources.csv": ["encode", "explore"],
    "index.json": ["search", "select", "index"],
    "faiss.index": ["search", "select", "index"],
    "config.json": ["evaluate", "train --resume", "checkpoints", "export", "encode"],
    "model.safetensors": ["evaluate", "train --resume", "checkpoints", "export", "encode"],
    "trainer_state.pt": ["train --resume"],
    "history.json": ["evaluate", "train --resume", "checkpoints"],
}
FALLBACKS = {  # (file, command) -> what the command must say when it carries on ("": it does not need the file)
    # sources.csv is read only when the folder's listing changed; then unreadable ones are ignored out loud and
    # every image is encoded again (tests/test_incremental.py). Explore finds byte-identical files without it.
    ("sources.csv", "encode"): "", ("sources.csv", "explore"): "",
    ("index.json", "search"): "exact search instead", ("faiss.index", "search"): "exact search instead",
    ("index.json", "select"): "", ("faiss.index", "select"): "",  # selection scans exactly
    ("index.json", "index"): "", ("faiss.index", "index"): "",  # rebuilt: that is the command's job
    **{(name, "checkpoints"): "unreadable" for name in ("config.json", "model.safetensors", "history.json")},
    ("trainer_state.pt", "train --resume"): "fresh optimizer",
    ("history.json", "evaluate"): "no training curves",
    ("history.json", "train --resume"): "",  # the trainer state holds the history; the resumed run rewrites the file
    ("history.json", "missing", "checkpoints"): "",  # history.json is optional: the table lists no epochs
    # fext index reads the vectors only (and the index's length); the searches through it read the rows and stop
    ("embeddings_index.csv", "renumbered", "index"): "",
}
OUTPUTS = {  # what a command may (re)write: its own outputs, never the user's other files
    "index": {"index.json", "faiss.index"}, "explore": {"atlas"}, "select": {"selection.csv"},
    "evaluate": {"validation"},  # the evaluation's folder, and checkpoints_summary.csv refreshed even on failure
    "encode": {"*"}, "train --resume": {"*"},  # carry on only by rewriting what they own (see FALLBACKS)
}


def _cases() -> list:
    cases = []
    for name, commands in READERS.items():
        for damage in [*DAMAGES, *SPECIFIC.get(name, {})]:
            for command in commands:
                cases.append(pytest.param(name, damage, command, id=f"{name}-{damage}-{command}"))
    return cases


CHECKPOINT_FILES = {"config.json", "model.safetensors", "trainer_state.pt", "history.json"}


def _where(root: Path, name: str) -> Path:
    return root / (f"resources/checkpoints/{CKPT}" if name in CHECKPOINT_FILES else EMB) / name


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "logs" not in p.parts}


@pytest.mark.parametrize("name, damage, command", _cases())
def test_a_damaged_file_is_one_clear_message_or_a_said_fallback(prepared, tmp_path, capsys, caplog, name, damage, command):
    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    path = _where(root, name)
    (DAMAGES | SPECIFIC.get(name, {}))[damage](path)
    before = _snapshot(root)
    args = (EMBEDDING_COMMANDS | CHECKPOINT_COMMANDS)[command]
    args = [str(root / a) if a.startswith(("resources/", "atlas", "vectors.", "encoder.")) else a for a in args]
    code = main(["--workspace", str(root), "--quiet", "--set", "device.NUM_PROCESSORS=0", *args])
    out, err = capsys.readouterr()
    said = out + err + caplog.text
    assert "Traceback" not in said
    after = _snapshot(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    allowed = OUTPUTS.get(command, set())
    if "*" not in allowed:
        assert all(set(Path(k).parts) & allowed for k in changed), f"changed: {sorted(changed)}"
    if code != 0:
        assert err.startswith("error: ") and name in err, (code, err)
        assert not changed or "*" not in allowed, "a failed command changed files"
        return
    fallback = FALLBACKS.get((name, damage, command), FALLBACKS.get((name, command)))
    assert fallback is not None, f"exit 0 on a damaged {name} ({damage}) without a documented fallback: {said}"
    assert fallback.lower() in said.lower(), said


@pytest.mark.parametrize("command", ["export-embeddings", "select", "export"])
def test_an_output_that_cannot_be_written_is_one_clear_message(prepared, tmp_path, capsys, command):
    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder is expected")
    target = blocker / "inside" / "out.file"
    args = {"export-embeddings": ["export-embeddings", str(root / EMB), "--output", str(target)],
            "select": ["select", str(root / EMB), "--count", "2", "--output", str(target)],
            "export": ["export", CKPT, "--format", "torchscript", "--output", str(target)]}[command]
    assert main(["--workspace", str(root), "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot write {target}") and "Traceback" not in err, err


@pytest.mark.parametrize("damage", ["empty", "garbage", "a-list"])
def test_a_damaged_encode_state_is_encoded_again_out_loud(prepared, tmp_path, capsys, damage):
    """An interrupted encoding whose state file is damaged starts that encoding again, and says so."""
    from fext.encoding import STATE

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    folder = root / EMB
    (folder / "metadata.json").unlink()  # as after an interrupted run: no metadata yet, partial rows, a state file
    (folder / "embeddings.npy").rename(folder / "embeddings.partial.npy")
    (folder / STATE).write_bytes({"empty": b"", "garbage": bytes(range(256)), "a-list": b"[1]"}[damage])
    code = main(["--workspace", str(root), "--set", "device.NUM_PROCESSORS=0", "encode", CKPT])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    assert STATE in err and "again" in err, err
    assert (folder / "metadata.json").is_file() and not (folder / STATE).exists()
    assert np.load(folder / "embeddings.npy").shape[0] == 10
