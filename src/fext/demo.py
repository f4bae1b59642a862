"""``make demo`` (``python -m fext.demo``): the whole pipeline on the bundled photos.

In a fresh workspace (a temporary folder, kept afterwards so the reports can be opened) it cuts many
random crops of 8 of the photos of ``fext/sample_images`` into ``resources/dataset`` (a dozen photos are
too few to train on; hundreds of crops teach the model textures and shapes at several scales) and
crops of the 3 others into ``held_out`` (the evaluation's scorecard is measured on those, photos the
model never saw, and the demo says in plain words what that verdict means), copies the photos
themselves into ``resources/extraction/images``, writes a configuration for the
small preset, then runs the same API functions as the commands: analyze → train → evaluate →
encode → search → explore. Training shows one progress bar for the whole run (the per-epoch lines go to the
log file). The search step asks with a query whose right answer is known: a cropped, mirrored,
JPEG re-encoded copy of one bundled photo, which should come back first; the demo says whether it
did. The explore step writes the atlas of the 11 photos and the demo ends with its ``file://`` link.
A few minutes on a quiet 2-core CPU (figures in the README); ``--epochs 1`` makes it a quick smoke test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from fext._io import atomic_open, write_text
from fext.config import Config, config_to_dict, load_config, with_overrides
from fext.errors import FeXTError
from fext.evaluation.summary import METRICS_FILE
from fext.workspace import Workspace, init_workspace

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEMO_EPOCHS = 36
"""Epochs over the crops: enough for the query's copy to score above 0.9, within the demo's two minutes."""
DEMO_IMG_SIZE = 64
"""A step at 64 px costs about a quarter of one at 128 px, so the demo trains three times as many steps in
the same minutes (its known answer: 0.92-0.94 against 0.88 at 128 px for 12 epochs, benchmarks/README.md)."""
DEMO_BATCH_SIZE = 25
CROPS_PER_PHOTO = 36
"""Random crops cut from each bundled photo for training (side 30-90% of the photo's shorter side)."""
CROP_SIDE = 160
"""Pixels of a stored crop's side: a little above the training size, as real photos are."""
QUERY_PHOTO = "chelsea.jpg"
"""The bundled photo the known-answer query is made from."""
HELD_OUT_PHOTOS = ("astronaut.jpg", "coffee.jpg", "rocket.jpg")
"""Bundled photos no training crop comes from: the scorecard is measured on crops of these, so its verdict
speaks for photos the model never saw."""
HELD_OUT_CROPS = 16
"""Crops of each held-out photo that the evaluation scores."""


def sample_images() -> list:
    """The photos bundled in ``fext/sample_images`` (importlib.resources traversables), sorted by name."""
    folder = resources.files("fext").joinpath("sample_images")
    return sorted((p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda p: p.name)


def copy_sample_images(dest: Path) -> list[Path]:
    """Copy the bundled photos into ``dest``; return the copies."""
    copies = []
    for source in sample_images():
        target = dest / source.name
        with atomic_open(target, "wb") as f:
            f.write(source.read_bytes())
        copies.append(target)
    if not copies:
        raise FeXTError("No bundled sample photos found in fext/sample_images; reinstall FeXT (`make venv`)")
    return copies


def cut_crops(photos: list[Path], dest: Path, per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> list[Path]:
    """Save ``per_photo`` random square crops of every photo into ``dest`` as ``<photo>_crop_NN.jpg``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    crops = []
    for photo in photos:
        with Image.open(photo) as image:
            image = image.convert("RGB")
            shorter = min(image.size)
            for i in range(per_photo):
                side = int(shorter * rng.uniform(0.3, 0.9))
                left = int(rng.integers(0, image.width - side + 1))
                top = int(rng.integers(0, image.height - side + 1))
                crop = image.crop((left, top, left + side, top + side)).resize((CROP_SIDE, CROP_SIDE), Image.BICUBIC)
                crops.append(dest / f"{photo.stem}_crop_{i:02d}.jpg")
                with atomic_open(crops[-1], "wb") as f:
                    crop.save(f, format="JPEG", quality=90)
    return crops


def make_query(photo: Path, dest: Path) -> Path:
    """A copy of ``photo`` a user might hold: its central 80% cropped off-centre, mirrored, re-encoded as JPEG."""
    from PIL import Image, ImageOps

    with Image.open(photo) as image:
        w, h = image.size
        query = ImageOps.mirror(image.convert("RGB").crop((w // 5, h // 10, w // 5 + 4 * w // 5, h // 10 + 4 * h // 5)))
    with atomic_open(dest, "wb") as f:
        query.save(f, format="JPEG", quality=60)
    return dest


def demo_config(epochs: int, img_size: int, batches_per_epoch: int) -> Config:
    """The small preset, augmentation and TensorBoard on, a validation split, a learning rate for few steps."""
    steps = max(1, epochs * batches_per_epoch)
    return with_overrides(Config(), {
        "model.PRESET": "small",
        "model.IMG_SIZE": img_size,
        "dataset.VALIDATION_SIZE": 0.1,
        "dataset.IMG_AUGMENT": True,
        "device.NUM_PROCESSORS": 0,  # decoding a few hundred small crops once is faster than starting workers
        "training.EPOCHS": epochs,
        "training.BATCH_SIZE": DEMO_BATCH_SIZE,
        "training.USE_TENSORBOARD": True,
        # A few hundred steps only: a higher rate than the default, held for 3/4 of them, then decayed.
        "training.LR_SCHEDULER.INITIAL_LR": 1e-3,
        "training.LR_SCHEDULER.CONSTANT_STEPS": steps * 3 // 4,
        "training.LR_SCHEDULER.DECAY_STEPS": max(1, steps - steps * 3 // 4),
    })


def prepare_workspace(root: Path | None) -> Workspace:
    """A new workspace in ``root`` (must be empty or missing), else in a fresh temporary folder."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="fext-demo-"))
    root = root.expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise FeXTError(f"{root} is not empty; give the demo an empty or new folder with --workspace")
    ws = Workspace(root)
    init_workspace(ws)
    return ws


STEPS = 6
"""analyze, train, evaluate, encode, search, explore."""


def _step(number: int, title: str, command: str) -> None:
    print(f"\n[{number}/{STEPS}] {title}  (the command: fext {command})", flush=True)


class _EpochBar(logging.Filter):
    """One progress bar for the whole training run, fed by the epochs' entries that the per-epoch log records
    carry (:data:`fext.training.outputs.EPOCH_ENTRY`); it keeps those lines off the terminal."""

    def __init__(self, epochs: int, show: bool) -> None:
        super().__init__()
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, desc="Training", unit="epoch", disable=not show, dynamic_ncols=True)

    def filter(self, record: logging.LogRecord) -> bool:
        from fext.training.outputs import EPOCH_ENTRY

        entry = getattr(record, EPOCH_ENTRY, None)
        if entry is None:
            return True
        self.bar.update(entry["epoch"] - self.bar.n)
        losses = {"train loss": f"{entry['train']['loss']:.4f}"}
        if entry["validation"]:
            losses["validation loss"] = f"{entry['validation']['loss']:.4f}"
        self.bar.set_postfix(losses)
        return False  # the log file still has it; the terminal shows the bar


def _train_with_one_bar(cfg: Config, ws: Workspace, progress: bool) -> Path:
    """``train`` with one bar for the run instead of a bar and a line per epoch."""
    from fext.training import train

    console = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]
    epoch_bar = _EpochBar(cfg.training.EPOCHS, progress)
    for handler in console:
        handler.addFilter(epoch_bar)
    try:
        return Path(train(cfg, ws, progress=False))
    finally:
        epoch_bar.bar.close()
        for handler in console:
            handler.removeFilter(epoch_bar)


def run_demo(ws: Workspace, epochs: int = DEMO_EPOCHS, img_size: int = DEMO_IMG_SIZE,
             progress: bool = True) -> dict[str, Path]:
    """Run analyze → train → evaluate → encode → search → explore in ``ws``; return the main outputs by name."""
    from fext.analysis import analyze
    from fext.encoding import encode_folder
    from fext.evaluation import evaluate_checkpoints
    from fext.encoding.calibration import read_bands
    from fext.search import print_results, search

    photos = copy_sample_images(ws.extraction_images)
    crops = cut_crops([p for p in photos if p.name not in HELD_OUT_PHOTOS], ws.dataset)
    held_out = ws.root / "held_out"
    held_out.mkdir()
    held_crops = cut_crops([p for p in photos if p.name in HELD_OUT_PHOTOS], held_out, HELD_OUT_CROPS, seed=1)
    n_train = round(len(crops) * 0.9)
    cfg = demo_config(epochs, img_size, batches_per_epoch=-(-n_train // DEMO_BATCH_SIZE))
    write_text(ws.config_file, json.dumps(config_to_dict(cfg), indent=4) + "\n")
    cfg = load_config(ws.config_file)  # exactly what `fext` commands in this workspace will read
    print(f"Cut {len(crops)} random crops of {len(photos) - len(HELD_OUT_PHOTOS)} bundled photos into {ws.dataset} "
          f"(to train on), and {len(held_crops)} of the other {len(HELD_OUT_PHOTOS)} into {held_out} (to evaluate on)")
    print(f"Copied the {len(photos)} photos into {ws.extraction_images} (to encode and search)")
    print(f"Wrote {ws.config_file} (small preset, {img_size} px, {epochs} epochs, augmentation on, "
          f"device {cfg.device.DEVICE})")

    outputs: dict[str, Path] = {}
    _step(1, "Analyze image dataset", "analyze")
    outputs["analysis"] = Path(analyze(cfg, ws, progress=progress))
    _step(2, "Train from scratch", "train")
    outputs["checkpoint"] = checkpoint = _train_with_one_bar(cfg, ws, progress)
    _step(3, "Model evaluation", f"evaluate {checkpoint.name}")
    evaluate_checkpoints([checkpoint], cfg, ws, dataset=held_out, progress=progress)
    outputs["evaluation"] = ws.validation_checkpoints / checkpoint.name
    print(honest_verdict(json.loads((outputs["evaluation"] / METRICS_FILE).read_text())["scorecard"],
                         len(held_crops)))
    _step(4, "Encode images", f"encode {checkpoint.name}")
    outputs["embeddings"] = embeddings = Path(encode_folder(
        checkpoint, ws.extraction_images, config=cfg, workspace=ws, progress=progress,
    ))
    source = next((p for p in photos if p.name == QUERY_PHOTO), photos[0])
    query = make_query(source, ws.root / f"query_{source.stem}_cropped_mirrored.jpg")
    sheet = ws.root / "search_results.png"
    _step(5, "Search similar images", f"search {embeddings} --query {query} --sheet {sheet}")
    print(f"The query is {query.name}: {source.name} cropped, mirrored and re-encoded as JPEG, "
          f"so the right answer is known.")
    results = search(embeddings, str(query), k=5, sheet=sheet, config=cfg)
    print_results(results, read_bands(embeddings))
    print(known_answer(results, source.name))
    outputs["search query"] = query
    outputs["search sheet"] = sheet
    outputs["atlas"] = _explore(embeddings, cfg, progress)
    return outputs


def _explore(embeddings: Path, cfg: Config, progress: bool) -> Path:
    """Step 6: the atlas of the encoded photos (map, clusters, outliers, near-duplicates), as `fext explore` writes it."""
    from fext.explore.run import explore

    _step(6, "Explore the encoded images", f"explore {embeddings.name}")
    result = explore(embeddings, config=cfg, progress=progress)
    print(result.summary())
    return result.output / "atlas.html"


def honest_verdict(card: dict, images: int) -> str:
    """What the scorecard of the held-out crops says, and what it cannot say, in plain words."""
    lost = []
    for task, retrieval in (("finding edited copies", card["retrieval"]),
                            ("finding other crops of the same photo", card.get("retrieval_crops") or {})):
        if retrieval and retrieval["features"]["map"] <= max(retrieval["pca"]["map"], retrieval["pixels"]["map"]):
            lost.append(task)
    where = (f"On {images} crops of {len(HELD_OUT_PHOTOS)} photos the model never saw "
             f"({', '.join(HELD_OUT_PHOTOS)}), its vectors")
    if not lost:
        return (f"{where} beat PCA and a 32x32 thumbnail at finding edited copies and other crops of the same photo.\n"
                "That is a few minutes on a few hundred crops of 8 photos; on your own images, train longer: "
                "`fext atlas DIR --minutes 15`.")
    return (f"{where} do not beat the better of PCA and a 32x32 thumbnail at {' and at '.join(lost)} (see the\n"
            "verdict above). This demo trains for a few minutes on crops of 8 photos, which is too little to learn\n"
            "features that carry over to other photos; it shows the pipeline, not the quality FeXT reaches. Train on\n"
            "a few thousand of your own images for 15 minutes or more (`fext atlas DIR --minutes 15`) and read the\n"
            "scorecard of that run.")


def known_answer(results: list[tuple[int, float, str]], expected: str) -> str:
    """One line saying where the photo the query was made from came in the results."""
    paths = [Path(path).name for _, _, path in results]
    if paths and paths[0] == expected:
        return f"Found: {expected}, the photo the query was made from, came first (score {results[0][1]:.4f})."
    where = f"came {paths.index(expected) + 1}." if expected in paths else f"is not among the first {len(paths)}."
    return f"Not found first: {expected}, the photo the query was made from, {where} Train longer (--epochs)."


def summary(ws: Workspace, outputs: dict[str, Path], seconds: float) -> str:
    """What was produced and where, and the report pages to open."""
    lines = [f"\nDemo finished in {int(seconds // 60)} min {int(seconds % 60)} s. Everything is in {ws.root}:"]
    for name, path in outputs.items():
        shown = path.relative_to(ws.root) if path.is_relative_to(ws.root) else path
        lines.append(f"  {name + ':':<14}{shown}")
    reports = sorted(ws.root.rglob("*.html"))
    if reports:
        lines.append("Open these reports in a browser:")
        lines += [f"  {path}" for path in reports]
    if (outputs.get("checkpoint") or ws.root).joinpath("tensorboard").is_dir():
        lines.append(f"Training curves: tensorboard --logdir {outputs['checkpoint'] / 'tensorboard'}")
    if outputs.get("atlas"):
        lines.append(f"Open the atlas of the photos: {outputs['atlas'].resolve().as_uri()}")
    lines.append(f"Try the commands there: cd {ws.root} && fext checkpoints   (or `fext` for the menu)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fext.demo [--epochs N] [--workspace DIR] [--img-size PX]``; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fext.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--workspace", type=Path, help="an empty or new folder (default: a new temporary folder)")
    parser.add_argument("--img-size", type=int, default=DEMO_IMG_SIZE, choices=(64, 128, 192, 256),
                        help=f"image side in pixels (default {DEMO_IMG_SIZE})")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    from fext._allocator import keep_freed_memory
    from fext.logs import setup_logging

    started = time.monotonic()
    try:
        ws = prepare_workspace(args.workspace)
    except FeXTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    setup_logging(ws)
    keep_freed_memory()  # as the fext commands it stands for do (analysis workers, CPU training and encoding)
    print(f"FeXT demo workspace: {ws.root} (kept afterwards)")
    try:
        outputs = run_demo(ws, args.epochs, args.img_size, progress=sys.stdout.isatty())
    except FeXTError as e:
        print(f"error: {e}\nThe demo workspace is kept at {ws.root}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\nDemo interrupted; the workspace is kept at {ws.root}", file=sys.stderr)
        return 130
    print(summary(ws, outputs, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
