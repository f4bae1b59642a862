"""Reconstruction metrics against hand computations and scikit-image on constructed pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fext.metrics import METRICS, PSNR_CAP, cosine, mae, psnr, ssim


def _image(seed: int, size: int = 48) -> np.ndarray:
    """A smooth-plus-texture RGB image (H, W, 3) in [0, 1], float64."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    return np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)


def _t(*images: np.ndarray) -> torch.Tensor:
    """(H, W, 3) arrays → (B, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def _noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return np.clip(x + sigma * np.random.default_rng(seed).standard_normal(x.shape), 0, 1)


def test_identical_images_are_perfect():
    x = _t(_image(0), _image(1))
    assert torch.equal(mae(x, x), torch.zeros(2))
    # PSNR of identical images is infinite; FeXT reports the documented cap instead.
    assert PSNR_CAP == 100.0
    assert torch.equal(psnr(x, x), torch.full((2,), PSNR_CAP))
    torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine(x, x), torch.ones(2), atol=1e-6, rtol=0)


def test_constant_offset_by_hand():
    # y = x + 0.1 everywhere: MAE = 0.1, MSE = 0.01, PSNR = 10·log10(1/0.01) = 20 dB exactly.
    x = _image(2) * 0.8
    y = x + 0.1
    assert mae(_t(x), _t(y)).item() == pytest.approx(0.1, abs=1e-6)
    assert psnr(_t(x), _t(y)).item() == pytest.approx(20.0, abs=1e-4)
    expected_cos = (x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())
    assert cosine(_t(x), _t(y)).item() == pytest.approx(expected_cos, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_noise_levels_match_scikit_image(sigma: float):
    x = _image(3)
    y = _noisy(x, sigma, seed=4)
    tx, ty = _t(x), _t(y)
    mse = ((x - y) ** 2).mean()
    assert psnr(tx, ty).item() == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert psnr(tx, ty).item() == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-3)
    reference = structural_similarity(
        x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=True
    )
    assert ssim(tx, ty).item() == pytest.approx(reference, abs=1e-4)
    assert mae(tx, ty).item() == pytest.approx(np.abs(x - y).mean(), abs=1e-6)


def test_metrics_degrade_with_noise():
    x = _image(5)
    noisy = [_noisy(x, s, seed=6) for s in (0.02, 0.08, 0.3)]
    tx = _t(x, x, x)
    ty = _t(*noisy)
    assert (mae(tx, ty).diff() > 0).all()
    assert (psnr(tx, ty).diff() < 0).all()
    assert (ssim(tx, ty).diff() < 0).all()
    assert (cosine(tx, ty).diff() < 0).all()


def test_batch_is_per_image():
    a, b, c = _image(7), _image(8), _noisy(_image(9), 0.1, seed=10)
    batch_x, batch_y = _t(a, b, c), _t(_noisy(a, 0.05, 1), b, _image(9))
    for name, fn in METRICS.items():
        together = fn(batch_x, batch_y)
        assert together.shape == (3,), name
        alone = torch.cat([fn(batch_x[i : i + 1], batch_y[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(together, alone, msg=name)
