"""Per-image measurements of `fext analyze`, computed on the full-resolution image with NumPy.

:func:`measure_image` decodes one file and returns an :class:`ImageRecord`: the seed's
statistics of the grayscale image (mean, median, std, min, max, noise), plus what the
dataset-level checks need (entropy, variance of the Laplacian, channel difference, a pixel
hash for exact duplicates, a 64-bit dHash for near duplicates) and the image's histograms.

The formulas follow the original tool (OpenCV), without depending on OpenCV:

- gray: luma ``0.299 R + 0.587 G + 0.114 B`` rounded half up to uint8, in exact integer
  arithmetic ``(299 R + 587 G + 114 B + 500) // 1000``.
- blur: 3×3 Gaussian, the separable kernel ``[1, 2, 1] / 4`` that ``cv2.GaussianBlur`` uses for
  ksize 3 and σ 0, reflect-101 borders (``dcb|abcd|cba``), rounded half up to uint8 as
  OpenCV's fixed-point path does.
- noise: ``gray - blur`` in a signed type; ``noise_std`` is its (population) standard
  deviation and ``noise_ratio = noise_std / (std + 1e-9)``.
- Laplacian: ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` with reflect-101 borders
  (``cv2.Laplacian``'s default), on the gray image; its variance measures sharpness.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fext.data import ImageDecodeError, open_rgb

STAT_COLUMNS = (
    "name", "height", "width", "mean", "median", "std", "min", "max", "pixel_range", "noise_std", "noise_ratio",
)
"""The columns of image_statistics.csv, in the seed's order."""

_LEVELS = np.arange(256, dtype=np.float64)


@dataclass
class ImageRecord:
    """What :func:`measure_image` learns about one file.

    ``error`` is the reason the file could not be read (the measurements then stay at zero).
    ``gray_hist`` (256,) and ``rgb_hist`` (768,: R, G then B) are pixel counts; the caller sums
    them into the dataset histograms and drops them.
    """

    name: str
    error: str | None = None
    format: str = ""
    """Pillow's name of the file's format ("JPEG", "PPM", ...), read from its header; "" when unreadable."""
    height: int = 0
    width: int = 0
    mean: float = 0.0
    median: float = 0.0
    std: float = 0.0
    min: int = 0
    max: int = 0
    noise_std: float = 0.0
    entropy: float = 0.0
    laplacian_var: float = 0.0
    channel_diff: float | None = None
    """Mean absolute difference between colour channels; None when the file is stored as gray."""
    pixel_hash: bytes = b""
    """SHA-1 of the shape and the decoded RGB bytes: equal hashes = exact duplicates."""
    dhash: int = 0
    """64-bit difference hash of the gray image (see :func:`dhash`)."""
    dhash_informative: bool = False
    """False when the 9×8 thumbnail is flat: its hash then says nothing about the content."""
    gray_hist: np.ndarray | None = field(default=None, repr=False)
    rgb_hist: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pixel_range(self) -> int:
        return self.max - self.min

    @property
    def noise_ratio(self) -> float:
        return self.noise_std / (self.std + 1e-9)

    def row(self) -> dict:
        """The image_statistics.csv row (see :data:`STAT_COLUMNS`)."""
        return {c: getattr(self, c) for c in STAT_COLUMNS}


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 gray, ``round(0.299 R + 0.587 G + 0.114 B)`` (ties up)."""
    s = np.multiply(rgb[..., 0], 299, dtype=np.uint32)
    s += np.multiply(rgb[..., 1], 587, dtype=np.uint32)
    s += np.multiply(rgb[..., 2], 114, dtype=np.uint32)
    s += 500
    s //= 1000
    return s.astype(np.uint8)


def _smooth_121(x: np.ndarray, axis: int) -> np.ndarray:
    """``x[i-1] + 2 x[i] + x[i+1]`` along ``axis`` with reflect-101 borders, in x's dtype."""
    x = np.moveaxis(x, axis, 0)
    out = x * 2
    if len(x) > 1:
        out[1:] += x[:-1]
        out[:-1] += x[1:]
        out[0] += x[1]  # reflect-101: the row before the first is the second
        out[-1] += x[-2]
    else:
        out += x * 2
    return np.moveaxis(out, 0, axis)


def _blur(gray16: np.ndarray) -> np.ndarray:
    """Rounded 3×3 Gaussian of a (H, W) int16 copy of a gray image, as int16.

    Sums stay below 16 × 255 = 4080, so int16 holds them exactly; ``+ 8 >> 4`` rounds half up.
    """
    total = _smooth_121(_smooth_121(gray16, 0), 1)
    total += 8
    total >>= 4
    return total


def gaussian_blur3(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8: 3×3 Gaussian ``[1, 2, 1] / 4`` per axis, reflect-101, rounded."""
    return _blur(gray.astype(np.int16)).astype(np.uint8)


def laplacian(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W) int16: 4-neighbour Laplacian with reflect-101 borders."""
    g = gray.astype(np.int16)
    out = g * -4
    for axis in (0, 1):
        x, o = np.moveaxis(g, axis, 0), np.moveaxis(out, axis, 0)
        if len(x) > 1:
            o[1:] += x[:-1]
            o[:-1] += x[1:]
            o[0] += x[1]
            o[-1] += x[-2]
        else:
            o += x * 2
    return out


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """Mean and population variance of a small-integer array, via one float32 dot product."""
    flat = x.ravel().astype(np.float32)
    n = flat.size
    mean = float(flat.sum(dtype=np.float64)) / n
    return mean, max(float(np.dot(flat, flat)) / n - mean * mean, 0.0)


def noise_std(gray: np.ndarray) -> float:
    """Standard deviation of ``gray - gaussian_blur3(gray)`` (the seed's noise estimate)."""
    gray16 = gray.astype(np.int16)
    noise = _blur(gray16)
    np.subtract(gray16, noise, out=noise)
    return float(np.sqrt(_mean_var(noise)[1]))


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of :func:`laplacian`: low for blurry (or flat) images."""
    return _mean_var(laplacian(gray))[1]


def histogram_stats(hist: np.ndarray) -> dict:
    """Mean, median (NumPy's: the average of the two middle values), population std, min, max
    and Shannon entropy in bits of the pixels counted by a (256,) histogram."""
    n = int(hist.sum())
    mean = float(hist @ _LEVELS) / n
    std = float(np.sqrt(max(float(hist @ (_LEVELS - mean) ** 2) / n, 0.0)))
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    nonzero = np.flatnonzero(hist)
    p = hist[nonzero] / n
    return {
        "mean": mean, "median": (lo + hi) / 2, "std": std, "min": int(nonzero[0]), "max": int(nonzero[-1]),
        "entropy": float(-(p * np.log2(p)).sum()) + 0.0,
    }


def dhash(gray_image: Image.Image) -> tuple[int, bool]:
    """64-bit difference hash of a gray image, and whether the image had any gradient.

    The image is shrunk to 9×8 (box filter), and each bit says whether a pixel is brighter
    than its right neighbour. Robust to resizing, recompression and small brightness changes;
    two images are near duplicates when their hashes differ in few bits (Hamming distance).
    """
    small = np.asarray(gray_image.resize((9, 8), Image.BILINEAR, reducing_gap=2.0), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), bool(small.max() != small.min())


def phash(gray_image: Image.Image) -> tuple[int, bool]:
    """64-bit DCT hash of a gray image, and whether the image had any detail to hash.

    The image is shrunk to 32×32 (box filter); each bit of the hash says whether one of the 8×8
    lowest-frequency DCT coefficients (the constant term left out, the next one counted twice so
    there are 64) is above their median. Low frequencies survive resizing, JPEG and brightness
    changes, and the median threshold makes the hash ignore contrast. Chosen over dHash by
    ``benchmarks/perceptual_hash.py``. It means something only when most of those frequencies are
    present: in a flat image, or in stripes (all but a few coefficients 0), every such image gets
    the same bits; photographs have 57 to 63 of the 63.
    """
    from scipy.fft import dctn

    small = np.asarray(gray_image.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(small, norm="ortho")[:8, :8].ravel().copy()
    alive = np.abs(low[1:]) > 1e-3 * np.abs(low[1:]).max()  # frequencies present (none in a flat image)
    low[0] = low[1]  # the mean brightness says nothing about the picture
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), bool(np.ptp(small) > 2 and alive.sum() >= 32)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Süsstrunk's colourfulness of (H, W, 3) uint8 pixels: 0 for gray, about 40–60 for
    an ordinary colour photo, over 100 for saturated colour noise.

    ``sqrt(σ_rg² + σ_yb²) + 0.3 · sqrt(μ_rg² + μ_yb²)`` with ``rg = R - G`` and ``yb = (R + G) / 2 - B``.
    """
    x = rgb.reshape(-1, 3).astype(np.float32)
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def channel_difference(rgb: np.ndarray, rgb_hist: np.ndarray | None = None, tolerance: float = np.inf) -> float:
    """The larger of mean |R - G| and mean |G - B| of (H, W, 3) uint8 pixels: 0 for gray content.

    With the image's (768,) ``rgb_hist``, a cheap lower bound is tried first: the Wasserstein
    distance between two channels' histograms never exceeds their mean absolute difference.
    When that bound is already above ``tolerance`` (any colourful photo) it is returned instead
    of the exact value, which saves two passes over the pixels.
    """
    if rgb_hist is not None:
        cdf = np.cumsum(rgb_hist.reshape(3, 256), axis=1) / (rgb.shape[0] * rgb.shape[1])
        bound = float(max(np.abs(cdf[0] - cdf[1]).sum(), np.abs(cdf[1] - cdf[2]).sum()))
        if bound > tolerance:
            return bound
    x = rgb.astype(np.int16)
    rg = np.abs(x[..., 0] - x[..., 1]).mean()
    gb = np.abs(x[..., 1] - x[..., 2]).mean()
    return float(max(rg, gb))


def measure_pixels(
    name: str, image: Image.Image, stored_as_colour: bool = True, gray_tolerance: float = np.inf
) -> ImageRecord:
    """All measurements of one decoded RGB image (see the module docstring).

    ``gray_tolerance``: channel differences above it are only bounded, not computed exactly
    (see :func:`channel_difference`).
    """
    rgb = np.asarray(image)  # (H, W, 3) uint8
    height, width = rgb.shape[:2]
    gray = luma(rgb)
    gray_image = Image.fromarray(gray)
    gray_hist = np.array(gray_image.histogram(), dtype=np.int64)
    stats = histogram_stats(gray_hist)
    digest = hashlib.sha1(f"{height}x{width}:".encode())
    digest.update(np.ascontiguousarray(rgb).data)
    code, informative = dhash(gray_image)
    rgb_hist = np.array(image.histogram(), dtype=np.int64)
    return ImageRecord(
        name=name, height=height, width=width,
        mean=stats["mean"], median=stats["median"], std=stats["std"], min=stats["min"], max=stats["max"],
        noise_std=noise_std(gray), entropy=stats["entropy"], laplacian_var=laplacian_variance(gray),
        channel_diff=channel_difference(rgb, rgb_hist, gray_tolerance) if stored_as_colour else None,
        pixel_hash=digest.digest(), dhash=code, dhash_informative=informative,
        gray_hist=gray_hist, rgb_hist=rgb_hist,
    )


def _header(path: Path) -> tuple[bool, str]:
    """Whether the file holds colour channels (RGB, RGBA, CMYK, palette...), and its format, from its header."""
    try:
        with Image.open(path) as im:
            return Image.getmodebase(im.mode) == "RGB", im.format or ""
    except Exception:  # noqa: BLE001 - open_rgb reports why the file is unreadable
        return True, ""


def measure_image(path: Path, root: Path, gray_tolerance: float = np.inf) -> ImageRecord:
    """Decode ``path`` at full resolution and measure it; an unreadable file gives a record
    whose ``error`` is the reason (never an exception)."""
    path = Path(path)
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = path.as_posix()
    try:
        image = open_rgb(path)
        colour, file_format = _header(path)
        record = measure_pixels(name, image, colour, gray_tolerance)
        record.format = file_format
        return record
    except ImageDecodeError as exc:
        return ImageRecord(name=name, error=exc.reason)
    except MemoryError:
        return ImageRecord(name=name, error="out of memory while analysing the full-resolution image")
