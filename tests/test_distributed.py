"""Training and encoding under torchrun: two CPU processes with gloo, real subprocesses.

The small preset on a dozen generated 64 px images, batch 4, one thread per process: 7 training
images split over 2 ranks (padded to 4 + 4) and 5 validation images (3 + 2). Each torchrun run
takes a few seconds, most of it starting Python and importing torch three times.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_checkpoint, make_images
from fext import distributed
from fext.checkpoints import WEIGHTS, load_trainer_state, load_weights_file, read_checkpoint
from fext.config import Config, with_overrides
from fext.data import prepare_images, select_images
from fext.encoding import EMBEDDINGS, FAILED, METADATA, PARTS, ROWS_CSV, STATE, encode_folder
from fext.model import FeXTAutoEncoder
from fext.training import validate
from fext.workspace import Workspace, init_workspace

TINY = {
    "model.PRESET": "small", "model.IMG_SIZE": 64, "device.DEVICE": "CPU", "device.NUM_PROCESSORS": 0,
    "training.EPOCHS": 1, "training.BATCH_SIZE": 4, "training.USE_TENSORBOARD": False,
    "dataset.VALIDATION_SIZE": 0.25,
}
SETS = [arg for key, value in TINY.items()
        for arg in ("--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fext"]
FEXT = [sys.executable, "-m", "fext"]
HOOKS = Path(__file__).parent / "hooks"
FAIL_RANK, DUMP_WEIGHTS = "FEXT_TEST_FAIL_RANK", "FEXT_TEST_DUMP_WEIGHTS"
HOOK_ENV = {FAIL_RANK, DUMP_WEIGHTS}


def run(command: list[str], timeout: float = 100, **env: str) -> subprocess.CompletedProcess:
    """Run a command with one thread per process and a short collective timeout; text output."""
    full_env = {k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}
    full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: "60", **env})
    if HOOK_ENV & env.keys():  # the test hooks, installed at startup in every process (see hooks/sitecustomize.py)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), full_env.get("PYTHONPATH")]))
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def new_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    init_workspace(ws)
    make_images(ws.dataset)
    return ws


def checkpoints(ws: Workspace) -> list[Path]:
    return sorted(p for p in ws.checkpoints.iterdir() if p.is_dir())


def history(folder: Path) -> dict:
    return read_checkpoint(folder).history


def assert_same_weights(*states: dict[str, torch.Tensor]) -> None:
    first = states[0]
    for other in states[1:]:
        assert other.keys() == first.keys()
        assert all(torch.equal(first[k], other[k]) for k in first)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One epoch with `fext train --nproc 2`, then one more with `torchrun ... train --resume`;
    and two epochs in one go in another workspace."""
    root = tmp_path_factory.mktemp("ddp")
    ws = new_workspace(root / "ws")
    first = run([*FEXT, "--workspace", str(ws.root), *SETS, "train", "--nproc", "2"],
                **{DUMP_WEIGHTS: str(root / "dump1")})
    assert first.returncode == 0, first.stderr
    folder = checkpoints(ws)[0]
    after_one = {"history": history(folder), "weights": load_weights_file(folder / WEIGHTS),
                 "state": load_trainer_state(folder)}
    second = run([*TORCHRUN, "--workspace", str(ws.root), *SETS, "--set", "training.ADDITIONAL_EPOCHS=1",
                  "train", "--resume"], **{DUMP_WEIGHTS: str(root / "dump2")})
    assert second.returncode == 0, second.stderr
    straight = new_workspace(root / "straight")
    both = run([*TORCHRUN, "--workspace", str(straight.root), *SETS, "--set", "training.EPOCHS=2", "train"])
    assert both.returncode == 0, both.stderr
    return {"root": root, "ws": ws, "first": first, "second": second, "after_one": after_one,
            "straight": history(checkpoints(straight)[0])}


@pytest.mark.slow
def test_an_epoch_on_two_ranks_ends_with_the_same_weights_in_one_checkpoint(trained):
    ws, root, first = trained["ws"], trained["root"], trained["first"]
    assert len(checkpoints(ws)) == 1
    assert first.stdout.count("Checkpoint: ") == 1
    saved = trained["after_one"]["weights"]
    assert_same_weights(saved, load_weights_file(root / "dump1" / "rank0.safetensors"),
                        load_weights_file(root / "dump1" / "rank1.safetensors"))
    # 7 training images padded to 8 = 2 ranks x 1 batch of 4: one step, global batch 8.
    (entry,) = trained["after_one"]["history"]["epochs"]
    assert entry["steps"] == 1
    assert "global batch 8" in first.stderr
    assert len(trained["after_one"]["state"]["rng_ranks"]) == 2
    # Only rank 0 writes the log file.
    log_text = "".join(p.read_text() for p in ws.logs.glob("*.log"))
    assert "Process 0 of 2" in log_text and "Process 1 of 2" not in log_text


@pytest.mark.slow
def test_validation_metrics_over_two_ranks_are_the_exact_average(trained):
    """The validation images split 3 + 2 over the ranks give the mean of one process over all 5."""
    ws = trained["ws"]
    cfg = with_overrides(Config(), TINY)
    _, val_paths = select_images(cfg, ws.dataset)
    images = prepare_images(val_paths, 64, ws.cache, 0, progress=False)
    model = FeXTAutoEncoder.from_preset("small", 64)
    model.load_state_dict(trained["after_one"]["weights"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = validate(model, model, images, torch.arange(len(val_paths)), cfg, torch.device("cpu"), show_bar=False)
    finally:
        torch.set_num_threads(threads)
    got = trained["after_one"]["history"]["epochs"][0]["validation"]
    assert len(val_paths) == 5
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_resume_under_torchrun_continues_exactly_with_the_same_weights_on_every_rank(trained):
    ws, root = trained["ws"], trained["root"]
    (folder,) = checkpoints(ws)
    h = history(folder)
    assert h["total_epochs"] == 2 and [e["epoch"] for e in h["epochs"]] == [1, 2]
    assert h["epochs"][0] == trained["after_one"]["history"]["epochs"][0]
    assert [e["steps"] for e in h["epochs"]] == [1, 2]
    saved = load_weights_file(folder / WEIGHTS)
    assert_same_weights(saved, load_weights_file(root / "dump2" / "rank0.safetensors"),
                        load_weights_file(root / "dump2" / "rank1.safetensors"))
    assert not all(torch.equal(saved[k], trained["after_one"]["weights"][k]) for k in saved)
    # Every rank got back its own generators (augmentation, dropout): epoch 2 is the one of a run that never
    # stopped. (Separate processes may round differently, ~1e-7; other augmentations on rank 1 move the
    # metrics by ~1e-2.)
    for split in ("train", "validation"):
        assert h["epochs"][1][split] == pytest.approx(trained["straight"]["epochs"][1][split], rel=1e-5)


@pytest.mark.slow
def test_a_failing_rank_stops_the_whole_run_with_its_message(tmp_path):
    ws = new_workspace(tmp_path / "ws")
    started = time.monotonic()
    result = run([*TORCHRUN, "--workspace", str(ws.root), *SETS, "train"], timeout=90,
                 **{FAIL_RANK: "1"})
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "error: Rank 1 failed on purpose" in result.stderr
    # Rank 0 was stopped before any epoch was saved: no half-made checkpoint folder.
    assert checkpoints(ws) == []


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_encoding_on_two_ranks_writes_the_files_of_one_process_and_resumes_per_shard(tmp_path, ws):
    cfg = with_overrides(Config(), TINY)
    ckpt = tmp_path / "FeXT_20240101T000000"
    make_checkpoint(ckpt, cfg)
    images = tmp_path / "images"
    make_images(images / "sub", 5, seed=1)
    make_images(images, 8, seed=2)
    (images / "broken.jpg").write_bytes(b"not an image")
    single = encode_folder(ckpt, images, tmp_path / "single", config=cfg, batch_size=4, progress=False)

    out = tmp_path / "two"
    command = [*TORCHRUN, "--workspace", str(tmp_path / "ws"), *SETS, "encode", str(ckpt), "--input", str(images),
               "--output", str(out), "--batch-size", "4"]
    # Rank 1 fails once its part is written: the run stops, both parts stay for the next run.
    failed = run(command, **{FAIL_RANK: "1"})
    assert failed.returncode != 0 and "Rank 1 failed on purpose" in failed.stderr
    part = json.loads((out / PARTS / "00001-of-00002" / STATE).read_text())
    assert part["done"] == part["images"] == 7
    assert not (out / METADATA).exists()

    done = run(command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Embeddings: ") == 1
    assert read_csv(out / ROWS_CSV) == read_csv(single / ROWS_CSV) and len(read_csv(out / ROWS_CSV)) == 14
    assert read_csv(out / FAILED) == read_csv(single / FAILED) == [["path", "reason"], ["broken.jpg", "not an image"]]
    np.testing.assert_allclose(np.load(out / EMBEDDINGS), np.load(single / EMBEDDINGS), atol=1e-5)
    ours, theirs = json.loads((out / METADATA).read_text()), json.loads((single / METADATA).read_text())
    assert ours.pop("processes") == 2
    assert ours.keys() == theirs.keys()
    assert {k: ours[k] for k in ("checkpoint", "images", "failed", "files", "listing")} == \
        {k: theirs[k] for k in ("checkpoint", "images", "failed", "files", "listing")}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())


def test_shards_cover_every_row_with_equal_steps_or_exactly_once():
    rows = torch.arange(7)
    padded = [distributed.shard(rows, pad=True, rank_=r, world=3) for r in range(3)]
    assert [len(s) for s in padded] == [3, 3, 3]
    assert sorted(torch.cat(padded).tolist()) == [0, 0, 1, 1, 2, 3, 4, 5, 6]
    exact = [distributed.shard(rows, pad=False, rank_=r, world=3) for r in range(3)]
    assert sorted(torch.cat(exact).tolist()) == list(range(7))
    assert distributed.shard(rows, pad=True) is rows  # one process: the order itself
    blocks = [distributed.contiguous_shard(14, r, 4) for r in range(4)]
    assert blocks == [(0, 3), (3, 7), (7, 10), (10, 14)]


def test_nproc_becomes_a_torchrun_command_without_it():
    command = distributed.torchrun_command(3, ["--workspace", "w", "train", "--nproc", "3", "--resume"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "fext",
                           "--workspace", "w", "train", "--resume"]
    assert distributed.torchrun_command(2, ["train", "--nproc=2"])[-1] == "train"
