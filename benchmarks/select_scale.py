"""Selection at scale: ``fext select`` of 1,000 from 1,000,000 vectors of 512 numbers (a benchmark, asserts nothing).

    python benchmarks/select_scale.py                        # 1,000 of 1,000,000 (the figure the README quotes)
    python benchmarks/select_scale.py --vectors 100000       # a smaller run

The vectors are those of ``search_scale.py`` (noisy copies of 10,000 random centres, seeded),
written once as a real ``fext encode`` folder. For each strategy it prints the wall-clock seconds
of :func:`fext.select.select` (reading the vectors from disk included), the coverage radius beside
a random subset's, and the process's peak resident memory against the raw vectors' size.
Target on 2 CPU cores: under 5 minutes for ``diverse``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the machine is shared: threads sleep when they wait

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header, peak_rss_mb  # noqa: E402
from search_scale import D, write_folder  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--strategy", action="append", choices=["diverse", "farthest", "typical"])
    args = parser.parse_args(argv)
    from fext import select as selection

    machine_header("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_folder(folder, args.vectors)
        raw_mb = args.vectors * D * 4 / 2**20
        print(f"{args.vectors:,} vectors of D={D} ({raw_mb:,.0f} MB) written in {time.perf_counter() - start:.0f} s")
        print(f"{'strategy':<9} {'count':>6} {'seconds':>8} {'coverage radius':>16} {'random radius':>14} {'peak RSS MB':>12}"
              "  relative radius, random's")
        for strategy in args.strategy or ["diverse", "farthest", "typical"]:
            start = time.perf_counter()
            result = selection.select(folder, args.count, strategy)
            seconds = time.perf_counter() - start
            print(f"{strategy:<9} {len(result.rows):>6} {seconds:8.1f} {result.coverage_radius:16.4f} "
                  f"{result.random_radius:14.4f} {peak_rss_mb():12.0f}"
                  + ("" if result.relative_radius is None
                     else f"  {result.relative_radius:.4f}, {result.random_relative_radius:.4f}"), flush=True)


if __name__ == "__main__":
    main()
