"""`make demo` end to end, shortened to one epoch at 64 px: every stage's outputs exist and make sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fext import demo
from fext.workspace import Workspace


@pytest.mark.slow
def test_demo_runs_every_stage_and_says_where_things_are(tmp_path):
    root = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("FEXT_WORKSPACE", "FEXT_LOG_LEVEL")}
    proc = subprocess.run(
        [sys.executable, "-m", "fext.demo", "--epochs", "1", "--img-size", "64", "--workspace", str(root)],
        capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    ws = Workspace(root)
    photos = sorted(p.name for p in demo.sample_images())
    assert len(photos) >= 10
    crops = sorted(p.name for p in ws.dataset.iterdir())  # many random crops of most photos to train on
    trained_on = set(photos) - set(demo.HELD_OUT_PHOTOS)
    assert len(crops) == demo.CROPS_PER_PHOTO * len(trained_on)
    assert {c.rsplit("_crop_", 1)[0] + ".jpg" for c in crops} == trained_on
    held = sorted(p.name for p in (root / "held_out").iterdir())  # the scorecard's photos, never trained on
    assert {c.rsplit("_crop_", 1)[0] + ".jpg" for c in held} == set(demo.HELD_OUT_PHOTOS)
    metrics = json.loads(next(ws.validation_checkpoints.glob("*/metrics.json")).read_text())
    assert metrics["scorecard"]["images"] == len(held)
    assert sorted(p.name for p in ws.extraction_images.iterdir()) == photos

    # The configuration the demo wrote is the one training recorded.
    written = json.loads(ws.config_file.read_text())
    assert written["model"]["PRESET"] == "small" and written["model"]["IMG_SIZE"] == 64
    assert written["training"]["EPOCHS"] == 1 and written["training"]["USE_TENSORBOARD"] is True
    (checkpoint,) = list(ws.checkpoints.iterdir())
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["configuration"] == written
    assert config["dataset"]["validation"] >= 1
    assert json.loads((checkpoint / "history.json").read_text())["total_epochs"] == 1
    assert (checkpoint / "tensorboard").is_dir()

    embeddings = np.load(ws.extraction / checkpoint.name / "embeddings.npy")
    assert embeddings.shape[0] == len(photos) and np.isfinite(embeddings).all()
    assert (root / "search_results.png").stat().st_size > 0
    # The query is a transformed copy of a known photo; after one epoch at 64 px it need not come first,
    # but the demo must say where it came.
    query = root / f"query_{demo.QUERY_PHOTO[:-4]}_cropped_mirrored.jpg"
    assert query.is_file() and query.read_bytes() != (ws.extraction_images / demo.QUERY_PHOTO).read_bytes()
    ranks = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert ranks and ranks[0][-1] in photos, out
    first = ranks[0][-1] == demo.QUERY_PHOTO
    assert (f"Found: {demo.QUERY_PHOTO}" if first else f"Not found first: {demo.QUERY_PHOTO}") in out
    assert f"On {len(held)} crops of 3 photos the model never saw" in out  # the honest verdict
    assert "Epoch 1/1" not in out + proc.stderr and "Epoch 1/1" in next(ws.logs.glob("*.log")).read_text()  # log file only

    reports = [ws.validation_dataset / "report.html", ws.validation_checkpoints / checkpoint.name / "report.html"]
    summary = out[out.index("Demo finished"):]
    for report in reports:
        assert report.is_file() and str(report) in summary
    for step in ("[1/6] Analyze", "[2/6] Train", "[3/6] Model evaluation", "[4/6] Encode", "[5/6] Search",
                 "[6/6] Explore"):
        assert step in out
    atlas = ws.extraction / checkpoint.name / "explore" / "atlas.html"
    assert atlas.is_file() and f"Open the atlas of the photos: {atlas.resolve().as_uri()}" in summary
    assert f"FeXT demo workspace: {root}" in out and f"Everything is in {root}" in summary


def test_demo_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "something.txt").write_text("mine\n")
    assert demo.main(["--workspace", str(tmp_path), "--epochs", "1"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["something.txt"]


def test_the_known_answer_line_says_where_the_photo_came(tmp_path):
    results = [(1, 0.99, "chelsea.jpg"), (2, 0.9, "coffee.jpg")]
    assert demo.known_answer(results, "chelsea.jpg").startswith("Found: chelsea.jpg")
    assert "came 2." in demo.known_answer(results, "coffee.jpg")
    assert "is not among the first 2" in demo.known_answer(results, "rocket.jpg")


def test_the_query_is_a_cropped_mirrored_jpeg_of_its_photo(tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100] = 255  # left half white
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    query = demo.make_query(tmp_path / "photo.png", tmp_path / "query.jpg")
    with Image.open(query) as image:
        assert image.format == "JPEG" and image.size == (160, 80)
        gray = np.asarray(image.convert("L"), float)
    assert gray[:, -20:].mean() > 200 and gray[:, :20].mean() < 50  # mirrored: the white side is now on the right


def test_the_honest_verdict_says_what_the_held_out_scorecard_means():
    def card(features: float) -> dict:
        task = {"features": {"map": features}, "pca": {"map": 0.4}, "pixels": {"map": 0.5}}
        return {"retrieval": task, "retrieval_crops": task}

    assert "beat PCA and a 32x32 thumbnail" in demo.honest_verdict(card(0.6), 48)
    losing = demo.honest_verdict(card(0.45), 48)
    assert losing.startswith("On 48 crops of 3 photos the model never saw") and "do not beat" in losing
    assert "finding edited copies and at finding other crops" in losing and "--minutes 15" in losing
