"""``make demo`` (``python -m fext.demo``): the whole pipeline on the bundled photos.

In a fresh workspace (a temporary folder, kept afterwards so the reports can be opened) it copies
the photos of ``fext/sample_images`` into ``resources/dataset`` and ``resources/extraction/images``,
writes a configuration for the small preset, then runs the same API functions as the commands:
analyze → train → evaluate → encode → search, and prints what was produced and where.
About two minutes on a quiet 2-core CPU; ``--epochs 1`` makes it a quick smoke test.
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
from fext.workspace import Workspace, init_workspace

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Epochs of the demo's training: 900 updates of the small preset at 128 px, about 95 s on a quiet
# 2-core CPU (saving included); random flips/brightness/contrast give each epoch different views of
# the 9 training photos. Enough for the model to beat the PCA baseline on the 2 validation photos.
DEMO_EPOCHS = 300
DEMO_IMG_SIZE = 128
DEMO_BATCH_SIZE = 3


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


def demo_config(epochs: int, img_size: int, batches_per_epoch: int) -> Config:
    """The small preset, augmentation and TensorBoard on, a validation split, a learning rate for few steps."""
    import torch

    steps = max(1, epochs * batches_per_epoch)
    return with_overrides(Config(), {
        "model.PRESET": "small",
        "model.IMG_SIZE": img_size,
        # 11 photos: 2 for validation, 9 for training.
        "dataset.VALIDATION_SIZE": 0.2,
        "dataset.IMG_AUGMENT": True,
        # Said once here rather than warned about by every step when there is no GPU.
        "device.DEVICE": "GPU" if torch.cuda.is_available() else "CPU",
        "device.NUM_PROCESSORS": 0,  # decoding 11 photos once is faster than starting workers
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


def _step(number: int, title: str, command: str) -> None:
    print(f"\n[{number}/5] {title}  (the command: fext {command})", flush=True)


def run_demo(ws: Workspace, epochs: int = DEMO_EPOCHS, img_size: int = DEMO_IMG_SIZE,
             progress: bool = True) -> dict[str, Path]:
    """Run analyze → train → evaluate → encode → search in ``ws``; return the main outputs by name."""
    from fext.analysis import analyze
    from fext.encoding import encode_folder
    from fext.evaluation import evaluate_checkpoints
    from fext.search import print_results, search
    from fext.training import train

    photos = copy_sample_images(ws.dataset)
    copy_sample_images(ws.extraction_images)
    n_train = len(photos) - max(1, round(0.2 * len(photos)))
    cfg = demo_config(epochs, img_size, batches_per_epoch=-(-n_train // DEMO_BATCH_SIZE))
    write_text(ws.config_file, json.dumps(config_to_dict(cfg), indent=4) + "\n")
    cfg = load_config(ws.config_file)  # exactly what `fext` commands in this workspace will read
    print(f"Copied {len(photos)} bundled photos into {ws.dataset} and {ws.extraction_images}")
    print(f"Wrote {ws.config_file} (small preset, {img_size} px, {epochs} epochs, augmentation on, "
          f"device {cfg.device.DEVICE})")

    outputs: dict[str, Path] = {}
    _step(1, "Analyze image dataset", "analyze")
    outputs["analysis"] = Path(analyze(cfg, ws, progress=progress))
    _step(2, "Train from scratch", "train")
    outputs["checkpoint"] = checkpoint = Path(train(cfg, ws, progress=progress))
    _step(3, "Model evaluation", f"evaluate {checkpoint.name}")
    evaluate_checkpoints([checkpoint], cfg, ws, progress=progress)
    outputs["evaluation"] = ws.validation_checkpoints / checkpoint.name
    _step(4, "Encode images", f"encode {checkpoint.name}")
    outputs["embeddings"] = embeddings = Path(encode_folder(
        checkpoint, ws.extraction_images, config=cfg, workspace=ws, progress=progress,
    ))
    query = ws.extraction_images / photos[0].name
    sheet = ws.root / "search_results.png"
    _step(5, "Search similar images", f"search {embeddings} --query {query} --sheet {sheet}")
    print_results(search(embeddings, str(query), k=5, sheet=sheet, config=cfg))
    outputs["search sheet"] = sheet
    return outputs


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

    from fext.logs import setup_logging

    started = time.monotonic()
    try:
        ws = prepare_workspace(args.workspace)
    except FeXTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    setup_logging(ws)
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
