"""Training memory: a ceiling on peak resident memory, and activation checkpointing that saves memory, not values.

The ceiling guards a small configuration (the base preset at 128 px, batch 8, the seed recipe) trained
by the real CLI in a fresh process, which reports its own peak resident memory (VmHWM): 1,700 MB,
about a sixth above what it needs with the lean stages of ``fext._lean_units`` (1,440–1,470 MB
measured), and below what the plain autograd graph needed (2,000 MB), so a change that keeps more of
a step's activations, or holds on to more freed memory, fails here rather than on a user's laptop.
Activation checkpointing measured 1,100–1,120 MB there. (At 64 px the model and Adam's state
outweigh the activations, and checkpointing's saving was within run-to-run variation.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_images, tiny_config

from fext.config import config_to_dict
from fext.model import FeXTAutoEncoder

CHILD = """
import json, sys
from fext.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
print(json.dumps({"status": status, "peak_mb": peak}))
"""


def _train_peak_mb(tmp_path, checkpointing: bool) -> float:
    ws = tmp_path / ("ckpt" if checkpointing else "plain")
    make_images(ws / "resources" / "dataset", 16)
    cfg = tiny_config(**{"model.PRESET": "base", "model.IMG_SIZE": 128, "training.EPOCHS": 1, "training.BATCH_SIZE": 8,
                         "dataset.VALIDATION_SIZE": 0.0, "training.RECIPE": "seed",
                         "training.ACTIVATION_CHECKPOINTING": checkpointing})
    (ws / "settings").mkdir(parents=True)
    (ws / "settings" / "configurations.json").write_text(json.dumps(config_to_dict(cfg)))
    env = {**{k: v for k, v in os.environ.items() if k != "FEXT_WORKSPACE"}, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, "--workspace", str(ws), "--quiet", "train"],
                          capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["status"] == 0
    return figures["peak_mb"]


@pytest.mark.slow  # trains the base preset twice in fresh processes (minutes on 2 cores)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_training_memory_stays_under_its_ceiling_and_checkpointing_lowers_it(tmp_path):
    plain, checkpointed = _train_peak_mb(tmp_path, False), _train_peak_mb(tmp_path, True)
    assert plain < 1700, f"base, 128 px, batch 8 peaked at {plain:.0f} MB"
    assert checkpointed < 0.9 * plain, (checkpointed, plain)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset("small", 64).train()
    x = torch.rand(3, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss = torch.nn.functional.l1_loss(model(x)["reconstruction"], x)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    # Exact: checkpointing reruns the same forward kernels on the same shapes; only the backward's order differs.
    assert torch.equal(loss_a, loss_b)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_a, grads_b))
