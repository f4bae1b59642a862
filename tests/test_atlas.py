"""`fext atlas`: a folder of images to an atlas in one command, within a training time budget, resumable;
and the time budget of `fext train` (training.TIME_BUDGET_MINUTES, --minutes) it relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, make_images

import fext.training
from fext.atlas import MINUTES, choose_minutes, default_minutes
from fext.checkpoints import read_checkpoint
from fext.cli import main
from fext.config import Config, TrainingConfig, with_overrides
from fext.encoding import open_encoding
from fext.training.schedule import LR_FLOOR, learning_rate, lr_at, lr_in_budget

TINY_SET = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_without_a_budget_the_learning_rate_is_the_step_schedule_exactly():
    training = TrainingConfig()
    for step in (0, 39_999, 40_000, 40_500, 41_999, 42_000, 10**6):
        assert learning_rate(step, 123.0, training) == lr_at(step, training.LR_SCHEDULER)


def test_with_a_budget_the_learning_rate_decays_over_its_last_fifth_to_the_floor():
    assert lr_in_budget(0.0, 10, 1e-3) == lr_in_budget(479.9, 10, 1e-3) == 1e-3
    assert lr_in_budget(540.0, 10, 1e-3) == pytest.approx((1e-3 + LR_FLOOR) / 2)
    assert lr_in_budget(600.0, 10, 1e-3) == lr_in_budget(900.0, 10, 1e-3) == pytest.approx(LR_FLOOR)
    training = with_overrides(Config(), {"training.TIME_BUDGET_MINUTES": 10}).training
    assert learning_rate(10**6, 0.0, training) == training.LR_SCHEDULER.INITIAL_LR  # steps no longer count


def test_the_default_budget_fits_the_machine_and_the_collection():
    assert [default_minutes(n, "cpu") for n in (12, 999, 1_000, 9_999, 31_000)] == [15, 15, 30, 30, 60]
    assert [default_minutes(n, "cuda") for n in (12, 5_000, 50_000, 10**6)] == [5, 10, 20, 30]
    assert all(cpu >= gpu for (_, cpu), (_, gpu) in zip(MINUTES["cpu"], MINUTES["cuda"]))
    cfg = with_overrides(Config(), {"device.DEVICE": "CPU"})
    assert choose_minutes(cfg, None, 2_000) == (30.0, "chosen for a CPU and 2,000 images; --minutes changes it")
    assert choose_minutes(cfg, 7.5, 2_000) == (7.5, "--minutes")
    assert choose_minutes(with_overrides(cfg, {"training.TIME_BUDGET_MINUTES": 3}), None, 2_000)[0] == 3


def test_train_stops_at_the_end_of_the_epoch_that_crosses_the_budget(ws, capsys):
    make_images(ws.dataset, 12)
    assert main(["--workspace", str(ws.root), *TINY_SET, "--set", "training.EPOCHS=3",
                 "train", "--minutes", "0.0001"]) == 0
    err = capsys.readouterr().err
    (folder,) = ws.checkpoints.iterdir()
    epochs = read_checkpoint(folder).epochs
    assert len(epochs) == 1 and epochs[0]["lr"] == pytest.approx(LR_FLOOR)  # 6 ms: the last update is past the budget
    assert "Time budget: 0.0001 minutes (training.TIME_BUDGET_MINUTES)" in err
    assert "Time budget of 0.0001 minutes reached after epoch 1" in err and "Epoch 1:" in err
    assert read_checkpoint(folder).description.configuration.training.TIME_BUDGET_MINUTES == 0.0001


def test_atlas_runs_every_step_then_continues_and_encodes_only_the_new_images(ws, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    make_images(photos, 12)
    argv = ["--workspace", str(ws.root), "--quiet", *TINY_SET, "atlas", str(photos), "--minutes", "0.0001"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (checkpoint,) = ws.checkpoints.iterdir()
    embeddings = ws.extraction / checkpoint.name
    page = embeddings / "explore" / "atlas.html"
    assert f"Atlas: {page.resolve().as_uri()}" in out and page.is_file()
    assert "analyze ran, train ran, evaluate ran, encode ran, index not needed (12 vectors), explore ran" in out
    assert (ws.validation_dataset / "report.html").is_file()
    assert (ws.validation_checkpoints / checkpoint.name / "report.html").is_file()
    assert len(read_checkpoint(checkpoint).epochs) == 1
    first = np.array(open_encoding(embeddings).vectors)

    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert main([*argv, "--open"]) == 0  # nothing changed: nothing runs again; --open opens the page
    assert "analyze done before, train done before, evaluate done before" in capsys.readouterr().out
    assert opened == [page.resolve().as_uri()]

    make_images(photos / "added", 3, seed=9)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "analyze ran, train done before, evaluate done before, encode ran" in out and "explore ran" in out
    assert [p.name for p in ws.checkpoints.iterdir()] == [checkpoint.name]
    encoding = open_encoding(embeddings)
    rows = {row["path"]: i for i, row in enumerate(encoding.read_rows_csv())}
    assert len(rows) == 15 and {f"added/img_0{i}.png" for i in range(3)} <= set(rows)
    old = [rows[f"img_{i:02d}.png"] for i in range(12)]
    assert np.array_equal(np.array(encoding.vectors)[old], first)  # the 12 earlier vectors were kept, not re-encoded


@pytest.mark.parametrize("minutes", [1.0, 0.0001])
def test_an_interrupted_atlas_continues_the_checkpoint_it_left(ws, tmp_path, monkeypatch, capsys, minutes):
    """Ctrl-C after epoch 1: the next run resumes that checkpoint while the budget (1 minute) lasts, and takes it
    as trained when its epoch already used the budget (0.0001 minutes), training nothing more."""
    photos = tmp_path / "photos"
    make_images(photos, 12)
    real_train, calls = fext.training.train, []

    def interrupted_once(cfg, ws_, *, resume=None, dataset=None, progress=True):
        calls.append(resume)
        if resume is not None:
            return resume  # as a resumed run that finished the budget (timed in the tests of the schedule)
        one_epoch = with_overrides(cfg, {"training.TIME_BUDGET_MINUTES": 0, "training.EPOCHS": 1})
        folder = real_train(one_epoch, ws_, resume=resume, dataset=dataset, progress=progress)
        raise fext.training.TrainingInterrupted(f"Interrupted after epoch 1; resume with {folder.name}")  # as Ctrl-C

    monkeypatch.setattr(fext.training, "train", interrupted_once)
    argv = ["--workspace", str(ws.root), "--quiet", *TINY_SET, "atlas", str(photos), "--minutes", str(minutes)]
    assert main(argv) == 130
    assert "Run the same `fext atlas` command again to continue." in capsys.readouterr().err
    (checkpoint,) = ws.checkpoints.iterdir()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [p.name for p in ws.checkpoints.iterdir()] == [checkpoint.name] and f"Checkpoint: {checkpoint}" in out
    if minutes == 1.0:
        assert calls == [None, checkpoint] and "train ran" in out
    else:
        assert calls == [None] and "train done before" in out
    assert main(argv) == 0 and len(calls) == (2 if minutes == 1.0 else 1)  # a third run trains nothing
    if minutes == 1.0:  # a larger --minutes continues the same checkpoint
        assert main([*argv[:-1], "2"]) == 0 and calls == [None, checkpoint, checkpoint]
        assert [p.name for p in ws.checkpoints.iterdir()] == [checkpoint.name]
