"""``fext explore``: from a `fext encode` folder to ``explore/`` with atlas.html and four CSV files.

The steps, in order: read and check the vectors; find every image's nearest neighbours once
(shared by all that follows); the map; the clusters; with the images at hand, their own signals
(perceptual hashes, statistics, raw thumbnails and their neighbours); with the checkpoint too,
reconstruction errors and edited copies; the outlier scores; the duplicate threshold and groups
(with the file hashes of sources.csv); the thumbnails; then the files, each written atomically.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fext._io import atomic_open
from fext.config import Config
from fext.encoding.files import Encoding, open_encoding
from fext.encoding.records import EncodingMetadata
from fext.errors import FeXTError
from fext.explore import measure
from fext.explore.clusters import CANDIDATE_KS, SILHOUETTE_SAMPLE, Clusters, find_clusters
from fext.explore.duplicates import (
    DUPLICATE_NEIGHBOURS, HASH_DISTANCE, KINDS, Duplicates, Identity, Threshold, choose_threshold, find_duplicates, threshold_at,
)
from fext.explore.maps import MAP_NEIGHBOURS, embedding_map
from fext.explore.neighbours import Neighbours, nearest_neighbours
from fext.explore.outliers import OUTLIER_NEIGHBOURS, SIGNALS, Outliers, find_outliers
from fext.explore.outliers import columns as outlier_columns
from fext.explore.page import PageNotes, write_page
from fext.explore.selection import read_selection
from fext.explore.signals import BATCH as SIGNAL_BATCH
from fext.explore.signals import ImageSignals, image_signals, mirror_candidates, outlier_signals, thumbnail_unit
from fext.explore.thumbnails import make_sprites
from fext.prompts import choose
from fext.similarity import copy_similarities
from fext.vectors import normalized, seeded_rows

log = logging.getLogger(__name__)

MIN_IMAGES = 3
COPY_SAMPLE = 200
"""Images whose edited copies are encoded to measure the duplicate threshold."""
OUTPUT = "explore"
CSV_FILES = ("map.csv", "clusters.csv", "outliers.csv", "duplicates.csv")


@dataclass(frozen=True)
class Exploration:
    """What ``fext explore`` found, and where it wrote it. Arrays are row-aligned with ``paths``."""

    output: Path
    paths: list[str]
    xy: np.ndarray
    clusters: Clusters
    outliers: Outliers
    duplicates: Duplicates
    threshold: Threshold
    neighbours: Neighbours
    thumbnails: bool
    seconds: dict[str, float]
    """Wall-clock seconds of each step, in order."""

    def summary(self, top: int = 5) -> str:
        """What the command prints: the files, the clusters, the most unusual images, the duplicates."""
        lines = [f"Atlas: {self.output / 'atlas.html'}" + ("" if self.thumbnails else " (no thumbnails: images not found)"),
                 f"CSV: {', '.join(name for name in CSV_FILES)} in {self.output}",
                 f"{len(self.paths)} images, {self.clusters.k} clusters"
                 + (f" (silhouette {self.clusters.silhouette:.3f})" if self.clusters.silhouette is not None else "")]
        lines.append("Most unusual: " + ", ".join(
            f"{self.paths[r]} ({self.outliers.score[r]:.1f}: {self.outliers.why(r)})" for r in self.outliers.ranking()[:top]))
        lines.append(self.threshold.describe())
        kinds = ", ".join(f"{sum(k == kind for k in self.duplicates.kinds)} {kind}" for kind in KINDS)
        lines.append(f"{len(self.duplicates.groups)} group(s) of near-duplicates ({kinds}), "
                     f"{sum(len(g) for g in self.duplicates.groups)} images")
        return "\n".join(lines)


def explore(
    embeddings: str | os.PathLike,
    output: str | os.PathLike | None = None,
    clusters: int | None = None,
    neighbours: int = 10,
    *,
    config: Config,
    checkpoint: str | os.PathLike | None = None,
    duplicate_threshold: float | None = None,
    reconstruction: bool = True,
    progress: bool = False,
    selection: str | os.PathLike | None = None,
) -> Exploration:
    """Explore the `fext encode` folder ``embeddings``; write ``output`` (default ``<embeddings>/explore``).

    ``config``: the resolved configuration (its seed, device and workers; ``Config()`` for the
    documented defaults); ``clusters``: K (None: chosen, see :mod:`fext.explore.clusters`);
    ``neighbours``: how many the page lists for a clicked image; ``checkpoint``: where the
    checkpoint that wrote the embeddings is now, if it moved; ``duplicate_threshold``: a cosine
    similarity instead of the measured one; ``reconstruction``: False skips the reconstruction
    errors (a pass of the full autoencoder over every image); ``selection``: a CSV of
    ``fext select`` whose images the atlas marks as selected.
    """
    if neighbours < 1:
        raise FeXTError(f"--neighbours must be at least 1, got {neighbours}")
    encoding, paths, unit = _open(embeddings)
    folder, metadata = encoding.folder, encoding.metadata
    marked = read_selection(selection, paths) if selection is not None else []
    out = Path(output) if output else folder / OUTPUT
    clock = _Clock()
    # 1. neighbours, map, clusters
    nb, xy, groups = _layout(unit, clusters, neighbours, config.SEED, clock)
    # 2. what the images say whatever the model learned, then what needs the model
    input_dir, files, have_images = _images_of(metadata, paths)
    signals, thumb_nbs = _image_signals(files, config, progress, config.SEED) if have_images else (None, [])
    clock.lap("image signals")
    ckpt = measure.recorded_checkpoint(metadata, checkpoint) if have_images else None
    errors, copies, sample = _model_measurements(ckpt, files, unit, metadata, config, reconstruction, progress)
    clock.lap("model")
    # 3. outliers, duplicates
    extra = outlier_signals(signals, thumb_nbs[0]) if signals is not None else None
    outliers = find_outliers(unit, errors, nb, signals=extra)
    threshold, duplicates = _duplicates(unit, nb, thumb_nbs, _identity(folder, paths, signals), copies, sample,
                                        duplicate_threshold)
    clock.lap("outliers and duplicates")
    # 4. files
    sprites = make_sprites(files, progress=progress) if have_images else None
    clock.lap("thumbnails")
    page_nb = nb.first(neighbours)
    _write_csvs(out, paths, xy, groups, outliers, duplicates)
    notes = _notes(folder, metadata, len(paths), groups, clusters, outliers, threshold, duplicates, have_images, input_dir)
    notes = replace(notes, selection=_selection_note(selection, marked))
    write_page(out / "atlas.html", paths, xy, groups, outliers, duplicates, page_nb, sprites,
               _image_base(input_dir, out) if have_images else None, notes, marked, metadata.bands)
    clock.lap("files")
    log.info("Explore steps: %s", ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()))
    return Exploration(out, paths, xy, groups, outliers, duplicates, threshold, page_nb, sprites is not None, clock.seconds)


def _layout(unit: np.ndarray, clusters: int | None, neighbours: int, seed: int, clock: _Clock,
            ) -> tuple[Neighbours, np.ndarray, Clusters]:
    """Each vector's neighbours (as many as the page, the map and the outliers need), the 2-D map and the
    clusters of the unit vectors (N, D), each step timed on ``clock``."""
    nb = nearest_neighbours(unit, max(neighbours, MAP_NEIGHBOURS - 1, OUTLIER_NEIGHBOURS), seed)
    clock.lap("neighbours")
    xy = embedding_map(unit, seed, nb)
    clock.lap("map")
    groups = find_clusters(unit, clusters, seed)
    clock.lap("clusters")
    return nb, xy, groups


def _open(embeddings: str | os.PathLike) -> tuple[Encoding, list[str], np.ndarray]:
    """(the encoding, its images' paths as embeddings_index.csv writes them, its unit vectors (N, D) float32)."""
    encoding = open_encoding(embeddings)
    paths = [row["path"] for row in encoding.read_rows_csv()]
    return encoding, paths, _checked_vectors(encoding.vectors, paths, encoding.folder)


def _images_of(metadata: EncodingMetadata, paths: list[str]) -> tuple[Path, list[Path], bool]:
    """(the encoded folder, each image's file, whether the images are still there to be read)."""
    input_dir = Path(metadata.input)
    files = [input_dir / p for p in paths]
    return input_dir, files, input_dir.is_dir() and any(f.is_file() for f in files[:50])


def _identity(folder: Path, paths: list[str], signals: ImageSignals | None) -> Identity:
    """What says two files are the same picture: their bytes' hashes, and their perceptual hashes when read."""
    return Identity(_file_hashes(folder, paths), *(
        (signals.phash, signals.hashed, signals.phash_mirror) if signals else (None, None, None)))


def _selection_note(selection: str | os.PathLike | None, marked: list[int]) -> str:
    """The page's line about ``fext select``'s images; "" (the page's default) without ``--selection``."""
    if selection is None:
        return ""
    return f"{len(marked)} images of {selection}, in rank order; they start selected on the map."


def _image_signals(
    files: list[Path], cfg: Config, progress: bool, seed: int,
) -> tuple[ImageSignals, list[Neighbours]]:
    """The images' own signals, and every image's nearest raw thumbnails and mirrored thumbnails
    (``DUPLICATE_NEIGHBOURS`` or more of each)."""
    from fext.encoding.inference import workers

    signals = image_signals(files, workers(cfg, len(files), SIGNAL_BATCH), progress)
    k = max(OUTLIER_NEIGHBOURS, DUPLICATE_NEIGHBOURS)
    unit = thumbnail_unit(signals.pixels)
    return signals, [nearest_neighbours(unit, k, seed), mirror_candidates(unit, DUPLICATE_NEIGHBOURS, seed)]


def _duplicates(
    unit: np.ndarray, nb: Neighbours, thumb_nbs: list[Neighbours], identity: Identity, copies: np.ndarray | None,
    sample: np.ndarray, by_hand: float | None,
) -> tuple[Threshold, Duplicates]:
    """The feature threshold (measured on the ``sample`` rows and their edited ``copies``, or ``by_hand``)
    and the duplicate groups at every level."""
    known = identity.same_picture(sample, nb.indices[sample, 0].astype(np.int64))
    if by_hand is not None:
        threshold = threshold_at(by_hand, copies, nb.similarities[sample, 0], by_hand=True, known=known)
    else:
        threshold = choose_threshold(copies, nb.similarities[sample, 0], known=known)
    candidates = [graph.first(DUPLICATE_NEIGHBOURS) for graph in thumb_nbs]
    return threshold, find_duplicates(unit, threshold.value, nb.first(DUPLICATE_NEIGHBOURS), identity, candidates)


def _file_hashes(folder: Path, paths: list[str]) -> list[str] | None:
    """The BLAKE2b of each file's bytes as ``fext encode`` recorded it ("" unknown), or None without sources.csv."""
    from fext.encoding.files import read_sources

    sources = read_sources(folder)
    if sources is None:
        return None
    return [sources[p].hash if p in sources else "" for p in paths]


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = now - self.last
        self.last = now


def _checked_vectors(vectors: np.ndarray, paths: list[str], folder: Path) -> np.ndarray:
    """Unit rows of the stored vectors, after the checks that make the rest meaningful."""
    n = len(paths)
    if n < MIN_IMAGES:
        raise FeXTError(f"{folder} holds {n} image(s); exploring needs at least {MIN_IMAGES}. "
                        "Encode a folder with more images (`fext encode --input FOLDER`)")
    return normalized(vectors)  # (N, D) float32, loaded into memory once (open_encoding refused NaN and inf)


def _model_measurements(
    ckpt: Path | None, files: list[Path], unit: np.ndarray, metadata: EncodingMetadata, cfg: Config,
    reconstruction: bool, progress: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(reconstruction errors or None, edited copies' similarities or None, the sampled rows)."""
    sample = seeded_rows(len(files), COPY_SAMPLE, cfg.SEED)
    if ckpt is None:
        return None, None, sample
    from fext.device import select_device
    from fext.encoding.inference import embed, load_model, workers

    device = select_device(cfg.device.DEVICE, cfg.device.DEVICE_ID)
    model = load_model(ckpt, device)
    size = metadata.img_size
    copies = copy_similarities(lambda images: embed(model, images, device), [files[i] for i in sample],
                               unit[sample], size)
    readable = ~np.isnan(copies).any(axis=1)
    copies, sample = (copies[readable], sample[readable]) if readable.any() else (None, sample)
    errors = None
    if reconstruction:
        errors = measure.reconstruction_errors(model, files, size, device, workers(cfg, len(files), measure.BATCH), progress)
        missing = np.isnan(errors)
        if missing.any():
            log.warning("%d image(s) could not be read again; their reconstruction error counts as typical", int(missing.sum()))
            errors[missing] = np.nanmedian(errors) if (~missing).any() else 0.0
    return errors, copies, sample


def _write_csvs(out: Path, paths: list[str], xy: np.ndarray, groups: Clusters, outliers: Outliers,
                duplicates: Duplicates) -> None:
    tables = {  # in the order of CSV_FILES
        "map.csv": [{"path": p, "x": float(x), "y": float(y)} for p, (x, y) in zip(paths, xy)],
        "clusters.csv": groups.rows(paths),
        "outliers.csv": outliers.rows(paths),
        "duplicates.csv": duplicates.rows(paths),
    }
    headers = {"map.csv": ["path", "x", "y"], "clusters.csv": ["path", "cluster", "distance"],
               "outliers.csv": outlier_columns(),
               "duplicates.csv": ["group", "kind", "path", "similarity", "hash_distance", "same_file"]}
    for name, rows in tables.items():
        with atomic_open(out / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=headers[name])
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _cell(value: Any) -> Any:
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


def _image_base(input_dir: Path, out: Path) -> str:
    """URL of the input folder relative to the page (so the folders can move together), ending in '/'."""
    try:
        rel = Path(os.path.relpath(input_dir.resolve(), out.resolve()))
    except ValueError:  # another drive on Windows
        return input_dir.resolve().as_uri() + "/"
    return "/".join(quote(part) for part in rel.parts) + "/"


def _notes(
    folder: Path, metadata: EncodingMetadata, n: int, groups: Clusters, asked_k: int | None, outliers: Outliers,
    threshold: Threshold, duplicates: Duplicates, have_images: bool, input_dir: Path,
) -> PageNotes:
    recorded = metadata.checkpoint.name or "unknown checkpoint"
    if asked_k is not None:
        k_rule = f"K = {groups.k} as asked (--clusters)."
    elif groups.silhouette is None:
        k_rule = "One cluster: too few images to compare several."
    else:
        k_rule = (f"K = {groups.k}: the highest mean silhouette ({groups.silhouette:.3f}, cosine) of K in "
                  f"{', '.join(map(str, CANDIDATE_KS))} up to √N, on at most {SILHOUETTE_SAMPLE:,} images.")
    measured = ", ".join(SIGNALS[name][3] for name in outliers.components)
    kinds = {kind: sum(k == kind for k in duplicates.kinds) for kind in KINDS}
    return PageNotes(
        title=f"FeXT atlas — {folder.name}",
        summary=f"{n:,} images from {input_dir}, encoded with {recorded} (D = {metadata.embedding_dim}).",
        clusters=f"k-means on the unit vectors. {k_rule} Spread: mean cosine distance to the centre; "
                 "medoid: the image nearest the centre.",
        outliers=f"Score: the largest robust z-score (0 = typical) of an image's signals: {measured} "
                 f"(distances to the {OUTLIER_NEIGHBOURS} nearest). Under each image, the signal that made it unusual. "
                 + ("" if have_images else "The images are not at hand: only their vectors are scored. "),
        duplicates=f"{len(duplicates.groups)} group(s): {kinds['exact']} of byte-identical files, {kinds['perceptual']} "
                   f"of the same picture by perceptual hash (pHash within {HASH_DISTANCE} bits), {kinds['feature']} "
                   f"by feature vectors. {threshold.describe()}.",
        thumbnails="" if have_images else f"No thumbnails: the encoded images are not at {input_dir}.",
    )


def resolve_embeddings(extraction: Path, name_or_path: str | os.PathLike | None, interactive: bool) -> Path:
    """The encoded folder to explore: a path, a folder name under ``extraction``, or (omitted) the only one there."""
    from fext.encoding import is_finished

    if name_or_path:
        for path in (Path(name_or_path), extraction / str(name_or_path)):
            if path.is_dir():
                return path
        raise FeXTError(f"{name_or_path} is neither a folder nor a folder name under {extraction}; "
                        "pass a folder written by `fext encode`")
    found = sorted(p for p in extraction.iterdir() if p.is_dir() and is_finished(p)) if extraction.is_dir() else []
    if not found:
        raise FeXTError(f"No encoded images in {extraction}; run `fext encode` first, or pass an EMBEDDINGS_DIR")
    if len(found) == 1:
        log.info("Exploring %s (the only encoded folder)", found[0])
        return found[0]
    if not interactive:
        raise FeXTError(f"Several encoded folders in {extraction}; name one:\n" + "\n".join(f"  {p.name}" for p in found))
    return found[choose([p.name for p in found], "Folder number")]
