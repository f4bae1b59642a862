"""Building blocks of the FeXT autoencoder: channel layer norm, residual 2×2 conv stacks, bottleneck, decoder stages.

Every block takes and returns (B, C, H, W) tensors and works in either memory format; the model keeps
its weights and activations channels_last because that is faster on CPUs and GPUs (see ``fext.model``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fext._lean_units import padded_copy, run_units_lean


class LayerNorm2d(nn.LayerNorm):
    """Layer normalisation over the channel dim of (B, C, H, W), independently at every position (ConvNeXt style).

    Permuting to (B, H, W, C) is free for a channels_last tensor and lets ``F.layer_norm`` run its fused
    kernel; on a 2-core CPU (B=25, C=64, 128 px, forward+backward) that takes 76 ms against 800 ms for the
    same normalisation written as mean/var tensor ops. The output is channels_last whatever the input.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # fext export: ONNX Runtime runs the two transposes slower than this
            return self._normalize_channels(x)
        return self._normalize(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # via (B, H, W, C)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def _normalize_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The same normalisation as mean/var over dim 1 of (B, C, H, W), for exported graphs."""
        centred = x - x.mean(1, keepdim=True)
        scale = torch.rsqrt(centred.square().mean(1, keepdim=True) + self.eps)
        return centred * scale * self.weight[:, None, None] + self.bias[:, None, None]


class LayerNormReLU2d(LayerNorm2d):
    """:class:`LayerNorm2d` then ReLU, in place on the normalised tensor (which layer norm's backward does not need).

    The ReLU runs on the (B, H, W, C) result before permuting back: in place on the permuted view, autograd
    would have to replay the view in backward, which is much slower (benchmarks/README.md).
    """

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(super()._normalize(x))

    def _normalize_channels(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super()._normalize_channels(x))


class _PadRightBottom(torch.autograd.Function):
    """Zero-pad (B, C, H, W) to (B, C, H+1, W+1) on the right and bottom, keeping the memory format.

    ``F.pad`` zero-fills the whole output before copying the input in, and its backward copies the
    gradient slice; writing the input once, zeroing only the new row and column, and returning the
    gradient slice as a view is faster (benchmarks/README.md).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return padded_copy(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad[:, :, :-1, :-1]


def pad_right_bottom(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H+1, W+1), zeros added on the right and bottom: "same" padding for a 2×2 kernel."""
    if torch.jit.is_tracing() or torch.compiler.is_exporting():  # fext export: exporters want a plain Pad
        return F.pad(x, (0, 1, 0, 1))
    return _PadRightBottom.apply(x)


def _tracing() -> bool:
    """Whether a tracer, compiler or exporter is recording (they get plain ops)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _lean_route(stage: ResidualConvStack | DecoderStage) -> bool:
    """Whether a stage runs its units through :func:`fext._lean_units.run_units_lean`: when its
    ``lean_training`` switch is on (:meth:`fext.model.FeXTAutoEncoder.enable_lean_training`; `fext train`
    turns it on), and then when gradients are on, and in training mode without them (the "views" step's
    graph-free pass, whose buffers then come in the same chunk sizes as the training passes' and whose
    values are theirs exactly).

    Autograd would keep three full-size activations per unit (and the pooling's input and indices);
    the lean node keeps the stage's input and each unit's convolution output and rebuilds the rest in
    backward with a few cheap passes: the same values, and the same gradients (to float rounding
    where its backward runs a large batch in chunks of images). Those activations are most of a
    training step's memory, and this saves them without activation checkpointing's extra forward
    pass. Tracers, compilers and exporters get the plain units: they plan memory themselves.
    """
    units = stage.units
    return (stage.lean_training and (torch.is_grad_enabled() or units.training) and not units[0].fast_inference
            and not _tracing())


RESIDUAL_GAIN_INIT = 0.1
"""Initial layer-norm gain of every residual branch (see :class:`ResidualConvUnit`)."""

PADDED_CONV_MIN_SIZE = 32
"""Fast inference on maps at least this wide convolves with symmetric padding (see :class:`ResidualConvUnit`)."""


class ResidualConvUnit(nn.Module):
    """``shortcut(x) + ReLU(LayerNorm(conv2x2(x)))`` at unchanged resolution.

    The 2×2 stride-1 convolution keeps H and W ("same" padding): an even kernel needs one extra row and
    column, added on the right and bottom like Keras does. Explicit padding measured faster than
    ``padding="same"`` for channels_last, which pads through a slower path. The shortcut is the
    identity, or a 1×1 convolution when the channel count changes. ReLU, as in VGG16, and cheaper than GELU.

    With ``fast_inference`` on (:meth:`fext.model.FeXTAutoEncoder.enable_fast_inference`; for
    inference only, gradients off) the unit takes a faster route to the same values: on maps at least
    :data:`PADDED_CONV_MIN_SIZE` wide the convolution pads one row and column on every side, which
    oneDNN does inside the kernel, and keeps the bottom-right (H, W) of its (H+1, W+1) output (no
    padded copy of the input, a little more convolution work; on narrower maps the extra row and
    column cost more than the copy saves); the shortcut is added in place, into ``x`` itself when
    ``overwrite_input`` allows it. Off (the default), the plain forward serves validation and everything
    else; with gradients on and lean training switched on, the stages run their units as one memory-lean
    autograd node instead (same ops, same values: see :func:`_lean_route`).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # No bias: the layer norm right after it has its own, and a bias gradient costs a full pass.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=2, bias=False)
        self.norm = LayerNormReLU2d(out_channels)
        # Residual branches start small (LayerScale-like): with unit-gain layer norms, six stages of
        # ReLU(LN(.)) branches wash the input out of the latent at initialisation (cosine ~0.99 between
        # any two images), and small-batch training then settles on the dataset's mean image with a
        # constant latent. A 0.1 gain keeps the shortcut path, and so the image, dominant at first.
        nn.init.constant_(self.norm.weight, RESIDUAL_GAIN_INIT)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    fast_inference: bool = False
    """Take the inference route (set by ``FeXTAutoEncoder.enable_fast_inference``)."""

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W); on the fast route with ``overwrite_input``, ``x`` may be reused."""
        if not self.fast_inference:
            return self.norm(self.conv(pad_right_bottom(x))) + self.shortcut(x)  # ReLU's backward needs its output
        if torch.is_grad_enabled():
            raise RuntimeError("fast inference overwrites tensors that backward needs: call "
                               "model.disable_fast_inference() to train, or run under torch.inference_mode()")
        if x.shape[-1] < PADDED_CONV_MIN_SIZE:
            return self.norm(self.conv(pad_right_bottom(x))).add_(self.shortcut(x))  # no fresh output buffer
        h = self.norm(F.conv2d(x, self.conv.weight, padding=1))[:, :, 1:, 1:]  # (B, C_out, H, W) of (H+1, W+1)
        shortcut = self.shortcut(x)
        if shortcut is x and not overwrite_input:
            return x + h  # x first: the result takes its (contiguous) layout
        return shortcut.add_(h)


class ResidualConvStack(nn.Module):
    """``depth`` residual 2×2 conv units then 2×2 max pooling: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.units = nn.Sequential(
            *(ResidualConvUnit(in_channels if i == 0 else out_channels, out_channels) for i in range(depth))
        )
        self.pool = nn.MaxPool2d(2)

    lean_training: bool = False
    """Train the units as one memory-lean autograd node (see :func:`_lean_route`); off (the default): plain autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _lean_route(self):
            return run_units_lean(self.units, x, pool=True)  # the same values; see _lean_route
        return self.pool(_run_units(self.units, x, own_input=False))


def _run_units(units: nn.Sequential, x: torch.Tensor, own_input: bool) -> torch.Tensor:
    """``units(x)``, letting every unit but (unless ``own_input``) the first reuse its input's memory."""
    for i, unit in enumerate(units):
        x = unit(x, overwrite_input=own_input or i > 0)
    return x


class DecoderStage(nn.Module):
    """2× upsampling by a 2×2 stride-2 transposed convolution, then ``depth`` residual 2×2 conv units.

    (B, C_in, H, W) -> (B, C_out, 2H, 2W); the mirror of a :class:`ResidualConvStack`.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.units = nn.Sequential(*(ResidualConvUnit(out_channels, out_channels) for _ in range(depth)))

    lean_training: bool = False
    """As :attr:`ResidualConvStack.lean_training`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _lean_route(self):
            return run_units_lean(self.units, x, upsample=self.upsample)  # the same values; see _lean_route
        return _run_units(self.units, self.upsample(x), own_input=True)


class _DenseNormAct(nn.Sequential):
    """Per-position dense layer (1×1 conv), layer norm, ReLU, dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),  # the norm's bias follows
            LayerNormReLU2d(out_channels),
            nn.Dropout(dropout),
        )


class CompressionStack(nn.Sequential):
    """Encoder map to latent map, position by position: (B, C, h, w) -> (B, L, h, w).

    A normalised dense layer with dropout, then a plain dense projection, so the latent (the image's
    feature vector) is unconstrained in scale and sign.
    """

    def __init__(self, channels: int, latent_channels: int, dropout: float) -> None:
        super().__init__(
            _DenseNormAct(channels, channels, dropout),
            nn.Conv2d(channels, latent_channels, kernel_size=1),
        )


class DecompressionStack(nn.Sequential):
    """Latent map back to a decoder input map, the mirror of :class:`CompressionStack`: (B, L, h, w) -> (B, C, h, w)."""

    def __init__(self, latent_channels: int, channels: int, dropout: float) -> None:
        super().__init__(
            _DenseNormAct(latent_channels, channels, dropout),
            _DenseNormAct(channels, channels, 0.0),
        )


class _ClampStraightThrough(torch.autograd.Function):
    """``x.clamp(0, 1)`` forward, identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def clamp_unit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass; pass the gradient through unchanged (straight-through).

    A plain clamp gives zero gradient to every pixel predicted outside [0, 1], so a pixel that overshoots
    early in training could never be pulled back. With the straight-through gradient and an L1 loss the
    gradient of an overshooting pixel always points back into the range (and is zero when the target
    sits on the bound it overshot), so outputs never drift away. The forward value is exactly
    ``x.clamp(0, 1)``, as the design asks: no sigmoid. (The ``x + (clamp(x) - x).detach()`` idiom is
    not exact in bf16: a large x can come out as 2.)
    """
    return _ClampStraightThrough.apply(x)
