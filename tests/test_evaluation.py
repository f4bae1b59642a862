"""`fext evaluate`: the PCA baseline, metrics files, figures, report, summary CSV, CLI and bad input.

Checkpoints are fabricated by conftest's make_checkpoint (a freshly initialised small model at 64 px,
written by save_checkpoint with a history) on a dozen generated images, so no training is needed.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_checkpoint, make_images
from fext import metrics
from fext.cli import main
from fext.config import Config, config_to_dict, with_overrides
from fext.data import load_image, select_images, to_float
from fext.errors import FeXTError
from fext.evaluation import SUMMARY_COLUMNS, evaluate_checkpoints, fit_pca
from fext.model import FeXTAutoEncoder
from fext.html_report import html_image, html_page, html_table
from fext.workspace import Workspace

FILES = ["metrics.json", "per_image_metrics.csv", "report.html", "train_reconstructions.png",
         "validation_reconstructions.png", "worst_reconstructions.png", "latent_pca.png", "training_curves.png"]
OVERRIDES = {"model.PRESET": "small", "model.IMG_SIZE": 64, "device.DEVICE": "CPU", "device.NUM_PROCESSORS": 0,
             "dataset.VALIDATION_SIZE": 0.25, "training.BATCH_SIZE": 8}


class _Images(HTMLParser):
    """Collects <img src>, and every attribute value that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.fetching: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if tag == "img" and key == "src":
                self.images.append(value or "")
            elif key in ("src", "href") and tag != "a":
                self.fetching.append(value or "")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace with two good checkpoints and a broken one, after `evaluate` of the good ones."""
    ws = Workspace(tmp_path_factory.mktemp("ws")).ensure()
    make_images(ws.dataset)
    cfg = with_overrides(Config(), OVERRIDES)
    ckpts = [make_checkpoint(ws.checkpoints / "FeXT_20240101T000000", cfg, ws.dataset, seed=0, epochs=3),
             make_checkpoint(ws.checkpoints / "FeXT_20240102T000000", cfg, ws.dataset, seed=1, epochs=3)]
    (ws.checkpoints / "FeXT_20240103T000000").mkdir()  # a run killed before its first save
    records = _Records()
    logger = logging.getLogger("fext")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        outs = evaluate_checkpoints(ckpts, cfg, ws, images=6, progress=False)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    summary = (ws.validation_checkpoints / "checkpoints_summary.csv").read_text(encoding="utf-8")
    return {"ws": ws, "cfg": cfg, "ckpts": ckpts, "outs": outs, "log": records.messages, "summary": summary}


def test_pca_reconstructs_images_spanning_fewer_dimensions_exactly():
    g = torch.Generator().manual_seed(0)
    d = 3 * 32 * 32
    mean = 0.25 + 0.5 * torch.rand(d, generator=g)
    basis = torch.linalg.qr(torch.randn(d, 3, generator=g))[0].T  # 3 orthonormal directions
    coefficients = torch.randn(20, 3, generator=g)
    images = (mean + 0.1 * coefficients @ basis).clamp(0, 1)
    pca = fit_pca(images[:10], components=8)
    assert pca.k == 3 and pca.requested == 8  # the images span 3 dimensions around their mean
    assert pca.explained_variance_ratio == pytest.approx(1.0, abs=1e-9)
    unseen = images[10:].view(10, 3, 32, 32)
    assert (pca.reconstruct(unseen) - unseen).abs().max() < 1e-4


def test_pca_matches_svd_and_improves_with_components():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 3 * 16 * 16, generator=g)
    xc = (x - x.mean(0)).double()
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    pca = fit_pca(x, components=5)
    # Same subspace as the reference SVD: the projectors agree.
    ours = pca.components.double().T @ pca.components.double()
    ref = vt[:5].T @ vt[:5]
    assert (ours - ref).abs().max() < 1e-4
    assert pca.explained_variance_ratio == pytest.approx(float((s[:5] ** 2).sum() / (s**2).sum()), rel=1e-6)
    errors = [(fit_pca(x, k).reconstruct(x.view(30, 3, 16, 16)) - x.view(30, 3, 16, 16)).pow(2).mean() for k in (2, 8, 29)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8


def test_report_helpers_escape_text_and_embed_only_data_uris():
    page = html_page("<b>title</b>", [("a & b", html_table(["<th>"], [["<script>alert(1)</script>", 0.123456]]))])
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;title" in page
    assert "0.1235" in page
    with pytest.raises(ValueError):
        html_image("https://example.com/figure.png")


def test_evaluate_writes_every_output(evaluated):
    assert [p.name for p in evaluated["outs"]] == [c.name for c in evaluated["ckpts"]]
    for out in evaluated["outs"]:
        for name in FILES:
            assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{out.name}/{name}"
        for png in out.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 12 images at VALIDATION_SIZE 0.25: fewer validation images than the 6 asked for is said, not an error.
    assert any("available" in m and "instead of 6" in m for m in evaluated["log"])


def test_metrics_json_and_per_image_csv_agree(evaluated):
    ws, cfg = evaluated["ws"], evaluated["cfg"]
    out = evaluated["outs"][0]
    result = json.loads((out / "metrics.json").read_text())
    train, val = select_images(cfg, ws.dataset)
    assert result["splits"]["train"]["evaluated"] == len(train) and result["splits"]["validation"]["evaluated"] == len(val)
    assert result["latent_dim"] == 128 and result["image_size"] == 64
    rows = list(csv.DictReader((out / "per_image_metrics.csv").open()))
    assert len(rows) == len(train) + len(val)
    assert {r["split"] for r in rows} == {"train", "validation"}
    for split in ("train", "validation"):
        for metric in ("mae", "cosine", "psnr", "ssim"):
            values = [float(r[metric]) for r in rows if r["split"] == split]
            stats = result["model"][split][metric]
            assert stats["mean"] == pytest.approx(np.mean(values), rel=1e-4)
            assert stats["std"] == pytest.approx(np.std(values), rel=1e-3, abs=1e-6)
            assert stats["min"] <= stats["median"] <= stats["max"]
    # The baseline: as many components as the latent, capped by the n - 1 dimensions of n training images.
    base = result["baseline_pca"]
    assert base["components"] == min(128, len(train) - 1) and base["evaluated_on"] == "validation"
    pca_psnr = [float(r["pca_psnr"]) for r in rows if r["split"] == "validation"]
    assert base["validation"]["psnr"]["mean"] == pytest.approx(np.mean(pca_psnr), rel=1e-4)
    assert result["model_beats_pca"]["psnr"] == (result["model"]["validation"]["psnr"]["mean"] > np.mean(pca_psnr))
    # One image recomputed from scratch: decode, run the model, score.
    row = next(r for r in rows if r["split"] == "validation")
    model = FeXTAutoEncoder.from_pretrained(evaluated["ckpts"][0]).eval()
    x = to_float(torch.from_numpy(load_image(Path(row["path"]), 64))[None])
    with torch.inference_mode():
        recon = model(x)["reconstruction"]
    assert float(row["psnr"]) == pytest.approx(metrics.psnr(x, recon).item(), abs=1e-3)
    assert float(row["ssim"]) == pytest.approx(metrics.ssim(x, recon).item(), abs=1e-4)


def test_report_is_self_contained(evaluated):
    out = evaluated["outs"][0]
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    parser.close()
    assert len(parser.images) == len(list(out.glob("*.png")))
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.fetching == []
    assert "http://" not in page and "https://" not in page
    for text in ("PCA baseline", "Training curves", "Worst reconstructions", "training.EPOCHS", "100 dB"):
        assert text in page


def test_summary_has_a_row_per_checkpoint_even_broken(evaluated):
    rows = list(csv.DictReader(evaluated["summary"].splitlines()))
    assert list(rows[0]) == SUMMARY_COLUMNS
    by_name = {r["checkpoint_name"]: r for r in rows}
    assert set(by_name) == {"FeXT_20240101T000000", "FeXT_20240102T000000", "FeXT_20240103T000000"}
    assert "no model.safetensors" in by_name["FeXT_20240103T000000"]["status"]
    good = by_name["FeXT_20240101T000000"]
    cfg = evaluated["cfg"]
    assert good["status"] == "ok" and good["seed"] == str(cfg.SEED) and good["split_seed"] == str(cfg.dataset.SPLIT_SEED)
    assert good["precision_bits"] == "32" and good["epochs"] == "3" and good["batch_size"] == "8"
    assert good["preset"] == "small" and good["image_size"] == "64"
    params = sum(p.numel() for p in FeXTAutoEncoder.from_preset("small", img_size=64).parameters())
    assert int(good["parameters"]) == params
    assert float(good["last_train_loss"]) == pytest.approx(0.5 / 3, rel=1e-5) and float(good["eval_validation_psnr"]) > 0


def test_comparison_page_of_several_checkpoints(evaluated):
    folder = evaluated["ws"].validation_checkpoints
    page = (folder / "comparison.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    for ckpt in evaluated["ckpts"]:
        assert ckpt.name in page
    assert (folder / "comparison.png").is_file()


def test_cli_evaluate(evaluated, capsys):
    ws = evaluated["ws"]
    name = evaluated["ckpts"][1].name
    ws.config_file.write_text(json.dumps(config_to_dict(evaluated["cfg"])))
    out = ws.validation_checkpoints / name
    for f in out.iterdir():
        f.unlink()
    assert main(["--workspace", str(ws.root), "--quiet", "evaluate", name, "--images", "2"]) == 0
    assert f"Report: {out / 'report.html'}" in capsys.readouterr().out
    for f in FILES:
        assert (out / f).is_file(), f
    assert (ws.validation_checkpoints / "checkpoints_summary.csv").is_file()


def test_moved_images_point_to_dataset_and_dataset_works(evaluated, tmp_path, image_folder, capsys):
    ws, cfg = evaluated["ws"], evaluated["cfg"]
    moved = make_checkpoint(ws.checkpoints / "FeXT_20240104T000000", cfg, tmp_path / "gone", epochs=3)
    with pytest.raises(FeXTError, match="--dataset"):
        evaluate_checkpoints([moved], cfg, ws, progress=False)
    assert main(["--workspace", str(ws.root), "evaluate", moved.name]) == 1
    assert "--dataset" in capsys.readouterr().err
    # --dataset evaluates every image of the folder as validation; a broken checkpoint beside it is
    # reported at the end without stopping the good one.
    broken = ws.checkpoints / "FeXT_20240103T000000"
    with pytest.raises(FeXTError, match="1 of 2 checkpoints could not be evaluated"):
        evaluate_checkpoints([moved, broken], cfg, ws, dataset=image_folder, images=3, progress=False)
    result = json.loads((ws.validation_checkpoints / moved.name / "metrics.json").read_text())
    assert result["dataset"]["source"] == "--dataset" and result["splits"]["validation"]["evaluated"] == 12
    assert result["splits"]["train"] is None and result["model"]["train"] is None
    assert "fitted on the same validation images" in result["baseline_pca"]["note"]
    assert not (ws.validation_checkpoints / moved.name / "train_reconstructions.png").exists()
    names = [r["checkpoint_name"] for r in csv.DictReader((ws.validation_checkpoints / "checkpoints_summary.csv").open())]
    assert moved.name in names and broken.name in names


def test_bad_input_is_one_clear_error(evaluated, tmp_path):
    ws, cfg = evaluated["ws"], evaluated["cfg"]
    broken = ws.checkpoints / "FeXT_20240103T000000"
    with pytest.raises(FeXTError, match="no model.safetensors"):
        evaluate_checkpoints([broken], cfg, ws, progress=False)
    with pytest.raises(FeXTError, match="--images must be at least 1"):
        evaluate_checkpoints(evaluated["ckpts"][:1], cfg, ws, images=0, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeXTError, match="no image found"):
        evaluate_checkpoints(evaluated["ckpts"][:1], cfg, ws, dataset=empty, progress=False)
    with pytest.raises(FeXTError, match="no such folder"):
        evaluate_checkpoints(evaluated["ckpts"][:1], cfg, ws, dataset=tmp_path / "missing", progress=False)
