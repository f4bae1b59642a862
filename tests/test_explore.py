"""`fext explore`: clusters, outliers, duplicates, the map, the written files and the bad-input messages.

Vector-level tests use planted structure in random vectors; the end-to-end tests encode real
generated images with a real (untrained, seeded) checkpoint, so the duplicate threshold is
measured on edited copies exactly as it is for a user.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from sklearn.metrics import adjusted_rand_score

from fext.encoding import EMBEDDINGS, METADATA
from fext.encoding.files import SIMILARITY, write_metadata, write_rows_csv
from fext.encoding.records import CheckpointRecord, EncodingMetadata
from fext.explore import choose_threshold, embedding_map, explore, find_clusters, find_duplicates, find_outliers
from fext.explore.run import CSV_FILES

CPU = tiny_config()


def planted(n_per: int = 60, k: int = 5, d: int = 64, spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (k * n_per, d), labels): k separated directions with noise around each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    labels = np.repeat(np.arange(k), n_per)
    vectors = centres[labels] + spread * rng.normal(size=(len(labels), d)) * np.linalg.norm(centres, axis=1).mean() / np.sqrt(d)
    return vectors.astype(np.float32), labels


def vectors_folder(folder: Path, vectors: np.ndarray, input_dir: str = "/nonexistent") -> Path:
    """An embeddings folder in the `fext encode` format for ``vectors``, with no checkpoint or images at hand."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / EMBEDDINGS, vectors)
    write_rows_csv(folder, [f"img_{i:05d}.png" for i in range(len(vectors))], np.full((len(vectors), 2), 64))
    write_metadata(folder, EncodingMetadata(checkpoint=CheckpointRecord("gone", "/nonexistent/ckpt", "0"),
                                            embedding_dim=vectors.shape[1], images=len(vectors), input=input_dir,
                                            img_size=64, similarity=SIMILARITY))
    return folder


def test_planted_clusters_are_recovered_with_k_chosen_by_the_rule():
    vectors, labels = planted()
    clusters = find_clusters(vectors, seed=0)
    assert clusters.k == 5
    assert adjusted_rand_score(labels, clusters.labels) >= 0.9
    summary = clusters.summary()
    assert sorted(s["size"] for s in summary) == [60] * 5
    for s in summary:  # the medoid is the member nearest the centre, first of the typical strip
        members = np.flatnonzero(clusters.labels == s["cluster"])
        assert s["medoid"] == s["typical"][0] == members[np.argmin(clusters.distances[members])]
        assert s["spread"] == pytest.approx(clusters.distances[members].mean())
    assert find_clusters(vectors, k=3, seed=0).k == 3


def test_planted_outliers_rank_at_the_top_and_reconstruction_error_counts():
    vectors, _ = planted()
    rng = np.random.default_rng(1)
    odd = rng.normal(size=(4, vectors.shape[1])).astype(np.float32) * np.abs(vectors).mean()
    everything = np.concatenate([vectors, odd])
    outliers = find_outliers(everything)
    assert set(outliers.ranking()[:4].tolist()) == set(range(len(vectors), len(everything)))
    assert outliers.score[-4:].min() > 3 > np.median(outliers.score)
    errors = np.full(len(everything), 0.1, np.float32) + rng.uniform(0, 0.01, len(everything)).astype(np.float32)
    errors[7] = 1.0  # an ordinary neighbourhood, but the model reconstructs it badly
    with_errors = find_outliers(everything, reconstruction_error=errors)
    assert with_errors.ranking()[0] == 7 or 7 in with_errors.ranking()[:5].tolist()
    assert with_errors.score[7] > outliers.score[7] + 1


def test_the_threshold_keeps_false_positives_under_one_percent_and_skips_likely_duplicates():
    rng = np.random.default_rng(0)
    nearest = rng.uniform(0.5, 0.9, 500)
    copies = rng.uniform(0.95, 0.99, (500, 3))
    nearest[:10] = 0.999  # ten images whose nearest image is closer than their own edited copies
    t = choose_threshold(copies, nearest)
    assert t.distinct == 490 and t.false_positive_rate < 0.01
    assert np.sort(nearest[10:])[-5] < t.value < np.quantile(copies, 0.05)
    assert t.copy_recall >= 0.95
    blind = choose_threshold(None, nearest)  # without copies every image counts as distinct
    assert blind.copy_recall is None and blind.false_positive_rate < 0.01 and blind.value > 0.999


def test_find_duplicates_groups_pairs_above_the_threshold():
    vectors, _ = planted(n_per=20, k=3)
    vectors = np.concatenate([vectors, vectors[[0, 0, 25]] * 1.5])  # scaled copies: cosine similarity 1
    dups = find_duplicates(vectors, 0.9999)
    assert dups.groups == [[0, 60, 61], [25, 62]]
    assert dups.kinds == ["feature", "feature"]  # no hashes given: the vectors alone
    assert dups.rows([str(i) for i in range(len(vectors))])[0] == {
        "group": 1, "kind": "feature", "path": "0", "similarity": pytest.approx(1.0), "hash_distance": None, "same_file": 0}


def test_the_map_is_seeded_and_in_the_unit_square():
    vectors, labels = planted(n_per=30, k=3)
    xy = embedding_map(vectors, seed=3)
    assert xy.shape == (90, 2) and xy.min() >= 0 and xy.max() <= 1
    np.testing.assert_array_equal(xy, embedding_map(vectors, seed=3))
    centres = np.stack([xy[labels == c].mean(axis=0) for c in range(3)])  # UMAP keeps the planted groups apart
    within = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(3))
    between = min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3))
    assert between > 3 * within
    few = embedding_map(vectors[:5])  # PCA for a handful
    assert few.shape == (5, 2) and few.min() >= 0 and few.max() <= 1


def test_explore_groups_exact_and_resized_copies_and_not_distinct_images(encoded_scenes):
    result = explore(encoded_scenes, config=CPU)
    groups = sorted(sorted(result.paths[r] for r in g) for g in result.duplicates.groups)
    assert groups == [["d00_copy.png", "sub/d00.png"], ["d01.png", "d01_half.jpg"]]
    assert result.threshold.copy_recall is not None and result.threshold.false_positive_rate < 0.01
    assert result.outliers.reconstruction_error is not None and np.isfinite(result.outliers.reconstruction_error).all()
    out = encoded_scenes / "explore"
    assert result.output == out and result.thumbnails
    rows = {name: list(csv.DictReader(open(out / name, encoding="utf-8"))) for name in CSV_FILES}
    assert [r["path"] for r in rows["map.csv"]] == result.paths
    assert all(0 <= float(r[axis]) <= 1 for r in rows["map.csv"] for axis in "xy")
    assert {r["path"] for r in rows["clusters.csv"]} == set(result.paths)
    assert [int(r["rank"]) for r in rows["outliers.csv"]] == list(range(1, 43))
    assert float(rows["outliers.csv"][0]["score"]) == pytest.approx(result.outliers.score.max(), abs=1e-5)
    assert sorted(r["path"] for r in rows["duplicates.csv"]) == sorted(p for g in groups for p in g)
    page = (out / "atlas.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("data:image/jpeg;base64,") == 1  # 42 thumbnails, one sprite sheet


def test_cli_explores_the_only_encoded_folder_of_the_workspace(encoded_scenes, ws, capsys):
    from fext.cli import main

    target = ws.extraction / "FeXT_20240101T000000"
    shutil.copytree(encoded_scenes, target, ignore=shutil.ignore_patterns("explore"))
    code = main(["--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "explore", "--clusters", "3",
                 "--neighbours", "4", "--no-reconstruction"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"Atlas: {target / 'explore' / 'atlas.html'}" in printed and "3 clusters" in printed
    assert "2 group(s) of near-duplicates (1 exact, 1 perceptual, 0 feature), 4 images" in printed
    data = json.loads(_page_data((target / "explore" / "atlas.html").read_text(encoding="utf-8")))
    assert data["k"] == 3 and data["neighbours"] == 4 and data["image_base"].endswith("/images/")


def test_missing_images_still_give_a_page_without_thumbnails(tmp_path):
    vectors, _ = planted(n_per=20, k=3)
    result = explore(vectors_folder(tmp_path / "emb", vectors), tmp_path / "out", config=CPU, duplicate_threshold=-1.0)
    assert not result.thumbnails and result.outliers.reconstruction_error is None
    assert result.threshold.by_hand and "set by hand" in result.summary()
    assert sorted(map(len, result.duplicates.groups)) == [20, 20, 20]  # -1 links every image to its 10 nearest
    page = (tmp_path / "out" / "atlas.html").read_text(encoding="utf-8")
    assert "No thumbnails: the encoded images are not at /nonexistent" in page
    assert json.loads(_page_data(page))["sheets"] == []


def test_paths_that_look_like_html_cannot_break_the_page(tmp_path):
    vectors, _ = planted(n_per=5, k=2)
    folder = vectors_folder(tmp_path / "emb", vectors)
    odd = "x</script><!--<script>alert(1)</script>.png"
    write_rows_csv(folder, [odd] + [f"img_{i}.png" for i in range(1, len(vectors))], np.full((len(vectors), 2), 64))
    page = (explore(folder, config=CPU).output / "atlas.html").read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's and the script's own
    assert json.loads(_page_data(page))["paths"][0] == odd


@pytest.mark.parametrize("case", ["no metadata", "one image", "nan"])
def test_bad_input_is_one_clear_message(tmp_path, ws, capsys, case):
    from fext.cli import main

    vectors, _ = planted(n_per=4, k=2)
    if case == "one image":
        vectors = vectors[:1]
    if case == "nan":
        vectors[3, 5] = np.nan
    folder = vectors_folder(tmp_path / "emb", vectors)
    if case == "no metadata":
        (folder / METADATA).unlink()
    code = main(["--workspace", str(ws.root), "explore", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"no metadata": "metadata.json missing", "one image": "holds 1 image(s); exploring needs at least 3",
                "nan": "embeddings.npy is damaged (row 3 holds NaN or infinite values)"}[case]
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (folder / "explore").exists()


def _page_data(page: str) -> str:
    tag = '<script type="application/json" id="atlas-data">'
    start = page.index(tag) + len(tag)
    return page[start:page.index("</script>", start)]
