"""Reconstruction metrics, per image: each takes (B, 3, H, W) tensors in [0, 1] and returns (B,).

- ``mae``: mean absolute error, the training loss.
- ``cosine``: cosine similarity of the flattened images (the seed's metric).
- ``psnr``: peak signal-to-noise ratio in dB for a data range of 1, capped at ``PSNR_CAP``
  (identical images would otherwise be infinite).
- ``ssim``: structural similarity with an 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
  averaged over channels, "valid" convolution (as scikit-image with ``gaussian_weights=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
"""PSNR reported for (near-)identical images, in dB."""


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.float().flatten(1)


def mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: (B,)."""
    return (_flat(x) - _flat(y)).abs().mean(1)


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each pair of flattened images: (B,)."""
    return F.cosine_similarity(_flat(x), _flat(y), dim=1, eps=1e-8)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [0, 1], capped at ``PSNR_CAP``: (B,)."""
    mse = (_flat(x) - _flat(y)).pow(2).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-30))).clamp_max(PSNR_CAP)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image over channels and valid window positions: (B,)."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.device)
    # Separable Gaussian filter, one group per channel, over x, y, x², y², xy at once.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    kh = g.view(1, 1, 1, -1).repeat(5 * c, 1, 1, 1)
    kv = g.view(1, 1, -1, 1).repeat(5 * c, 1, 1, 1)
    f = F.conv2d(F.conv2d(stack, kh, groups=5 * c), kv, groups=5 * c)
    mx, my, sxx, syy, sxy = f.split(c, dim=1)
    # Sample (unbiased) covariances, as scikit-image does by default.
    n = window * window
    cov = n / (n - 1)
    vx, vy, vxy = cov * (sxx - mx * mx), cov * (syy - my * my), cov * (sxy - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


METRICS = {"mae": mae, "cosine": cosine, "psnr": psnr, "ssim": ssim}
"""Every per-image metric by the name used in metrics.json and per_image_metrics.csv (history.json
calls the MAE ``loss``, as it is the training loss)."""
