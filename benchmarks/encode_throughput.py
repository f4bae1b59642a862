"""Encoding speed and memory: prints figures, asserts nothing (a benchmark, not a test).

    python benchmarks/encode_throughput.py            # the figures for the README (quiet machine)
    python benchmarks/encode_throughput.py --quick    # a smoke run: 64 px, fewer images and repeats

1. The machine's fp32 matrix-multiply GFLOP/s (torch.mm of large squares, best of several):
   the ceiling the model is compared with.
2. Base preset, IMG_SIZE 128, batch 64, fp32 and MIXED_PRECISION:
   - warm: batches already decoded in memory (what a decoded cache gives), model time only;
   - cold: ``encode_folder`` end to end on 500x375 JPEGs, decoded by NUM_PROCESSORS workers;
   images/second, the encoder's achieved GFLOP/s and its share of the matmul figure (warm fp32 also
   with fast inference off: the plain forward, what the switch gains); then warm
   fp32 again with ``model.JIT_COMPILE`` (torch.compile, inductor), and how long compiling took.
   Targets on a 2-core CPU: warm fp32 at 60% of the matmul GFLOP/s or more.
3. Peak resident memory of ``encode_folder`` with the small preset on 1,000 and on 20,000 small
   images, each in a fresh subprocess (its own peak, and its largest decoding worker's). Target:
   the two within 300 MB of each other.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_header, peak_rss_mb
from PIL import Image

from fext import checkpoints
from fext._allocator import keep_freed_memory
from fext.config import Config, with_overrides
from fext.encoding import embed, encode_folder, load_model
from fext.model import FeXTAutoEncoder


def encoder_flops(model: FeXTAutoEncoder) -> int:
    """FLOPs of ``encode`` for one image (convolutions and matmuls, 2 per multiply-add).

    Counted on the plain forward: the model's own arithmetic. Fast inference does a little more
    (symmetrically padded convolutions, see fext.layers); counting that would flatter the figures.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    size = model.arch.img_size
    fast = model.fast_inference
    with counter, torch.inference_mode():
        model.disable_fast_inference().encode(torch.zeros(1, 3, size, size))
    model.enable_fast_inference(fast)
    return counter.get_total_flops()


def write_jpegs(folder: Path, count: int, width: int, height: int, distinct: int = 16) -> None:
    """``count`` JPEG files of ``width`` x ``height`` (``distinct`` different pictures, repeated)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    blobs = []
    for _ in range(distinct):
        base = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 12)) for _ in range(3)], -1)
        pixels = ((base + 1) * 110 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    for i in range(count):
        (folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg").parent.mkdir(exist_ok=True)
        (folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg").write_bytes(blobs[i % distinct])


def save_checkpoint(folder: Path, preset: str, img_size: int) -> Path:
    torch.manual_seed(0)
    cfg = with_overrides(Config(), {"model.PRESET": preset, "model.IMG_SIZE": img_size})
    model = FeXTAutoEncoder.from_preset(preset, img_size)
    checkpoints.save_checkpoint(folder, model, checkpoints.CheckpointDescription(model.arch, cfg))
    return folder


def bench_speed(args: argparse.Namespace, tmp: Path, matmul: float) -> None:
    img_size, batch = args.img_size, 64
    ckpt = save_checkpoint(tmp / "base", "base", img_size)
    jpegs = tmp / "jpegs"
    write_jpegs(jpegs, args.cold_images, 500, 375)
    model = load_model(ckpt, torch.device("cpu"))
    flops = encoder_flops(model)
    from fext.data import find_images, load_image

    pixels = torch.from_numpy(np.stack([load_image(p, img_size) for p in find_images(jpegs)[:batch]]))  # (64, S, S, 3)
    print(f"\nbase preset, {img_size} px, batch {batch}: encoder {flops / 1e9:.2f} GFLOP per image")
    print(f"{'precision':<10} {'data':<34} {'img/s':>8} {'GFLOP/s':>8} {'% matmul':>9}")

    def warm(label: str, model: torch.nn.Module, mixed: bool) -> None:
        embed(model, pixels, torch.device("cpu"), mixed)  # warm-up: allocations, oneDNN kernel choice
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            embed(model, pixels, torch.device("cpu"), mixed)
            times.append(time.perf_counter() - t)
        rate = batch / min(times)
        print(f"{label:<10} {'warm: decoded batches in memory':<34} {rate:8.1f} {rate * flops / 1e9:8.1f} {100 * rate * flops / 1e9 / matmul:8.0f}%")

    warm("fp32 plain", model.disable_fast_inference(), False)  # what model.enable_fast_inference() gains
    model.enable_fast_inference()
    for mixed in (False, True):
        label = "bf16 mix" if mixed else "fp32"
        warm(label, model, mixed)
        cfg = with_overrides(Config(), {"device.DEVICE": "CPU", "device.MIXED_PRECISION": mixed, "device.NUM_PROCESSORS": args.workers})
        t = time.perf_counter()
        encode_folder(ckpt, jpegs, tmp / "out", config=cfg, batch_size=batch, overwrite=True, progress=False)
        rate = args.cold_images / (time.perf_counter() - t)
        what = f"cold: {args.cold_images} JPEGs 500x375, {args.workers} workers"
        print(f"{label:<10} {what:<34} {rate:8.1f} {rate * flops / 1e9:8.1f} {100 * rate * flops / 1e9 / matmul:8.0f}%")
    if not args.skip_compile:
        t = time.perf_counter()
        compiled = load_model(ckpt, torch.device("cpu"), "inductor")
        embed(compiled, pixels, torch.device("cpu"))
        print(f"model.JIT_COMPILE (inductor, frozen weights): first batch took {time.perf_counter() - t:.1f} s")
        warm("fp32 jit", compiled, False)
    from fext.data import decode_batches

    t = time.perf_counter()
    decoded = sum(len(b.positions) for b in decode_batches(find_images(jpegs), img_size, batch, args.workers))
    print(f"decoding alone ({args.workers} workers, no model): {decoded / (time.perf_counter() - t):.1f} img/s")


def bench_memory(args: argparse.Namespace, tmp: Path) -> None:
    ckpt = save_checkpoint(tmp / "small", "small", 64)
    print(f"\npeak resident memory, small preset, 64 px, batch 64, {args.workers} decoding workers, fresh process each:")
    print(f"{'images':>8} {'main MB':>9} {'worker MB':>10} {'seconds':>8}   (worker: ru_maxrss, pages shared with main included)")
    peaks = {}
    for count in args.memory_sizes:
        images = tmp / f"small_{count}"
        write_jpegs(images, count, 64, 48)
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(ckpt), str(images), str(tmp / f"out_{count}"), str(args.workers)],
            capture_output=True, text=True, check=True,
        )
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[count] = figures["main_mb"]
        print(f"{count:>8} {figures['main_mb']:9.0f} {figures['workers_mb']:10.0f} {figures['seconds']:8.1f}")
    low, high = min(args.memory_sizes), max(args.memory_sizes)
    print(f"growth from {low} to {high} images: {peaks[high] - peaks[low]:+.0f} MB (target: within 300 MB)")


def memory_child(ckpt: str, images: str, output: str, workers: str) -> None:
    """Encode in this fresh process and print its peak RSS (and its workers') as JSON, in MB."""
    cfg = with_overrides(Config(), {"device.DEVICE": "CPU", "device.NUM_PROCESSORS": int(workers)})
    t = time.perf_counter()
    encode_folder(ckpt, images, output, config=cfg, batch_size=64, overwrite=True, progress=False)
    seconds = time.perf_counter() - t
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20  # ru_maxrss: KiB on Linux, bytes on macOS
    print(json.dumps({
        "main_mb": peak_rss_mb(),
        "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
        "seconds": seconds,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run on a busy machine")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding worker processes (default: CPU count)")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory figures")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed figures")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile figures (20-30 s to compile)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    keep_freed_memory()  # as the fext commands that run the model switch it on
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    args.repeats = 1 if args.quick else 10
    args.img_size = 64 if args.quick else 128
    args.cold_images = 64 if args.quick else 640
    args.memory_sizes = (200, 2000) if args.quick else (1000, 20000)
    matmul = machine_header("cpu", 1024 if args.quick else 2048, 1.0 if args.quick else 5.0)
    if args.quick:
        print("--quick: small sizes, a smoke run")
    with tempfile.TemporaryDirectory(prefix="fext_bench_") as tmp:
        if not args.skip_speed:
            bench_speed(args, Path(tmp), matmul)
        if not args.skip_memory:
            bench_memory(args, Path(tmp))


if __name__ == "__main__":
    main()
