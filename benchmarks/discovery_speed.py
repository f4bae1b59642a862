"""Discovery speed: listing a folder by content (``list_folder``) against the suffix filter it replaced.

Writes ``--files`` small files (a 16x12 JPEG's bytes, 631 bytes) into a temporary folder of 100
subfolders, then times, best of ``--repeats`` runs on a warm file-system cache:

- ``suffix filter``: the discovery FeXT had before issue 27 (``os.walk``, keep the files whose
  suffix is one of 8 image suffixes), copied here as it was;
- ``list_folder``: today's discovery (known suffix: taken without being read; any other file:
  its header sniffed by Pillow);
- ``+ frames``: counting the multi-frame images afterwards (``Listing.multi_frame``: the header
  of every .gif/.tif/.tiff/.mpo is read), timed once, what a command's summary adds.

Folders: all ``.jpg`` (the normal case, the one the 10 % budget is about); half ``.jpg`` and
half ``.xmp`` sidecars (each sidecar sniffed); all ``.tif`` (each header read for the frame count).
Usage: ``python benchmarks/discovery_speed.py [--files 100000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _machine import cpu_model
from PIL import Image

from fext.data import list_folder

OLD_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def suffix_filter(root: Path) -> list[Path]:
    """The discovery before issue 27, verbatim in substance: a suffix decides, nothing is opened."""
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folder_path = Path(folder)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in OLD_SUFFIXES:
                continue
            path = folder_path / name
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (120, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_folder(root: Path, count: int, kinds: list[tuple[str, bytes]]) -> None:
    """``count`` files in 100 subfolders, cycling through ``kinds`` (suffix, bytes)."""
    for sub in range(100):
        (root / f"{sub:03d}").mkdir(parents=True)
    for i in range(count):
        suffix, data = kinds[i % len(kinds)]
        (root / f"{i % 100:03d}" / f"{i:07d}{suffix}").write_bytes(data)


def best_seconds(fn: Callable[[Path], object], root: Path, repeats: int) -> float:
    fn(root)  # warm the directory cache, so every timed run reads the same way
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(root)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {cpu_model()} ({os.cpu_count()} CPUs), Python file-system walk, warm cache")
    jpeg, xmp, tiff = image_bytes("JPEG"), b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>', image_bytes("TIFF")
    folders = {
        "all .jpg": [(".jpg", jpeg)],
        "half .jpg, half .xmp sidecars": [(".jpg", jpeg), (".xmp", xmp)],
        "all .tif": [(".tif", tiff)],
    }
    print(f"{'folder of ' + format(args.files, ',') + ' files':<30} {'suffix filter':>14} {'list_folder':>12} "
          f"{'ratio':>6} {'+ frames':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, kinds) in enumerate(folders.items()):
            root = Path(tmp) / f"folder{k}"
            write_folder(root, args.files, kinds)
            old = best_seconds(suffix_filter, root, args.repeats)
            new = best_seconds(list_folder, root, args.repeats)
            listing = list_folder(root)
            start = time.perf_counter()
            multi = len(listing.multi_frame)
            frames = time.perf_counter() - start
            print(f"{label:<30} {old:>12.3f} s {new:>10.3f} s {new / old:>5.2f}x {frames:>8.3f} s"
                  + (f" ({multi} multi-frame)" if multi else ""))


if __name__ == "__main__":
    main()
