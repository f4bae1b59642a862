"""Checkpoint folders: the `fext checkpoints` table, broken folders, and choosing a checkpoint by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import fake_history, tiny_config
from fext.checkpoint_catalog import checkpoints_table, list_checkpoints, resolve_checkpoint
from fext.checkpoints import CONFIG, CheckpointDescription, DatasetRecord, is_checkpoint, read_checkpoint, save_checkpoint
from fext.cli import main
from fext.errors import FeXTError
from fext.model import FeXTAutoEncoder, load_checkpoint
from fext.workspace import Workspace, init_workspace


def fake_checkpoint(ws: Workspace, name: str, epochs: int = 2, val_loss: float | None = 0.25) -> Path:
    """A checkpoint as `fext train` writes it (weights, config.json, history.json), without training."""
    model = FeXTAutoEncoder.from_preset("small", 64)
    description = CheckpointDescription(model.arch, tiny_config(), DatasetRecord(str(ws.dataset), 9, 3, 1),
                                        "2026-01-02T03:04:05", "0.1.0")
    save_checkpoint(ws.checkpoints / name, model, description, history=fake_history(epochs, val_loss))
    return ws.checkpoints / name


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path)
    init_workspace(ws)
    torch.manual_seed(0)
    return ws


def test_the_table_lists_every_checkpoint_and_broken_folders_without_crashing(workspace, capsys):
    fake_checkpoint(workspace, "FeXT_20260101T000000", epochs=2)
    fake_checkpoint(workspace, "FeXT_20260102T000000", epochs=1, val_loss=None)
    (workspace.checkpoints / "FeXT_20260103T000000").mkdir()  # killed before its first save
    broken = workspace.checkpoints / "FeXT_20260104T000000"
    fake_checkpoint(workspace, broken.name)
    (broken / "config.json").write_text("{not json")

    table = checkpoints_table(workspace).splitlines()
    assert table[0].split() == ["name", "preset", "size", "epochs", "images", "train", "loss", "val", "loss", "created"]
    rows = {line.split()[0]: line for line in table[2:]}
    assert rows["FeXT_20260101T000000"].split() == [
        "FeXT_20260101T000000", "small", "64", "2", "12", "0.2500", "0.2500", "2026-01-02T03:04:05"]
    assert rows["FeXT_20260102T000000"].split()[3:7] == ["1", "12", "0.5000", "-"]
    assert "unreadable: no model.safetensors" in rows["FeXT_20260103T000000"]
    assert "unreadable: Cannot read" in rows[broken.name] and "JSONDecodeError" in rows[broken.name]

    assert main(["--workspace", str(workspace.root), "checkpoints"]) == 0
    assert "FeXT_20260101T000000" in capsys.readouterr().out


def test_an_empty_workspace_says_how_to_make_a_checkpoint(workspace):
    assert checkpoints_table(workspace) == f"No checkpoint in {workspace.checkpoints}; train one with `fext train`."


def test_resolving_a_checkpoint_by_name_path_or_as_the_only_one(workspace):
    with pytest.raises(FeXTError, match="No checkpoint in .*train one with `fext train`"):
        resolve_checkpoint(workspace, None)
    fake_checkpoint(workspace, "FeXT_20260101T000000")
    (workspace.checkpoints / "FeXT_20260103T000000").mkdir()  # unusable folders are never chosen
    only = workspace.checkpoints / "FeXT_20260101T000000"
    assert resolve_checkpoint(workspace, None) == only
    assert resolve_checkpoint(workspace, "FeXT_20260101T000000") == only.resolve()
    assert resolve_checkpoint(workspace, str(only)) == only.resolve()
    with pytest.raises(FeXTError, match="Checkpoint FeXT_nope not found .*available: FeXT_20260101T000000"):
        resolve_checkpoint(workspace, "FeXT_nope")
    with pytest.raises(FeXTError, match="model.safetensors is missing"):
        resolve_checkpoint(workspace, "FeXT_20260103T000000")

    fake_checkpoint(workspace, "FeXT_20260102T000000")
    with pytest.raises(FeXTError, match="Several checkpoints") as info:
        resolve_checkpoint(workspace, None, interactive=False)
    assert "FeXT_20260101T000000" in str(info.value) and "FeXT_20260102T000000" in str(info.value)
    assert [c.name for c in list_checkpoints(workspace) if c.ok] == ["FeXT_20260101T000000", "FeXT_20260102T000000"]


def test_resume_without_a_name_among_several_checkpoints_lists_them(workspace, capsys):
    fake_checkpoint(workspace, "FeXT_20260101T000000")
    fake_checkpoint(workspace, "FeXT_20260102T000000")
    assert main(["--workspace", str(workspace.root), "train", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "Several checkpoints" in err and "FeXT_20260102T000000" in err


def test_a_checkpoint_round_trips_through_the_format_owner(workspace):
    folder = fake_checkpoint(workspace, "FeXT_20260101T000000", epochs=3)
    assert is_checkpoint(folder) and not is_checkpoint(workspace.checkpoints)
    model, checkpoint = load_checkpoint(folder)
    saved = FeXTAutoEncoder.from_preset("small", 64)
    description = checkpoint.description
    assert description == read_checkpoint(folder).description
    assert description.configuration == tiny_config() and description.dataset == DatasetRecord(str(workspace.dataset), 9, 3, 1)
    assert model.arch == saved.arch and [e["epoch"] for e in checkpoint.epochs] == [1, 2, 3]
    assert checkpoint.last("train") == pytest.approx(0.5 / 3)
    # A bare model (save_pretrained) is a checkpoint too, with an architecture only.
    model.save_pretrained(workspace.root / "bare")
    bare = read_checkpoint(workspace.root / "bare")
    assert bare.description.configuration is None and bare.history is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 load_checkpoint(workspace.root / "bare")[0].state_dict().values()))


def test_a_damaged_description_is_one_message_naming_the_file(workspace):
    folder = fake_checkpoint(workspace, "FeXT_20260101T000000")
    text = (folder / CONFIG).read_text().replace('"EPOCHS": 2', '"EPOCHS": -1')
    (folder / CONFIG).write_text(text)
    with pytest.raises(FeXTError, match="saved configuration is invalid .*training.EPOCHS"):
        read_checkpoint(folder)
    (folder / CONFIG).unlink()
    assert not is_checkpoint(folder)
    with pytest.raises(FeXTError, match="config.json missing"):
        load_checkpoint(folder)


def test_a_trained_checkpoint_reads_back_what_training_recorded(trained_checkpoint):
    model, checkpoint = load_checkpoint(trained_checkpoint)
    description = checkpoint.description
    assert description.configuration == tiny_config(**{"training.EPOCHS": 1})
    assert description.architecture == model.arch and model.arch.preset == "small"
    dataset = description.dataset
    assert (dataset.train, dataset.validation, dataset.failed) == (7, 5, 0)
    assert [e["epoch"] for e in checkpoint.epochs] == [1] and checkpoint.last("validation") > 0
    # What is listed is what was written: the table row of a real run.
    ws = Workspace(trained_checkpoint.parents[2])
    row = next(line for line in checkpoints_table(ws).splitlines() if line.startswith(trained_checkpoint.name))
    assert row.split()[1:5] == ["small", "64", "1", "12"]
