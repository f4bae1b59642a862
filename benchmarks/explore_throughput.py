"""`fext explore` speed, memory and page size: prints figures, asserts nothing (a benchmark, not a test).

    python benchmarks/explore_throughput.py             # 10,000 and 100,000 vectors, then thumbnails
    python benchmarks/explore_throughput.py --sizes 10000 --thumbnail-images 500   # a quick run

1. For each size: random vectors with planted clusters (D = 512, 20 clusters, unequal sizes),
   written as a `fext encode` folder with no images or checkpoint at hand, then ``explore`` in a
   fresh subprocess, so its peak resident memory is its own and umap-learn's numba compilation
   (cached on disk after the first run in an environment) is counted. Prints seconds per step,
   total seconds, CPU seconds (user + system: on a busy machine, what the run itself needed),
   peak RSS, the size of atlas.html, and the adjusted Rand index of the clusters against the
   planted ones. Targets on a 2-core CPU: 100,000 points in under 3 minutes and 4 GB,
   atlas.html under 60 MB.
2. When Debian's chromium and chromedriver are installed: the largest atlas.html in headless
   chromium: seconds from opening the file to a drawn map, and milliseconds of one full redraw
   (every point) and of one hover look-up, the work behind panning, zooming and hovering.
3. Thumbnails: sprite sheets of generated 500x375 JPEGs at the tile sizes explore uses, as
   seconds per image and bytes per tile, and what that adds to the page at 100,000 images.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_header, peak_rss_mb

D, CLUSTERS = 512, 20


def planted_vectors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, D) vectors around CLUSTERS random directions (sizes drawn unequal), and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, D)).astype(np.float32)
    labels = rng.choice(CLUSTERS, n, p=rng.dirichlet(np.full(CLUSTERS, 3.0)))
    return centres[labels] + 0.7 * rng.normal(size=(n, D)).astype(np.float32), labels


def write_folder(folder: Path, n: int) -> None:
    from fext.encoding import EMBEDDINGS
    from fext.encoding.files import write_metadata, write_rows_csv
    from fext.encoding.records import CheckpointRecord, EncodingMetadata

    vectors, labels = planted_vectors(n)
    folder.mkdir(parents=True)
    np.save(folder / EMBEDDINGS, vectors)
    np.save(folder / "planted_labels.npy", labels)
    write_rows_csv(folder, [f"images/{i // 1000:03d}/img_{i:06d}.jpg" for i in range(n)], np.full((n, 2), 500))
    write_metadata(folder, EncodingMetadata(checkpoint=CheckpointRecord("none", str(folder / "none"), "0"),
                                            embedding_dim=D, images=n, input=str(folder / "no-images"), img_size=128))


def child(folder: Path) -> None:
    """Run explore on ``folder`` and print one JSON line of figures (runs in its own process)."""
    from sklearn.metrics import adjusted_rand_score

    from fext.config import Config
    from fext.explore import explore

    start = time.perf_counter()
    result = explore(folder, config=Config())
    seconds = time.perf_counter() - start
    labels = np.load(folder / "planted_labels.npy")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "steps": result.seconds, "peak_mb": peak_rss_mb(),
        "atlas_mb": (result.output / "atlas.html").stat().st_size / 2**20,
        "k": result.clusters.k, "ari": adjusted_rand_score(labels, result.clusters.labels),
    }))


def run_size(n: int, root: Path) -> dict:
    folder = root / f"emb_{n}"
    write_folder(folder, n)
    proc = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"explore failed on {n} vectors:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def browser_figures(atlas: Path) -> None:
    """Open ``atlas`` in headless chromium (the system one, never a downloaded browser) and time it."""
    chromium, chromedriver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and chromedriver.exists()):
        print("\nchromium not installed: no browser figures (apt-get install chromium chromium-driver)")
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={atlas.parent / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(chromedriver)), options=options)
    try:
        start = time.perf_counter()
        driver.get(atlas.as_uri())
        while not driver.execute_script("return document.body.dataset.ready === '1'"):
            time.sleep(0.05)
        ready = time.perf_counter() - start
        redraw, hover = driver.execute_script("""
            const select = document.getElementById('colour'), canvas = document.getElementById('map');
            const r = canvas.getBoundingClientRect();
            let t = performance.now();
            for (const value of ['score', 'cluster', 'score', 'cluster']) {
                select.value = value; select.dispatchEvent(new Event('change'));
            }
            const redraw = (performance.now() - t) / 4;
            t = performance.now();
            for (let i = 0; i < 50; i++) {
                canvas.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + r.width * (i + 0.5) / 50,
                                                                  clientY: r.top + r.height / 2, bubbles: true}));
            }
            return [redraw, (performance.now() - t) / 50];""")
    finally:
        driver.quit()
    print(f"\n{atlas.stat().st_size / 2**20:.1f} MB atlas.html in headless chromium: map drawn {ready:.1f} s after "
          f"opening; one full redraw {redraw:.0f} ms; one hover look-up {hover:.1f} ms")


def thumbnails(count: int, root: Path) -> None:
    from encode_throughput import write_jpegs

    from fext.explore.thumbnails import make_sprites, tile_size

    folder = root / "jpegs"
    write_jpegs(folder, count, 500, 375, distinct=64)
    files = sorted(folder.rglob("*.jpg"))
    print(f"\nthumbnails of {count} generated 500x375 JPEGs (sprite sheets, JPEG quality 75, base64 in the page)")
    print(f"{'tile px':>7}  {'ms/image':>8}  {'bytes/tile':>10}  {'page MB added per 100,000 images':>32}")
    for tile in sorted({tile_size(n) for n in (1_000, 10_000, 50_000, 100_000)}, reverse=True):
        start = time.perf_counter()
        sprites = make_sprites(files, tile)
        ms = (time.perf_counter() - start) / count * 1000
        per_tile = sum(len(s) for s in sprites.sheets) * 4 / 3 / count
        print(f"{tile:>7}  {ms:8.2f}  {per_tile:10.0f}  {per_tile * 100_000 / 2**20:32.1f}")
    print("tile sizes explore uses: " + ", ".join(f"{tile_size(n)} px at {n:,}" for n in (5_000, 20_000, 60_000, 100_000)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--thumbnail-images", type=int, default=2000, help="generated JPEGs for part 2 (0 skips it)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    machine_header()
    print(f"random vectors, D = {D}, {CLUSTERS} planted clusters; explore() without images or checkpoint, fresh process each")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(n, run_size(n, Path(tmp))) for n in args.sizes]
        steps = list(rows[0][1]["steps"])
        print(f"{'vectors':>8}  {'seconds':>7}  {'CPU s':>6}  {'peak RSS MB':>11}  {'atlas.html MB':>13}  {'K':>3}  {'ARI':>5}  "
              + "  ".join(steps))
        for n, r in rows:
            print(f"{n:>8,}  {r['seconds']:7.1f}  {r['cpu_seconds']:6.0f}  {r['peak_mb']:11.0f}  {r['atlas_mb']:13.1f}  {r['k']:>3}  {r['ari']:5.3f}  "
                  + "  ".join(f"{r['steps'][s]:{len(s)}.1f}" for s in steps))
        browser_figures(Path(tmp) / f"emb_{rows[-1][0]}" / "explore" / "atlas.html")
        if args.thumbnail_images:
            thumbnails(args.thumbnail_images, Path(tmp))


if __name__ == "__main__":
    main()
