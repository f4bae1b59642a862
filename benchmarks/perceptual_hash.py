"""Which perceptual hash, and which Hamming distance, finds edited copies without joining distinct images.

`fext explore` groups near-identical images by a 64-bit perceptual hash. This measures the
candidates on the held-out tiles of ``feature_quality.py`` (240 distinct pictures from 10 CC0 /
public-domain photographs, none sharing a pixel): every tile gets one copy per edit (resized to
50–75 %, JPEG quality 30–70, brightness ±20 %, a 90 % centre crop), and for each hash and
distance it prints the fraction of copies within the distance of their original (recall) and the
fraction of distinct tiles with another distinct tile within it (false positives; a collection
where 1 % of photos join a wrong group is already a nuisance).

    python benchmarks/perceptual_hash.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402
from feature_quality import image_set  # noqa: E402

from fext.analysis.flags import hamming_nearest  # noqa: E402
from fext.analysis.stats import dhash, luma, phash  # noqa: E402

EDITS = ("resized 50-75%", "JPEG 30-70", "brightness +-20%", "crop 90%")


def edit(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One edited copy of ``image``."""
    w, h = image.size
    if kind.startswith("resized"):
        f = rng.uniform(0.5, 0.75)
        return image.resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR)
    if kind.startswith("JPEG"):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(30, 71)))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind.startswith("brightness"):
        return ImageEnhance.Brightness(image).enhance(float(rng.choice([0.8, 1.2])))
    dx, dy = round(w * 0.05), round(h * 0.05)
    return image.crop((dx, dy, w - dx, h - dy))


def ahash(gray: Image.Image) -> int:
    """64-bit average hash: 8×8 box-shrunk gray pixels above their mean."""
    small = np.asarray(gray.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    return int.from_bytes(np.packbits((small > small.mean()).ravel()).tobytes(), "big")


HASHES = {
    "aHash": ahash,
    "dHash": lambda g: dhash(g)[0],
    "pHash": lambda g: phash(g)[0],
}


def gray_of(image: Image.Image) -> Image.Image:
    return Image.fromarray(luma(np.asarray(image.convert("RGB"))))


def main() -> None:
    machine_header("cpu")
    _, held_dir, _, _ = image_set(128, 50, 24)
    originals = [Image.open(p).convert("RGB") for p in sorted(held_dir.rglob("*.png"))]
    rng = np.random.default_rng(0)
    copies = {kind: [edit(im, kind, rng) for im in originals] for kind in EDITS}
    print(f"{len(originals)} distinct tiles (128 px), one copy per edit each")
    head = f"{'hash':<6} {'dist':>4} " + " ".join(f"{k:>17}" for k in EDITS) + f" {'distinct joined':>16}"
    print(head)
    print("-" * len(head))
    for name, fn in HASHES.items():
        base = np.array([fn(gray_of(im)) for im in originals], dtype=np.uint64)
        labels = np.arange(len(base))
        _, nearest = hamming_nearest(base, base, (labels, labels))  # nearest other distinct tile
        copy_dist = {k: np.bitwise_count(np.array([fn(gray_of(c)) for c in copies[k]], dtype=np.uint64) ^ base)
                     for k in EDITS}
        for d in (4, 6, 8, 10, 12):
            cells = " ".join(f"{(copy_dist[k] <= d).mean():>17.3f}" for k in EDITS)
            print(f"{name:<6} {d:>4} {cells} {(nearest <= d).mean():>16.3f}")
    print("recall: fraction of copies within the distance of their original; distinct joined: fraction of "
          "tiles with another tile within it")


if __name__ == "__main__":
    main()
