"""Training: the files of a run, exact resumes, determinism, Ctrl-C, SIGKILL, NaN, the schedule, CLI errors.

Everything runs the small preset on a dozen generated 64 px images, batch 4, on one CPU thread
(two threads on a busy 2-core machine make tiny convolutions 100x slower while they spin).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_images, tiny_config
from fext import training
from fext.checkpoints import (
    CONFIG, HISTORY, PLOT, SUMMARY, TENSORBOARD, TRAINER_STATE, WEIGHTS, DatasetRecord, epoch_weights_name,
    load_trainer_state, load_weights_file, read_checkpoint,
)
from fext.cli import main
from fext.config import LRSchedulerConfig
from fext.data import select_images
from fext.errors import FeXTError
from fext.model import FeXTAutoEncoder
from fext.training import lr_at, train
from fext.workspace import Workspace, init_workspace

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Also makes runs comparable bit for bit: reductions split over other thread counts round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def new_workspace(root: Path, n: int = 12) -> Workspace:
    ws = Workspace(root)
    init_workspace(ws)
    make_images(ws.dataset, n)
    return ws


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_weights_file(folder / WEIGHTS)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(folder: Path) -> dict:
    return read_checkpoint(folder).history


def trainer_state(folder: Path) -> dict:
    return load_trainer_state(folder)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Workspace, Path]:
    """One 2-epoch run with TensorBoard and per-epoch weights on."""
    ws = new_workspace(tmp_path_factory.mktemp("run"))
    cfg = tiny_config(**{"training.USE_TENSORBOARD": True, "training.SAVE_CHECKPOINTS": True})
    return ws, train(cfg, ws, progress=False)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> Path:
    """The reference for exact resumes: 3 epochs in one go."""
    ws = new_workspace(tmp_path_factory.mktemp("three"))
    return train(tiny_config(**{"training.EPOCHS": 3}), ws, progress=False)


def test_schedule_is_constant_then_linear_to_the_floor():
    s = LRSchedulerConfig(INITIAL_LR=1e-3, CONSTANT_STEPS=10, DECAY_STEPS=4)
    assert lr_at(0, s) == lr_at(9, s) == lr_at(10, s) == 1e-3
    assert lr_at(12, s) == pytest.approx((1e-3 + 1e-8) / 2)
    assert lr_at(13, s) == pytest.approx(1e-3 - 0.75 * (1e-3 - 1e-8))
    assert lr_at(14, s) == lr_at(10_000, s) == pytest.approx(1e-8)
    assert lr_at(0, LRSchedulerConfig(INITIAL_LR=1e-3, CONSTANT_STEPS=0, DECAY_STEPS=2)) == 1e-3
    assert lr_at(1, LRSchedulerConfig(INITIAL_LR=1e-3, CONSTANT_STEPS=0, DECAY_STEPS=2)) == pytest.approx(5e-4 + 5e-9)


def test_a_tiny_run_writes_every_file(run):
    ws, folder = run
    assert folder.parent == ws.checkpoints and folder.name.startswith("FeXT_")
    for name in (WEIGHTS, CONFIG, HISTORY, TRAINER_STATE, PLOT, SUMMARY, epoch_weights_name(1), epoch_weights_name(2)):
        assert (folder / name).is_file(), name
    assert list((folder / TENSORBOARD).glob("events.out.tfevents.*"))
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"

    h = history(folder)
    assert h["total_epochs"] == 2 and [e["epoch"] for e in h["epochs"]] == [1, 2]
    for e in h["epochs"]:
        for split in ("train", "validation"):
            assert set(e[split]) == {"loss", "cosine", "psnr"}
            assert all(math.isfinite(v) for v in e[split].values())
            assert 0 < e[split]["loss"] < 1 and 0 < e[split]["cosine"] <= 1
        assert e["lr"] == 1e-4 and e["seconds"] > 0 and e["images_per_second"] > 0
    assert [e["steps"] for e in h["epochs"]] == [2, 4]

    description = read_checkpoint(folder).description
    assert description.architecture.preset == "small" and description.architecture.img_size == 64
    assert description.configuration.training.EPOCHS == 2
    assert description.dataset == DatasetRecord(str(ws.dataset), 7, 5, 0)
    assert description.fext_version and description.created

    state = trainer_state(folder)  # weights_only=True: no arbitrary unpickling
    assert (state["epoch"], state["step"], state["batch"]) == (2, 4, 0)
    assert state["optimizer"]["state"] and len(state["history"]) == 2
    assert same_weights(state["model"], weights(folder))
    assert same_weights(load_weights_file(folder / epoch_weights_name(2)), weights(folder))
    assert not same_weights(load_weights_file(folder / epoch_weights_name(1)), weights(folder))
    model = FeXTAutoEncoder.from_pretrained(folder)
    assert model.encode(torch.rand(2, 3, 64, 64)).shape == (2, 128)

    assert (folder / "training_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (folder / SUMMARY).read_text()
    assert "parameters:" in summary and "FLOPs/image" in summary and "train: 7  validation: 5" in summary
    assert '"PRESET": "small"' in summary


def test_same_seed_gives_identical_weights_and_another_seed_does_not(run, tmp_path):
    _, first = run
    ws = new_workspace(tmp_path / "again")
    cfg = tiny_config(**{"training.USE_TENSORBOARD": True, "training.SAVE_CHECKPOINTS": True})
    assert same_weights(weights(train(cfg, ws, progress=False)), weights(first))
    other = train(tiny_config(SEED=7), new_workspace(tmp_path / "other"), progress=False)
    assert not same_weights(weights(other), weights(first))


def test_resume_adds_epochs_with_the_saved_configuration_exactly(tmp_path, three_epochs):
    ws = new_workspace(tmp_path)
    folder = train(tiny_config(), ws, progress=False)
    # The current configuration's EPOCHS, BATCH_SIZE and SEED are ignored on resume; ADDITIONAL_EPOCHS is used.
    current = tiny_config(**{"training.ADDITIONAL_EPOCHS": 1, "training.BATCH_SIZE": 2, "training.EPOCHS": 9, "SEED": 5})
    assert train(current, ws, resume=folder, progress=False) == folder
    h = history(folder)
    assert h["total_epochs"] == 3 and [e["steps"] for e in h["epochs"]] == [2, 4, 6]
    assert trainer_state(folder)["step"] == 6
    saved = read_checkpoint(folder).description.configuration
    assert saved.training.ADDITIONAL_EPOCHS == 1 and saved.training.BATCH_SIZE == 4 and saved.SEED == 42
    assert "Resumed" in (folder / SUMMARY).read_text()
    # Optimizer, schedule step and every generator restored: as if the run had never stopped.
    assert same_weights(weights(folder), weights(three_epochs))
    def same(e: dict) -> tuple:
        return e["train"], e["validation"], e["lr"], e["steps"]

    assert [same(e) for e in h["epochs"]] == [same(e) for e in history(three_epochs)["epochs"]]


def test_ctrl_c_inside_an_epoch_saves_a_state_that_resumes_exactly(tmp_path, monkeypatch, three_epochs):
    ws = new_workspace(tmp_path)
    steps = {"n": 0}
    real_inputs = training.loop.training_inputs

    def inputs_then_sigint(*args):
        steps["n"] += 1
        if steps["n"] == 3:  # epoch 2, batch 1: a real SIGINT, as a terminal's Ctrl-C sends
            signal.raise_signal(signal.SIGINT)
        return real_inputs(*args)

    monkeypatch.setattr(training.loop, "training_inputs", inputs_then_sigint)
    with pytest.raises(training.TrainingInterrupted) as info:
        train(tiny_config(**{"training.EPOCHS": 3}), ws, progress=False)
    assert info.value.exit_code == 130
    folder = next(ws.checkpoints.iterdir())
    assert f"Interrupted at epoch 2 step 1; saved epoch 1 + 1 batch of epoch 2 in {folder}" in str(info.value)
    assert f"resume with `fext train --resume {folder.name}`" in str(info.value)
    state = trainer_state(folder)
    assert (state["epoch"], state["step"], state["batch"]) == (1, 3, 1)
    assert history(folder)["total_epochs"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.setattr(training.loop, "training_inputs", real_inputs)
    train(tiny_config(**{"training.ADDITIONAL_EPOCHS": 2}), ws, resume=folder, progress=False)
    assert history(folder)["total_epochs"] == 3
    assert same_weights(weights(folder), weights(three_epochs))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ws = new_workspace(tmp_path)
    steps = {"n": 0}
    real_inputs, real_loss = training.loop.training_inputs, training.objectives.reconstruction_loss

    def counted_inputs(*args):
        steps["n"] += 1
        return real_inputs(*args)

    def nan_at_step_4(reconstruction, target):  # every reconstruction loss of the step (one per view, one at a time)
        loss = real_loss(reconstruction, target)
        return loss * float("nan") if steps["n"] == 4 else loss

    monkeypatch.setattr(training.loop, "training_inputs", counted_inputs)
    monkeypatch.setattr(training.objectives, "reconstruction_loss", nan_at_step_4)
    with pytest.raises(FeXTError) as info:
        train(tiny_config(**{"training.EPOCHS": 3}), ws, progress=False)
    folder = next(ws.checkpoints.iterdir())
    assert str(info.value) == (
        f"Loss became non-finite (nan) at epoch 2, step 2 (global step 4); the last good checkpoint (epoch 1) "
        f"is kept in {folder}; lower training.LR_SCHEDULER.INITIAL_LR"
    )
    assert history(folder)["total_epochs"] == 1 and trainer_state(folder)["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in weights(folder).values())


def test_non_finite_loss_in_the_first_epoch_leaves_no_folder(tmp_path, monkeypatch, caplog):
    ws = new_workspace(tmp_path)
    monkeypatch.setattr(training.objectives, "reconstruction_loss", lambda r, t: (r - t).abs().mean() * float("inf"))
    monkeypatch.setattr(training.start, "_cpu_has_native_bf16", lambda: False)
    with pytest.raises(FeXTError, match=r"non-finite \(inf\) at epoch 1, step 1 .*no epoch had completed") as info:
        train(tiny_config(**{"device.MIXED_PRECISION": True}), ws, progress=False)
    assert str(info.value).endswith("lower training.LR_SCHEDULER.INITIAL_LR or disable device.MIXED_PRECISION")
    assert list(ws.checkpoints.iterdir()) == []
    assert "this CPU has no bf16 instructions" in caplog.text


def _start_training(ws: Workspace, *extra: str) -> subprocess.Popen:
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "training.EPOCHS": 1000}.items()]
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FEXT_WORKSPACE", None)
    return subprocess.Popen([sys.executable, "-m", "fext", "--workspace", str(ws.root), *args, "train", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)


def _wait_for_epochs(proc: subprocess.Popen, ws: Workspace, epochs: int, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for h in ws.checkpoints.glob(f"*/{HISTORY}"):
            if json.loads(h.read_text())["total_epochs"] >= epochs:
                return h.parent
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no epoch completed in {timeout} s: {proc.communicate()}")


def test_sigint_to_the_cli_leaves_a_resumable_checkpoint(tmp_path):
    ws = new_workspace(tmp_path)
    proc = _start_training(ws)
    folder = _wait_for_epochs(proc, ws, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Interrupted ") and last.endswith(f"resume with `fext train --resume {folder.name}`")
    state = trainer_state(folder)
    assert history(folder)["total_epochs"] == state["epoch"] >= 1

    code = main(["--workspace", str(ws.root), "--set", "training.ADDITIONAL_EPOCHS=1", "train", "--resume", folder.name])
    assert code == 0
    assert history(folder)["total_epochs"] == state["epoch"] + 1
    assert trainer_state(folder)["step"] == 2 * (state["epoch"] + 1)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_from_its_last_completed_epoch(tmp_path, capsys):
    ws = new_workspace(tmp_path)
    proc = _start_training(ws)
    folder = _wait_for_epochs(proc, ws, 1)
    proc.kill()
    proc.communicate(timeout=60)
    done = trainer_state(folder)["epoch"]
    assert done >= 1 and history(folder)["total_epochs"] >= done

    assert main(["--workspace", str(ws.root), "--set", "training.ADDITIONAL_EPOCHS=1", "train", "--resume"]) == 0
    assert f"Checkpoint: {folder}" in capsys.readouterr().out
    h = history(folder)
    assert h["total_epochs"] == done + 1 and [e["epoch"] for e in h["epochs"]] == list(range(1, done + 2))
    assert trainer_state(folder)["step"] == 2 * (done + 1)
    assert not list(folder.glob(".*.tmp"))
    FeXTAutoEncoder.from_pretrained(folder)


def test_cli_says_when_the_dataset_folder_is_empty(tmp_path, capsys):
    init_workspace(Workspace(tmp_path))
    assert main(["--workspace", str(tmp_path), "train"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: No image found in ") and "Put images there" in err[-1]
    assert list(Workspace(tmp_path).checkpoints.iterdir()) == []


def test_cli_says_when_no_image_can_be_read(tmp_path, capsys):
    ws = Workspace(tmp_path)
    init_workspace(ws)
    for i in range(3):
        (ws.dataset / f"broken_{i}.jpg").write_text("not a picture")
    assert main(["--workspace", str(tmp_path), "--set", "device.NUM_PROCESSORS=0", "train"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: No readable image in ") and "3 files could not be decoded" in err[-1]
    assert list(ws.checkpoints.iterdir()) == []


def test_a_split_too_small_for_validation_trains_without_it(tmp_path, caplog):
    ws = new_workspace(tmp_path, n=1)
    with caplog.at_level("WARNING"):
        folder = train(tiny_config(**{"training.EPOCHS": 1}), ws, progress=False)
    assert "The validation split is empty" in caplog.text and "training without validation" in caplog.text
    entry = history(folder)["epochs"][0]
    assert entry["validation"] is None and entry["train"]["loss"] > 0
    assert read_checkpoint(folder).description.dataset.validation == 0


def test_unreadable_validation_images_train_without_validation(tmp_path, caplog):
    ws = new_workspace(tmp_path)
    _, validation = select_images(tiny_config(), ws.dataset)
    for path in validation:
        path.write_bytes(b"")
    with caplog.at_level("WARNING"):
        folder = train(tiny_config(**{"training.EPOCHS": 1}), ws, progress=False)
    assert f"None of the {len(validation)} validation images could be read" in caplog.text
    assert history(folder)["epochs"][0]["validation"] is None
    assert read_checkpoint(folder).description.dataset.failed == len(validation)


def test_a_checkpoint_without_trainer_state_resumes_from_its_weights(tmp_path, caplog):
    ws = new_workspace(tmp_path)
    folder = train(tiny_config(), ws, progress=False)
    before = weights(folder)
    (folder / TRAINER_STATE).unlink()
    with caplog.at_level("WARNING"):
        train(tiny_config(**{"training.ADDITIONAL_EPOCHS": 1}), ws, resume=folder, progress=False)
    assert "has no trainer_state.pt: resuming from its weights with a fresh optimizer" in caplog.text
    assert [e["steps"] for e in history(folder)["epochs"]] == [2, 4, 6]
    assert trainer_state(folder)["epoch"] == 3 and not same_weights(weights(folder), before)


def test_resume_after_the_images_moved_needs_their_new_folder(tmp_path):
    ws = new_workspace(tmp_path)
    folder = train(tiny_config(**{"training.EPOCHS": 1}), ws, progress=False)
    moved = ws.dataset.rename(tmp_path / "moved")
    with pytest.raises(FeXTError, match=f"No image found in .* if its images moved, run `fext train --resume {folder.name} --dataset NEW_FOLDER`"):
        train(tiny_config(**{"training.ADDITIONAL_EPOCHS": 1}), ws, resume=folder, progress=False)
    train(tiny_config(**{"training.ADDITIONAL_EPOCHS": 1}), ws, resume=folder, dataset=moved, progress=False)
    assert history(folder)["total_epochs"] == 2
    assert read_checkpoint(folder).description.dataset.root == str(moved)
