"""Defaults that fit the machine (device and workers "auto") and a terminal that only says what a person can act on."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_image_tree, make_images, run_fext

from fext import device as fext_device
from fext import machine
from fext.config import Config, load_config
from fext.logs import setup_logging
from fext.workspace import Workspace


def test_defaults_are_auto_and_resolve_to_what_the_machine_has():
    cfg = Config()
    assert (cfg.device.DEVICE, cfg.device.NUM_PROCESSORS) == ("auto", "auto")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= machine.usable_cores() <= cores
    assert machine.data_workers("auto") == machine.auto_workers(machine.usable_cores())
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert fext_device.select_device("auto") == expected


@pytest.mark.parametrize("cores, processes, workers", [(1, 1, 0), (2, 1, 1), (8, 1, 7), (16, 4, 3), (64, 1, 16), (2, 4, 0)])
def test_auto_workers_leave_a_core_per_process_and_stay_bounded(cores, processes, workers):
    assert machine.auto_workers(cores, processes) == workers


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),  # no cgroup file system (macOS, Windows)
])
def test_cgroup_cpu_limit_reads_the_container_quota(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert machine.cgroup_cpu_limit(tmp_path) == limit


def test_a_container_quota_caps_the_usable_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one
    assert machine.usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert machine.usable_cores(tmp_path) == machine.usable_cores(tmp_path / "absent")


def test_workers_above_the_cores_are_honoured_with_one_warning_that_says_what_to_do(caplog):
    too_many = machine.usable_cores() + 3
    with caplog.at_level(logging.WARNING, logger="fext.machine"):
        assert machine.data_workers(too_many) == too_many
        assert machine.data_workers(too_many) == too_many
    messages = [r.getMessage() for r in caplog.records if r.name == "fext.machine"]
    assert len(messages) == 1
    assert f"device.NUM_PROCESSORS is {too_many}" in messages[0] and '"auto"' in messages[0]


def test_a_workspace_made_before_keeps_its_explicit_device_values(tmp_path):
    path = tmp_path / "configurations.json"
    path.write_text(json.dumps({"device": {"DEVICE": "GPU", "DEVICE_ID": 0, "MIXED_PRECISION": False,
                                           "NUM_PROCESSORS": 4}}))
    cfg = load_config(path)
    assert (cfg.device.DEVICE, cfg.device.NUM_PROCESSORS) == ("GPU", 4)
    assert machine.data_workers(cfg.device.NUM_PROCESSORS) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is seen on machines without a GPU")
def test_gpu_without_one_warns_once_and_auto_says_the_device_once(caplog):
    fext_device._said.clear()
    with caplog.at_level(logging.INFO, logger="fext.device"):
        for _ in range(2):
            assert fext_device.select_device("GPU") == torch.device("cpu")
            assert fext_device.select_device("auto") == torch.device("cpu")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fext.device"]
    assert lines == [
        ("WARNING", 'device.DEVICE is "GPU" but PyTorch sees no GPU: running on the CPU '
                    '(set device.DEVICE to "auto" to use a GPU when there is one, or "CPU")'),
        ("INFO", 'Device: cpu (no GPU found; device.DEVICE "auto")'),
    ]


def test_library_warnings_go_to_the_log_file_once_and_not_to_the_terminal(ws, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the warnings module would repeat it: the log file must not
        setup_logging(ws)
        for line in range(3):
            warnings.warn_explicit("a library's notice", UserWarning, f"lib_{line}.py", line)
        logging.getLogger("fext").warning("FeXT's own warning: set X to Y")
    for handler in logging.getLogger().handlers:
        handler.flush()
    err = capsys.readouterr().err
    assert "a library's notice" not in err and "FeXT's own warning: set X to Y" in err
    text = "".join(p.read_text() for p in ws.logs.glob("*.log"))
    assert text.count("UserWarning: a library's notice") == 1


def _tiny_defaults_workspace(root: Path) -> Path:
    """A workspace whose configuration is the default but for the small preset and one short epoch."""
    assert run_fext("--workspace", str(root), "init").returncode == 0
    make_images(root / "resources" / "dataset")
    make_image_tree(root / "resources" / "extraction" / "images", 20)
    config = json.loads((root / "settings" / "configurations.json").read_text())
    assert config["device"] == {"DEVICE": "auto", "DEVICE_ID": 0, "MIXED_PRECISION": False, "NUM_PROCESSORS": "auto"}
    config["model"].update(PRESET="small", IMG_SIZE=64)
    config["training"].update(EPOCHS=1, ADDITIONAL_EPOCHS=1, BATCH_SIZE=4)
    (root / "settings" / "configurations.json").write_text(json.dumps(config, indent=4))
    return root


@pytest.mark.slow
def test_every_command_with_the_defaults_prints_no_warning(tmp_path):
    root = _tiny_defaults_workspace(tmp_path / "ws")
    cpu = not torch.cuda.is_available()

    def fext(*args: str) -> list[str]:
        proc = run_fext("--workspace", str(root), *args)
        assert proc.returncode == 0, (args, proc.stderr)
        lines = proc.stderr.splitlines()
        assert not [line for line in lines if "Warning" in line], (args, proc.stderr)
        return lines

    fext("config")
    fext("analyze")
    first = fext("train")[0]
    assert first == 'Device: cpu (no GPU found; device.DEVICE "auto")' if cpu else first.startswith("Device: cuda:0")
    ckpt = next((root / "resources" / "checkpoints").iterdir()).name
    fext("train", "--resume")
    fext("checkpoints")
    assert fext("evaluate")[0] == first
    assert fext("encode")[0] == first
    emb = ckpt  # an embeddings folder named by its checkpoint
    fext("search", emb, "--query", str(root / "resources" / "extraction" / "images" / "img001.jpg"))
    fext("index", emb)
    fext("export", "--format", "onnx")
    fext("export-embeddings", emb)
    fext("explore")
    log_text = "".join(p.read_text() for p in (root / "resources" / "logs").glob("*.log"))
    assert "This DataLoader will create" not in log_text  # "auto" never asks for more workers than the cores
    fext("setup", "clean-logs")
