"""`fext encode` and the encoding API: files, alignment, failures, resume after a kill, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, make_image_tree, run_fext, tiny_config
from PIL import Image

from fext.config import with_overrides
from fext.data import SKIPPED
from fext.encoding import EMBEDDINGS, FAILED, METADATA, PARTIAL, ROWS_CSV, STATE, encode_folder, encode_images, load_embeddings
from fext.encoding.files import SOURCES
from fext.errors import FeXTError
from fext.model import FeXTAutoEncoder

CPU = tiny_config()
"""The small preset at 64 px on the CPU, no workers: what every encoding here runs with."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "FeXT_20240101T000000", CPU)


def test_encode_folder_writes_aligned_loadable_files(tmp_path, ckpt):
    images = tmp_path / "images"
    names = make_image_tree(images, 9)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("ignored: not an image")
    out = encode_folder(ckpt, images, tmp_path / "out", config=CPU, batch_size=4, per_image=True, progress=False)

    matrix = np.load(out / EMBEDDINGS, allow_pickle=False)
    assert matrix.dtype == np.float32 and matrix.shape == (9, 128)
    assert np.isfinite(matrix).all()
    lines = (out / ROWS_CSV).read_text().splitlines()
    assert lines[0] == "row,path,width,height"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[1] for r in rows] == names and [int(r[0]) for r in rows] == list(range(9))
    assert all((int(w), int(h)) == Image.open(images / p).size for _, p, w, h in rows)
    assert (out / FAILED).read_text().splitlines() == ["path,reason", "broken.jpg,truncated or corrupt image data"]

    # Row i is image i: re-encode every image on its own (batch of one) and compare.
    model = FeXTAutoEncoder.from_pretrained(ckpt)
    for row, name in enumerate(names):
        alone, alone_rows = encode_images(model, [images / name], batch_size=1, config=CPU)
        assert alone_rows[0]["width"] == int(rows[row][2])
        np.testing.assert_allclose(alone[0], matrix[row], atol=1e-5)
        np.testing.assert_array_equal(np.load(out / "per_image" / f"{name}.npy", allow_pickle=False), matrix[row])

    meta = json.loads((out / METADATA).read_text())
    assert meta["checkpoint"]["name"] == ckpt.name and meta["checkpoint"]["path"] == str(ckpt)
    assert (meta["preset"], meta["img_size"], meta["embedding_dim"], meta["images"], meta["failed"]) == ("small", 64, 128, 9, 1)
    assert meta["images_per_second"] > 0 and meta["created"][:2] == "20"
    assert not (out / STATE).exists() and not (out / PARTIAL).exists()


def test_api_round_trip_and_default_output_folder(tmp_path, ckpt, ws):
    names = make_image_tree(ws.extraction_images, 5, seed=1)
    out = encode_folder(ckpt, ws.extraction_images, config=CPU, workspace=ws, batch_size=2, progress=False)
    assert out == ws.extraction / ckpt.name
    stored, rows = load_embeddings(out)
    assert isinstance(stored, np.memmap)
    fresh, fresh_rows = encode_images(ckpt, ws.extraction_images, batch_size=2, config=CPU)
    np.testing.assert_array_equal(fresh, stored)
    assert fresh_rows == rows and [r["path"] for r in rows] == names


def test_mixed_precision_gives_float32_close_to_fp32(tmp_path, ckpt):
    make_image_tree(tmp_path, 3, seed=2)
    fp32, _ = encode_images(ckpt, tmp_path, config=CPU)
    bf16, _ = encode_images(ckpt, tmp_path, config=with_overrides(CPU, {"device.MIXED_PRECISION": True}))
    assert bf16.dtype == np.float32
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.99


def test_jit_compile_encodes_the_same_vectors(tmp_path, ckpt):
    """model.JIT_COMPILE compiles the encoder (inductor, frozen weights) and pads the short last batch."""
    names = make_image_tree(tmp_path / "in", 5, seed=3)
    eager, eager_rows = encode_images(ckpt, tmp_path / "in", batch_size=2, config=CPU)
    out = encode_folder(ckpt, tmp_path / "in", tmp_path / "out", config=with_overrides(CPU, {"model.JIT_COMPILE": True}),
                        batch_size=2, progress=False)
    compiled, rows = load_embeddings(out)
    assert compiled.shape == eager.shape == (5, 128)
    assert rows == eager_rows and [r["path"] for r in rows] == names
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_a_failing_compiler_gets_one_message_and_loses_nothing(tmp_path, ckpt, ws):
    """Inductor without a working C++ compiler: exit 1 with what to change; the same run without it finishes."""
    make_image_tree(tmp_path / "in", 3, seed=4)
    args = ["--workspace", str(tmp_path / "ws"), "--set", "device.DEVICE=CPU", "--set", "device.NUM_PROCESSORS=0"]
    encode = ["encode", str(ckpt), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    env = {"CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # no cached kernels
    proc = run_fext(*args, "--set", "model.JIT_COMPILE=true", *encode, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "torch.compile failed" in proc.stderr and "set model.JIT_COMPILE to false" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_fext(*args, *encode)
    assert proc.returncode == 0, proc.stderr
    assert load_embeddings(tmp_path / "out")[0].shape == (3, 128)


def test_rerun_is_a_no_op_and_other_checkpoints_or_inputs_are_refused(tmp_path, ckpt):
    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 3, seed=3)
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    before = (out / EMBEDDINGS).stat().st_mtime_ns
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    assert (out / EMBEDDINGS).stat().st_mtime_ns == before

    other = make_checkpoint(tmp_path / "other", CPU, seed=1)
    with pytest.raises(FeXTError, match="never mixed.*--overwrite.*--output"):
        encode_folder(other, images, out, config=CPU, progress=False)
    encode_folder(other, images, out, config=CPU, overwrite=True, progress=False)
    meta = json.loads((out / METADATA).read_text())
    assert meta["checkpoint"]["name"] == "other" and meta["images"] == 3


def test_an_unfinished_run_is_resumed_only_with_its_own_checkpoint(tmp_path, ckpt, monkeypatch):
    import fext.encoding.inference

    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 6, seed=5)
    real_embed, calls = fext.encoding.inference.embed, []

    def interrupted_embed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second batch
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(fext.encoding.inference, "embed", interrupted_embed)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(ckpt, images, out, config=CPU, batch_size=2, progress=False)
    assert json.loads((out / STATE).read_text())["done"] == 2
    with pytest.raises(FeXTError, match="did not finish.*run the same"):
        load_embeddings(out)

    other = make_checkpoint(tmp_path / "other", CPU, seed=1)
    with pytest.raises(FeXTError, match="never mixed"):
        encode_folder(other, images, out, config=CPU, batch_size=2, progress=False)
    encode_folder(ckpt, images, out, config=CPU, batch_size=2, progress=False)
    assert len(calls) == 2 + 2  # the two missing batches only
    fresh = encode_folder(ckpt, images, tmp_path / "fresh", config=CPU, batch_size=2, progress=False)
    assert (out / EMBEDDINGS).read_bytes() == (fresh / EMBEDDINGS).read_bytes()


def _fext(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m fext ARGS` in its own process group (so a kill reaches its decoding workers)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "fext", *args], env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _interrupt_when_done(proc: subprocess.Popen, state: Path, min_done: int, sig: int) -> int:
    """Send ``sig`` to the run's process group once its state file records ``min_done`` images; return that count."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.communicate()[0]}"
        try:
            done = json.loads(state.read_text())["done"]
        except (FileNotFoundError, ValueError):
            done = 0
        if done >= min_done:
            os.killpg(proc.pid, sig)
            return done
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the encoding never recorded progress")


@pytest.mark.slow
def test_resume_after_sigkill_and_ctrl_c_gives_the_files_of_one_run(tmp_path, ckpt, ws):
    images = tmp_path / "images"
    make_image_tree(images, 40, seed=4)
    (images / "img000_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = ["--workspace", str(tmp_path / "ws"), "--set", "device.DEVICE=CPU", "--set", "device.NUM_PROCESSORS=1",
              "encode", str(ckpt), "--input", str(images), "--batch-size", "4"]
    reference = _fext(*common, "--output", str(tmp_path / "reference"))  # uninterrupted, running alongside

    # The test hook (tests/hooks/sitecustomize.py) slows every batch down and records progress after each one,
    # so the kills land mid-run.
    hooks = str(Path(__file__).parent / "hooks")
    out, slow = tmp_path / "resumed", {"FEXT_TEST_ENCODE_SLEEP": "0.3", "PYTHONPATH": hooks}
    killed = _fext(*common, "--output", str(out), env=slow)
    first = _interrupt_when_done(killed, out / STATE, 8, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert (out / PARTIAL).exists() and not (out / METADATA).exists()

    stopped = _fext(*common, "--output", str(out), env=slow)  # then Ctrl-C (SIGINT to the process group)
    second = _interrupt_when_done(stopped, out / STATE, first + 8, signal.SIGINT)
    log = stopped.communicate(timeout=60)[0]
    assert stopped.returncode == 130, log
    assert f"Resuming: {first} of 41" in log and "Interrupted after" in log and "run the same command again" in log
    assert second < 41 and json.loads((out / STATE).read_text())["done"] >= second

    final = _fext(*common, "--output", str(out))
    log = final.communicate(timeout=120)[0]
    assert final.returncode == 0, log
    assert reference.wait(timeout=120) == 0, reference.communicate()[0]
    for name in (EMBEDDINGS, ROWS_CSV, FAILED):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert (out / FAILED).read_text().count("img000_corrupt.png") == 1
    assert sorted(p.name for p in out.iterdir()) == sorted([EMBEDDINGS, ROWS_CSV, FAILED, SKIPPED, METADATA, SOURCES])
    meta, ref_meta = (json.loads((d / METADATA).read_text()) for d in (out, tmp_path / "reference"))
    timing = {"created", "elapsed_seconds", "images_per_second"}
    assert {k: v for k, v in meta.items() if k not in timing} == {k: v for k, v in ref_meta.items() if k not in timing}


def test_cli_encode_reports_a_missing_input_folder(tmp_path, ckpt, capsys, ws):
    from fext.cli import main

    code = main(["--workspace", str(ws.root), "encode", str(ckpt), "--input", str(tmp_path / "nowhere")])
    assert code == 1
    assert "not found" in capsys.readouterr().err
