"""`fext select` and `fext score` on tiny known cases, through the real CLI where it matters.

Selection runs on planted vectors written as `fext encode` folders (clusters, identical copies);
scoring encodes real generated images with a real (untrained, seeded) checkpoint, with planted
novel images (a checkerboard and stripes among smooth scenes).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, make_checkpoint, run_fext, tiny_config
from PIL import Image
from test_explore import _page_data, planted, vectors_folder

from fext import select as select_module
from fext.encoding import encode_folder
from fext.explore import explore
from fext.score import NOVEL_EXIT, calibrated_threshold, score
from fext.select import select

CPU = tiny_config()


def test_diverse_picks_one_image_of_each_planted_cluster_and_beats_random(tmp_path):
    vectors, labels = planted(n_per=40, k=6, spread=0.3)
    result = select(vectors_folder(tmp_path / "emb", vectors), 6, "diverse")
    assert sorted(labels[result.rows]) == list(range(6))
    centre = select_module.normalized(vectors).mean(axis=0)
    assert result.rows[0] == np.argmax(select_module.normalized(vectors) @ centre)  # the documented first pick
    assert np.isnan(result.distances[0]) or result.distances[1] >= result.distances[-1]  # farthest first
    assert result.coverage_radius < result.random_radius


@pytest.mark.parametrize("strategy", ["diverse", "farthest"])
def test_picks_are_exactly_greedy_k_center_when_the_pool_is_refreshed(tmp_path, monkeypatch, strategy):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors[:100] = vectors[0] + 0.2 * vectors[:100]  # a tight region beside a wide one
    unit = select_module.normalized(vectors)
    if strategy == "diverse":
        scale = select_module.local_scale(select_module.local_density(vectors))
        assert np.median(scale[:100]) < 0.5 * np.median(scale[100:])  # the tight region's distances count more
    else:
        scale = np.ones(len(vectors), np.float32)

    def distance(row: int) -> np.ndarray:
        return (1 - unit @ unit[row]) / (scale * scale[row])

    monkeypatch.setattr(select_module, "POOL", 32)  # a pool far smaller than the collection: many refreshes
    result = select(vectors_folder(tmp_path / "emb", vectors), 40, strategy)
    picks, nearest, justified = [int(result.rows[0])], distance(int(result.rows[0])), []
    for _ in range(39):  # plain greedy farthest-point selection from the same first pick
        candidates = nearest.copy()
        candidates[picks] = -np.inf
        picks.append(int(np.argmax(candidates)))
        justified.append(candidates.max())
        nearest = np.minimum(nearest, distance(picks[-1]))
    assert result.rows.tolist() == picks
    assert result.distances[1:] == pytest.approx(justified, rel=1e-5)
    radius = (1 - unit @ unit[picks].T).min(axis=1).max()
    assert result.coverage_radius == pytest.approx(radius, abs=1e-6)
    if strategy == "diverse":
        assert result.relative_radius == pytest.approx(nearest.max(), rel=1e-5)


def test_diverse_gives_a_tight_region_its_pick_where_farthest_spends_it_on_a_wide_one(tmp_path):
    wide, _ = planted(n_per=30, k=3, spread=0.8, seed=4)
    rng = np.random.default_rng(0)
    centre = wide[:30].mean(axis=0)  # a tight region of 30 near-identical images, beside the first wide one
    step = rng.normal(size=centre.shape)
    tight = centre + 0.5 * np.linalg.norm(centre) * (step / np.linalg.norm(step) + 0.02 * rng.normal(size=(30, len(centre))))
    vectors = np.concatenate([wide, tight.astype(np.float32)])
    region = np.repeat(np.arange(4), 30)
    folder = vectors_folder(tmp_path / "emb", vectors)
    farthest = select(folder, 4, "farthest")
    diverse = select(folder, 4, "diverse")
    assert len(set(region[farthest.rows])) < 4  # a second pick inside a wide region, none in the tight one
    assert sorted(region[diverse.rows]) == [0, 1, 2, 3]
    assert "Relative coverage radius" in diverse.summary() and "Relative" not in farthest.summary()


def test_typical_picks_the_densest_image_of_each_region_largest_first(tmp_path):
    sizes = [50, 20, 35, 25]
    parts = [planted(n_per=n, k=1, spread=spread, seed=seed)[0]
             for seed, (n, spread) in enumerate(zip(sizes, [0.3, 0.05, 0.6, 0.2]))]
    vectors, region = np.concatenate(parts), np.repeat(np.arange(4), sizes)
    density = select_module.local_density(vectors)
    result = select(vectors_folder(tmp_path / "emb", vectors), 4, "typical")
    assert region[result.rows].tolist() == [0, 2, 3, 1]  # one image of each region, the largest region first
    for row in result.rows:
        assert density[row] == density[region == region[row]].max()  # its region's most typical image
    assert result.distances == pytest.approx(1 - density[result.rows])


def test_skip_duplicates_never_picks_two_identical_images(tmp_path, ws):
    distinct, _ = planted(n_per=1, k=8, spread=0.0)
    vectors = np.concatenate([distinct, distinct, distinct])  # rows i, i + 8, i + 16 are identical
    folder = vectors_folder(tmp_path / "emb", vectors)
    plain = select(folder, 10, "typical")
    assert len(plain.rows) == 10 and len(set(plain.rows % 8)) == 8  # two copies of one image among the picks
    proc = run_fext("--workspace", str(ws.root), "select", str(folder), "--count", "10", "--strategy", "typical",
                    "--skip-duplicates", "--duplicate-threshold", "0.999", "--output", str(tmp_path / "pick.csv"))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "pick.csv", newline="") as f:
        picked = list(csv.DictReader(f))
    rows = [int(r["path"][4:9]) for r in picked]
    assert sorted(r % 8 for r in rows) == list(range(8))  # one of each group, never two
    assert [int(r["rank"]) for r in picked] == list(range(1, 9)) and all(float(r["distance"]) >= 0 for r in picked)
    assert "Selected 8 of 24 images (typical); 10 were asked for, no more without duplicates" in proc.stdout
    assert "Skipped 16 image(s) of duplicate groups" in proc.stdout


def test_skip_duplicates_reads_explores_groups_or_says_what_to_do(tmp_path, ws):
    distinct, _ = planted(n_per=1, k=4, spread=0.0)
    folder = vectors_folder(tmp_path / "emb", np.concatenate([distinct, distinct]))
    proc = run_fext("--workspace", str(ws.root), "select", str(folder), "--count", "3", "--skip-duplicates")
    assert proc.returncode == 1 and _one_error(proc.stderr) and "run `fext explore" in proc.stderr
    explore(folder, config=CPU, duplicate_threshold=0.999)
    result = select(folder, 6, "typical", skip_duplicates=True)
    assert sorted(result.rows % 4) == [0, 1, 2, 3] and "explore/duplicates.csv" in result.duplicates_note


def test_count_larger_than_the_collection_picks_everything_and_says_so(tmp_path, ws):
    vectors, _ = planted(n_per=3, k=2)
    folder = vectors_folder(tmp_path / "emb", vectors)
    proc = run_fext("--workspace", str(ws.root), "select", str(folder), "--count", "50")
    assert proc.returncode == 0, proc.stderr
    assert "Selected 6 of 6 images (diverse); 50 were asked for, the collection holds fewer" in proc.stdout
    with open(folder / "selection.csv", newline="") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == [f"img_{i:05d}.png" for i in range(6)]
    assert "Coverage radius" in proc.stdout and "0.0000" in proc.stdout  # every image is its own pick


@pytest.mark.parametrize("args, expected", [
    (["select", "{empty}", "--count", "3"], "is not a folder written by `fext encode`"),
    (["select", "{emb}", "--count", "0"], "--count must be at least 1, got 0"),
    (["score", "{empty}", "--reference", "{emb}"], "is not at hand, so new images cannot be encoded"),
])
def test_bad_input_is_one_clear_message(tmp_path, ws, args, expected):
    (tmp_path / "empty").mkdir()
    vectors, _ = planted(n_per=10, k=2)
    emb = vectors_folder(tmp_path / "emb", vectors)
    proc = run_fext("--workspace", str(ws.root), *[a.format(empty=tmp_path / "empty", emb=emb) for a in args])
    assert proc.returncode == 1 and _one_error(proc.stderr) and expected in proc.stderr, proc.stderr


def test_explore_marks_a_loaded_selection_in_the_atlas(tmp_path, ws):
    vectors, _ = planted(n_per=10, k=3)
    folder = vectors_folder(tmp_path / "emb", vectors)
    chosen = select(folder, 4, output=tmp_path / "pick.csv")
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "explore", str(folder),
                    "--selection", str(tmp_path / "pick.csv"), "--no-reconstruction")
    assert proc.returncode == 0, proc.stderr
    page = (folder / "explore" / "atlas.html").read_text(encoding="utf-8")
    assert json.loads(_page_data(page))["selection"] == chosen.rows.tolist()
    assert f"4 images of {tmp_path / 'pick.csv'}, in rank order" in page


def test_calibrated_threshold_is_the_conformal_quantile():
    scores = np.arange(1, 1000, dtype=np.float64)  # 999 scores: the 990th smallest at rate 0.01
    assert calibrated_threshold(scores, 0.01) == (990.0, "")
    value, note = calibrated_threshold(scores[:20], 0.01)
    assert value == 20.0 and "cannot show a false-alarm rate of 1.00%" in note


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """A reference of 60 smooth scenes (encoded), new folders of scenes like them and of planted novel images."""
    root = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    for name, count in (("reference", 60), ("familiar", 6)):
        (root / name).mkdir()
        for i in range(count):
            Image.fromarray(blob_image(rng, 96, 128)).save(root / name / f"s{i:02d}.png")
    (root / "mixed").mkdir()
    for i in range(4):
        shutil.copy(root / "reference" / f"s{i:02d}.png", root / "mixed" / f"s{i:02d}.png")
    yy, xx = np.mgrid[0:96, 0:128]
    checker = (((yy // 8 + xx // 8) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker, 255 - checker, checker], -1)).save(root / "mixed" / "checker.png")
    stripes = np.zeros((96, 128, 3), np.uint8)
    stripes[:, ::4] = 255
    Image.fromarray(stripes).save(root / "mixed" / "stripes.png")
    ckpt = make_checkpoint(root / "FeXT_20240101T000000")
    other = make_checkpoint(root / "FeXT_20240202T000000", seed=1)
    return {"root": root, "ckpt": ckpt, "other": other,
            "emb": encode_folder(ckpt, root / "reference", root / "emb", config=CPU, batch_size=16, progress=False)}


def test_planted_novel_images_are_flagged_and_the_exit_status_says_so(scenes, ws, tmp_path):
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "--set", "device.NUM_PROCESSORS=0",
                    "score", str(scenes["root"] / "mixed"), "--reference", str(scenes["emb"]),
                    "--output", str(tmp_path / "out"))
    assert proc.returncode == NOVEL_EXIT, proc.stderr
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "score", "nearest_reference", "similarity", "reconstruction_error", "novel"]
    novel = {r["path"] for r in rows if r["novel"] == "yes"}
    assert novel == {"checker.png", "stripes.png"}
    copies = [r for r in rows if r["path"] not in novel]
    assert all(r["nearest_reference"] == r["path"] and float(r["similarity"]) > 0.9999 for r in copies)
    assert all(r["reconstruction_error"] for r in rows)
    calibration = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert calibration["images"] == 60 and "reconstruction error" in calibration["components"]
    assert (tmp_path / "out" / "most_novel.png").stat().st_size > 1000
    assert "2 of 6 new images are novel" in proc.stdout


def test_familiar_images_are_not_novel_and_exit_zero(scenes, ws, tmp_path):
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "--set", "device.NUM_PROCESSORS=0",
                    "score", str(scenes["root"] / "familiar"), "--reference", str(scenes["emb"]),
                    "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "0 of 6 new images are novel" in proc.stdout and "cannot show a false-alarm rate of 1.00%" in proc.stdout
    result = score(scenes["root"] / "familiar", scenes["emb"], tmp_path / "api", config=CPU, false_alarm_rate=0.2)
    assert result.calibration["measured_false_alarm_rate"] <= 0.2 and result.threshold < float(
        json.loads((tmp_path / "out" / "calibration.json").read_text())["threshold"])


def test_a_reference_of_another_checkpoint_is_refused_with_the_reason(scenes, ws, tmp_path):
    other = encode_folder(scenes["other"], scenes["root"] / "familiar", tmp_path / "other", config=CPU, progress=False)
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "score", str(other),
                    "--reference", str(scenes["emb"]))
    assert proc.returncode == 1 and _one_error(proc.stderr)
    assert "encoded with the checkpoint FeXT_20240202T000000" in proc.stderr and "not comparable" in proc.stderr
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "score", str(scenes["root"] / "familiar"),
                    "--reference", str(scenes["emb"]), "--checkpoint", str(scenes["other"]))
    assert proc.returncode == 1 and "is not the checkpoint that wrote the reference" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_fext("--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "score", str(tmp_path / "empty"),
                    "--reference", str(scenes["emb"]))
    assert proc.returncode == 1 and _one_error(proc.stderr) and "No readable image in" in proc.stderr


def _one_error(stderr: str) -> bool:
    """One ``error:`` line and no traceback (other lines may be the log's, e.g. the device chosen)."""
    return sum(line.startswith("error: ") for line in stderr.splitlines()) == 1 and "Traceback" not in stderr
