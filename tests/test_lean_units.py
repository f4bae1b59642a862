"""The memory-lean training route of the residual stages: the plain graph's values and gradients, bit for bit,
on fewer saved bytes; and the plain route wherever gradients are off or a tracer records.

Where these tests compare exactly, both routes run the same ATen kernels (``at::convolution``,
``convolution_backward``, the layer norm's and pooling's) on tensors of the same shapes: these batches are far
below :data:`fext._lean_units.CHUNK_BYTES`, so the lean route takes the whole batch in one chunk, and oneDNN
picks its kernel from the shapes and the CPU, both equal here. Where chunks change the batch size, oneDNN may pick
another kernel (it does on AMD Zen and with ``ONEDNN_MAX_CPU_ISA=SSE41``), and values agree only to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fext._lean_units
from fext.layers import DecoderStage, ResidualConvStack
from fext.model import FeXTAutoEncoder


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=torch.channels_last)


def _randomised(stage: nn.Module) -> nn.Module:
    """Random weights everywhere (the init's small norm gains and zero biases would hide mistakes)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in stage.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return stage.to(memory_format=torch.channels_last)


def _outputs_and_grads(stage: nn.Module, x: torch.Tensor, lean: bool, monkeypatch) -> tuple:
    stage.lean_training = lean
    stage.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    out = stage(x)
    assert type(out.grad_fn).__name__ == ("_LeanUnitsBackward" if lean else "MaxPool2DWithIndicesBackward0"
                                          if isinstance(stage, ResidualConvStack) else "AddBackward0")
    out.backward(_rand(*out.shape, seed=9))
    return out.detach(), x.grad, [p.grad for p in stage.parameters()]


@pytest.mark.parametrize("stage, shape", [
    (ResidualConvStack(3, 8, 3), (2, 3, 8, 8)),     # RGB input: the first unit's conv is recomputed, 1×1 shortcut
    (ResidualConvStack(5, 12, 2), (3, 5, 6, 6)),    # channel change: 1×1 shortcut conv on the first unit
    (ResidualConvStack(6, 6, 4), (2, 6, 4, 4)),     # identity shortcuts all along
    (ResidualConvStack(4, 4, 1), (1, 4, 2, 2)),     # one unit
    (DecoderStage(8, 6, 3), (2, 8, 3, 3)),          # transposed-conv upsampling, then units, not pooled
], ids=["rgb", "channels", "identity", "one-unit", "decoder"])
@pytest.mark.parametrize("input_grad", [True, False], ids=["x-grad", "no-x-grad"])
def test_lean_stage_gives_the_plain_graphs_values_and_gradients_exactly(stage, shape, input_grad, monkeypatch):
    stage = _randomised(stage)
    x = _rand(*shape, seed=1).requires_grad_(input_grad)
    plain = _outputs_and_grads(stage, x, False, monkeypatch)
    lean = _outputs_and_grads(stage, x, True, monkeypatch)
    assert torch.equal(plain[0], lean[0])
    assert (plain[1] is None) == (lean[1] is None) == (not input_grad)
    if input_grad:
        assert torch.equal(plain[1], lean[1])
    assert len(plain[2]) == len(lean[2]) and all(g is not None for g in lean[2])
    for a, b in zip(plain[2], lean[2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stage, shape", [
    (ResidualConvStack(3, 8, 3), (5, 3, 8, 8)),
    (DecoderStage(8, 6, 3), (5, 8, 3, 3)),
], ids=["rgb", "decoder"])
def test_chunks_of_images_give_the_same_outputs_and_gradients_to_rounding(stage, shape, monkeypatch):
    """Forward and backward on chunks of two images (of five, the last chunk one). oneDNN may pick another kernel
    for another batch size, which orders a convolution's sums differently, so outputs agree to float rounding too;
    the parameter gradients are moreover sums over chunks. Tolerance: each output is a sum of at most
    4 (taps) x 8 (channels) products per unit over three stacked units, so a few hundred roundings of fp32
    (eps 1.2e-7) on values of order 1-10: 1e-5 relative and absolute holds with room; observed 1e-6."""
    stage = _randomised(stage)
    x = _rand(*shape, seed=1).requires_grad_()
    plain = _outputs_and_grads(stage, x, False, monkeypatch)
    per_image = 8 * 8 * 8 * 4  # bytes of the largest activation of one image: 8 channels of 8×8 (rgb), 6×6×6 (decoder)
    monkeypatch.setattr(fext._lean_units, "CHUNK_BYTES", 2 * per_image)
    lean = _outputs_and_grads(stage, x, True, monkeypatch)
    for a, b in zip(plain[:2] + tuple(plain[2]), lean[:2] + tuple(lean[2])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "act-ckpt"])
@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "bf16"])
def test_whole_model_trains_on_the_same_loss_and_gradients(checkpointing, mixed, monkeypatch):
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset("small", 64).train()
    model.activation_checkpointing = checkpointing
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    results = []
    for lean in (False, True):
        model.enable_lean_training(lean)
        assert model.lean_training == lean
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = torch.nn.functional.l1_loss(model(x)["reconstruction"].float(), x)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def _saved_bytes(stage: nn.Module, x: torch.Tensor, lean: bool, monkeypatch) -> int:
    """Bytes of the distinct storages the autograd graph of ``stage(x)`` keeps for backward, parameters excluded."""
    stage.lean_training = lean
    params = {p.untyped_storage().data_ptr() for p in stage.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(x)
    return sum(storages.values())


def test_lean_stage_keeps_about_one_activation_per_unit(monkeypatch):
    stage, depth = _randomised(ResidualConvStack(16, 16, 4)), 4
    x = _rand(2, 16, 32, 32, seed=1).requires_grad_()
    activation = x.numel() * x.element_size()
    plain, lean = _saved_bytes(stage, x, False, monkeypatch), _saved_bytes(stage, x, True, monkeypatch)
    assert plain > 3 * depth * activation  # padded input, conv output, ReLU output per unit, and the pooling's
    assert lean < (depth + 1.1) * activation  # the padded input and each unit's conv output


def test_lean_training_is_a_switch_that_is_off_until_turned_on():
    model = FeXTAutoEncoder.from_preset("small", 64).train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert not model.lean_training  # a model built anywhere trains through plain autograd ...
    assert type(model.encoder[0](x).grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"
    assert model.enable_lean_training() is model and model.lean_training  # ... until switched on (`fext train` does)
    assert all(stage.lean_training for stage in [*model.encoder, *model.decoder])
    assert type(model.encoder[0](x).grad_fn).__name__ == "_LeanUnitsBackward"
    assert not model.enable_lean_training(False).lean_training


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_plain_route_when_gradients_are_off_or_a_tracer_records():
    stage = _randomised(ResidualConvStack(4, 4, 2))
    stage.lean_training = True
    x = _rand(1, 4, 4, 4, seed=1)
    with torch.no_grad():
        expected = stage(x)
    traced = torch.jit.trace(stage, x.requires_grad_(), check_trace=False)
    assert "LeanUnits" not in str(traced.graph)
    with torch.no_grad():
        assert torch.equal(traced(x), expected)
