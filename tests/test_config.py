"""Configuration: defaults, file, --set overrides, and one clear message per mistake."""

from __future__ import annotations

import json

import pytest

from fext.cli import main
from fext.config import Config, config_from_dict, config_to_dict, describe_keys, load_config, with_overrides
from fext.errors import ConfigError
from fext.workspace import Workspace, init_workspace


def test_init_writes_the_default_file_and_it_round_trips(tmp_path):
    ws = Workspace(tmp_path)
    written = init_workspace(ws)
    assert ws.config_file in written and ws.env_template in written
    assert load_config(ws.config_file) == Config()
    assert json.loads(ws.config_file.read_text()) == config_to_dict(Config())
    assert init_workspace(ws) == []  # an existing file is kept


def test_file_values_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"SEED": 7, "training": {"EPOCHS": 3, "LR_SCHEDULER": {"INITIAL_LR": 0.01}}}))
    cfg = load_config(path, ["training.EPOCHS=5", "model.PRESET=small", "dataset.IMG_AUGMENT=false"])
    assert cfg.SEED == 7
    assert cfg.training.EPOCHS == 5
    assert cfg.training.LR_SCHEDULER.INITIAL_LR == 0.01
    assert cfg.training.LR_SCHEDULER.DECAY_STEPS == 2000  # untouched keys keep their defaults
    assert cfg.model.PRESET == "small" and cfg.dataset.IMG_AUGMENT is False


def test_integers_are_accepted_where_numbers_are():
    cfg = with_overrides(Config(), {"training.LR_SCHEDULER.INITIAL_LR": 1})
    assert cfg.training.LR_SCHEDULER.INITIAL_LR == 1.0 and isinstance(cfg.training.LR_SCHEDULER.INITIAL_LR, float)


@pytest.mark.parametrize(
    "override, words",
    [
        ("dataset.SAMPLE_SIZE=0", ["dataset.SAMPLE_SIZE", "0 < x <= 1"]),
        ("dataset.SAMPLE_SIZE=1.5", ["dataset.SAMPLE_SIZE", "1.5"]),
        ("dataset.VALIDATION_SIZE=1", ["dataset.VALIDATION_SIZE", "0 <= x < 1"]),
        ("training.BATCH_SIZE=0", ["training.BATCH_SIZE", ">= 1"]),
        ("training.LR_SCHEDULER.INITIAL_LR=-0.001", ["training.LR_SCHEDULER.INITIAL_LR", "> 0"]),
        ('device.DEVICE="TPU"', ["device.DEVICE", '"GPU", "CPU"']),
        ("model.IMG_SIZE=100", ["model.IMG_SIZE", "multiple of 64"]),
        ("training.EPOCHS=true", ["training.EPOCHS", "integer"]),
        ("training.EPOCHS=2.5", ["training.EPOCHS", "integer"]),
        ("dataset.IMG_AUGMENT=1", ["dataset.IMG_AUGMENT", "true or false"]),
        ("training.EPOCH=3", ["training.EPOCH", "unknown key", "EPOCHS"]),
        ("training.LR_SCHEDULER=3", ["training.LR_SCHEDULER", "object"]),
        ("EPOCHS", ["key.path=value"]),
    ],
)
def test_each_mistake_names_the_key_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_the_file_is_reported_with_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"dataset": {"SAMPLE_SIZE": 0.5, "SAMPLESIZE": 1}}))
    with pytest.raises(ConfigError, match=r"c\.json: dataset\.SAMPLESIZE: unknown key"):
        load_config(path)


def test_malformed_json_gives_its_line_number(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "SEED": 1,\n  "training": {"EPOCHS": }\n}\n')
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_saved_configuration_round_trips():
    cfg = with_overrides(Config(), ["model.PRESET=small", "SEED=3"])
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_every_key_is_described():
    rows = describe_keys()
    keys = {r[0] for r in rows}
    assert {"SEED", "dataset.SAMPLE_SIZE", "training.LR_SCHEDULER.DECAY_STEPS", "device.NUM_PROCESSORS"} <= keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


@pytest.mark.parametrize(
    "file_text, override, words",
    [
        ('{"dataset": {"SAMPLE_SIZE": 0}}', None, "dataset.SAMPLE_SIZE"),
        ('{"device": {"DEVICE": "TPU"}}', None, "device.DEVICE"),
        ('{"SEED": 1,\n"training": {"BATCH_SIZE": 0,}}', None, "line 2"),
        (None, "training.BATCH_SIZE=0", "training.BATCH_SIZE"),
    ],
)
def test_cli_reports_config_errors_with_exit_status_2_and_no_traceback(tmp_path, capsys, file_text, override, words):
    assert main(["--workspace", str(tmp_path), "init"]) == 0
    if file_text is not None:
        (tmp_path / "settings" / "configurations.json").write_text(file_text)
    capsys.readouterr()
    args = ["--workspace", str(tmp_path)] + (["--set", override] if override else []) + ["config"]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert words in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_the_reconstruction_recipe_is_also_called_seed():
    for name in ("seed", "reconstruction"):
        cfg = with_overrides(Config(), {"training.RECIPE": name})
        assert cfg.training.RECIPE == "reconstruction"
        assert config_to_dict(cfg)["training"]["RECIPE"] == "reconstruction"
