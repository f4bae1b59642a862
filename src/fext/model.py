"""The FeXT convolutional autoencoder.

``FeXTAutoEncoder.from_preset("base")`` builds the design's model (the presets and
:class:`~fext.architecture.ModelArchitecture` live in :mod:`fext.architecture`); ``encode`` gives an
image's feature vector; ``save_pretrained`` / ``from_pretrained`` (and :func:`load_checkpoint`) write
and read a checkpoint through :mod:`fext.checkpoints`, the owner of that format (no pickle anywhere). ``model_complexity`` and
``describe`` report size and cost for summary files.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from fext.architecture import ModelArchitecture, preset_architecture
from fext.checkpoints import Checkpoint, load_weights, read_checkpoint, read_weights, save_checkpoint
from fext.layers import (
    CompressionStack, DecoderStage, DecompressionStack, ResidualConvStack, ResidualConvUnit, clamp_unit,
)

INFERENCE_CHUNK_BYTES = 16 * 2**20
"""With fast inference on a CPU, the high-resolution stages run on chunks of images whose activations
take about this much memory, then stack them, so each chunk's layer norm, ReLU and addition passes
find their input still in cache; the low-resolution stages run on the whole batch, where larger
matrix products are more efficient (figures in benchmarks/README.md)."""


class FeXTAutoEncoder(nn.Module):
    """Convolutional autoencoder whose latent map, flattened, is the image's feature vector.

    Shapes, for S = ``arch.img_size``, n = len(widths) stages, s = S / 2**n, L = ``latent_channels``:

    - input ``x``: (B, 3, S, S) float RGB in [0, 1]
    - ``forward_features(x)``: latent map (B, L, s, s)
    - ``encode(x)``: feature vectors (B, D), D = L*s*s, flattened in (L, s, s) order (base at 128 px: 2048)
    - ``decode(z)``: (B, D) -> reconstruction (B, 3, S, S) in [0, 1]
    - ``forward(x)``: ``{"reconstruction": (B, 3, S, S), "latent": (B, D)}``

    Encoder: n residual 2×2 conv stacks, each ending in 2×2 max pooling; a per-position compression stack
    gives the latent. Decoder: the decompression stack, n transposed-conv 2× upsampling stages mirroring
    the encoder, a 1×1 conv to RGB and a clamp to [0, 1].
    """

    def __init__(self, arch: ModelArchitecture, *, channels_last: bool = True) -> None:
        """``channels_last`` (on by default): keep the weights channels_last and convert the inputs (a no-op when
        they already are), so callers need do nothing: a training step is faster so on CPUs (benchmarks/README.md),
        and on GPUs channels_last lets cuDNN pick its NHWC kernels (tensor cores under autocast). Off: plain
        NCHW, the same values to float rounding."""
        super().__init__()
        self.arch = arch
        self.channels_last = channels_last
        widths, depths = arch.widths, arch.depths
        self.encoder = nn.ModuleList(
            ResidualConvStack(3 if i == 0 else widths[i - 1], widths[i], depths[i]) for i in range(len(widths))
        )
        self.compress = CompressionStack(widths[-1], arch.latent_channels, arch.dropout)
        self.decompress = DecompressionStack(arch.latent_channels, widths[-1], arch.dropout)
        # decoder[0] upsamples the latent side s to 2s with the last encoder stage's width, and so on back.
        self.decoder = nn.ModuleList(
            DecoderStage(widths[i + 1] if i + 1 < len(widths) else widths[-1], widths[i], depths[i])
            for i in reversed(range(len(widths)))
        )
        self.head = nn.Conv2d(widths[0], 3, kernel_size=1)
        # The mean latent of the training images, set by training (see :meth:`features`); zeros until then.
        self.register_buffer("feature_center", torch.zeros(arch.feature_dim))
        self._fast_inference = False
        self.activation_checkpointing = False
        """Recompute every encoder and decoder stage in backward instead of keeping its activations
        (``training.ACTIVATION_CHECKPOINTING``): far less memory for about one more forward pass."""
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_preset(cls, name: str, img_size: int = 128, *, channels_last: bool = True) -> FeXTAutoEncoder:
        """A freshly initialised model of preset ``name`` ("base" or "small") for ``img_size`` px images."""
        return cls(preset_architecture(name, img_size), channels_last=channels_last)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        size = self.arch.img_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(x.shape)}")
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> latent map (B, L, s, s)."""
        x = self._check_input(x)
        stages = list(self.encoder)
        if self.fast_inference and x.device.type == "cpu":
            # Fast inference on CPUs: the high-resolution stages, whose activations would overflow the
            # caches, run on a few images at a time (see INFERENCE_CHUNK_BYTES).
            pixels, item = x.shape[2] * x.shape[3], x.element_size()
            per_image = [width * (pixels >> 2 * i) * item for i, width in enumerate(self.arch.widths)]  # bytes
            chunked = len(list(itertools.takewhile(lambda size: size * len(x) > INFERENCE_CHUNK_BYTES, per_image)))
            if chunked:
                head, stages = stages[:chunked], stages[chunked:]
                chunk = max(1, INFERENCE_CHUNK_BYTES // per_image[0])  # images
                x = torch.cat([self._run_stages(head, part) for part in x.split(chunk)])
        x = self._run_stages(stages, x)  # (B, widths[-1], s, s)
        return self.compress(x)

    @property
    def fast_inference(self) -> bool:
        """Whether :meth:`enable_fast_inference` is in force."""
        return self._fast_inference

    def enable_fast_inference(self, enabled: bool = True) -> FeXTAutoEncoder:
        """Switch to the inference route (or back to the plain forward with ``enabled=False``); returns self.

        The same values to float rounding, faster on CPUs: convolutions padded inside oneDNN on wide
        maps, in-place residual additions, and on CPUs the high-resolution encoder stages run on
        chunks of images that stay in cache (see :class:`fext.layers.ResidualConvUnit` and
        INFERENCE_CHUNK_BYTES). It overwrites tensors that backward would need, so it runs only with
        gradients off (``torch.inference_mode()``) and raises otherwise. Encoding and evaluation turn it
        on; training and its validation pass use the plain forward (training with :meth:`enable_lean_training`,
        the same values).
        """
        self._fast_inference = enabled
        for module in self.modules():
            if isinstance(module, ResidualConvUnit):
                module.fast_inference = enabled
        return self

    def disable_fast_inference(self) -> FeXTAutoEncoder:
        """Back to the plain forward (the default), e.g. to train a model that was encoding; returns self."""
        return self.enable_fast_inference(False)

    @property
    def lean_training(self) -> bool:
        """Whether :meth:`enable_lean_training` is in force."""
        return all(stage.lean_training for stage in self._stages())

    def enable_lean_training(self, enabled: bool = True) -> FeXTAutoEncoder:
        """Train each encoder and decoder stage as one memory-lean autograd node (``enabled=False``: plain
        autograd, the default); returns self. `fext train` turns it on where it builds the model.

        The same values and gradients (to float rounding where a large batch runs in chunks of images) on
        far fewer saved bytes: see :func:`fext.layers._lean_route`. It takes effect only with gradients on or
        in training mode, never with fast inference on or under a tracer, compiler or exporter.
        """
        for stage in self._stages():
            stage.lean_training = enabled
        return self

    def _stages(self) -> list[ResidualConvStack | DecoderStage]:
        return [*self.encoder, *self.decoder]

    def _run_stages(self, stages: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """``x`` through ``stages`` in order, each checkpointed when ``activation_checkpointing`` is on."""
        for stage in stages:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> latents (B, D), what :meth:`decode` takes back."""
        return self.forward_features(x).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> feature vectors (B, D): the latents centred on ``feature_center``.

        This is what FeXT stores, searches, indexes and explores, and what the scorecard judges; two
        feature vectors are compared by their cosine similarity. Centring on the training images'
        mean latent removes what every latent shares, which otherwise makes every pair of images look
        alike (uncentred cosines of 0.8 to 1.0 for anything). A model that was never trained, or a
        checkpoint saved before the centre existed, has a zero centre: its features are its latents.
        """
        return self.encode(x) - self.feature_center

    @property
    def has_feature_center(self) -> bool:
        """Whether training set :attr:`feature_center` (all zeros: it did not)."""
        return bool(self.feature_center.any())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D) -> reconstructions (B, 3, S, S) in [0, 1]."""
        x = z.reshape(z.shape[0], *self.arch.latent_shape)  # (B, L, s, s)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self._run_stages(self.decoder, self.decompress(x))  # doubles H and W per stage
        return clamp_unit(self.head(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) -> {"reconstruction": (B, 3, S, S), "latent": (B, D)}."""
        latent = self.encode(x)
        return {"reconstruction": self.decode(latent), "latent": latent}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the weights and ``config.json`` (architecture only) into ``directory``: a checkpoint of
        :mod:`fext.checkpoints`, which `fext train` extends with its configuration and history."""
        save_checkpoint(directory, self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> FeXTAutoEncoder:
        """Rebuild the model from a checkpoint's ``config.json`` and load its weights (never pickle)."""
        return load_checkpoint(directory, map_location)[0]


def load_checkpoint(
    folder: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[FeXTAutoEncoder, Checkpoint]:
    """The model rebuilt from a checkpoint's ``config.json`` with its weights (never pickle), and the checkpoint read."""
    checkpoint = read_checkpoint(folder)
    model = FeXTAutoEncoder(checkpoint.description.architecture)
    load_weights(model, read_weights(checkpoint.path))
    return model.to(map_location), checkpoint


def model_complexity(model: FeXTAutoEncoder, img_size: int | None = None) -> tuple[int, int]:
    """(parameter count, forward FLOPs for one image) counted with ``torch.utils.flop_counter``.

    FLOPs count the convolutions and matrix products (2 per multiply-add); norms and activations are
    not counted, as usual.
    """
    arch = model.arch if img_size is None else replace(model.arch, img_size=img_size)
    params = sum(p.numel() for p in model.parameters())
    # A copy on the meta device: shapes only, so counting costs no compute and leaves ``model`` untouched.
    with torch.device("meta"):
        probe = type(model)(arch, channels_last=model.channels_last).eval()
        x = torch.zeros(1, 3, arch.img_size, arch.img_size)
    counter = FlopCounterMode(display=False)
    with counter:  # gradients on: the training route, the model's own arithmetic (see ResidualConvUnit)
        probe(x)
    return params, counter.get_total_flops()


def describe(model: FeXTAutoEncoder) -> str:
    """A few lines summarising the architecture for summary.txt: stages, shapes, parameters, FLOPs/image."""
    arch = model.arch
    params, flops = model_complexity(model)
    side = arch.img_size
    lines = [f"FeXTAutoEncoder preset={arch.preset} img_size={arch.img_size} dropout={arch.dropout}"]
    lines.append(f"  input                  (3, {side}, {side})")
    for i, (w, d) in enumerate(zip(arch.widths, arch.depths)):
        side //= 2
        lines.append(f"  encoder.{i}  width {w:4d}  depth {d}  -> ({w}, {side}, {side})")
    c, h, w = arch.latent_shape
    lines.append(f"  latent                 ({c}, {h}, {w}) = {arch.feature_dim} features")
    for j, i in enumerate(reversed(range(len(arch.widths)))):
        side *= 2
        lines.append(f"  decoder.{j}  width {arch.widths[i]:4d}  depth {arch.depths[i]}  -> ({arch.widths[i]}, {side}, {side})")
    lines.append(f"  output                 (3, {side}, {side}) clamped to [0, 1]")
    lines.append(f"  parameters: {params:,}")
    lines.append(f"  forward FLOPs/image: {flops / 1e9:.2f} G")
    return "\n".join(lines)

