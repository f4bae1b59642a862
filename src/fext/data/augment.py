"""Training-time augmentation of whole batches, as tensor operations (no loop over samples)."""

from __future__ import annotations

import torch

FLIP_P = 0.5  # horizontal and vertical, independently
BRIGHTNESS_P, BRIGHTNESS_DELTA = 0.25, 0.2  # add U(-0.2, 0.2)
CONTRAST_P, CONTRAST_RANGE = 0.35, (0.7, 1.3)  # scale about the image mean by U(0.7, 1.3)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, brighten and re-contrast each image of ``x`` (B, 3, H, W) float in [0, 1].

    Per sample: horizontal flip p=0.5, vertical flip p=0.5, brightness + U(-0.2, 0.2) with
    p=0.25, contrast x U(0.7, 1.3) about the image's mean with p=0.35; values are clamped to
    [0, 1] after the brightness and at the end. ``x`` is not modified; the result keeps its
    memory format and device. All draws come from ``generator`` (six per sample whatever the
    outcome, so a seeded generator reproduces the batch exactly); a CPU generator also serves
    a GPU batch.

    For training batches only: callers must never augment validation or encoding inputs.
    """
    b = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # (B, 6): flip h, flip v, brightness on, brightness value, contrast on, contrast value.
    draws = torch.rand((b, 6), generator=generator, device=gen_device).to(x.device)
    view = (b, 1, 1, 1)
    brightness = torch.where(
        draws[:, 2] < BRIGHTNESS_P, (draws[:, 3] * 2 - 1) * BRIGHTNESS_DELTA, torch.zeros_like(draws[:, 3])
    )
    low, high = CONTRAST_RANGE
    contrast = torch.where(
        draws[:, 4] < CONTRAST_P, low + draws[:, 5] * (high - low), torch.ones_like(draws[:, 5])
    ).to(x.dtype).view(view)

    # One copy, then in-place passes: large temporaries cost more than the arithmetic on CPU.
    out = x.clone()
    _flip_some(out, draws[:, 0] < FLIP_P, dim=3)  # horizontal: reverse W
    _flip_some(out, draws[:, 1] < FLIP_P, dim=2)  # vertical: reverse H
    out.add_(brightness.to(x.dtype).view(view)).clamp_(0.0, 1.0)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    # (out - mean) * contrast + mean, in place.
    return out.mul_(contrast).add_(mean * (1 - contrast)).clamp_(0.0, 1.0)


def _flip_some(x: torch.Tensor, chosen: torch.Tensor, dim: int) -> None:
    """Reverse ``x`` along ``dim`` in place for the samples where the bool (B,) ``chosen`` is set."""
    if x.device.type == "cpu":
        rows = torch.nonzero(chosen).flatten()  # only the chosen half is copied
        if len(rows):
            x[rows] = x[rows].flip(dim)
    else:
        # No data-dependent shapes on accelerators: they would wait for the device.
        x.copy_(torch.where(chosen.view(-1, 1, 1, 1), x.flip(dim), x))
