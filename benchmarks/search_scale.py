"""Search at scale and the exported encoder: prints figures, asserts nothing (a benchmark, not a test).

    python benchmarks/search_scale.py                    # the figures for the README: 1,000,000 vectors
    python benchmarks/search_scale.py --vectors 100000   # a smaller run
    python benchmarks/search_scale.py --part search      # or --part onnx: one half only

1. Search: ``--vectors`` random unit vectors of D=512 (clustered: noisy copies of 10,000 random
   centres, seeded), written as a real ``fext encode`` folder. For each index kind (flat, ivf, ivf
   with product quantisation forced by a memory budget of a quarter of the raw vectors, hnsw),
   in a fresh subprocess: ``fext index`` build seconds, query latency (median and p99, one query
   at a time and batches of 100), recall@10 against exact search for 200 new queries from the
   same distribution, and the subprocess's peak resident memory (build and queries; torch is not
   imported there) against the raw vectors' size.
   Targets on a 2-core CPU: build under 5 minutes, median single-query latency under 10 ms,
   recall@10 >= 0.95 for the default approximate index (ivf), resident memory under 1.5x the raw
   vectors (under 0.3x with quantisation).
2. ONNX Runtime against PyTorch (``fext.encoding``'s inference route): images/second encoding
   warm batches of 32, for the base and small presets at 128 px (untrained weights: speed only).

The machine is shared while these run: OpenMP threads are told to sleep rather than spin when
they wait (OMP_WAIT_POLICY=PASSIVE; ONNX Runtime's session.intra_op.allow_spinning=0), which costs
little on an idle machine and avoids large slowdowns on a busy one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss and torch load their OpenMP runtime

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

D = 512
CENTRES = 10_000
NOISE = 0.6
KINDS = ("flat", "ivf", "ivf-pq", "hnsw")


def clustered(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    """``count`` unit vectors: a random centre plus Gaussian noise of norm about NOISE, normalised."""
    x = centres[rng.integers(0, len(centres), count)] + rng.normal(0, NOISE / np.sqrt(D), (count, D)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_folder(folder: Path, n: int) -> None:
    """An encoding folder of ``n`` clustered vectors, written a block at a time (flat memory)."""
    from fext.encoding.files import EMBEDDINGS, write_failed, write_metadata, write_rows_csv
    from fext.encoding.records import CheckpointRecord, EncodingMetadata

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CENTRES, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    np.save(folder / "centres.npy", centres)
    with open(folder / EMBEDDINGS, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, D)})
        for lo in range(0, n, 100_000):
            f.write(clustered(rng, centres, min(100_000, n - lo)).tobytes())
    write_rows_csv(folder, [f"img{i:07d}.jpg" for i in range(n)], np.full((n, 2), 500))
    write_failed(folder, [])
    write_metadata(folder, EncodingMetadata(checkpoint=CheckpointRecord("synthetic", "-", "-"), embedding_dim=D,
                                            images=n, input="-", img_size=128))


def peak_rss_mb() -> float:
    """VmHWM of this process, read here: importing _machine would load torch into the process measured."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def measure_kind(folder: Path, kind: str) -> dict:
    """Build one index kind and measure it (runs in its own process: its own peak memory)."""
    from fext.index import build_index, open_index
    from fext.vectors import exact_top_k
    from fext.encoding.files import open_encoding

    encoding = open_encoding(folder)
    n = len(encoding.vectors)
    raw_mb = n * D * 4 / 2**20
    memory = int(raw_mb / 4) if kind == "ivf-pq" else None
    started = time.perf_counter()
    info = build_index(folder, "ivf" if kind == "ivf-pq" else kind, memory)
    build = time.perf_counter() - started
    index = open_index(folder)
    rng = np.random.default_rng(7)
    queries = clustered(rng, np.load(folder / "centres.npy"), 200)
    truth, _ = exact_top_k(encoding.rows, queries, 10)
    found, _ = index.search(queries, 10)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())]))
    singles = []
    for q in queries[: 50 if kind == "flat" else 200]:
        t = time.perf_counter()
        index.search(q[None], 10)
        singles.append(time.perf_counter() - t)
    batches = []
    for _ in range(3 if kind == "flat" else 10):
        batch = clustered(rng, np.load(folder / "centres.npy"), 100)
        t = time.perf_counter()
        index.search(batch, 10)
        batches.append(time.perf_counter() - t)
    return {"kind": kind, "factory": info["factory"], "effort": info["effort"], "build_s": build,
            "single_ms": (np.median(singles) * 1e3, np.percentile(singles, 99) * 1e3),
            "batch_ms": (np.median(batches) * 1e3, np.percentile(batches, 99) * 1e3),
            "recall": recall, "recall_stored": info["recall_at_10"], "rss_mb": peak_rss_mb(), "raw_mb": raw_mb}


def search_part(n: int, kinds: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="fext_search_scale_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        write_folder(folder, n)
        print(f"\n{n:,} clustered unit vectors of D={D} ({n * D * 4 / 2**20:,.0f} MB raw) written in "
              f"{time.perf_counter() - started:.0f} s")
        print(f"{'kind':<7} {'faiss':<16} {'effort':>6} {'build s':>8} {'1 query ms (med/p99)':>21} "
              f"{'100 queries ms (med/p99)':>25} {'recall@10':>9} {'peak RSS MB':>12} {'x raw':>6}")
        for kind in kinds:
            proc = subprocess.run([sys.executable, __file__, "--child", kind, "--data", str(folder)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{kind:<7} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['kind']:<7} {r['factory']:<16} {r['effort'] or '-':>6} {r['build_s']:>8.1f} "
                  f"{r['single_ms'][0]:>10.2f} / {r['single_ms'][1]:<8.2f} {r['batch_ms'][0]:>12.1f} / {r['batch_ms'][1]:<10.1f}"
                  f"{r['recall']:>9.3f} {r['rss_mb']:>12.0f} {r['rss_mb'] / r['raw_mb']:>6.2f}", flush=True)


def onnx_part(batch: int = 32, repeats: int = 5) -> None:
    import onnxruntime as ort
    import torch

    from fext.checkpoints import save_checkpoint
    from fext.encoding.inference import load_model
    from fext.export import export_encoder
    from fext.model import FeXTAutoEncoder

    print(f"\nEncoding warm batches of {batch} at 128 px, images/second (best of {repeats})")
    print(f"{'preset':<7} {'PyTorch':>9} {'ONNX Runtime':>13} {'ratio':>6} {'max abs diff':>13}")
    with tempfile.TemporaryDirectory(prefix="fext_onnx_bench_") as tmp:
        for preset in ("base", "small"):
            ckpt = Path(tmp) / preset
            torch.manual_seed(0)
            save_checkpoint(ckpt, FeXTAutoEncoder.from_preset(preset, img_size=128))
            path, diff = export_encoder(ckpt, "onnx", Path(tmp) / f"{preset}.onnx")
            model = load_model(ckpt, torch.device("cpu"))
            x = torch.rand(batch, 3, 128, 128)
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared machine: as OMP_WAIT_POLICY
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name

            def best(run) -> float:
                run()
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t)
                return batch / min(times)

            with torch.inference_mode():
                torch_ips = best(lambda: model.encode(x))
            ort_ips = best(lambda: session.run(None, {name: x.numpy()}))
            print(f"{preset:<7} {torch_ips:>9.1f} {ort_ips:>13.1f} {ort_ips / torch_ips:>6.2f} {diff:>13.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--part", choices=["all", "search", "onnx"], default="all")
    parser.add_argument("--kinds", default=",".join(KINDS), help="index kinds to measure (default: all)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_kind(args.data, args.child)))
        return
    from _machine import machine_header

    machine_header()
    if args.part in ("all", "search"):
        search_part(args.vectors, args.kinds.split(","))
    if args.part in ("all", "onnx"):
        onnx_part()


if __name__ == "__main__":
    main()
