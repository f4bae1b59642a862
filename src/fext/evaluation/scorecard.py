"""The feature scorecard: how useful feature vectors are for search, judged without labels.

Every evaluated image gets a few seeded transformed copies (:func:`~fext.evaluation.copies.make_copies`: a random crop
keeping 50–90 % of the area, a horizontal flip, colour and brightness jitter, JPEG re-encoding at
quality 30–70, down- and up-scaling). A good feature vector finds an image's copies among all
images and copies; :func:`retrieval_scores` measures that as recall@1, recall@10 and mean average
precision, the same way for any vectors, so the model's features are judged beside two baselines
of known worth: PCA with as many components as the feature vector has numbers (fitted on the
training split) and the raw pixels downscaled to 32×32 (:func:`pixel_vectors`).
:func:`effective_rank` shows collapse (every image mapped to nearly the same few directions),
which retrieval of copies alone would not: a collapsed model can still find copies.
With labels, :func:`knn_accuracy` measures k-NN classification of the same vectors.

Everything here is a pure function of NumPy arrays (images as uint8 (N, S, S, 3)), so it is easy
to test; :func:`scorecard` puts the pieces together for the evaluation command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from fext.evaluation.copies import COPIES, CROP_AREA, CROP_SIDE, CROPS, JITTER, JPEG_QUALITY, make_copies, make_crops
from fext.vectors import centred_normalized, normalized

PIXEL_SIDE = 32
"""Side of the raw-pixel baseline's thumbnails (3·32·32 = 3,072 numbers)."""
TOP_K = 10
"""The k of recall@k besides recall@1."""
KNN_K = 5
"""Neighbours that vote in the k-NN classification."""
COLLAPSE_FRACTION = 1 / 32
"""A collapse warning is given when the effective rank is below this fraction of min(D, n - 1)."""

Encoder = Callable[[np.ndarray], np.ndarray]
"""Images (n, S, S, 3) uint8 -> vectors (n, D)."""


def pixel_vectors(images: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """The raw-pixel baseline: images (n, S, S, 3) uint8 -> (n, 3·side·side) float32 in [0, 1]."""
    out = np.empty((len(images), side * side * 3), dtype=np.float32)
    for i, image in enumerate(images):
        small = Image.fromarray(image).resize((side, side), Image.Resampling.BOX)
        out[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    return out


def _ranked_neighbours(vectors: np.ndarray, seed: int, centre: bool = True, chunk: int = 512):
    """Yield (query rows, their other items by decreasing cosine similarity) chunk by chunk.

    ``centre``: centre the vectors on their mean first (the baselines); FeXT's feature vectors are
    already centred on the training images' mean (``FeXTAutoEncoder.features``), and are compared
    exactly as ``fext search`` compares them (:func:`fext.vectors.normalized`), so the verdict is about
    the search users get. Ties are broken in a seeded random order, so vectors that cannot tell items
    apart score at chance level instead of profiting from the order of the rows.
    """
    v = centred_normalized(vectors) if centre else normalized(vectors)
    m = len(v)
    tiebreak = np.random.default_rng(seed).permutation(m)
    for lo in range(0, m, chunk):
        rows = np.arange(lo, min(m, lo + chunk))
        sim = v[rows] @ v.T  # (q, m)
        sim[np.arange(len(rows)), rows] = -np.inf  # a query is not its own neighbour
        # Sort by similarity, then by the random tie-break, both descending: lexsort's last key is primary.
        order = np.lexsort((tiebreak[None, :].repeat(len(rows), 0), -sim.round(6)), axis=1)
        yield rows, order[:, : m - 1]


def retrieval_scores(vectors: np.ndarray, groups: np.ndarray, top_k: int = TOP_K, seed: int = 0,
                     centre: bool = True) -> dict[str, float]:
    """Recall@1, recall@``top_k`` and mAP of finding each item's group among all other items.

    ``vectors`` (m, D); ``groups`` (m,) ints: items of one group (an image and its copies) are each
    other's right answers. Every item is a query once; the others, ranked by cosine similarity of
    the centred vectors, are its answers. recall@k: fraction of queries with a right answer in
    their first k; AP: the mean over a query's right answers of the precision at its rank.
    ``centre``: see :func:`_ranked_neighbours`.
    """
    groups = np.asarray(groups)
    hits1 = hitsk = ap = 0.0
    queries = 0
    for rows, order in _ranked_neighbours(vectors, seed, centre):
        relevant = groups[order] == groups[rows][:, None]  # (q, m-1)
        count = relevant.sum(1)
        valid = count > 0
        ranks = np.arange(1, relevant.shape[1] + 1)
        precision = np.cumsum(relevant, axis=1) / ranks
        hits1 += relevant[valid, 0].sum()
        hitsk += relevant[valid, :top_k].any(1).sum()
        ap += ((precision * relevant).sum(1)[valid] / count[valid]).sum()
        queries += int(valid.sum())
    if queries == 0:
        raise ValueError("no item has another item of its group: nothing to retrieve")
    return {"recall@1": float(hits1 / queries), f"recall@{top_k}": float(hitsk / queries), "map": float(ap / queries)}


def chance_scores(n_images: int, copies: int = COPIES, top_k: int = TOP_K) -> dict[str, float]:
    """What :func:`retrieval_scores` expects of vectors that rank items at random.

    Each of the m = n·(copies + 1) items has r = copies right answers among m - 1 others.
    """
    m, r = n_images * (copies + 1), copies
    others = m - 1
    miss = np.prod([(others - r - i) / (others - i) for i in range(min(top_k, others))]) if others >= r + top_k else 0.0
    # E[AP] = (1/N)·Σ_i E[rel_i·(1/i)·Σ_{j<=i} rel_j] with N = m - 1 and P(rel) = r/N, in closed form.
    harmonic = float(np.sum(1.0 / np.arange(1, others + 1)))
    mean_ap = (harmonic + (r - 1) / max(others - 1, 1) * (others - harmonic)) / others
    return {"recall@1": r / others, f"recall@{top_k}": float(1 - miss), "map": mean_ap}


def effective_rank(vectors: np.ndarray) -> float:
    """exp of the entropy of the normalised singular values of the centred ``vectors`` (n, D).

    1 for vectors along one line, min(n - 1, D) for vectors spread evenly in every direction; 0
    for identical vectors (nothing varies).
    """
    v = vectors.astype(np.float64)
    s = np.linalg.svd(v - v.mean(0), compute_uv=False)
    total = s.sum()
    if total <= 1e-12 * max(1.0, np.abs(v).max()):
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def collapse_warning(rank: float, dim: int, n: int) -> str | None:
    """A sentence when ``rank`` is tiny compared with what ``n`` vectors of ``dim`` numbers can span."""
    limit = max(1, min(dim, n - 1))
    if rank >= COLLAPSE_FRACTION * limit:
        return None
    return (f"Collapse: the feature vectors have an effective rank of {rank:.1f} out of a possible {limit}; "
            "they use very few directions, so most of their numbers carry no information about the image. "
            "Train longer or with the default training.RECIPE, whose variance and covariance terms prevent this.")


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, k: int = KNN_K, seed: int = 0, centre: bool = True) -> float:
    """Leave-one-out k-NN classification accuracy of ``vectors`` (n, D) with ``labels`` (n,).

    Each vector's k most cosine-similar others vote (ties: the label of the nearest voter wins).
    """
    labels = np.asarray(labels)
    k = max(1, min(k, len(labels) - 1))
    correct = 0
    for rows, order in _ranked_neighbours(vectors, seed, centre):
        for row, neighbours in zip(rows, order[:, :k]):
            votes = labels[neighbours]
            values, counts = np.unique(votes, return_counts=True)
            best = values[counts == counts.max()]
            predicted = next(v for v in votes if v in best)
            correct += predicted == labels[row]
    return correct / len(labels)


def verdict(results: dict[str, dict[str, float]], warning: str | None,
            crops: dict[str, dict[str, float]] | None = None) -> str:
    """Plain sentences: do the features beat both baselines at retrieving copies (mAP), and at finding
    other crops of the same photograph (``crops``, the same-photograph task)?"""
    text = _copies_verdict(results, warning)
    if crops is None or warning:
        return text
    f, p, r = (crops[k]["map"] for k in ("features", "pca", "pixels"))
    better = max(p, r, 1e-12)
    return text + (f" At finding other crops of the same image (30–100 % of its side) they reach mAP {f:.3f} against "
                   f"PCA {p:.3f} and raw pixels {r:.3f}: {f / better:.2f}× the better baseline"
                   f"{'' if f > better else ', so they do not beat it there'}.")


def _copies_verdict(results: dict[str, dict[str, float]], warning: str | None) -> str:
    f, p, r = (results[k]["map"] for k in ("features", "pca", "pixels"))
    beats = [name for name, value in (("PCA", p), ("raw pixels", r)) if f > value]
    if warning:
        head = "The feature vectors have collapsed"
    elif len(beats) == 2:
        head = (f"The feature vectors beat both baselines at finding transformed copies "
                f"(mAP {f:.3f} against PCA {p:.3f} and raw pixels {r:.3f}, {f / max(p, r, 1e-12):.2f}× the better one)")
    elif beats:
        head = (f"The feature vectors beat {beats[0]} but not {'raw pixels' if beats[0] == 'PCA' else 'PCA'} "
                f"at finding transformed copies (mAP {f:.3f} against PCA {p:.3f} and raw pixels {r:.3f})")
    else:
        head = (f"The feature vectors do not beat the baselines at finding transformed copies "
                f"(mAP {f:.3f} against PCA {p:.3f} and raw pixels {r:.3f}): for search, a thumbnail does at least as well")
    return head + "."


def scorecard(
    images: np.ndarray,
    features: Encoder,
    pca: Encoder,
    *,
    labels: np.ndarray | None = None,
    copies: int = COPIES,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole scorecard of ``images`` (n, S, S, 3) uint8 for the ``features`` and ``pca`` encoders.

    Returns a JSON-ready dict: ``retrieval`` (recall@1, recall@10, mAP for "features", "pca",
    "pixels", and "chance"), ``effective_rank``, ``dim``, ``collapse_warning`` (None or a sentence),
    ``verdict``, ``images``, ``copies`` and, with ``labels`` (n,), ``knn_accuracy`` per method.
    """
    n = len(images)
    if n < 2:
        raise ValueError("the scorecard needs at least two images")
    copied = make_copies(images, copies, seed)
    everything = np.concatenate([images, copied])  # (n·(copies+1), S, S, 3)
    groups = np.concatenate([np.arange(n), np.repeat(np.arange(n), copies)])
    encoders = {"features": features, "pca": pca, "pixels": pixel_vectors}
    centre = {"features": False, "pca": True, "pixels": True}  # the features are centred by the model already
    vectors = {name: np.asarray(fn(everything), dtype=np.float32) for name, fn in encoders.items()}
    retrieval = {name: retrieval_scores(v, groups, seed=seed, centre=centre[name]) for name, v in vectors.items()}
    retrieval["chance"] = chance_scores(n, copies)
    cropped = make_crops(images, CROPS, seed + 1)
    crop_groups = np.repeat(np.arange(n), CROPS)
    crops = {name: retrieval_scores(np.asarray(fn(cropped), dtype=np.float32), crop_groups, seed=seed,
                                    centre=centre[name]) for name, fn in encoders.items()}
    crops["chance"] = chance_scores(n, CROPS - 1)
    dim = vectors["features"].shape[1]
    rank = effective_rank(vectors["features"][:n])
    warning = collapse_warning(rank, dim, n)
    result: dict[str, Any] = {
        "images": n,
        "copies": copies,
        "seed": seed,
        "dim": dim,
        "retrieval": retrieval,
        "retrieval_crops": crops,
        "crops": CROPS,
        "effective_rank": rank,
        "effective_rank_pca": effective_rank(vectors["pca"][:n]),
        "collapse_warning": warning,
        "verdict": verdict(retrieval, warning, crops),
    }
    if labels is not None:
        result["knn_accuracy"] = {name: knn_accuracy(v[:n], labels, seed=seed, centre=centre[name])
                                  for name, v in vectors.items()}
        result["knn_k"] = min(KNN_K, n - 1)
    return result


MAX_IMAGES = 1000
"""Held-out images the scorecard of ``fext evaluate`` uses at most (the first of the seeded sample):
with their copies, 4,000 vectors to rank, a few seconds beyond encoding the copies."""


def score_checkpoint(
    model: Any, pca: Any, images: np.ndarray, device: Any, *, mixed: bool = False, batch_size: int = 64,
    seed: int = 0, labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`scorecard` of a FeXT ``model`` and a fitted :class:`~fext.evaluation.baseline.PCABaseline`
    on ``images`` (n, S, S, 3) uint8 (at most :data:`MAX_IMAGES` of them are used)."""
    import torch

    from fext.data import to_float
    from fext.device import autocast

    def run(fn: Callable[[Any], Any]) -> Encoder:
        def encode(batch: np.ndarray) -> np.ndarray:
            parts = []
            with torch.inference_mode():
                for lo in range(0, len(batch), batch_size):
                    x = to_float(torch.from_numpy(np.ascontiguousarray(batch[lo: lo + batch_size])).to(device))
                    parts.append(fn(x).float().cpu().numpy())
            return np.concatenate(parts)
        return encode

    def features(x: Any) -> Any:
        with autocast(device, mixed):
            return model.features(x)

    on_device = pca.to(device)
    n = min(len(images), MAX_IMAGES)
    return scorecard(np.asarray(images[:n]), run(features), run(lambda x: on_device.encode(x.flatten(1))),
                     labels=None if labels is None else np.asarray(labels)[:n], seed=seed)


def report_section(card: dict[str, Any]) -> tuple[str, list[Any]]:
    """The (title, content) of report.html's scorecard section."""
    from fext.html_report import html_list, html_paragraph, html_table

    retrieval = card["retrieval"]
    labels = {"features": f"FeXT feature vectors ({card['dim']} numbers)", "pca": f"PCA with {card['dim']} components",
              "pixels": f"raw pixels {PIXEL_SIDE}×{PIXEL_SIDE}", "chance": "chance (random ranking)"}
    knn = card.get("knn_accuracy") or {}
    headers = ["vectors", "recall@1", f"recall@{TOP_K}", "mAP"] + ([f"{card['knn_k']}-NN accuracy"] if knn else [])
    rows = [[labels[k], v["recall@1"], v[f"recall@{TOP_K}"], v["map"]] + ([knn.get(k, "-")] if knn else [])
            for k, v in retrieval.items()]
    crops = card.get("retrieval_crops") or {}
    crop_rows = [[labels[k], v["recall@1"], v[f"recall@{TOP_K}"], v["map"]] for k, v in crops.items()]
    good = not card["collapse_warning"] and "beat both" in card["verdict"] and "do not beat" not in card["verdict"]
    content = [
        html_paragraph(card["verdict"], "good" if good else "bad"),
        html_paragraph("Finding transformed copies:"),
        html_table(headers, rows),
        *([html_paragraph("Finding other crops of the same image:"), html_table(headers[:4], crop_rows)]
          if crop_rows else []),
        html_paragraph(f"Effective rank of the feature vectors: {card['effective_rank']:.1f} of {card['dim']} "
                       f"(PCA's: {card['effective_rank_pca']:.1f})."),
    ]
    if card["collapse_warning"]:
        content.append(html_paragraph(card["collapse_warning"], "bad"))
    content.append(html_list([
        f"Each of the {card['images']} evaluated images got {card['copies']} transformed copies (seed {card['seed']}): "
        f"a random crop keeping {CROP_AREA[0]:.0%}–{CROP_AREA[1]:.0%} of the area, a horizontal flip, brightness, "
        f"contrast and saturation jitter of ±{JITTER:.0%}, JPEG at quality {JPEG_QUALITY[0]}–{JPEG_QUALITY[1]}, "
        f"and down- and up-scaling. Every image and copy searches all the others by cosine similarity, as "
        "`fext search` does (the baselines centred on their mean first); its copies (or the image it is a copy "
        "of) are the right answers.",
        *([f"Same-photograph task: {card['crops']} square crops of each image, at random positions and "
           f"{CROP_SIDE[0]:.0%}–{CROP_SIDE[1]:.0%} of its side, resized back; each crop's right answers are the "
           "other crops of its image."] if crop_rows else []),
        "recall@k: fraction of searches with a right answer among the first k; mAP: mean average precision.",
        "PCA is fitted on the training images; raw pixels are the images shrunk to 32×32, the cheapest thumbnail.",
        "Effective rank: exp of the entropy of the normalised singular values of the centred vectors, the number "
        "of directions they really use; a small value means collapse.",
        *([f"k-NN accuracy: each image's class (its folder) predicted by a vote of its {card['knn_k']} nearest "
           "other images, leave-one-out."] if knn else []),
    ]))
    return "Feature scorecard: are the vectors good for search?", content


def folder_labels(paths: list[Any], root: Any) -> np.ndarray:
    """The class of each image for ``--labels-from-folders``: the first folder of its path under ``root``.

    Raises :class:`~fext.errors.FeXTError` when an image lies directly in ``root`` or there are fewer
    than two classes: a folder per class is what the option expects.
    """
    from pathlib import Path

    from fext.errors import FeXTError

    labels = []
    for p in paths:
        try:
            parts = Path(p).relative_to(root).parts
        except ValueError:
            parts = ()
        if len(parts) < 2:
            raise FeXTError(f"--labels-from-folders: {p} is not inside a class folder of {root}. Put the images of "
                            "each class in a folder of their own (ROOT/<class>/image.jpg), or leave out the option.")
        labels.append(parts[0])
    if len(set(labels)) < 2:
        raise FeXTError(f"--labels-from-folders: the evaluated images of {root} are all in one folder ({labels[0]!r}): "
                        "k-NN accuracy needs at least two classes, one folder each.")
    return np.asarray(labels)
