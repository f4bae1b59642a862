"""The model's architecture description and its presets: what ``config.json["architecture"]`` holds.

A leaf module (it imports nothing of FeXT): the model is built from a :class:`ModelArchitecture`
(:mod:`fext.model`) and the checkpoint format stores one (:mod:`fext.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_IMG_SIZE = 1024


@dataclass(frozen=True)
class ModelArchitecture:
    """Everything needed to rebuild a FeXTAutoEncoder; saved as ``config.json["architecture"]``."""

    preset: str
    """Name of the preset it came from ("base", "small"), or "custom"."""
    img_size: int
    """Input and output height and width in pixels; a multiple of 2**len(widths)."""
    widths: tuple[int, ...]
    """Channels of each encoder stage (one 2×2 max pooling each); the decoder mirrors them."""
    depths: tuple[int, ...]
    """Residual 2×2 convolutions in each encoder stage (and its mirrored decoder stage)."""
    latent_channels: int
    """Channels of the latent map; feature dimension D = latent_channels * (img_size / 2**stages)**2."""
    dropout: float = 0.1
    """Dropout in the compression and decompression stacks (training only)."""

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; store tuples so the object stays hashable and frozen.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if not self.widths or len(self.widths) != len(self.depths):
            raise ValueError(f"widths {self.widths} and depths {self.depths} must be non-empty and of equal length")
        if min(self.widths) < 1 or min(self.depths) < 1 or self.latent_channels < 1:
            raise ValueError("widths, depths and latent_channels must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        step = self.reduction
        if not (step <= self.img_size <= MAX_IMG_SIZE and self.img_size % step == 0):
            raise ValueError(
                f"IMG_SIZE must be a multiple of {step} between {step} and {MAX_IMG_SIZE} "
                f"(the model halves the resolution {len(self.widths)} times); got {self.img_size}"
            )

    @property
    def reduction(self) -> int:
        """Input side / latent side: 2 ** number of stages."""
        return 2 ** len(self.widths)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent map."""
        side = self.img_size // self.reduction
        return (self.latent_channels, side, side)

    @property
    def feature_dim(self) -> int:
        """D, the length of the feature vector ``encode`` returns."""
        c, h, w = self.latent_shape
        return c * h * w


PRESETS: dict[str, dict[str, Any]] = {
    # The design's VGG16-like model: 128 px -> 2x2x512 = 2048 features, ~20M parameters.
    "base": dict(widths=(64, 64, 128, 128, 256, 512), depths=(4, 4, 5, 5, 6, 6), latent_channels=512, dropout=0.1),
    # Narrow and shallow for demos and tests: 128 px -> 2x2x128 = 512 features, >100x fewer FLOPs than base.
    "small": dict(widths=(16, 16, 32, 32, 64, 128), depths=(1, 1, 1, 1, 1, 1), latent_channels=128, dropout=0.1),
}


def preset_architecture(name: str, img_size: int = 128) -> ModelArchitecture:
    """The :class:`ModelArchitecture` of preset ``name`` at ``img_size`` pixels."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelArchitecture(preset=name, img_size=img_size, **PRESETS[name])
