"""Data pipeline throughput: cold decoding per worker, and batches from the warm cache.

Generates 500x375 JPEGs (quality 90, Flickr30k-like dimensions) in a temporary folder, in two
flavours: "smooth" (blurred multi-scale noise and flat shapes, ~45 KB) and "detailed" (the
same plus strong pixel noise, ~100 KB, closer to the file size of real photos; JPEG decoding
time grows with the compressed size). Then prints images/second for:

- decode + resize to 128 px in one process with one thread (= one data-loading worker),
  without and with reduced-size JPEG decoding (``Image.draft``);
- ``decode_batches`` with 2 worker processes (the whole 2-core machine);
- building the decoded-image cache (``prepare_images``, 2 workers);
- warm cache: shuffled batches of 25 (``iterate_batches`` + ``to_float``), main process
  (both steps are single-threaded NumPy on CPU).

Each single-process row shows wall-clock and CPU-time rates: on a shared machine the CPU-time
rate is the better estimate of what one idle core does.

"Cold" means not decoded before; the file bytes are in the OS page cache, as they are after
the first epoch of a real run. Usage: ``python benchmarks/data_throughput.py [--images 300]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import machine_header
from PIL import Image, ImageDraw, ImageFilter

from fext.data import decode_batches, iterate_batches, load_image, prepare_images, to_float


def natural_image(rng: np.random.Generator, noise: float, width: int = 500, height: int = 375) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 image: 1/f-ish colour clouds, flat shapes, soft edges, noise."""
    acc = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in [(3, 50), (6, 35), (12, 25), (25, 16), (50, 10), (100, 7), (250, 5)]:
        small = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(small[..., c], "F").resize((width, height), Image.BICUBIC)
            acc[..., c] += amplitude * np.asarray(layer)
    image = Image.fromarray(np.clip(acc + 128, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(10, 150)), y0 + int(rng.integers(10, 150)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    return np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8)


def make_jpegs(folder: Path, count: int, noise: float, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(natural_image(rng, noise)).save(path, quality=90)
        paths.append(path)
    return paths


def best_rates(images_per_run: int, run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, CPU) images/second of the fastest of ``repeats`` runs.

    Other processes may share the machine: the fastest run is the least disturbed one, and
    the CPU-time rate (this process only) estimates the rate of an idle machine for
    single-threaded work.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - wall_start)
        cpu = min(cpu, time.process_time() - cpu_start)
    return images_per_run / wall, images_per_run / cpu


def measure(paths: list[Path], cache_dir: Path, size: int, batch_size: int, repeats: int) -> dict[str, tuple]:
    """Rows of (wall images/s, CPU-time images/s or None for multi-process rows)."""
    rates: dict[str, tuple] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker gets
    rates["cold decode+resize, 1 worker, full decode"] = best_rates(
        len(paths), lambda: [load_image(p, size, draft=False) for p in paths], repeats
    )
    rates["cold decode+resize, 1 worker, draft"] = best_rates(
        len(paths), lambda: [load_image(p, size) for p in paths], repeats
    )
    torch.set_num_threads(threads)
    wall, _ = best_rates(len(paths), lambda: [b for b in decode_batches(paths, size, 64, workers=2)], repeats)
    rates["cold, decode_batches, 2 workers"] = (wall, None)
    start = time.perf_counter()
    cached = prepare_images(paths, size, cache_dir, workers=2, progress=False)
    rates["cache build (prepare_images), 2 workers"] = (len(paths) / (time.perf_counter() - start), None)

    generator = torch.Generator().manual_seed(0)
    epochs = max(1, 20_000 // len(paths))

    def warm_epochs() -> None:
        for _ in range(epochs):
            for batch in iterate_batches(cached, range(len(cached)), batch_size, True, generator):
                to_float(batch)

    warm_epochs()
    warm = best_rates(epochs * len(cached), warm_epochs, repeats)
    rates[f"warm cache, batches of {batch_size} + to_float"] = warm
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    machine_header(seconds=1.0)  # the CPU these figures come from
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.images} JPEGs 500x375 q90 -> {args.size} px")
    results: dict[str, dict[str, float]] = {}
    sizes_kb: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, noise, seed in [("smooth", 5.0, 1), ("detailed", 24.0, 2)]:
            paths = make_jpegs(Path(tmp) / name, args.images, noise, seed)
            sizes_kb[name] = np.mean([p.stat().st_size for p in paths]) / 1024
            cache_dir = Path(tmp) / f"cache-{name}"
            results[name] = measure(paths, cache_dir, args.size, args.batch_size, args.repeats)

    columns = list(results)
    header = f"{'images/second (wall / CPU time)':48s}" + "".join(
        f"{f'{c} ({sizes_kb[c]:.0f} KB)':>24s}" for c in columns
    )
    print(header)
    print("-" * len(header))
    for row in results[columns[0]]:
        cells = []
        for c in columns:
            wall, cpu = results[c][row]
            cells.append(f"{wall:,.0f} / {cpu:,.0f}" if cpu is not None else f"{wall:,.0f} / -")
        print(f"{row:48s}" + "".join(f"{cell:>24s}" for cell in cells))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")

if __name__ == "__main__":
    main()
