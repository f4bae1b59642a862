"""`fext analyze`: statistics with known answers, formulas against independent computations,
every problem flag on a constructed dataset, the output files and the CLI."""

from __future__ import annotations

import csv
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from fext.analysis import analyze
from fext.analysis.flags import ISSUES, hamming_nearest
from fext.analysis.stats import (
    STAT_COLUMNS, gaussian_blur3, histogram_stats, laplacian, luma, measure_pixels, noise_std,
)
from fext.cli import main
from fext.config import Config, with_overrides
from fext.data import split_images
from fext.data.discovery import split_score
from fext.errors import FeXTError
from fext.workspace import Workspace

SEED_COLUMNS = ["name", "height", "width", "mean", "median", "std", "min", "max", "pixel_range", "noise_std",
                "noise_ratio"]
GAUSS = np.outer([1, 2, 1], [1, 2, 1]) / 16
LAPLACE = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def gray_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2).astype(np.uint8), "RGB")


# Statistics with known answers

def test_constant_image() -> None:
    r = measure_pixels("c", gray_rgb(np.full((40, 50), 100, np.uint8)))
    assert (r.height, r.width, r.mean, r.median, r.std, r.min, r.max, r.pixel_range) == (40, 50, 100, 100, 0, 100, 100, 0)
    assert r.noise_std == 0 and r.noise_ratio == 0 and r.entropy == 0 and r.laplacian_var == 0
    assert r.channel_diff == 0


def test_checkerboard() -> None:
    board = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    r = measure_pixels("b", gray_rgb(board))
    assert (r.mean, r.median, r.std, r.min, r.max, r.pixel_range) == (127.5, 127.5, 127.5, 0, 255, 255)
    # Every 3x3 Gaussian sum is 8 * 255 / 16 = 127.5 -> 128 (reflect-101 keeps the pattern at the
    # borders): noise is +127 or -128, std 127.5.
    assert np.all(gaussian_blur3(board) == 128)
    assert r.noise_std == pytest.approx(127.5, rel=1e-6)
    assert r.noise_ratio == pytest.approx(1.0, rel=1e-6)
    assert r.laplacian_var == pytest.approx(1020.0**2, rel=1e-6)
    assert r.entropy == pytest.approx(1.0)


def test_gradient() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # (4, 256): each level once per row
    r = measure_pixels("g", gray_rgb(ramp))
    assert (r.mean, r.median, r.min, r.max) == (127.5, 127.5, 0, 255)
    assert r.std == pytest.approx(np.sqrt((256**2 - 1) / 12))
    assert r.entropy == pytest.approx(8.0)
    # A ramp is its own blur except at column 0: (1 + 0 + 1) / 4 = 0.5, rounded up to 1.
    blur = gaussian_blur3(ramp)
    assert np.array_equal(blur[:, 1:], ramp[:, 1:]) and np.all(blur[:, 0] == 1)
    assert r.noise_std == pytest.approx(np.sqrt(255) / 256, rel=1e-5)
    assert r.laplacian_var == pytest.approx(8 / 256, rel=1e-5)  # +2 and -2 at the two border columns


# Formulas against independent computations

def test_luma_rounds_exactly() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pixels[0, :3] = [(0, 0, 250), (0, 4, 168), (0, 8, 86)]  # exact .5 ties: 28.5, 21.5, 14.5
    expected = np.zeros(pixels.shape[:2], np.uint8)
    for (i, j), _ in np.ndenumerate(expected):
        r, g, b = (int(v) for v in pixels[i, j])
        value = Fraction(299, 1000) * r + Fraction(587, 1000) * g + Fraction(114, 1000) * b
        expected[i, j] = int(value + Fraction(1, 2))  # round half up
    assert np.array_equal(luma(pixels), expected)
    assert list(luma(pixels)[0, :3]) == [29, 22, 15]


@pytest.mark.parametrize("shape", [(23, 17), (1, 9), (9, 1), (2, 2)])
def test_blur_noise_and_laplacian_match_scipy(shape: tuple[int, int]) -> None:
    gray = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    # scipy's "mirror" mode is reflect-101 (dcb|abcd|cba); k/16 sums are exact in float64.
    blur = np.floor(ndi.convolve(gray.astype(np.float64), GAUSS, mode="mirror") + 0.5).astype(np.uint8)
    assert np.array_equal(gaussian_blur3(gray), blur)
    noise = gray.astype(np.float64) - blur
    assert noise_std(gray) == pytest.approx(noise.std(), rel=1e-5, abs=1e-6)
    lap = ndi.convolve(gray.astype(np.float64), LAPLACE, mode="mirror")
    assert np.array_equal(laplacian(gray), lap)
    r = measure_pixels("x", gray_rgb(gray))
    assert r.laplacian_var == pytest.approx(lap.var(), rel=1e-5, abs=1e-6)
    assert r.noise_ratio == pytest.approx(noise.std() / (gray.std() + 1e-9), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("shape", [(31, 17), (10, 10)])  # odd and even pixel counts
def test_statistics_match_numpy(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
    r = measure_pixels("x", Image.fromarray(pixels))
    gray = luma(pixels).astype(np.float64)
    assert (r.mean, r.std) == (pytest.approx(gray.mean()), pytest.approx(gray.std()))
    assert (r.median, r.min, r.max) == (np.median(gray), gray.min(), gray.max())
    counts = np.bincount(luma(pixels).ravel()) / gray.size
    counts = counts[counts > 0]
    assert histogram_stats(np.bincount(luma(pixels).ravel(), minlength=256))["entropy"] == pytest.approx(
        -(counts * np.log2(counts)).sum())


def test_channel_difference_bound_and_exact() -> None:
    rng = np.random.default_rng(4)
    colour = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exact = max(np.abs(colour[..., 0].astype(int) - colour[..., 1]).mean(),
                np.abs(colour[..., 1].astype(int) - colour[..., 2]).mean())
    assert measure_pixels("c", Image.fromarray(colour)).channel_diff == pytest.approx(exact)
    # With a tolerance the histogram bound may stand in, but never above the exact value.
    bounded = measure_pixels("c", Image.fromarray(colour), gray_tolerance=2.0).channel_diff
    assert 2.0 < bounded <= exact + 1e-9
    almost_gray = np.repeat(colour[..., :1], 3, axis=2)
    almost_gray[::2, ::2, 2] ^= 1  # a quarter of the pixels differ by 1 in blue
    r = measure_pixels("g", Image.fromarray(almost_gray), gray_tolerance=2.0)
    assert r.channel_diff == pytest.approx(np.abs(almost_gray[..., 1].astype(int) - almost_gray[..., 2]).mean())
    assert measure_pixels("L", Image.fromarray(almost_gray), stored_as_colour=False).channel_diff is None


def test_hamming_nearest_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    import fext.analysis.flags as flags

    monkeypatch.setattr(flags, "_BLOCK_ELEMENTS", 37)  # many small blocks
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**63, 60, dtype=np.uint64)
    hashes[10] = hashes[3] ^ np.uint64(0b1011)  # distance 3
    labels = np.arange(60)
    labels[20] = labels[7]  # "exact duplicates": skipped
    idx, dist = hamming_nearest(hashes, hashes, (labels, labels), earlier_only=True)
    for q in range(60):
        cands = [(bin(int(hashes[q]) ^ int(hashes[r])).count("1"), r) for r in range(q) if labels[r] != labels[q]]
        if not cands:
            assert dist[q] == 255
            continue
        best = min(c[0] for c in cands)
        assert dist[q] == best and bin(int(hashes[q]) ^ int(hashes[idx[q]])).count("1") == best
    assert (idx[10], dist[10]) == (3, 3)


# A constructed dataset: clean images and one case per problem

VALIDATION_SIZE = 0.3
SPLIT_SEED = 76


def textured(seed: int, h: int = 80, w: int = 96, lo: float = 40, hi: float = 215, noise: float = 12,
             colour: bool = True) -> np.ndarray:
    """A smooth random pattern in [lo, hi] plus pixel noise: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (5, 6, 3 if colour else 1)).astype(np.uint8)
    bands = [np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BICUBIC), np.float64) / 255
             for c in range(coarse.shape[2])]
    pattern = np.stack(bands, axis=-1)
    pixels = lo + (hi - lo) * pattern + rng.normal(0, noise, (h, w, 1 if not colour else 3))
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=2) if not colour else pixels


def _names_on_sides() -> tuple[str, str, str, str]:
    """Two names per side of the split (VALIDATION_SIZE, SPLIT_SEED), for pairs that straddle it."""
    val = [f"twin_{k}.png" for k in range(200) if split_score(f"twin_{k}.png", SPLIT_SEED) < VALIDATION_SIZE]
    train = [f"twin_{k}.png" for k in range(200) if split_score(f"twin_{k}.png", SPLIT_SEED) >= VALIDATION_SIZE]
    return train[0], val[0], train[1], val[1]


def _save(folder: Path, name: str, pixels: np.ndarray, mode: str = "RGB") -> None:
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode != "RGB" else image).save(folder / name)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the dataset, analyze it once in-process, and return what the tests need."""
    root = tmp_path_factory.mktemp("analysis")
    ws = Workspace(root / "ws")
    data = ws.dataset
    data.mkdir(parents=True)
    (data / "sub").mkdir()
    clean = ["clean_0.png", "clean_1.png", "clean_2.png", "clean_3.png", "sub/clean_4.png", "clean_5.jpg"]
    for k, name in enumerate(clean):
        _save(data, name, textured(100 + k))
    _save(data, "z_exact_copy.png", textured(101))  # same pixels as clean_1.png
    _save(data, "z_near_copy.png", np.clip(textured(102).astype(int) + 4, 0, 255).astype(np.uint8))
    train_a, val_a, train_b, val_b = _names_on_sides()
    _save(data, train_a, textured(200))
    _save(data, val_a, textured(200))  # exact duplicate across the split
    _save(data, train_b, textured(201))
    _save(data, val_b, np.clip(textured(201).astype(int) - 3, 0, 255).astype(np.uint8))  # near, across the split
    _save(data, "dark.png", textured(300, lo=0, hi=40))
    _save(data, "bright.png", textured(301, lo=220, hi=255))
    blocks = np.zeros((80, 96, 3), np.uint8)
    blocks[:40, :48], blocks[:40, 48:], blocks[40:, :48], blocks[40:, 48:] = (200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 90, 60)
    _save(data, "low_entropy.png", blocks)
    _save(data, "blurry.png", textured(302, noise=0))
    _save(data, "small.png", textured(303, h=40, w=48))
    _save(data, "wide.png", textured(304, h=70, w=240))
    _save(data, "gray_as_rgb.png", textured(305, colour=False))
    _save(data, "gray_L.png", textured(306, colour=False), mode="L")
    (data / "broken.jpg").write_bytes(b"this is not an image")
    jpeg = data / "truncated.jpg"
    Image.fromarray(textured(307)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    (data / "notes.txt").write_text("not an image file: ignored")

    cfg = with_overrides(Config(), {"device.NUM_PROCESSORS": 0, "dataset.VALIDATION_SIZE": VALIDATION_SIZE,
                                    "dataset.SPLIT_SEED": SPLIT_SEED})
    out = analyze(cfg, ws, progress=False)
    with open(out / "issues.csv", newline="", encoding="utf-8") as f:
        issues = list(csv.DictReader(f))
    flagged: dict[str, dict[str, str]] = {name: {} for name in ISSUES}
    for row in issues:
        flagged[row["issue"]][row["path"]] = row["value"]
    return {"out": out, "ws": ws, "cfg": cfg, "clean": clean, "flagged": flagged, "issues": issues,
            "twins": (train_a, val_a, train_b, val_b)}


def test_outputs_written(analysed: dict) -> None:
    names = {p.name for p in analysed["out"].iterdir()}
    assert {"image_statistics.csv", "issues.csv", "summary.json", "pixel_intensity_histogram.png",
            "statistics_distributions.png", "report.html"} <= names
    for png in ("pixel_intensity_histogram.png", "statistics_distributions.png"):
        with Image.open(analysed["out"] / png) as im:
            assert im.size[0] > 400


def test_statistics_csv_columns_and_rows(analysed: dict) -> None:
    with open(analysed["out"] / "image_statistics.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = {row[0]: dict(zip(header, row)) for row in reader}
    assert header == SEED_COLUMNS == list(STAT_COLUMNS)
    assert len(rows) == 20 and "broken.jpg" not in rows and "sub/clean_4.png" in rows
    small = rows["small.png"]
    assert (small["height"], small["width"]) == ("40", "48")
    gray = luma(textured(303, h=40, w=48)).astype(np.float64)
    assert float(small["mean"]) == pytest.approx(gray.mean(), abs=1e-5)
    assert float(small["std"]) == pytest.approx(gray.std(), abs=1e-5)
    assert int(small["pixel_range"]) == int(small["max"]) - int(small["min"])
    assert float(small["noise_ratio"]) == pytest.approx(float(small["noise_std"]) / float(small["std"]), rel=1e-4)


@pytest.mark.parametrize("issue, path", [
    ("exact_duplicate", "z_exact_copy.png"),
    ("near_duplicate", "z_near_copy.png"),
    ("dark", "dark.png"),
    ("bright", "bright.png"),
    ("low_entropy", "low_entropy.png"),
    ("blurry", "blurry.png"),
    ("small", "small.png"),
    ("aspect_ratio", "wide.png"),
    ("grayscale_as_rgb", "gray_as_rgb.png"),
    ("unreadable", "broken.jpg"),
    ("unreadable", "truncated.jpg"),
])
def test_each_flag_triggered(analysed: dict, issue: str, path: str) -> None:
    assert path in analysed["flagged"][issue]


def test_flag_values(analysed: dict) -> None:
    f = analysed["flagged"]
    assert f["exact_duplicate"]["z_exact_copy.png"] == "clean_1.png"
    assert re.fullmatch(r"clean_2\.png \(distance [0-6]\)", f["near_duplicate"]["z_near_copy.png"])
    assert f["unreadable"]["broken.jpg"] == "not an image"
    assert f["small"]["small.png"] == "48x40"
    assert float(f["aspect_ratio"]["wide.png"]) == pytest.approx(240 / 70, abs=0.01)
    assert float(f["grayscale_as_rgb"]["gray_as_rgb.png"]) == 0.0
    assert float(f["dark"]["dark.png"]) < 30 < 225 < float(f["bright"]["bright.png"])


def test_clean_images_not_flagged(analysed: dict) -> None:
    issues_of: dict[str, set[str]] = {}
    for row in analysed["issues"]:
        issues_of.setdefault(row["path"], set()).add(row["issue"])
    for name in analysed["clean"]:
        assert issues_of.get(name, set()) <= {"split_duplicate"}, name
    # Originals of duplicate pairs are not flagged as duplicates themselves, only the later copy.
    for issue in ("exact_duplicate", "near_duplicate"):
        assert not {"clean_1.png", "clean_2.png"} & set(analysed["flagged"][issue])
    # A file stored as gray (mode L) is not "grayscale stored as RGB".
    assert "gray_L.png" not in issues_of


def test_duplicates_across_the_split(analysed: dict) -> None:
    train_a, val_a, train_b, val_b = analysed["twins"]
    split = analysed["flagged"]["split_duplicate"]
    assert split[val_a] == f"{train_a} (exact)"
    assert re.fullmatch(re.escape(train_b) + r" \(distance [0-6]\)", split[val_b])
    # Exactly the validation members of all duplicate pairs are flagged.
    data = analysed["ws"].dataset
    pairs = [("clean_1.png", "z_exact_copy.png"), ("clean_2.png", "z_near_copy.png"), (train_a, val_a), (train_b, val_b)]
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix != ".txt")
    train, validation = split_images(files, data, VALIDATION_SIZE, SPLIT_SEED)
    train_names = {p.relative_to(data).as_posix() for p in train}
    expected = {b if a in train_names else a for a, b in pairs if (a in train_names) != (b in train_names)}
    assert set(split) == expected


def test_summary_counts_and_split(analysed: dict) -> None:
    summary = json.loads((analysed["out"] / "summary.json").read_text())
    assert (summary["images"], summary["readable"], summary["unreadable"]) == (22, 20, 2)
    data = analysed["ws"].dataset
    files = sorted((p for p in data.rglob("*") if p.is_file() and p.suffix != ".txt"),
                   key=lambda p: p.relative_to(data).as_posix())
    train, validation = split_images(files, data, VALIDATION_SIZE, SPLIT_SEED)
    assert (summary["split"]["train"], summary["split"]["validation"]) == (len(train), len(validation))
    counts = {name: len(v) for name, v in analysed["flagged"].items()}
    assert summary["issues"] == counts and list(summary["issues"]) == list(ISSUES)
    assert summary["thresholds"]["MIN_SIDE"] == 64


def test_report_is_self_contained(analysed: dict) -> None:
    page = (analysed["out"] / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert page.count("data:image/png;base64,") == 2  # histogram and distributions
    assert page.count("data:image/jpeg;base64,") >= 9  # one thumbnail per flagged readable image
    for name in ("Overview", "Problems found", "Pixel intensity histogram", "Distributions", "blurry: 2 images",
                 "truncated or corrupt image data"):
        assert name in page


def test_thresholds_are_configurable(analysed: dict, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.dataset.mkdir(parents=True)
    _save(ws.dataset, "a.png", textured(1))
    _save(ws.dataset, "b.png", textured(2))
    cfg = with_overrides(analysed["cfg"], {"analysis.DARK_MEAN": 255.0, "analysis.MIN_SIDE": 90})
    analyze(cfg, ws, progress=False)
    rows = list(csv.DictReader(open(ws.validation_dataset / "issues.csv", encoding="utf-8")))
    assert {(r["path"], r["issue"]) for r in rows} == {("a.png", "dark"), ("b.png", "dark"), ("a.png", "small"),
                                                         ("b.png", "small")}


def test_all_unreadable_is_an_error_with_reasons(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.dataset.mkdir(parents=True)
    (ws.dataset / "empty.png").write_bytes(b"")
    with pytest.raises(FeXTError, match="None of the 1 image files"):
        analyze(Config(), ws, progress=False)
    assert "empty.png,unreadable,empty file" in (ws.validation_dataset / "issues.csv").read_text()


# The command line

def test_cli_analyze_with_worker_processes(tmp_path: Path, capsys: pytest.CaptureFixture, ws: Workspace) -> None:
    ws = ws.root
    data = ws / "resources" / "dataset"
    for k in range(4):
        _save(data, f"img_{k}.png", textured(k))
    (data / "bad.png").write_bytes(b"junk")
    assert main(["--workspace", str(ws), "--set", "device.NUM_PROCESSORS=2", "analyze"]) == 0
    stdout = capsys.readouterr().out
    assert "Analyzed 5 image files" in stdout and re.search(r"unreadable\s+1", stdout)
    out = ws / "resources" / "validation" / "dataset"
    with open(out / "image_statistics.csv", encoding="utf-8") as f:
        assert [r["name"] for r in csv.DictReader(f)] == [f"img_{k}.png" for k in range(4)]
    assert (out / "report.html").stat().st_size > 0


def test_cli_empty_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, ws: Workspace) -> None:
    ws = ws.root
    assert main(["--workspace", str(ws), "analyze"]) == 1
    stderr = capsys.readouterr().err
    assert "No image found" in stderr and "Traceback" not in stderr


def test_cli_missing_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture, ws: Workspace) -> None:
    assert main(["--workspace", str(tmp_path / "ws"), "analyze", "--dataset", str(tmp_path / "missing")]) == 1
    assert "error: Image folder not found" in capsys.readouterr().err
