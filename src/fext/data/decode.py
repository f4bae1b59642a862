"""Decoding one image file into RGB pixels, whatever its format, mode or orientation.

:func:`open_rgb` is the single entry point for reading pixels: it sniffs the content (the
extension does not matter), applies the EXIF orientation, turns every Pillow mode into 8-bit
RGB with transparency composited on white, and turns every way a file can be bad into an
:class:`ImageDecodeError` with a short human reason. :func:`load_image` adds the resize to
the model's square input.

Resize: the image is squashed to size x size (the model's input is square; no crop, so
nothing is cut off). JPEGs are first decoded at reduced size with ``Image.draft`` (libjpeg's
1/2, 1/4 or 1/8 scale DCT, the smallest that stays at least as large as the target), which
skips most of the decoding work. The final resize is antialiased bilinear (a triangle filter
widened with the scale factor, so no aliasing at any factor; at the <= 2x left after the
draft it is close to bicubic) computed by torch's vectorised uint8 kernel: the same pixels as
Pillow's ``BILINEAR`` (within 1 level), faster than Pillow's resizes (figures in
benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5-8 rotate by 90 degrees: width and height trade places.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_WHITE = (255, 255, 255, 255)


class ImageDecodeError(Exception):
    """A file that cannot be turned into pixels; ``str(error)`` is the human reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    ``draft_size``: for JPEGs, decode at the smallest reduced scale that still covers
    ``draft_size`` × ``draft_size`` (much faster); None decodes at full resolution.
    Raises :class:`ImageDecodeError` ("empty file", "not an image", "truncated or corrupt
    image data", "image too large (decompression bomb guard)", ...).
    """
    image, _ = _open_rgb_with_size(Path(path), draft_size)
    return image


def thumbnail(path: Path, side: int) -> Image.Image | None:
    """The image at ``path`` shrunk to fit ``side`` × ``side`` (aspect kept), or None if unreadable.

    For pictures of images in reports, contact sheets and figures, where a bad file is left out.
    """
    try:
        image = open_rgb(path, draft_size=side)
    except ImageDecodeError:
        return None
    image.thumbnail((side, side))
    return image


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF orientation applied), read from the header only."""
    path = Path(path)
    _check_not_empty(path)
    with _bomb_is_error():
        try:
            with Image.open(path) as im:
                return _upright_size(im)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one reason
            raise _decode_error(exc) from exc


def load_image(path: Path, size: int, draft: bool = True) -> np.ndarray:
    """Decode ``path`` into a (size, size, 3) uint8 array (aspect ratio not kept).

    ``draft`` False decodes JPEGs at full resolution first (slower, for comparison).
    """
    return decode_image(path, size, draft=draft)[0]


def decode_image(path: Path, size: int, draft: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` plus the original upright ``(width, height)`` of the file."""
    image, original_size = _open_rgb_with_size(Path(path), size if draft else None)
    return resize_rgb(image, size), original_size


def resize_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image to a (size, size, 3) uint8 array with antialiased bilinear filtering."""
    pixels = np.array(image)  # a writable copy, so torch can share it without a warning
    if pixels.shape[:2] == (size, size):
        return pixels
    # The (1, 3, H, W) view of an HWC array is channels_last, the layout of torch's fast uint8 path.
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    planes = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    planes = planes[0].numpy()
    # The kernel returns (3, S, S); three plane copies interleave it faster than one permuted copy.
    out = np.empty((size, size, 3), dtype=np.uint8)
    for channel in range(3):
        out[:, :, channel] = planes[channel]
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparency (alpha channel, palette or colour-key transparency) is composited on white.
    16-bit integer images are scaled from 0..65535 to 0..255; 32-bit integer images too when
    they fit that range, otherwise (and for float images outside 0..1) stretched from their
    minimum to their maximum. Float images within 0..1 are scaled by 255. CMYK uses Pillow's
    conversion (embedded ICC profiles are not applied).
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _wide_to_rgb(image)
    try:
        if _has_transparency(image):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            background.alpha_composite(rgba)
            return background.convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported image mode {mode}") from exc


def _open_rgb_with_size(path: Path, draft_size: int | None) -> tuple[Image.Image, tuple[int, int]]:
    _check_not_empty(path)
    with _bomb_is_error():
        try:
            with Image.open(path) as im:
                original_size = _upright_size(im)
                if draft_size is not None and im.format in ("JPEG", "MPO"):
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                image = _apply_orientation(im)
                return to_rgb(image), original_size
        except Exception as exc:  # noqa: BLE001 - every failure becomes one reason
            raise _decode_error(exc) from exc


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageDecodeError("empty file")


@contextlib.contextmanager
def _bomb_is_error() -> Iterator[None]:
    """Turn Pillow's DecompressionBombWarning (above the pixel limit) into an exception too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _decode_error(exc: BaseException) -> ImageDecodeError:
    if isinstance(exc, ImageDecodeError):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageDecodeError("image too large (decompression bomb guard)")
    if isinstance(exc, UnidentifiedImageError):
        return ImageDecodeError("not an image")
    if isinstance(exc, PermissionError):
        return ImageDecodeError("permission denied")
    if isinstance(exc, MemoryError):
        return ImageDecodeError("out of memory while decoding")
    return ImageDecodeError("truncated or corrupt image data")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        return 1


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if _orientation(image) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _apply_orientation(image: Image.Image) -> Image.Image:
    if _orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - pixels are fine, only the rotation is lost
        return image


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return True
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if values.ndim == 3:  # multi-channel wide modes are rare; keep the first three channels
        values = values[..., :3]
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif image.mode != "F" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if gray.ndim == 2:
        gray = np.repeat(gray[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(gray), "RGB")
