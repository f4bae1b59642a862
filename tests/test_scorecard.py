"""The feature scorecard on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import photos
from fext.evaluation import scorecard as S


def groups_of(n: int, copies: int = S.COPIES) -> np.ndarray:
    return np.concatenate([np.arange(n), np.repeat(np.arange(n), copies)])


def test_copies_are_seeded_transformed_and_the_right_shape():
    images = photos(4)
    a, b = S.make_copies(images, 3, seed=1), S.make_copies(images, 3, seed=1)
    assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, S.make_copies(images, 3, seed=2))
    # Every copy differs from its source, but stays closer to it than to the other images.
    for i in range(4):
        for c in a[3 * i: 3 * i + 3]:
            d = [np.abs(c.astype(float) - images[j]).mean() for j in range(4)]
            assert d[i] > 0.5 and int(np.argmin(d)) == i


def test_identical_vectors_score_at_chance_and_warn_of_collapse():
    n = 40
    card = S.scorecard(photos(n, 32), lambda x: np.ones((len(x), 16)), lambda x: x.reshape(len(x), -1)[:, :16])
    chance, got = card["retrieval"]["chance"], card["retrieval"]["features"]
    assert got["recall@1"] == pytest.approx(chance["recall@1"], abs=0.03)
    assert got["recall@10"] == pytest.approx(chance["recall@10"], abs=0.06)
    assert got["map"] == pytest.approx(chance["map"], abs=0.02)
    assert card["effective_rank"] == 0.0
    assert card["collapse_warning"] and "Collapse" in card["collapse_warning"]
    assert "collapsed" in card["verdict"]


def test_chance_scores_match_a_random_ranking():
    n, rng = 100, np.random.default_rng(3)
    measured = [S.retrieval_scores(rng.normal(size=(4 * n, 32)), groups_of(n), seed=s) for s in range(3)]
    chance = S.chance_scores(n)
    for key in chance:
        assert np.mean([m[key] for m in measured]) == pytest.approx(chance[key], rel=0.25, abs=0.005)


def test_vectors_that_depend_only_on_the_source_image_find_every_copy():
    n = 30
    sources = np.random.default_rng(0).normal(size=(n, 8))
    scores = S.retrieval_scores(sources[groups_of(n)], groups_of(n))
    assert scores == {"recall@1": 1.0, "recall@10": 1.0, "map": 1.0}


def test_raw_pixels_find_copies_far_above_chance_on_real_transformations():
    n = 20
    images = photos(n, 64)
    def centred_pixels(x: np.ndarray) -> np.ndarray:  # features come centred (FeXTAutoEncoder.features)
        v = S.pixel_vectors(x).astype(np.float64)
        return v - v.mean(0)

    card = S.scorecard(images, centred_pixels, S.pixel_vectors)
    assert card["retrieval"]["pixels"]["map"] > 3 * card["retrieval"]["chance"]["map"]
    for task in ("retrieval", "retrieval_crops"):  # the same vectors, the same figures (to float rounding)
        assert card[task]["features"] == pytest.approx(card[task]["pixels"], abs=0.01)
    assert card["collapse_warning"] is None and card["effective_rank"] > 3


def test_effective_rank_counts_the_directions_used():
    rng = np.random.default_rng(0)
    assert S.effective_rank(rng.normal(size=(2000, 8)) @ np.eye(8, 64)) == pytest.approx(8, rel=0.05)
    assert S.effective_rank(np.outer(rng.normal(size=500), rng.normal(size=32))) == pytest.approx(1.0, abs=1e-6)
    assert S.collapse_warning(1.0, 512, 1000) is not None
    assert S.collapse_warning(100.0, 512, 1000) is None


def test_knn_accuracy_with_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    centres = rng.normal(size=(3, 16)) * 10
    clustered = centres[labels] + rng.normal(size=(30, 16))
    assert S.knn_accuracy(clustered, labels) == 1.0
    assert S.knn_accuracy(rng.normal(size=(30, 16)), labels) < 0.7
    card = S.scorecard(photos(12, 32), S.pixel_vectors, S.pixel_vectors, labels=np.arange(12) % 2)
    assert set(card["knn_accuracy"]) == {"features", "pca", "pixels"}


def test_verdict_in_plain_words():
    def card(f, p, r):
        return {"features": {"map": f}, "pca": {"map": p}, "pixels": {"map": r}}

    assert "beat both baselines" in S.verdict(card(0.9, 0.5, 0.6), None)
    assert "do not beat" in S.verdict(card(0.4, 0.5, 0.6), None)
    assert "beat PCA but not raw pixels" in S.verdict(card(0.55, 0.5, 0.6), None)


def test_evaluate_writes_the_scorecard_with_baselines_on_the_right_split(tmp_path):
    import csv
    import json

    from conftest import make_checkpoint, make_images, tiny_config
    from fext.errors import FeXTError
    from fext.evaluation import evaluate_checkpoints
    from fext.workspace import Workspace

    ws = Workspace(tmp_path / "ws").ensure()
    for i, name in enumerate(("cats", "dogs")):
        make_images(ws.dataset / name, n=10, seed=i)
    cfg = tiny_config(**{"dataset.VALIDATION_SIZE": 0.4})
    ckpt = make_checkpoint(ws.checkpoints / "FeXT_20240101T000000", cfg, ws.dataset, epochs=1)
    out = evaluate_checkpoints([ckpt], cfg, ws, images=2, progress=False, labels_from_folders=True)[0]
    metrics = json.loads((out / "metrics.json").read_text())
    card, splits = metrics["scorecard"], metrics["splits"]
    # Scored on the validation images, with PCA fitted on the training images only.
    assert card["images"] == splits["validation"]["evaluated"] > 1
    assert metrics["baseline_pca"]["fitted_on"] == splits["train"]["evaluated"]
    assert metrics["baseline_pca"]["evaluated_on"] == "validation"
    assert set(card["retrieval"]) == {"features", "pca", "pixels", "chance"}
    assert card["dim"] == metrics["latent_dim"] and card["effective_rank"] >= 0
    assert set(card["knn_accuracy"]) == {"features", "pca", "pixels"}
    report = (out / "report.html").read_text()
    assert "Feature scorecard" in report and card["verdict"].split(" (")[0] in report
    with open(ws.validation_checkpoints / "checkpoints_summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["features_map"]) == pytest.approx(card["retrieval"]["features"]["map"], rel=1e-5)
    assert row["recipe"] == "views"
    flat = tmp_path / "flat"
    make_images(flat, n=6)
    with pytest.raises(FeXTError, match="class folder"):
        evaluate_checkpoints([ckpt], cfg, ws, dataset=flat, progress=False, labels_from_folders=True)
