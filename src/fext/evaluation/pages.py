"""The evaluation's HTML pages: ``report.html`` per checkpoint and ``comparison.html`` across checkpoints.

Both are self-contained (see :mod:`fext.html_report`): figures are read back from the PNG files the
evaluation saved and embedded as data URIs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fext.evaluation import scorecard
from fext.metrics import PSNR_CAP
from fext.html_report import Raw, html_image, html_list, html_page, html_paragraph, html_table, png_file_to_data_uri

METRIC_LABELS = {"mae": "MAE", "psnr": "PSNR (dB)", "ssim": "SSIM", "cosine": "cosine"}
HIGHER_IS_BETTER = {"mae": False, "psnr": True, "ssim": True, "cosine": True}

METRIC_DEFINITIONS = [
    "MAE: mean absolute difference between original and reconstruction over all pixels and channels, "
    "pixel values in [0, 1] (the training loss); lower is better.",
    "PSNR: 10·log10(1 / MSE) in dB for a data range of 1; higher is better. Identical images "
    f"(MSE 0, PSNR infinite) are reported as {PSNR_CAP:g} dB.",
    "SSIM: structural similarity with an 11×11 Gaussian window (σ 1.5, K1 0.01, K2 0.03), computed per "
    "channel and averaged, as scikit-image structural_similarity(gaussian_weights=True, sigma=1.5, "
    "use_sample_covariance=True, data_range=1); 1 is a perfect reconstruction.",
    "cosine: cosine similarity of the flattened original and reconstruction (the seed's metric); 1 is perfect.",
    "PCA baseline: principal component analysis fitted on the training images flattened at the model's "
    "image size, with as many components as the model's latent has numbers (at most the number of fitted "
    "images minus one). It is the best linear compressor of that size: an autoencoder that does not beat "
    "it on held-out images gains nothing from being non-linear.",
]


def _mean_std(stats: dict[str, Any] | None, metric: str) -> str:
    s = (stats or {}).get(metric)
    if not s:
        return "-"
    digits = 2 if metric == "psnr" else 4
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows.extend(_flatten(v, f"{prefix}{k}."))
        else:
            rows.append((f"{prefix}{k}", v if not isinstance(v, (list, tuple)) else ", ".join(map(str, v))))
    return rows


def verdict(metrics: dict[str, Any]) -> list[Raw]:
    """Sentences saying whether the autoencoder beats the PCA baseline, metric by metric."""
    base = metrics.get("baseline_pca") or {}
    split = base.get("evaluated_on")
    model_stats = (metrics.get("model") or {}).get(split or "", None)
    base_stats = base.get(split or "")
    if not model_stats or not base_stats:
        return [html_paragraph("No PCA baseline could be computed for this evaluation.", "note")]
    wins, losses = [], []
    for m, label in METRIC_LABELS.items():
        a, b = model_stats[m]["mean"], base_stats[m]["mean"]
        better = a > b if HIGHER_IS_BETTER[m] else a < b
        (wins if better else losses).append(f"{label} {a:.4g} vs {b:.4g}")
    k = base.get("components")
    head = f"On the {split} images, against PCA with {k} components"
    if not losses:
        text, cls = f"{head}, the autoencoder wins on every metric: " + "; ".join(wins) + ".", "good"
    elif not wins:
        text, cls = (f"{head}, the autoencoder loses on every metric: " + "; ".join(losses)
                     + ". It does not yet beat the best linear compressor of the same size: train longer or check the data."), "bad"
    else:
        text, cls = f"{head}, the autoencoder wins on " + "; ".join(wins) + ", and loses on " + "; ".join(losses) + ".", ""
    out = [html_paragraph(text, cls)]
    if base.get("note"):
        out.append(html_paragraph(base["note"], "note"))
    return out


def metrics_table(metrics: dict[str, Any]) -> Raw:
    """Mean ± std of every metric: the autoencoder on each split, then the PCA baseline."""
    headers = ["", "images", *METRIC_LABELS.values()]
    rows = []
    splits = metrics.get("splits") or {}
    for split, stats in (metrics.get("model") or {}).items():
        if stats:
            rows.append([f"autoencoder, {split}", (splits.get(split) or {}).get("evaluated"),
                         *[_mean_std(stats, m) for m in METRIC_LABELS]])
    base = metrics.get("baseline_pca") or {}
    split = base.get("evaluated_on")
    if split and base.get(split):
        rows.append([f"PCA baseline ({base['components']} components), {split}",
                     (splits.get(split) or {}).get("evaluated"), *[_mean_std(base[split], m) for m in METRIC_LABELS]])
    return html_table(headers, rows)


def _figure(out_dir: Path, name: str, caption: str) -> Raw | None:
    path = out_dir / name
    return html_image(png_file_to_data_uri(path), caption, alt=name) if path.is_file() else None


def checkpoint_report(out_dir: Path, metrics: dict[str, Any], checkpoint_config: dict[str, Any]) -> str:
    """The ``report.html`` page of one evaluated checkpoint (figures read from ``out_dir``)."""
    splits = metrics.get("splits") or {}
    facts = [
        ["checkpoint", metrics["checkpoint"]],
        ["checkpoint folder", metrics["checkpoint_path"]],
        ["created", checkpoint_config.get("created", "-")],
        ["evaluated", metrics["evaluated"]],
        ["images from", f"{metrics['dataset']['root']} ({metrics['dataset']['source']})"],
        ["device", f"{metrics['device']}{' with mixed precision' if metrics['mixed_precision'] else ''}"],
        ["model", f"{metrics['preset']} preset, {metrics['image_size']} px, latent of {metrics['latent_dim']} numbers, "
                  f"{metrics['parameters']:,} parameters"],
        ["seconds", round(metrics["seconds"], 1)],
    ]
    for split, s in splits.items():
        if s:
            capped = f", a seeded sample capped at {s['cap']}" if s["evaluated"] + s["failed"] < s["images"] else ""
            facts.append([f"{split} images", f"{s['evaluated']} evaluated of {s['images']}{capped}; {s['failed']} unreadable"])
    sections: list[Any] = [
        ("Summary", html_table(["", ""], facts)),
        ("Does the autoencoder beat the best linear compressor of the same size?", [*verdict(metrics), metrics_table(metrics)]),
    ]
    if metrics.get("scorecard"):
        sections.insert(1, scorecard.report_section(metrics["scorecard"]))
    curves = _figure(out_dir, "training_curves.png", "Train and validation metrics per epoch (history.json)")
    sections.append(("Training curves", curves or html_paragraph("No training history in this checkpoint.", "note")))
    recon = [f for f in (
        _figure(out_dir, "train_reconstructions.png", "Training images: original and reconstruction"),
        _figure(out_dir, "validation_reconstructions.png", "Validation images: original, reconstruction and PCA baseline"),
    ) if f]
    sections.append(("Reconstructions", recon or html_paragraph("No reconstruction figure.", "note")))
    worst = _figure(out_dir, "worst_reconstructions.png", "Highest-MAE images with their error map: anomaly candidates")
    if worst:
        sections.append(("Worst reconstructions (anomaly candidates)", worst))
    latent = _figure(out_dir, "latent_pca.png", "Embeddings projected on their principal components, coloured by MAE")
    if latent:
        sections.append(("Latent space", latent))
    conf = checkpoint_config.get("configuration") or {}
    arch = checkpoint_config.get("architecture") or {}
    sections.append(("Checkpoint configuration", [
        html_table(["key", "value"], _flatten(conf)) if conf else html_paragraph("No configuration recorded.", "note"),
        html_table(["architecture", "value"], _flatten(arch)) if arch else Raw(""),
        html_table(["training data", "value"], _flatten(checkpoint_config.get("dataset") or {})),
    ]))
    sections.append(("Metric definitions", html_list(METRIC_DEFINITIONS)))
    files = sorted({p.name for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".")} | {"report.html"})
    sections.append(("Files in this folder", html_list(files)))
    return html_page(f"FeXT evaluation: {metrics['checkpoint']}", sections)


def comparison_report(entries: list[dict[str, Any]], figure: Path | None) -> str:
    """``comparison.html``: one row per evaluated checkpoint and the PSNR/SSIM bar chart."""
    headers = ["checkpoint", "preset", "size", "latent", "epochs", "evaluated on", "images",
               "MAE", "PSNR (dB)", "SSIM", "cosine", "PCA PSNR (dB)", "PCA SSIM", "report"]
    rows = []
    for m in entries:
        base = m.get("baseline_pca") or {}
        split = base.get("evaluated_on") or "validation"
        stats = (m.get("model") or {}).get(split) or {}
        bstats = base.get(split) or {}
        rows.append([
            m["checkpoint"], m.get("preset"), m.get("image_size"), m.get("latent_dim"), m.get("epochs"),
            f"{m['dataset']['root']} ({split})", (m.get("splits", {}).get(split) or {}).get("evaluated"),
            *[_mean_std(stats, k) for k in ("mae", "psnr", "ssim", "cosine")],
            _mean_std(bstats, "psnr"), _mean_std(bstats, "ssim"),
            Raw(f'<a href="{_attr(m["checkpoint"])}/report.html">report</a>'),
        ])
    sections: list[Any] = [
        html_paragraph("Every checkpoint evaluated in this workspace, on its own validation images unless "
                       "the 'evaluated on' column says otherwise. Values are mean ± std over images.", "note"),
        ("Metrics", html_table(headers, rows)),
    ]
    if figure is not None and figure.is_file():
        sections.append(("Validation PSNR and SSIM", html_image(png_file_to_data_uri(figure),
                                                                 "Autoencoder and PCA baseline, ± one std")))
    sections.append(("Metric definitions", html_list(METRIC_DEFINITIONS)))
    return html_page("FeXT checkpoint comparison", sections)


def _attr(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
