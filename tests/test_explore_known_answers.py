"""Known answers for `fext explore`: planted copies are grouped and planted junk ranks on top, whatever the model.

The collection is textured generated "photos" plus one planted copy or junk image of each kind,
encoded with an *untrained* (seeded) checkpoint: what is found here is found by the file hashes,
the perceptual hash and the image statistics, not by a model that happened to learn.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, make_checkpoint, tiny_config
from PIL import Image, ImageDraw, ImageEnhance

from fext.explore import choose_threshold, explore
from fext.explore.duplicates import EQUAL_SIMILARITY, HASH_DISTANCE
from fext.explore.outliers import SIGNALS, unusualness

CPU = tiny_config()
PHOTOS = 40
JUNK = ("noise", "solid", "text", "stripes", "gray_half")
DATA_TAG = '<script type="application/json" id="atlas-data">'


def photo(rng: np.random.Generator, height: int = 96, width: int = 128) -> np.ndarray:
    """A photo-like uint8 (H, W, 3) picture: coloured blobs, a smooth texture and a little grain."""
    base = blob_image(rng, height, width).astype(np.float32)
    coarse = rng.normal(0, 12, (height // 8, width // 8, 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse[..., 0]).resize((width, height), Image.Resampling.BICUBIC))[..., None]
    return np.clip(base + texture + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


def junk(kind: str, rng: np.random.Generator, source: np.ndarray) -> Image.Image:
    h, w = source.shape[:2]
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind == "solid":
        return Image.new("RGB", (w, h), (200, 40, 90))
    if kind == "text":
        page = Image.new("RGB", (w, h), (250, 250, 250))
        draw = ImageDraw.Draw(page)
        for y in range(4, h - 10, 11):
            draw.text((3, y), "the quick brown fox jumps", fill=(10, 10, 10))
        return page
    if kind == "stripes":
        band = (np.arange(h) // 6) % 2
        return Image.fromarray(np.where(band[:, None, None] == 1, 230, 30).repeat(w, 1).repeat(3, 2).astype(np.uint8))
    damaged = source.copy()
    damaged[:, w // 2:] = 128
    return Image.fromarray(damaged)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 photos, a byte-identical, a JPEG (quality 40), a 60 % resized, a brightness +20 % and a mirrored
    copy of five of them, and one junk image of each kind of ``JUNK``, encoded with an untrained checkpoint."""
    from fext.encoding import encode_folder

    root = tmp_path_factory.mktemp("known")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    photos = [photo(rng) for _ in range(PHOTOS)]
    for i, pixels in enumerate(photos):
        Image.fromarray(pixels).save(images / f"p{i:02d}.png")
    shutil.copy(images / "p00.png", images / "copy_exact.png")
    Image.fromarray(photos[1]).save(images / "copy_jpeg.jpg", quality=40)
    Image.fromarray(photos[2]).resize((77, 58), Image.Resampling.BILINEAR).save(images / "copy_resized.png")
    ImageEnhance.Brightness(Image.fromarray(photos[3])).enhance(1.2).save(images / "copy_brighter.png")
    Image.fromarray(photos[5][:, ::-1]).save(images / "copy_mirrored.png")
    for kind in JUNK:
        junk(kind, rng, photos[4]).save(images / f"junk_{kind}.png")
    ckpt = make_checkpoint(root / "FeXT_20240101T000000")
    return encode_folder(ckpt, images, root / "out", config=CPU, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def explored(planted):
    return explore(planted, config=CPU)


def _groups(result) -> dict[tuple[str, ...], str]:
    return {tuple(sorted(result.paths[r] for r in g)): kind for g, kind in zip(result.duplicates.groups, result.duplicates.kinds)}


def test_copies_are_grouped_by_the_level_that_finds_them_and_nothing_else_is(explored):
    assert _groups(explored) == {
        ("copy_exact.png", "p00.png"): "exact",
        ("copy_jpeg.jpg", "p01.png"): "perceptual",
        ("copy_resized.png", "p02.png"): "perceptual",
        ("copy_brighter.png", "p03.png"): "perceptual",
        ("copy_mirrored.png", "p05.png"): "perceptual",
    }
    d = explored.duplicates  # each row compared with its group's first row (the copies' names sort first)
    row = {p: r for r, p in enumerate(explored.paths)}
    assert d.same_file[row["p00.png"]] and not d.same_file[row["p01.png"]]
    assert 0 < d.hash_distance[row["p01.png"]] <= HASH_DISTANCE and d.hash_distance[row["p00.png"]] == 0
    assert explored.threshold.value <= EQUAL_SIMILARITY


def test_every_junk_kind_ranks_among_the_top_outliers_with_an_untrained_model(explored):
    top = [explored.paths[r] for r in explored.outliers.ranking()[:2 * len(JUNK)]]
    assert {f"junk_{kind}.png" for kind in JUNK} <= set(top), top
    row = {p: r for r, p in enumerate(explored.paths)}
    reasons = {kind: explored.outliers.reason[row[f"junk_{kind}.png"]] for kind in JUNK}
    assert reasons["solid"] in ("entropy", "noise", "sharpness", "flat_area")  # an image signal, not the model's
    assert reasons["noise"] in ("noise", "sharpness") and explored.outliers.z["flat_area"][row["junk_gray_half.png"]] > 5
    photos = [row[f"p{i:02d}.png"] for i in range(6, PHOTOS)]
    assert np.median(explored.outliers.score[photos]) < 2


def test_outliers_csv_lists_every_component_and_duplicates_csv_the_kind(explored):
    out = explored.output
    rows = list(csv.DictReader(open(out / "outliers.csv", encoding="utf-8")))
    assert list(rows[0]) == ["rank", "path", "score", "reason"] + [c for s in SIGNALS for c in (s, f"{s}_z")]
    assert all(rows[0][name] != "" for name in SIGNALS)  # every signal measured with the images and the model
    first = rows[0]
    assert float(first["score"]) == pytest.approx(max(unusualness(s, float(first[f"{s}_z"])) for s in SIGNALS), abs=1e-4)
    assert first["reason"] in SIGNALS
    dups = list(csv.DictReader(open(out / "duplicates.csv", encoding="utf-8")))
    assert list(dups[0]) == ["group", "kind", "path", "similarity", "hash_distance", "same_file"]
    by_path = {r["path"]: r for r in dups}
    assert by_path["p00.png"]["kind"] == "exact" and by_path["p00.png"]["same_file"] == "1"
    assert by_path["p02.png"]["kind"] == "perceptual" and by_path["p02.png"]["same_file"] == "0"
    assert 0 <= int(by_path["p02.png"]["hash_distance"]) <= HASH_DISTANCE
    page = (out / "atlas.html").read_text(encoding="utf-8")
    assert "byte-identical" in page and "perceptual hash" in page
    data = json.loads(page[page.index(DATA_TAG) + len(DATA_TAG):page.index("</script>", page.index(DATA_TAG))])
    top = explored.outliers.ranking()[:3]
    assert data["why"][:3] == [explored.outliers.why(r) for r in top]  # shown under each unusual image
    assert explored.outliers.why(top[0]) in (f"{SIGNALS[first['reason']][3]}: high", f"{SIGNALS[first['reason']][3]}: low")
    assert {g["kind"] for g in data["duplicates"]} == {"exact", "perceptual"}


def test_a_collection_of_identical_files_is_one_exact_group(tmp_path):
    from fext.encoding import encode_folder

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), (255, 255, 255)).save(images / "white_0.png")
    for i in range(1, 6):
        shutil.copy(images / "white_0.png", images / f"white_{i}.png")
    emb = encode_folder(make_checkpoint(tmp_path / "FeXT_20240101T000000"), images, tmp_path / "out", config=CPU,
                        progress=False)
    result = explore(emb, config=CPU)
    assert [sorted(result.paths[r] for r in g) for g in result.duplicates.groups] == [[f"white_{i}.png" for i in range(6)]]
    assert result.duplicates.kinds == ["exact"]
    assert result.threshold.value <= EQUAL_SIMILARITY and result.threshold.distinct == 0
    assert np.all(result.outliers.score == 0)  # nothing is unusual among equals


def test_identical_white_files_are_not_distinct_images_to_the_calibration():
    """The issue's case: identical files (equal vectors) among the sample pushed the threshold to 1.0."""
    rng = np.random.default_rng(0)
    nearest = np.concatenate([np.ones(20, np.float32), rng.uniform(0.5, 0.9, 180)])
    copies = np.concatenate([np.ones((20, 3)), rng.uniform(0.95, 0.99, (180, 3))])
    t = choose_threshold(copies, nearest)
    assert t.distinct == 180 and t.value < 0.99 and t.copy_recall >= 0.95
    nearest[:20] = 0.97  # files known to be equal by their hashes, though the vectors differ a little
    known = np.arange(200) < 20
    assert choose_threshold(copies, nearest, known=known).distinct == 180
    everything_equal = choose_threshold(np.ones((5, 3)), np.ones(5))
    assert everything_equal.value <= EQUAL_SIMILARITY and everything_equal.copy_recall == 1.0

