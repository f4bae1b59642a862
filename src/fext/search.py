"""Nearest-neighbour search over the output of ``fext encode``, by cosine similarity.

With an up-to-date ``fext index`` in the folder the index answers (:mod:`fext.index`); without
one, or with a stale one, search is exact, and says so: the stored vectors are scanned block by
block from the memory-mapped ``embeddings.npy``, each block normalised as it is read, so memory
stays flat for any number of images; ``embeddings_index.csv`` is streamed too, reading only the
rows that are shown. A query is a path already encoded (its stored vector is used) or an image
file, encoded with the checkpoint recorded in ``metadata.json``; ``--queries DIR`` runs every image of
a folder at once.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fext.config import Config
from fext.encoding.files import Encoding, damaged, open_encoding, stream_row_paths
from fext.encoding.fingerprints import wrote_vectors
from fext.encoding.records import EncodingMetadata
from fext.errors import FeXTError
from fext.index import VectorIndex, open_index
from fext.similarity import BANDS, band_of
from fext.vectors import exact_top_k, normalized

log = logging.getLogger(__name__)

def search(
    emb_dir: str | os.PathLike,
    query: str | os.PathLike,
    k: int = 10,
    sheet: str | os.PathLike | None = None,
    *,
    config: Config,
    checkpoint: str | os.PathLike | None = None,
    use_index: bool = True,
) -> list[tuple[int, float, str]]:
    """The ``k`` stored images most similar to ``query``: ``[(rank, cosine similarity, path), ...]``.

    ``query`` is a path as written in ``embeddings_index.csv`` (its stored vector is used) or an
    image file (encoded on ``config``'s device with the checkpoint of ``metadata.json``, or with
    ``checkpoint`` when that one has moved). ``config`` is the resolved configuration (the CLI's;
    ``Config()`` for the documented defaults). ``sheet`` writes a PNG of the query and the results.
    Paths in the results are relative to the encoded folder, as in embeddings_index.csv. ``use_index``
    False searches exactly even where an index is present.
    """
    emb_dir = Path(emb_dir)
    _check_k(k)
    encoding = open_encoding(emb_dir)
    metadata = encoding.metadata
    row = find_row(encoding.rows_csv, str(query))
    if row is not None:
        vector = np.array(encoding.vectors[row], dtype=np.float32)
        query_image = Path(metadata.input) / str(query).removeprefix("./")
    else:
        query_image = Path(query).expanduser()
        if not query_image.is_file():
            raise FeXTError(
                f"Query {query} is neither an image file nor a path in {encoding.rows_csv}; "
                "pass an image file or a path as written in the index"
            )
        vector = _encode_query(query_image, metadata, emb_dir, config, checkpoint)
    rows, scores = nearest(encoding, normalized(vector[None]), k, open_index(emb_dir) if use_index else None)
    names = paths_of_rows(encoding.rows_csv, rows[0])
    results = [(rank, float(score), names[r]) for rank, (r, score) in enumerate(zip(rows[0].tolist(), scores[0]), 1)]
    if sheet is not None:
        write_contact_sheet(Path(sheet), query_image, results, Path(metadata.input))
    return results


def search_folder(
    emb_dir: str | os.PathLike,
    queries_dir: str | os.PathLike,
    k: int = 10,
    *,
    config: Config,
    checkpoint: str | os.PathLike | None = None,
    use_index: bool = True,
) -> list[tuple[str, int, float, str]]:
    """Every image under ``queries_dir`` as a query: ``[(query path, rank, score, path), ...]``.

    Query paths are relative to ``queries_dir``; files that are not readable images are skipped
    with a warning (as in ``fext encode``). The queries are encoded in batches on ``config``'s
    device, as in :func:`search`, and searched at once.
    """
    from fext.encoding.inference import encode_images

    emb_dir, queries_dir = Path(emb_dir), Path(queries_dir)
    _check_k(k)
    encoding = open_encoding(emb_dir)
    if not queries_dir.is_dir():
        raise FeXTError(f"--queries {queries_dir} is not a folder; pass a folder of query images")
    model = _query_model(encoding.metadata, emb_dir, config, checkpoint)
    vectors, queries = encode_images(model, queries_dir, config=config)
    if not queries:
        raise FeXTError(f"No readable image in {queries_dir}; pass a folder of query images")
    rows, scores = nearest(encoding, normalized(vectors), k, open_index(emb_dir) if use_index else None)
    names = paths_of_rows(encoding.rows_csv, rows.ravel())
    return [(entry["path"], rank, float(score), names[r])
            for entry, query_rows, query_scores in zip(queries, rows.tolist(), scores)
            for rank, (r, score) in enumerate(zip(query_rows, query_scores), 1)]


def write_results_csv(results: list[tuple[str, int, float, str]], output: str | os.PathLike | None,
                      bands: dict[str, float] | None = None) -> None:
    """``query, rank, score, meaning, path`` rows to ``output`` (atomically), or to stdout when None; ``meaning`` is
    the score's band (:mod:`fext.similarity`), empty for a folder without bands."""
    from fext._io import atomic_open

    def write(f: Any) -> None:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "score", "meaning", "path"])
        writer.writerows([q, rank, f"{score:.6f}", band_of(score, bands), path] for q, rank, score, path in results)

    if output is None:
        write(sys.stdout)
        return
    with atomic_open(output, "w", newline="", encoding="utf-8") as f:
        write(f)


def nearest(encoding: Encoding, queries: np.ndarray, k: int, index: VectorIndex | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows (Q, k) and cosine similarities of the stored vectors nearest to unit ``queries`` (Q, D): from
    ``index`` (the folder's :func:`~fext.index.open_index`, opened once by the caller) or, without one, exactly."""
    if index is not None:
        return index.search(queries, k)
    return exact_top_k(encoding.rows, queries, k)


def _check_k(k: int) -> None:
    if k < 1:
        raise FeXTError(f"-k must be at least 1, got {k}")


def find_row(rows_csv: Path, name: str) -> int | None:
    """The row of ``name`` (a relative path as written there) in ``embeddings_index.csv``, or None."""
    name = Path(name).as_posix().removeprefix("./")
    return next((row for row, path in stream_row_paths(rows_csv) if path == name), None)


def paths_of_rows(rows_csv: Path, rows: np.ndarray) -> dict[int, str]:
    """``{row: path}`` for the requested rows, streaming ``embeddings_index.csv`` (it stops once all are found)."""
    wanted = set(int(r) for r in rows)
    found: dict[int, str] = {}
    for row, path in stream_row_paths(rows_csv):
        if row in wanted:
            found[row] = path
            if len(found) == len(wanted):
                break
    if len(found) < len(wanted):
        raise damaged(rows_csv.parent, rows_csv.name, f"it has no row {min(wanted - found.keys())}")
    return found


def _query_model(metadata: EncodingMetadata, emb_dir: Path, cfg: Config, checkpoint: str | os.PathLike | None) -> Any:
    """The model of the checkpoint that wrote the embeddings (or of ``checkpoint``, checked to be the same one)."""
    from fext.checkpoints import is_checkpoint
    from fext.device import select_device
    from fext.encoding.inference import load_model

    recorded = metadata.checkpoint
    ckpt = recorded.location(checkpoint)
    if not is_checkpoint(ckpt):
        raise FeXTError(
            f"The checkpoint that wrote {emb_dir}, {recorded.name}, is not at {ckpt} any more. "
            "Move it back, pass its new location with --checkpoint, or query an image already in the index."
        )
    if not wrote_vectors(ckpt, recorded):
        raise FeXTError(
            f"{ckpt} is not the checkpoint that wrote {emb_dir} (its weights differ), so its vectors are not "
            f"comparable. Pass the checkpoint {recorded.name} with --checkpoint, or encode the images again."
        )
    return load_model(ckpt, select_device(cfg.device.DEVICE, cfg.device.DEVICE_ID))


def _encode_query(
    image: Path, metadata: EncodingMetadata, emb_dir: Path, cfg: Config, checkpoint: str | os.PathLike | None
) -> np.ndarray:
    """The query's (D,) vector, computed with the checkpoint that wrote the embeddings."""
    from fext.data import ImageDecodeError, load_image
    from fext.encoding.inference import embed

    model = _query_model(metadata, emb_dir, cfg, checkpoint)
    try:
        pixels = load_image(image, metadata.img_size)  # (S, S, 3) uint8
    except ImageDecodeError as e:
        raise FeXTError(f"Cannot read the query image {image}: {e.reason}; pass an image file (JPEG, PNG, ...)") from e
    device = next(model.parameters()).device
    return embed(model, pixels[None], device, cfg.device.MIXED_PRECISION)[0]


def print_results(results: list[tuple[int, float, str]], bands: dict[str, float] | None = None) -> None:
    """Print ``rank  score  meaning  path`` lines, best first; ``meaning`` is the score's band for this collection
    (:mod:`fext.similarity`), left out for a folder encoded before bands were recorded."""
    width = max(len(b) for b in BANDS) if bands else 0
    print(f"{'rank':>4}  {'score':>7}  " + (f"{'meaning':<{width}}  " if bands else "") + "path")
    for rank, score, path in results:
        print(f"{rank:>4}  {score:7.4f}  " + (f"{band_of(score, bands):<{width}}  " if bands else "") + path)


def write_contact_sheet(sheet: Path, query_image: Path, results: list[tuple[int, float, str]], root: Path) -> None:
    """A PNG grid: the query first, then each result's thumbnail titled with its rank and score."""
    from matplotlib.figure import Figure

    from fext._io import save_figure
    from fext.data import thumbnail
    from fext.html_report import shorten

    tiles = [(query_image, "query\n" + shorten(query_image.name, 28))]
    tiles += [(root / path, f"{rank}. {score:.3f}\n{shorten(path, 28)}") for rank, score, path in results]
    cols = min(6, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = Figure(figsize=(2.2 * cols, 2.6 * rows), layout="constrained")  # no pyplot: any backend, any thread
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, title) in zip(axes.flat, tiles):
        thumb = thumbnail(path, 192)
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(np.asarray(thumb))
        ax.set_title(title, fontsize=8)
    axes.flat[0].set_title(tiles[0][1], fontsize=8, fontweight="bold")
    save_figure(fig, sheet, dpi=100)

