"""Training-time augmentation of whole batches, as tensor operations (no loop over samples).

:func:`augment_batch` is the seed recipe's augmentation; :func:`random_view` and
:func:`mask_patches` make the "views" recipe's inputs (see :mod:`fext.training.objectives`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLIP_P = 0.5  # horizontal and vertical, independently
BRIGHTNESS_P, BRIGHTNESS_DELTA = 0.25, 0.2  # add U(-0.2, 0.2)
CONTRAST_P, CONTRAST_RANGE = 0.35, (0.7, 1.3)  # scale about the image mean by U(0.7, 1.3)
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 grey, the axis saturation scales about


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` from ``generator`` (made on its device: a CPU generator also serves
    a GPU batch), moved to ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


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
    # (B, 6): flip h, flip v, brightness on, brightness value, contrast on, contrast value.
    draws = _uniform((b, 6), generator, x.device)
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


def random_view(
    x: torch.Tensor, generator: torch.Generator | None = None, min_area: float = 0.3, jitter: float = 0.4,
    blur: float = 0.0, flip: bool = True,
) -> torch.Tensor:
    """One random view of each image of ``x`` (B, 3, H, W) float in [0, 1], drawn per image.

    Per sample: a random resized crop (area fraction U(min_area, 1), aspect ratio log-uniform in
    [3/4, 4/3], position uniform, resampled bilinearly back to H × W), a horizontal flip with
    p = 0.5 (none with ``flip`` False), and brightness, contrast and saturation factors from U(1 - jitter, 1 + jitter),
    clamped to [0, 1]; with probability ``blur``, the view is then halved in resolution and scaled
    back up (the detail lost to thumbnails and recompression). The crop and flip are one
    ``affine_grid`` / ``grid_sample`` over the whole batch, so views cost a few small kernels, not a
    loop over images. Nine draws per sample from ``generator`` whatever the outcome (a seeded
    generator reproduces the views exactly).
    """
    b = x.shape[0]
    # (B, 9): area, aspect, x position, y position, flip, brightness, contrast, saturation, blur.
    u = _uniform((b, 9), generator, x.device).float()
    area = min_area + u[:, 0] * (1 - min_area)
    aspect = torch.exp((u[:, 1] * 2 - 1) * math.log(4 / 3))
    sx, sy = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of W, H
    tx, ty = (u[:, 2] * 2 - 1) * (1 - sx), (u[:, 3] * 2 - 1) * (1 - sy)  # crop centre in [-1, 1] coordinates
    flip = torch.where(u[:, 4] < (FLIP_P if flip else 0.0), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    factors = 1 + (u[:, 5:8] * 2 - 1) * jitter  # (B, 3)
    view = (b, 1, 1, 1)
    out = out * factors[:, 0].view(view)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factors[:, 1].view(view) + mean
    grey = (out * _LUMA.to(out.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    out = (out - grey) * factors[:, 2].view(view) + grey
    if blur > 0:
        soft = F.interpolate(F.avg_pool2d(out, 2), scale_factor=2, mode="bilinear", align_corners=False)
        out = torch.where((u[:, 8] < blur).view(view), soft, out)
    return out.clamp_(0.0, 1.0).to(x.dtype).contiguous(memory_format=torch.channels_last)


def flip_half(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``x`` (B, 3, H, W) with each image flipped horizontally with p = 0.5 (one draw per image)."""
    chosen = _uniform((x.shape[0],), generator, x.device) < FLIP_P
    out = x.clone()
    _flip_some(out, chosen, dim=3)
    return out


def mask_patches(x: torch.Tensor, ratio: float, generator: torch.Generator | None = None, patch: int = 8) -> torch.Tensor:
    """``x`` (B, 3, H, W) with a random ``ratio`` of its ``patch`` × ``patch`` squares set to grey (0.5), per image.

    H and W must be multiples of ``patch``. One draw per patch from ``generator``; ``x`` is not modified.
    """
    if ratio <= 0:
        return x
    b, _, h, w = x.shape
    keep = _uniform((b, 1, h // patch, w // patch), generator, x.device) >= ratio
    keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return torch.where(keep, x, torch.full_like(x, 0.5))
