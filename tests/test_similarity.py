"""One feature vector and one similarity everywhere: the training centre, the bands, and the same ranking and
scores from the scorecard, exact search, every index kind and explore's neighbours."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_image_tree, tiny_config

from fext.checkpoints import has_feature_center
from fext.data import prepare_images, select_images, to_float
from fext.encoding import encode_folder
from fext.encoding.files import SIMILARITY, open_encoding
from fext.evaluation.scorecard import _ranked_neighbours
from fext.explore import nearest_neighbours
from fext.index import build_index
from fext.model import FeXTAutoEncoder
from fext.search import search
from fext.vectors import normalized
from fext.similarity import BANDS, band_of, bands_from
from fext.training.run import CENTER_IMAGES

CPU = tiny_config()


@pytest.fixture(scope="module")
def encoded(trained_checkpoint, tmp_path_factory):
    """The session's trained checkpoint and 40 images encoded with it."""
    root = tmp_path_factory.mktemp("similarity")
    make_image_tree(root / "images", 40, seed=11)
    return trained_checkpoint, encode_folder(trained_checkpoint, root / "images", root / "out", config=CPU,
                                             progress=False)


def test_training_sets_the_centre_to_the_mean_latent_of_its_training_images(trained_checkpoint, tmp_path):
    model = FeXTAutoEncoder.from_pretrained(trained_checkpoint).eval()
    assert model.has_feature_center and has_feature_center(trained_checkpoint)
    root = trained_checkpoint.parents[2] / "resources" / "dataset"
    train, _ = select_images(tiny_config(**{"training.EPOCHS": 1}), root)
    assert len(train) <= CENTER_IMAGES  # so every training image went into the mean
    images = prepare_images(train, 64, tmp_path / "cache", 0, progress=False)
    with torch.no_grad():
        latents = model.encode(to_float(images.batch(list(range(len(train))))))
        torch.testing.assert_close(model.feature_center, latents.mean(0), rtol=1e-4, atol=1e-5)
        x = to_float(images.batch([0, 1]))
        torch.testing.assert_close(model.features(x), model.encode(x) - model.feature_center)


def test_an_untrained_model_or_an_older_checkpoint_has_no_centre(tmp_path):
    model = FeXTAutoEncoder.from_preset("small", 64)
    assert not model.has_feature_center
    model.save_pretrained(tmp_path / "old")
    assert not has_feature_center(tmp_path / "old")


def test_one_query_gets_the_same_order_and_scores_everywhere(encoded, tmp_path):
    _, out = encoded
    encoding = open_encoding(out)
    assert encoding.metadata.similarity == SIMILARITY
    paths = [r["path"] for r in encoding.read_rows_csv()]
    vectors = np.asarray(encoding.vectors)
    query, k = 7, 6
    exact = search(out, paths[query], k=k, config=CPU, use_index=False)
    assert exact[0][2] == paths[query] and exact[0][1] == pytest.approx(1.0, abs=1e-5)
    names, scores = [r[2] for r in exact], np.array([r[1] for r in exact])

    for kind in ("flat", "hnsw", "ivf"):
        folder = tmp_path / kind
        shutil.copytree(out, folder)
        build_index(folder, kind)
        indexed = search(folder, paths[query], k=k, config=CPU)
        assert [r[2] for r in indexed] == names, kind
        np.testing.assert_allclose([r[1] for r in indexed], scores, atol=1e-5, err_msg=kind)

    unit = normalized(vectors)
    neighbours = nearest_neighbours(unit, k - 1)  # explore's: the query itself is not its own neighbour
    assert [paths[i] for i in neighbours.indices[query]] == names[1:]
    np.testing.assert_allclose(neighbours.similarities[query], scores[1:], atol=1e-5)

    rows, order = next(_ranked_neighbours(vectors, seed=0, centre=False))  # the scorecard's ranking
    assert [paths[i] for i in order[query, : k - 1]] == names[1:]
    np.testing.assert_allclose(unit[order[query, : k - 1]] @ unit[query], scores[1:], atol=1e-5)


def test_bands_are_ordered_and_name_scores():
    rng = np.random.default_rng(0)
    copies = np.column_stack([rng.uniform(0.80, 0.95, 50), rng.uniform(0.9, 0.99, 50), rng.uniform(0.92, 1.0, 50)])
    pairs = rng.uniform(-0.3, 0.6, 1000)
    bands = bands_from(copies, pairs)
    assert 1 > bands["duplicate"] >= bands["near-duplicate"] >= bands["similar"]
    assert bands["similar"] == pytest.approx(np.quantile(pairs, 0.95), abs=1e-4)
    assert [band_of(s, bands) for s in (1.0, bands["near-duplicate"], bands["similar"], -0.5)] == list(BANDS)
    assert band_of(0.5, None) == ""
    crossed = bands_from(np.full((4, 3), 0.2), np.full(10, 0.9))  # a useless model: the bands still nest
    assert crossed["duplicate"] >= crossed["near-duplicate"] >= crossed["similar"]


def test_encode_records_bands_measured_on_edited_copies_and_search_prints_them(encoded, capsys, ws):
    from fext.cli import main

    _, out = encoded
    meta = json.loads((out / "metadata.json").read_text())
    bands = meta["bands"]
    assert meta["bands_sample"] == 40 and set(bands) == set(BANDS[:-1])
    assert bands["duplicate"] >= bands["near-duplicate"] >= bands["similar"]
    first = open_encoding(out).read_rows_csv()[0]["path"]
    assert main(["--workspace", str(ws.root), "search", str(out), "--query", first, "-k", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "meaning", "path"]
    rows = [line.split() for line in lines[1:]]
    assert rows[0][2] == "duplicate" and rows[0][3] == first  # the image itself
    assert all(band_of(float(r[1]), bands) == r[2] for r in rows)
