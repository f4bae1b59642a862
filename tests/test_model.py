"""The autoencoder: shapes, value range, gradients, checkpoint round trips, refusal of pickles, presets, cost."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fext.model
from fext.checkpoints import load_weights_file, save_weights
from fext.errors import FeXTError
from fext.layers import LayerNorm2d, LayerNormReLU2d, clamp_unit, pad_right_bottom
from fext.model import (
    FeXTAutoEncoder,
    ModelArchitecture,
    describe,
    model_complexity,
    preset_architecture,
)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "preset, size, dim",
    [("small", 64, 128 * 1 * 1), ("small", 128, 128 * 2 * 2), ("base", 64, 512 * 1 * 1)],
)
def test_output_shapes_and_range(preset: str, size: int, dim: int) -> None:
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset(preset, img_size=size).eval()
    x = _images(2, size)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
    assert out["reconstruction"].shape == (2, 3, size, size)
    assert out["latent"].shape == (2, dim) == (2, model.arch.feature_dim)
    assert features.shape == (2, *model.arch.latent_shape)
    assert torch.equal(features.flatten(1), out["latent"])
    rec = out["reconstruction"]
    assert rec.min() >= 0.0 and rec.max() <= 1.0
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), rec)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_layer_norm_and_padding_blocks(memory_format: torch.memory_format) -> None:
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    norm = LayerNorm2d(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(norm(x), expected)
    fused = LayerNormReLU2d(5).double()
    fused.load_state_dict(norm.state_dict())
    assert torch.allclose(fused(x), expected.relu())
    assert torch.autograd.gradcheck(fused, (x,))
    padded = pad_right_bottom(x)
    assert torch.equal(padded, F.pad(x, (0, 1, 0, 1)))
    assert padded.is_contiguous(memory_format=memory_format)
    assert torch.autograd.gradcheck(pad_right_bottom, (x,))


@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_bytes", [fext.model.INFERENCE_CHUNK_BYTES, 1])
def test_fast_inference_computes_what_the_plain_forward_computes(monkeypatch, chunk_bytes: int, mixed: bool) -> None:
    """The fast route pads inside the convolution (maps >= 32 px), adds in place and, on CPUs, runs
    high-resolution stages in chunks of images: its values must be the plain forward's (also under
    bf16 autocast), and the caller's input must stay untouched, also when the first unit's shortcut
    is the identity (3 input channels, 3 wide)."""
    monkeypatch.setattr(fext.model, "INFERENCE_CHUNK_BYTES", chunk_bytes)  # 1: every stage chunked, 1 image each
    torch.manual_seed(0)
    arch = ModelArchitecture("custom", 64, widths=(3, 8, 8, 16, 16), depths=(2, 2, 1, 2, 2), latent_channels=4)
    model = FeXTAutoEncoder(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # larger residual branches than the 0.1 init, so every route matters
    x = _images(5, 64).contiguous(memory_format=torch.channels_last)
    original = x.clone()
    assert not model.fast_inference  # the default: one plain forward for training and validation
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=mixed):
        expected = model(x)
        got = model.enable_fast_inference()(x)
    assert model.fast_inference and torch.equal(x, original)
    tolerance = 2e-2 if mixed else 1e-4  # bf16 keeps 8 bits of mantissa: two routes round differently
    for key in ("latent", "reconstruction"):
        assert got[key].dtype == expected[key].dtype
        assert torch.allclose(got[key].float(), expected[key].float(), rtol=tolerance, atol=tolerance), key
    assert expected["latent"].float().std() > 0.05  # not a degenerate model
    model.disable_fast_inference()
    with torch.inference_mode():
        assert torch.equal(model(x)["latent"], model(x)["latent"])  # plain again: deterministic, no in-place reuse


def test_fast_inference_refuses_to_run_with_gradients() -> None:
    model = FeXTAutoEncoder.from_preset("small", img_size=64).enable_fast_inference()
    with pytest.raises(RuntimeError, match="disable_fast_inference"):
        model(_images(1, 64))
    model.disable_fast_inference().train()
    model(_images(2, 64))["reconstruction"].mean().backward()  # the plain forward trains
    assert all(p.grad is not None for p in model.parameters())


def test_base_feature_dim_at_128_is_2048() -> None:
    assert preset_architecture("base", 128).feature_dim == 2048
    assert preset_architecture("base", 128).latent_shape == (512, 2, 2)
    assert preset_architecture("small", 128).feature_dim == 512


def test_output_is_clamped_with_straight_through_gradient() -> None:
    model = FeXTAutoEncoder.from_preset("small", img_size=64).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([5.0, -5.0, 0.5]))
        model.head.weight.zero_()
    x = _images(1, 64)
    rec = model(x)["reconstruction"]
    assert torch.all(rec[:, 0] == 1.0) and torch.all(rec[:, 1] == 0.0) and torch.allclose(rec[:, 2], torch.tensor(0.5))
    # A pixel stuck above 1 still gets a gradient pulling it back towards a darker target.
    F.l1_loss(rec, torch.full_like(rec, 0.5)).backward()
    assert model.head.bias.grad[0] > 0  # descent lowers the red bias
    assert model.head.bias.grad[1] < 0  # and raises the blue one
    # Exact in bf16 too, where large values would round badly in an x + (clamp(x) - x) formulation.
    big = torch.tensor([-300.0, -0.5, 0.25, 1.5, 300.0], dtype=torch.bfloat16)
    assert clamp_unit(big).tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]


@pytest.mark.parametrize("preset", ["small", "base"])
def test_every_parameter_gets_a_gradient(preset: str) -> None:
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset(preset, img_size=64).train()
    x = _images(2, 64)
    F.l1_loss(model(x)["reconstruction"], x).backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset("small", img_size=64).eval()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config == {"architecture": {"preset": "small", "img_size": 64, "widths": [16, 16, 32, 32, 64, 128],
                                       "depths": [1, 1, 1, 1, 1, 1], "latent_channels": 128, "dropout": 0.1}}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]

    loaded = FeXTAutoEncoder.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.arch == model.arch
    x = _images(3, 64, seed=1)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a["reconstruction"], b["reconstruction"])
    assert torch.equal(a["latent"], b["latent"])


def test_channels_last_is_a_switch_whose_plain_route_gives_the_same_values() -> None:
    torch.manual_seed(0)
    fast = FeXTAutoEncoder.from_preset("small", img_size=64).eval()  # channels_last: on by default
    plain = FeXTAutoEncoder.from_preset("small", img_size=64, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.channels_last and not plain.channels_last
    assert plain.encoder[0].units[0].conv.weight.is_contiguous()
    assert not plain.encoder[0].units[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = _images(3, 64, seed=4)
    with torch.no_grad():
        a, b = fast(x), plain(x)
    torch.testing.assert_close(a["latent"], b["latent"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"], rtol=1e-4, atol=1e-5)


def test_state_file_round_trip_of_channels_last_weights(tmp_path: Path) -> None:
    model = FeXTAutoEncoder.from_preset("small", img_size=64)
    assert model.encoder[0].units[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    save_weights(model.state_dict(), tmp_path / "epoch_001.safetensors")
    state = load_weights_file(tmp_path / "epoch_001.safetensors")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class _Trap:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_from_pretrained_refuses_pickle(tmp_path: Path, writer: str) -> None:
    model = FeXTAutoEncoder.from_preset("small", img_size=64)
    model.save_pretrained(tmp_path)
    marker = tmp_path / "code_ran"
    payload = {"state": model.state_dict(), "trap": _Trap(marker)}
    weights = tmp_path / "model.safetensors"
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    with pytest.raises(FeXTError, match="not a valid safetensors"):
        FeXTAutoEncoder.from_pretrained(tmp_path)
    assert not marker.exists()


def test_from_pretrained_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architecture": {}}')
    with pytest.raises(FeXTError, match="is not a FeXT checkpoint: model.safetensors missing"):
        FeXTAutoEncoder.from_pretrained(tmp_path)
    FeXTAutoEncoder.from_preset("small", img_size=64).save_pretrained(tmp_path / "ok")
    config = tmp_path / "ok" / "config.json"
    spec = json.loads(config.read_text())
    spec["architecture"]["kernel"] = 3
    config.write_text(json.dumps(spec))
    with pytest.raises(FeXTError, match="does not describe a FeXT model.*kernel"):
        FeXTAutoEncoder.from_pretrained(tmp_path / "ok")
    # Weights of another architecture do not load silently.
    FeXTAutoEncoder.from_preset("small", img_size=64).save_pretrained(tmp_path / "other")
    spec["architecture"].pop("kernel")
    spec["architecture"]["latent_channels"] = 64
    (tmp_path / "other" / "config.json").write_text(json.dumps(spec))
    with pytest.raises(FeXTError, match="do not match"):
        FeXTAutoEncoder.from_pretrained(tmp_path / "other")


def test_bad_preset_and_image_size() -> None:
    with pytest.raises(ValueError, match="base, small"):
        FeXTAutoEncoder.from_preset("huge")
    for size in (32, 100, 2048):
        with pytest.raises(ValueError, match="multiple of 64 between 64 and 1024"):
            FeXTAutoEncoder.from_preset("small", img_size=size)
    model = FeXTAutoEncoder.from_preset("small", img_size=64)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model.encode(torch.rand(1, 3, 128, 128))


def test_complexity_of_presets() -> None:
    base = FeXTAutoEncoder.from_preset("base", img_size=128)
    small = FeXTAutoEncoder.from_preset("small", img_size=128)
    base_params, base_flops = model_complexity(base)
    small_params, small_flops = model_complexity(small)
    assert 18e6 < base_params < 22e6  # "about 20M parameters"
    # Hand count of the 2x2 convolutions alone: encoder at 128 px is ~1.9 GMAC, the decoder mirrors it.
    assert 6e9 < base_flops < 9e9
    assert small_flops * 10 <= base_flops
    assert small_params * 10 <= base_params
    # Every layer is convolutional, so the cost scales exactly with the image area.
    assert model_complexity(base, img_size=64)[1] * 4 == base_flops
    text = describe(base)
    assert f"{base_params:,}" in text and "2048 features" in text and "(64, 64, 64)" in text
