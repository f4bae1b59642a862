"""Known answers: does `fext explore` find the copies and the junk a person finds at a glance?

The collection: the 240 held-out tiles of ``feature_quality.py`` (distinct pictures from 10 CC0 /
public-domain photographs, no two sharing a pixel), plus planted copies of some tiles
(byte-identical, JPEG quality 30–70, resized to 50–75 %, a 90 % centre crop, mirrored, brightness
±20 %) and planted junk (uniform noise, a solid colour, a page of text, stripes, a tile with a gray
half). A model is trained on crops of the *other* 20 photographs (``fext train`` with the
configuration below, for each ``--epochs``; kept under the benchmark cache, so a later run
explores again without training), the collection is encoded with it and explored with the
defaults, and the table says, per planted kind:

- copies: the fraction grouped with their original (recall) and the kind of group that caught them;
- junk: the fraction among the top 2 × (number planted) outliers, and the median rank;
- distinct images (tiles and junk) grouped with an image that is not a copy of them.

Targets (issue 22): every byte-identical, re-encoded or resized copy grouped (recall ≥ 0.95),
at most 1 % of distinct images grouped, ≥ 90 % of the junk among the top 2 × planted outliers.

    python benchmarks/known_answers.py                   # 3 epochs, small preset
    python benchmarks/known_answers.py --epochs 0 --epochs 3 --epochs 20   # 0: an untrained model
    python benchmarks/known_answers.py --preset base --epochs 20 --train-crops 10   # fext train's defaults, 200 crops
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402
from feature_quality import bench_cache, image_set  # noqa: E402

from fext.config import Config, with_overrides  # noqa: E402
from fext.encoding import encode_folder  # noqa: E402
from fext.explore import explore  # noqa: E402
from fext.training import train  # noqa: E402
from fext.workspace import Workspace  # noqa: E402

COPIES = ("byte-identical", "JPEG 30-70", "resized 50-75%", "crop 90%", "mirrored", "brightness +-20%")
JUNK = ("noise", "solid colour", "text page", "stripes", "gray half")
BLANK_STD = 4.0
TRAIN_CROPS = 50
"""Training crops cut from each of the 20 training photographs (``--train-crops`` trains on the first N of them)."""
WORDS = "the of image collection photo noise copy data model vector train page line text".split()


def copy_of(source: Path, kind: str, target: Path, rng: np.random.Generator) -> Path:
    """Write one planted copy of ``source``; the path written (its suffix follows the format)."""
    if kind == "byte-identical":
        shutil.copy(source, target.with_suffix(".png"))
        return target.with_suffix(".png")
    image = Image.open(source).convert("RGB")
    w, h = image.size
    if kind.startswith("JPEG"):
        image.save(target.with_suffix(".jpg"), quality=int(rng.integers(30, 71)))
        return target.with_suffix(".jpg")
    if kind.startswith("resized"):
        f = rng.uniform(0.5, 0.75)
        image = image.resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR)
    elif kind.startswith("crop"):
        dx, dy = round(w * 0.05), round(h * 0.05)
        image = image.crop((dx, dy, w - dx, h - dy))
    elif kind == "mirrored":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        image = ImageEnhance.Brightness(image).enhance(float(rng.choice([0.8, 1.2])))
    image.save(target.with_suffix(".png"))
    return target.with_suffix(".png")


def junk(kind: str, size: int, rng: np.random.Generator, tile: Path) -> Image.Image:
    """One planted junk image of ``kind`` (``tile``: the picture a "gray half" damages)."""
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if kind == "solid colour":
        return Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    if kind == "text page":
        page = Image.new("RGB", (size, size), (250, 250, 245))
        draw = ImageDraw.Draw(page)
        for y in range(4, size - 10, 12):
            draw.text((4, y), " ".join(rng.choice(WORDS, 6)), fill=(20, 20, 20))
        return page
    if kind == "stripes":
        width = int(rng.integers(4, 17))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        band = (np.arange(size) // width) % 2
        pixels = np.where(band[:, None, None] == 1, a, b) * np.ones((1, size, 1))
        return Image.fromarray((pixels if rng.random() < 0.5 else pixels.transpose(1, 0, 2)).astype(np.uint8))
    pixels = np.array(Image.open(tile).convert("RGB"))
    pixels[:, size // 2:] = 128
    return Image.fromarray(pixels)


def build_collection(held_dir: Path, folder: Path, per_copy: int, per_junk: int, seed: int) -> dict:
    """The planted collection in ``folder``; the answers: ``{"family": {path: id}, "copies": {kind: [(copy, original)]},
    "junk": {kind: [path]}, "blank": [path]}`` (paths relative to ``folder``; a family is a tile and its copies;
    blank: tiles with no picture, gray-level standard deviation below ``BLANK_STD``, which a person would group)."""
    rng = np.random.default_rng(seed)
    tiles = sorted(held_dir.rglob("*.png"))
    family, copies, junk_paths = {}, {k: [] for k in COPIES}, {k: [] for k in JUNK}
    (folder / "tiles").mkdir(parents=True)
    (folder / "planted").mkdir()
    blank = []
    for i, tile in enumerate(tiles):
        shutil.copy(tile, folder / "tiles" / f"{i:03d}.png")
        family[f"tiles/{i:03d}.png"] = i
        if np.asarray(Image.open(tile).convert("L"), dtype=np.float32).std() < BLANK_STD:
            blank.append(f"tiles/{i:03d}.png")
    picked = rng.permutation(len(tiles))
    for k, kind in enumerate(COPIES):
        for i in picked[k * per_copy:(k + 1) * per_copy].tolist():
            name = kind.split()[0].replace("-", "_").lower()
            path = copy_of(folder / "tiles" / f"{i:03d}.png", kind, folder / "planted" / f"{name}_{i:03d}", rng)
            rel = path.relative_to(folder).as_posix()
            family[rel] = i
            copies[kind].append((rel, f"tiles/{i:03d}.png"))
    size = Image.open(tiles[0]).size[0]
    for kind in JUNK:
        for j in range(per_junk):
            rel = f"planted/junk_{kind.split()[0]}_{j}.png"
            junk(kind, size, rng, tiles[int(rng.integers(len(tiles)))]).save(folder / rel)
            family[rel] = len(tiles) + len(family)  # a family of its own
            junk_paths[kind].append(rel)
    return {"family": family, "copies": copies, "junk": junk_paths, "blank": blank}


def score(result, answers: dict) -> dict:
    """Recall per planted kind, junk ranks, and the distinct images grouped wrongly."""
    row = {p: r for r, p in enumerate(result.paths)}
    group_of, kind_of = {}, {}
    for g, (members, kind) in enumerate(zip(result.duplicates.groups, result.duplicates.kinds)):
        for r in members:
            group_of[r], kind_of[r] = g, kind
    out = {}
    for kind, pairs in answers["copies"].items():
        hits = [group_of.get(row[c], -1) == group_of.get(row[o], -2) for c, o in pairs]
        caught = sorted({kind_of[row[c]] for (c, _), hit in zip(pairs, hits) if hit})
        out[kind] = {"recall": float(np.mean(hits)), "by": "+".join(caught) or "-"}
    ranking = result.outliers.ranking()
    rank = np.empty(len(ranking), dtype=np.int64)
    rank[ranking] = np.arange(1, len(ranking) + 1)
    planted = sum(len(v) for v in answers["junk"].values())
    for kind, paths in answers["junk"].items():
        ranks = [int(rank[row[p]]) for p in paths]
        reasons = sorted({result.outliers.reason[row[p]] for p in paths})
        out[kind] = {"top": float(np.mean([r <= 2 * planted for r in ranks])), "median_rank": float(np.median(ranks)),
                     "by": "+".join(reasons)}
    family = answers["family"]
    copies = {c for pairs in answers["copies"].values() for c, _ in pairs}
    distinct = [p for p in result.paths if p not in copies]
    wrong = []
    for p in distinct:
        g = group_of.get(row[p])
        if g is not None and any(family[result.paths[m]] != family[p] for m in result.duplicates.groups[g]):
            wrong.append(p)
    kinds = sorted({kind_of[row[p]] for p in wrong})
    blank = [p for p in wrong if p in answers["blank"]]
    out["distinct"] = {"wrong": len(wrong), "of": len(distinct), "by": "+".join(kinds), "paths": wrong, "blank": len(blank)}
    return out


def run(epochs: int, cfg: Config, train_dir: Path, collection: Path, answers: dict, tmp: Path, subset: str = "") -> dict:
    """Train for ``epochs``, encode and explore the collection: the scores and the seconds of each step.
    ``subset``: what sets a model trained on part of the training crops apart in the cache (e.g. ``"_200crops"``)."""
    cfg = with_overrides(cfg, {"training.EPOCHS": max(1, epochs)})
    ws = Workspace(tmp / f"ws{epochs}")
    ws.ensure()
    t0 = time.perf_counter()
    cached = (bench_cache() / "known_answers"
              / f"{cfg.model.PRESET}_{cfg.model.IMG_SIZE}px_{cfg.training.RECIPE}_{epochs}ep{subset}")
    if epochs and (cached / "model.safetensors").is_file():
        ckpt = cached  # trained by an earlier run: the same configuration and images
    elif epochs:
        ckpt = train(cfg, ws, dataset=train_dir, progress=False)
        shutil.copytree(ckpt, cached, dirs_exist_ok=True)
    else:
        ckpt = untrained(cfg, tmp / "untrained")
    t1 = time.perf_counter()
    emb = encode_folder(ckpt, collection, tmp / f"emb{epochs}", config=cfg, progress=False)
    t2 = time.perf_counter()
    result = explore(emb, config=cfg)
    t3 = time.perf_counter()
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"  {epochs} epochs: train {t1 - t0:.0f} s, encode {t2 - t1:.0f} s, explore {t3 - t2:.0f} s ({steps}); "
          f"{result.threshold.describe()}", flush=True)
    scores = score(result, answers)
    print(f"  distinct images grouped wrongly: {', '.join(scores['distinct']['paths']) or 'none'}", flush=True)
    return {"epochs": epochs, "scores": scores, "result": result}


def first_crops(train_dir: Path, per_photo: int, folder: Path) -> Path:
    """``folder`` holding the first ``per_photo`` training crops of each photograph of ``train_dir``."""
    for photo in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        (folder / photo.name).mkdir(parents=True)
        for crop in sorted(photo.glob("*.png"))[:per_photo]:
            shutil.copy(crop, folder / photo.name / crop.name)
    return folder


def untrained(cfg: Config, folder: Path) -> Path:
    """A seeded, untrained checkpoint of ``cfg``'s preset: what the images alone find, whatever the model."""
    from fext.checkpoints import save_checkpoint
    from fext.model import FeXTAutoEncoder

    torch.manual_seed(cfg.SEED)
    save_checkpoint(folder, FeXTAutoEncoder.from_preset(cfg.model.PRESET, cfg.model.IMG_SIZE))
    return folder


def print_table(runs: list[dict], answers: dict) -> None:
    head = f"{'planted kind':<18} {'n':>3}  " + "  ".join(f"{str(r['epochs']) + ' epochs':>26}" for r in runs)
    print(head)
    print("-" * len(head))
    for kind in COPIES:
        cells = "  ".join(f"{'recall ' + format(r['scores'][kind]['recall'], '.2f') + ' ' + r['scores'][kind]['by']:>26}"
                          for r in runs)
        print(f"{kind:<18} {len(answers['copies'][kind]):>3}  {cells}")
    for kind in JUNK:
        cells = "  ".join(f"{'top ' + format(r['scores'][kind]['top'], '.2f') + ' (rank ' + format(r['scores'][kind]['median_rank'], '.0f') + ')':>26}"
                          for r in runs)
        print(f"{kind:<18} {len(answers['junk'][kind]):>3}  {cells}")
    cells = "  ".join(f"{str(r['scores']['distinct']['wrong']) + ' of ' + str(r['scores']['distinct']['of']) + ' grouped ' + (r['scores']['distinct']['by'] or ''):>26}"
                      for r in runs)
    print(f"{'distinct images':<18} {'':>3}  {cells}")
    cells = "  ".join(f"{str(r['scores']['distinct']['blank']) + ' of ' + str(len(answers['blank'])):>26}" for r in runs)
    print(f"{'  of them blank':<18} {'':>3}  {cells}")
    planted = sum(len(v) for v in answers["junk"].values())
    print(f"copies: fraction grouped with their original, and the kinds of group that caught them; junk: fraction "
          f"among the top {2 * planted} outliers (median rank); distinct: tiles and junk grouped with another picture; "
          f"blank: of those, tiles with no picture (gray std < {BLANK_STD:g}: paper margins) that a person groups too")
    for r in runs:
        grouped, of, blank = (r["scores"]["distinct"][k] for k in ("wrong", "of", "blank"))
        recall = min(r["scores"][k]["recall"] for k in COPIES[:3])
        top = np.mean([r["scores"][k]["top"] for k in JUNK])
        print(f"  {r['epochs']} epochs, targets: byte-identical, re-encoded and resized copies grouped {recall:.2f} "
              f"(>= 0.95); junk among the top {2 * planted} {top:.2f} (>= 0.90); distinct images grouped "
              f"{grouped / of:.1%} of {of} (<= 1%), {(grouped - blank) / (of - len(answers['blank'])):.1%} of the "
              f"{of - len(answers['blank'])} with a picture")
        print(f"  {r['epochs']} epochs, junk flagged by: "
              + "; ".join(f"{k} {r['scores'][k]['by']}" for k in JUNK))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, action="append",
                        help="training epochs of a model (repeatable; default 3; 0: untrained, the images' signals alone)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--train-crops", type=int, default=TRAIN_CROPS,
                        help=f"train on the first N crops of each training photograph (default all {TRAIN_CROPS})")
    parser.add_argument("--per-copy", type=int, default=10, help="planted copies of each kind")
    parser.add_argument("--per-junk", type=int, default=4, help="planted junk images of each kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine_header("cpu")
    train_dir, held_dir, n_train, n_held = image_set(args.img_size, TRAIN_CROPS, 24)
    cfg = with_overrides(Config(), {
        "model.PRESET": args.preset, "model.IMG_SIZE": args.img_size, "device.DEVICE": "CPU",
        "device.NUM_PROCESSORS": 0, "training.USE_TENSORBOARD": False, "dataset.VALIDATION_SIZE": 0.0,
    })
    with tempfile.TemporaryDirectory() as tmp:
        collection = Path(tmp) / "collection"
        answers = build_collection(held_dir, collection, args.per_copy, args.per_junk, cfg.SEED)
        subset = ""
        if args.train_crops < TRAIN_CROPS:
            train_dir = first_crops(train_dir, args.train_crops, Path(tmp) / "train")
            subset = f"_{len(list(train_dir.rglob('*.png')))}crops"
        print(f"collection: {len(answers['family'])} images ({n_held} held-out photographs' tiles, "
              f"{args.per_copy} copies and {args.per_junk} junk of each kind); models: {args.preset} preset, "
              f"{args.img_size} px, default recipe, trained on {len(list(train_dir.rglob('*.png')))} crops of "
              f"{n_train} other photographs")
        runs = [run(e, cfg, train_dir, collection, answers, Path(tmp), subset) for e in (args.epochs or [3])]
        print_table(runs, answers)


if __name__ == "__main__":
    main()
