"""Soak run: resident memory of a long `fext train`, epoch by epoch, must stay flat.

Trains the base preset at batch 25 with the default recipe for 20 epochs on a few hundred crops of the
bundled sample photographs, through the real command line in a fresh process (its data loading,
decoded-image cache, validation and per-epoch checkpoints included). At the end of every epoch it reads
the resident memory (VmRSS) of the training process and of its data-loading workers, and the peak each
of them reached during that epoch (VmHWM, reset through ``/proc/PID/clear_refs`` after every reading).
A leak shows as growth after the first epochs, when caches, allocator pools and Adam's state have
reached their size. Target: no growth beyond 5 % after epoch 2, of the memory at the epoch's end and
of the epoch's peak.

    python benchmarks/train_soak.py                    # 240 images, 20 epochs (about half an hour on 2 cores)
    python benchmarks/train_soak.py --images 24 --epochs 3 --preset small   # a check that it runs
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _machine import machine_header
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "fext" / "sample_images"
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+)")


def make_crops(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` random crops (30-100 % of the shorter side) of the bundled photographs, as JPEG files."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.3, 1.0))
        x, y = (int(rng.integers(0, extent - side + 1)) for extent in photo.size)
        photo.crop((x, y, x + side, y + side)).save(folder / f"crop_{i:04d}.jpg", quality=90)


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(resident MB, peak resident MB since the last call) of ``pid`` and all its descendants, summed.

    Each process's peak is reset after it is read (writing 5 to clear_refs), so the next call reports
    the peak of the time in between: one epoch.
    """
    rss = hwm = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            Path(f"/proc/{current}/clear_refs").write_text("5")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        hwm += int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
    return rss, hwm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--growth-limit", type=float, default=0.05, help="allowed growth after epoch 2")
    args = parser.parse_args(argv)
    machine_header()
    with tempfile.TemporaryDirectory(prefix="fext_soak_") as tmp:
        ws = Path(tmp) / "ws"
        run = [sys.executable, "-m", "fext", "--workspace", str(ws)]
        subprocess.run([*run, "init"], check=True, capture_output=True)
        make_crops(ws / "resources" / "dataset", args.images)
        print(f"fext train: {args.preset} preset, batch {args.batch_size}, default recipe, {args.epochs} epochs "
              f"on {args.images} crops of the sample photographs\n")
        print(f"{'epoch':>5} {'seconds':>8} {'RSS MB':>8} {'vs epoch 2':>10} {'epoch peak MB':>14} {'vs epoch 2':>10}")
        command = [*run, "--set", f"model.PRESET={args.preset}", "--set", f"training.BATCH_SIZE={args.batch_size}",
                   "--set", f"training.EPOCHS={args.epochs}", "train"]
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rows = watch(proc)
        if proc.wait() != 0:
            print(f"fext train failed with status {proc.returncode}")
            return 1
    return verdict(rows, args.growth_limit)


def watch(proc: subprocess.Popen) -> list[tuple[int, float, float]]:
    """Read the memory of the training processes at each epoch line of the log; print a row per epoch."""
    rows: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    tail: list[str] = []
    for line in proc.stderr:
        tail = (tail + [line])[-20:]
        match = EPOCH_LINE.match(line.strip())
        if not match:
            continue
        rss, hwm = tree_memory_mb(proc.pid)
        epoch = int(match.group(1))
        rows.append((epoch, rss, hwm))
        second = next(((r, h) for e, r, h in rows if e == 2), None)
        growth = [f"{100 * (now / then - 1):+9.1f}%" if second else f"{'':>10}"
                  for now, then in zip((rss, hwm), second or (1, 1))]
        print(f"{epoch:>5} {time.perf_counter() - start:>8.0f} {rss:>8.0f} {growth[0]} {hwm:>14.0f} {growth[1]}",
              flush=True)
    if proc.wait() != 0:
        print("".join(tail))
    return rows


def verdict(rows: list[tuple[int, float, float]], limit: float) -> int:
    after = [(rss, hwm) for epoch, rss, hwm in rows if epoch >= 2]
    if len(after) < 2:
        print("\nToo few epochs to judge growth (needs epoch 2 and a later one).")
        return 0
    met = True
    for name, column in (("resident memory at the epoch's end", 0), ("the epoch's peak", 1)):
        growth = max(row[column] for row in after) / after[0][column] - 1
        met &= growth <= limit
        print(f"target {name} flat after epoch 2 (growth <= {100 * limit:.0f}%): {100 * growth:+.1f}% "
              f"({'met' if growth <= limit else 'not met'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
