"""Atomic writers: files appear whole, with the permissions a normal write would give (the umask).

The end-to-end check runs the real CLI under a restrictive umask and a permissive one, and
compares every file a training run, an encoding and an evaluation wrote with what a plain
``open(path, "w")`` gives under the same umask.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fext._io import atomic_open, atomic_path, write_json
from fext.workspace import Workspace, init_workspace

TINY = ["--set", "model.PRESET=small", "--set", "model.IMG_SIZE=64", "--set", "device.DEVICE=CPU",
        "--set", "device.NUM_PROCESSORS=0", "--set", "training.EPOCHS=1", "--set", "training.BATCH_SIZE=4",
        "--set", "training.USE_TENSORBOARD=true", "--set", "dataset.VALIDATION_SIZE=0.25"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_of_a_normal_write(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_json(tmp_path / "a.json", {"a": 1})
    with atomic_open(tmp_path / "b.bin", "wb") as f:
        f.write(b"\0")
    with atomic_path(tmp_path / "c.npy") as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(3,)).flush()  # reopens the file itself
    with atomic_path(tmp_path / "d.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))  # replaces the file by its own temporary one (0600)
    for name in ("a.json", "b.bin", "c.npy", "d.safetensors"):
        assert _mode(tmp_path / name) == _mode(plain) == 0o666 & ~mask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.npy", "d.safetensors", "plain.txt"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "a.json") as f:
        f.write('{"half')
        raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_every_output_file_of_train_encode_evaluate_respects_the_umask(tmp_path, mask):
    ws = tmp_path / "ws"
    init_workspace(Workspace(ws))
    rng = np.random.default_rng(0)
    for folder in ("resources/dataset", "resources/extraction/images"):
        (ws / folder).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(ws / folder / f"{i}.png")
    script = (f"import os, sys; os.umask({mask:#o}); from fext.cli import main; "
              "sys.exit(main(sys.argv[3:] + sys.argv[1:2]) or main(sys.argv[3:] + sys.argv[2:3]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FEXT_WORKSPACE", None)
    for commands in (("train", "encode"), ("evaluate", "checkpoints")):
        proc = subprocess.run([sys.executable, "-c", script, *commands, "--workspace", str(ws), "--quiet", *TINY],
                              capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in (ws / "resources").rglob("*") if p.is_file() and "dataset" not in p.parts
             and "images" not in p.parts and "templates" not in p.parts]  # the test's own init wrote templates/
    written = {p.relative_to(ws).parts[1] for p in files}
    assert {"checkpoints", "extraction", "validation", "logs"} <= written, written
    assert any(p.name == "model.safetensors" for p in files) and any(p.name == "embeddings.npy" for p in files)
    wrong = {str(p.relative_to(ws)): oct(_mode(p)) for p in files if _mode(p) != 0o666 & ~mask}
    assert not wrong, f"expected {oct(0o666 & ~mask)}"


def test_releasing_freed_memory_frees_a_saved_figure_at_once(tmp_path):
    """A matplotlib figure is a reference cycle holding its renderer's pixel buffer: dropped, it lives on until
    the cycle collector runs. release_freed_memory (after every training epoch) collects it there and then, so
    a long run's memory does not climb between full collections (benchmarks/train_soak.py)."""
    import gc
    import weakref

    from matplotlib.figure import Figure

    from fext._allocator import release_freed_memory
    from fext._io import save_figure

    was_enabled = gc.isenabled()
    gc.disable()  # only the call under test may collect
    try:
        fig = Figure(figsize=(11, 7.5))
        fig.add_subplot().plot([0, 1], [1, 0])
        save_figure(fig, tmp_path / "curves.png")
        alive = weakref.ref(fig)
        del fig
        assert alive() is not None  # a cycle: not freed by its reference count
        release_freed_memory()
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()
