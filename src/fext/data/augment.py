"""Training-time augmentation of whole batches, as tensor operations (no loop over samples)."""

from __future__ import annotations

import torch

FLIP_P = 0.5  # horizontal and vertical, independently
BRIGHTNESS_P, BRIGHTNESS_DELTA = 0.25, 0.2  # add U(-0.2, 0.2)
CONTRAST_P, CONTRAST_RANGE = 0.35, (0.7, 1.3)  # scale about the image mean by U(0.7, 1.3)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, brighten and re-contrast each image of ``x`` (B, 3, H, W) float in [0, 1].

    Per sample: horizontal flip p=0.5, vertical flip p=0.5, brightness + U(-0.2, 0.2) with
    p=0.25, contrast x U(0.7, 1.3) about the image's mean with p=0.35; the result is clamped
    to [0, 1] and keeps ``x``'s memory format. All draws come from ``generator`` (a fixed
    number per sample, so a seeded generator reproduces the batch exactly).

    For training batches only: callers must never augment validation or encoding inputs.
    """
    b = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # (B, 6): flip h, flip v, brightness on, brightness value, contrast on, contrast value.
    draws = torch.rand((b, 6), generator=generator, device=gen_device).to(x.device)
    view = (b, 1, 1, 1)
    flip_h = (draws[:, 0] < FLIP_P).view(view)
    flip_v = (draws[:, 1] < FLIP_P).view(view)
    brightness = torch.where(
        draws[:, 2] < BRIGHTNESS_P, (draws[:, 3] * 2 - 1) * BRIGHTNESS_DELTA, torch.zeros_like(draws[:, 3])
    )
    low, high = CONTRAST_RANGE
    contrast = torch.where(
        draws[:, 4] < CONTRAST_P, low + draws[:, 5] * (high - low), torch.ones_like(draws[:, 5])
    )

    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.where(flip_h, x.flip(3), x)
    out = torch.where(flip_v, out.flip(2), out)
    out = (out + brightness.to(x.dtype).view(view)).clamp_(0.0, 1.0)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast.to(x.dtype).view(view) + mean).clamp_(0.0, 1.0)
    return out.contiguous(memory_format=memory_format)
