"""Thumbnails of every image packed into a few JPEG sprite sheets, so the page loads them once.

A page with 100,000 images cannot afford one picture each: tiles are small (``tile_size``
shrinks as collections grow, to keep the page within tens of megabytes) and packed into square
sheets of at most ``SHEET_PIXELS`` pixels a side, each embedded once in the page as a data URI.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHEET_PIXELS = 2048
QUALITY = 75
BACKGROUND = (34, 34, 34)
THREADS = 2
"""Pillow decodes with the GIL released, so threads share the work without process start-up costs."""


@dataclass(frozen=True)
class Sprites:
    """``sheets``: JPEG bytes of each sheet; row i is tile ``i % per_sheet`` of sheet ``i // per_sheet``,
    laid out ``columns`` to a line; ``present``: bool (N,), False where the image could not be read."""

    tile: int
    columns: int
    sheets: list[bytes]
    present: np.ndarray

    @property
    def per_sheet(self) -> int:
        return self.columns * self.columns


def tile_size(n: int) -> int:
    """Thumbnail side in pixels for a collection of ``n`` images."""
    for limit, size in ((5_000, 64), (20_000, 48), (60_000, 32)):
        if n <= limit:
            return size
    return 24


def make_sprites(files: list[Path], tile: int | None = None, progress: bool = False) -> Sprites:
    """Sprite sheets of the images ``files`` (any readable image; unreadable ones leave a blank tile)."""
    from PIL import Image
    from tqdm import tqdm

    tile = tile or tile_size(len(files))
    columns = SHEET_PIXELS // tile
    per_sheet = columns * columns
    present = np.zeros(len(files), dtype=bool)
    sheets = []
    bar = tqdm(total=len(files), unit="img", desc="Thumbnails", disable=not progress)
    with ThreadPoolExecutor(THREADS) as pool:
        for start in range(0, len(files), per_sheet):
            chunk = files[start:start + per_sheet]
            lines = -(-len(chunk) // columns)
            sheet = np.empty((lines * tile, min(len(chunk), columns) * tile, 3), dtype=np.uint8)
            sheet[:] = BACKGROUND
            for i, pixels in enumerate(pool.map(lambda p: _thumbnail(p, tile), chunk)):
                if pixels is not None:
                    y, x = divmod(i, columns)
                    sheet[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = pixels
                    present[start + i] = True
                bar.update(1)
            buffer = io.BytesIO()
            Image.fromarray(sheet).save(buffer, format="JPEG", quality=QUALITY)
            sheets.append(buffer.getvalue())
    bar.close()
    if not present.all():
        log.info("%d image(s) could not be read for thumbnails; their points show no picture", int((~present).sum()))
    return Sprites(tile, columns, sheets, present)


def _thumbnail(path: Path, tile: int) -> np.ndarray | None:
    """(tile, tile, 3) uint8: the image fitted inside the square, on the background colour; None if unreadable."""
    from PIL import Image, ImageOps

    from fext.data import ImageDecodeError, open_rgb

    try:
        image = open_rgb(path, draft_size=tile * 2)
    except (ImageDecodeError, OSError):
        return None
    return np.asarray(ImageOps.pad(image, (tile, tile), method=Image.Resampling.BILINEAR, color=BACKGROUND))


def iter_sheet_uris(sprites: Sprites) -> Iterator[str]:
    """Each sheet as a ``data:image/jpeg;base64,...`` URI."""
    import base64

    for sheet in sprites.sheets:
        yield "data:image/jpeg;base64," + base64.b64encode(sheet).decode("ascii")
