"""``fext select`` and ``fext score`` on the CC0 photographs of feature_quality.py (a benchmark, asserts nothing).

One model is trained as feature_quality.py trains it (small preset, default recipe, crops of the
training photographs), then, on photographs no training crop came from:

1. Selection: crops of the held-out photographs (the same-photograph set of feature_quality.py: 12
   overlapping crops of each, 30-100 % of its shorter side) are encoded and ``--count`` is the number
   of photographs. Printed: how many photographs the subset covers with ``diverse``, ``farthest``
   (plain greedy k-center), ``typical`` and random subsets (mean of 200 seeds), and the coverage
   radii (cosine, and relative as ``diverse`` measures distance). Target: ``diverse`` covers at
   least 90 % of them, clearly more than random. The same on the grid tiles of the copy task (24
   per photograph, no two sharing a pixel: the harder set, the first version of this table).
2. Scoring: the reference holds random crops of half of the held-out photographs; the new images
   are other crops of those photographs (not novel) and crops of the other half (novel). Printed:
   ROC AUC of the score (and of each of its two components alone), and the measured false-alarm rate
   (share of the not-novel new images flagged) at the threshold calibrated for ``--false-alarm-rate``. Targets: AUC >= 0.9, a measured
   rate within a factor 2 of the one asked for.

    python benchmarks/select_score_quality.py              # the tables of the closing note (minutes; the
                                                           # trained model is kept under the benchmark cache)
    python benchmarks/select_score_quality.py --steps 100  # a shorter training
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402
from feature_quality import HELD_OUT, bench_cache, crops, image_set, photo_crop_folder, source_photos  # noqa: E402

from fext.config import Config, with_overrides  # noqa: E402
from fext.encoding import encode_folder  # noqa: E402
from fext.score import score  # noqa: E402
from fext.select import distance_to_picks, local_density, local_scale, select  # noqa: E402
from fext.training import train  # noqa: E402
from fext.workspace import Workspace  # noqa: E402


def train_model(cfg: Config, train_dir: Path, steps: int, ws: Workspace) -> tuple[Path, float | None]:
    """The small preset trained for about ``steps`` batches on ``train_dir``: (checkpoint, seconds), or the one
    an earlier run trained with the same configuration and images (seconds None), kept under the benchmark cache."""
    n = len(list(train_dir.rglob("*.png")))
    epochs = max(1, round(steps / -(-n // cfg.training.BATCH_SIZE)))
    cached = bench_cache() / "select_score" / f"{cfg.model.PRESET}_{cfg.model.IMG_SIZE}px_{cfg.training.RECIPE}_{epochs}ep"
    if (cached / "model.safetensors").is_file():
        return cached, None
    start = time.perf_counter()
    ckpt = train(with_overrides(cfg, {"training.EPOCHS": epochs}), ws, dataset=train_dir, progress=False)
    seconds = time.perf_counter() - start
    shutil.copytree(ckpt, cached, dirs_exist_ok=True)
    return cached, seconds


def selection_table(ckpt: Path, folder: Path, what: str, cfg: Config, out: Path) -> None:
    """Photographs covered by each strategy and by random subsets of the same size, on the images of ``folder``
    (one subfolder per photograph)."""
    from fext.encoding import load_embeddings

    emb = encode_folder(ckpt, folder, out / folder.name, config=cfg, progress=False)
    vectors, rows = load_embeddings(emb)
    photo = np.array([row["path"].split("/")[0] for row in rows])
    count = len(set(photo))
    print(f"\nSelection: {len(photo)} {what} of {count} held-out photographs, --count {count}")
    print(f"{'strategy':<10} {'photographs covered':>20} {'coverage radius':>16} {'relative radius':>16}")
    for strategy in ("diverse", "farthest", "typical"):
        result = select(emb, count, strategy, seed=cfg.SEED)
        relative = "" if result.relative_radius is None else f"{result.relative_radius:16.4f}"
        print(f"{strategy:<10} {len(set(photo[result.rows])):>14} of {count:<3} {result.coverage_radius:16.4f} {relative}")
    rng = np.random.default_rng(0)
    randoms = [rng.choice(len(photo), count, replace=False) for _ in range(200)]
    covered = np.mean([len(set(photo[r])) for r in randoms])
    vectors = np.asarray(vectors)
    scale = local_scale(local_density(vectors, seed=cfg.SEED))
    radius = np.mean([distance_to_picks(vectors, r).max() for r in randoms[:20]])
    relative = np.mean([distance_to_picks(vectors, r, scale).max() for r in randoms[:20]])
    print(f"{'random':<10} {covered:>14.1f} of {count:<3} {radius:16.4f} {relative:16.4f}   (mean of 200 seeds; radii of 20)")


def scoring_table(ckpt: Path, cfg: Config, out: Path, size: int, per_photo: int, rate: float) -> None:
    """ROC AUC and measured false-alarm rate of ``fext score`` on crops of seen and unseen photographs."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    photos = {name: im for name, im in sorted(source_photos().items()) if name in HELD_OUT}
    names = sorted(photos)
    seen, unseen = names[::2], names[1::2]
    rng = np.random.default_rng(1)
    (out / "reference").mkdir(parents=True)
    (out / "new").mkdir()
    for name in names:
        made = crops(photos[name], per_photo, size, rng)
        keep = int(per_photo * 0.75) if name in seen else 0  # seen: 3/4 to the reference, 1/4 new
        for i, crop in enumerate(made):
            target = out / ("reference" if i < keep else "new") / f"{name}_{i:03d}.png"
            crop.save(target)
    ref = encode_folder(ckpt, out / "reference", out / "ref_emb", config=cfg, progress=False)
    result = score(out / "new", ref, out / "scores", config=cfg, false_alarm_rate=rate)
    novel = np.array([p.rsplit("_", 1)[0] in unseen for p in result.paths])
    auc = roc_auc_score(novel, result.score)
    far = float(result.novel[~novel].mean())
    hit = float(result.novel[novel].mean())
    print(f"\nScoring: reference {len(list((out / 'reference').iterdir()))} crops of {len(seen)} photographs; new: "
          f"{int((~novel).sum())} other crops of those + {int(novel.sum())} crops of {len(unseen)} unseen photographs")
    print(f"{'ROC AUC':>8} {'asked rate':>11} {'measured rate':>14} {'novel flagged':>14} {'threshold':>10}  score")
    print(f"{auc:8.3f} {rate:11.3f} {far:14.3f} {hit:14.3f} {result.threshold:10.3f}  {result.calibration['components']}")
    print(f"calibration: {result.calibration['images']} held-out reference images, "
          f"{result.calibration['measured_false_alarm_rate']:.3f} of them above the threshold")
    alone = {"distance to the nearest reference image": 1.0 - result.similarity}
    if result.reconstruction_error is not None:
        alone["reconstruction error"] = result.reconstruction_error
    print("ROC AUC of each component alone: " + "; ".join(f"{k} {roc_auc_score(novel, v):.3f}" for k, v in alone.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (batches)")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--per-photo", type=int, default=200, help="random crops per held-out photograph (scoring)")
    parser.add_argument("--false-alarm-rate", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine_header("cpu")
    train_dir, held_dir, n_train, n_held = image_set(args.img_size, 50, 24)
    cfg = with_overrides(Config(), {
        "model.PRESET": "small", "model.IMG_SIZE": args.img_size, "device.DEVICE": "CPU", "device.NUM_PROCESSORS": 0,
        "training.BATCH_SIZE": 25, "training.USE_TENSORBOARD": False, "dataset.VALIDATION_SIZE": 0.0,
        "training.LR_SCHEDULER.INITIAL_LR": 5e-4, "training.LR_SCHEDULER.CONSTANT_STEPS": 10**9,
    })
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ws.ensure()
        ckpt, seconds = train_model(cfg, train_dir, args.steps, ws)
        print(f"model: small preset, default recipe, {args.steps} steps on crops of {n_train} training photographs, "
              f"{args.img_size} px: " + (f"{seconds:.0f} s" if seconds is not None else f"trained earlier ({ckpt})"))
        selection_table(ckpt, photo_crop_folder(args.img_size), "crops", cfg, Path(tmp))
        selection_table(ckpt, held_dir, "grid tiles", cfg, Path(tmp))
        scoring_table(ckpt, cfg, Path(tmp) / "score", args.img_size, args.per_photo, args.false_alarm_rate)


if __name__ == "__main__":
    main()
