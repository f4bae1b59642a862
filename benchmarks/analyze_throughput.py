"""`fext analyze` throughput: images/second per worker on generated 500x375 JPEGs.

Uses the same photo-like JPEGs as ``data_throughput.py`` (quality 90, "smooth" ~45 KB and
"detailed" ~100 KB). Prints images/second for:

- full-resolution decoding alone (``open_rgb``) in one process: the floor of the per-image cost;
- decode + every per-image measurement (``measure_image``) in one process = one worker
  (target: at least 250 images/second on a 2-core CPU), by the wall clock and per second of
  CPU time (the figure that holds on a busy machine);
- ``measure_images`` with ``--workers`` worker processes, in total and per worker;
- the whole ``analyze`` (CSV files, figures, report.html) with ``--workers`` workers;
- the all-pairs near-duplicate search on ``--hashes`` random 64-bit hashes (seconds).

The best of ``--repeats`` runs is kept, since the machine may be shared.
Usage: ``python benchmarks/analyze_throughput.py [--images 300] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _machine import machine_header
from data_throughput import make_jpegs

from fext._allocator import keep_freed_memory
from fext.analysis import analyze, measure_images
from fext.analysis.flags import hamming_nearest
from fext.analysis.stats import measure_image
from fext.config import Config, with_overrides
from fext.data import open_rgb
from fext.workspace import Workspace


def best_seconds(run: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def measure(paths: list[Path], root: Path, workers: int, repeats: int, tmp: Path) -> dict[str, float]:
    n = len(paths)
    rates = {
        "decode only (open_rgb), 1 process": n / best_seconds(lambda: [open_rgb(p) for p in paths], repeats),
        "decode + statistics, 1 worker": n / best_seconds(
            lambda: [measure_image(p, root, 2.0) for p in paths], repeats),
        "decode + statistics, 1 worker, per CPU second": n / best_seconds(
            lambda: [measure_image(p, root, 2.0) for p in paths], repeats, time.process_time),
    }
    seconds = best_seconds(lambda: list(measure_images(paths, root, workers, 2.0, progress=False)), repeats)
    rates[f"measure_images, {workers} workers: total"] = n / seconds
    rates[f"measure_images, {workers} workers: per worker"] = n / seconds / max(workers, 1)
    cfg = with_overrides(Config(), {"device.NUM_PROCESSORS": workers})
    ws = Workspace(tmp / f"ws-{root.name}")
    ws.ensure()
    with contextlib.redirect_stdout(io.StringIO()):  # the summary table
        rates[f"analyze end to end, {workers} workers"] = n / best_seconds(
            lambda: analyze(cfg, ws, dataset=root, progress=False), 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hashes", type=int, default=50_000)
    args = parser.parse_args()
    machine_header(seconds=1.0)  # the CPU these figures come from

    keep_freed_memory()  # as in worker processes, so the in-process "1 worker" rows measure the same path
    results: dict[str, dict[str, float]] = {}
    sizes_kb: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, noise, seed in [("smooth", 5.0, 1), ("detailed", 24.0, 2)]:
            root = Path(tmp) / name
            paths = make_jpegs(root, args.images, noise, seed)
            sizes_kb[name] = np.mean([p.stat().st_size for p in paths]) / 1024
            results[name] = measure(paths, root, args.workers, args.repeats, Path(tmp))

    print(f"\n{args.images} JPEGs 500x375 q90 per flavour; best of {args.repeats} runs")
    columns = list(results)
    header = f"{'images/second':46s}" + "".join(f"{f'{c} ({sizes_kb[c]:.0f} KB)':>22s}" for c in columns)
    print(header)
    print("-" * len(header))
    for row in results[columns[0]]:
        print(f"{row:46s}" + "".join(f"{results[c][row]:22,.0f}" for c in columns))

    hashes = np.random.default_rng(0).integers(0, 2**63, args.hashes, dtype=np.uint64)
    labels = np.arange(args.hashes)
    seconds = best_seconds(lambda: hamming_nearest(hashes, hashes, (labels, labels), earlier_only=True), 1)
    print(f"\nnear-duplicate search, all pairs of {args.hashes:,} hashes: {seconds:.1f} s")


if __name__ == "__main__":
    main()
