"""Nearest-neighbour search over the output of ``fext encode``: exact cosine similarity.

The stored vectors are scanned block by block from the memory-mapped ``embeddings.npy``, each
block normalised as it is read, so memory stays flat for any number of images; the index CSV
is streamed too, reading only the rows that are shown. The query is either a path already in
the index (its stored vector is used) or an image file, encoded with the checkpoint recorded in
``metadata.json``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fext.config import Config
from fext.encoding.files import INDEX, open_encoding
from fext.encoding.fingerprints import checkpoint_identity
from fext.encoding.inference import embed, load_model
from fext.errors import FeXTError

BLOCK_ROWS = 65536
"""Rows scored at a time (fewer for long vectors: a block stays within BLOCK_BYTES)."""
BLOCK_BYTES = 64 * 2**20


def search(
    emb_dir: str | os.PathLike,
    query: str | os.PathLike,
    k: int = 10,
    sheet: str | os.PathLike | None = None,
    config: Config | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> list[tuple[int, float, str]]:
    """The ``k`` stored images most similar to ``query``: ``[(rank, cosine similarity, path), ...]``.

    ``query`` is a path as written in ``embeddings_index.csv`` (its stored vector is used) or an
    image file (encoded on ``config``'s device with the checkpoint of ``metadata.json``, or with
    ``checkpoint`` when that one has moved). ``sheet`` writes a PNG of the query and the results.
    Paths in the results are relative to the encoded folder, as in the index.
    """
    emb_dir = Path(emb_dir)
    if k < 1:
        raise FeXTError(f"-k must be at least 1, got {k}")
    metadata, matrix = _open(emb_dir)
    row = find_row(emb_dir / INDEX, str(query))
    if row is not None:
        vector = np.array(matrix[row], dtype=np.float32)
        query_image = Path(metadata["input"]) / str(query).removeprefix("./")
    else:
        query_image = Path(query).expanduser()
        if not query_image.is_file():
            raise FeXTError(
                f"Query {query} is neither an image file nor a path in {emb_dir / INDEX}; "
                "pass an image file or a path as written in the index"
            )
        vector = _encode_query(query_image, metadata, emb_dir, config or Config(), checkpoint)
    rows, scores = top_k_cosine(matrix, vector, k)
    names = paths_of_rows(emb_dir / INDEX, rows)
    results = [(rank, float(score), names[r]) for rank, (r, score) in enumerate(zip(rows.tolist(), scores), 1)]
    if sheet is not None:
        write_contact_sheet(Path(sheet), query_image, results, Path(metadata["input"]))
    return results


def _open(emb_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """metadata.json and the memory-mapped vectors of a finished `fext encode` folder."""
    encoding = open_encoding(emb_dir)
    return encoding.metadata, encoding.vectors


def find_row(index_file: Path, name: str) -> int | None:
    """The row of ``name`` (a relative path as in the index) in ``embeddings_index.csv``, or None."""
    name = Path(name).as_posix().removeprefix("./")
    with open(index_file, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            if record["path"] == name:
                return int(record["row"])
    return None


def paths_of_rows(index_file: Path, rows: np.ndarray) -> dict[int, str]:
    """``{row: path}`` for the requested rows, streaming the index."""
    wanted = set(int(r) for r in rows)
    found: dict[int, str] = {}
    with open(index_file, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            row = int(record["row"])
            if row in wanted:
                found[row] = record["path"]
                if len(found) == len(wanted):
                    break
    return found


def _encode_query(
    image: Path, metadata: dict[str, Any], emb_dir: Path, cfg: Config, checkpoint: str | os.PathLike | None
) -> np.ndarray:
    """The query's (D,) vector, computed with the checkpoint that wrote the embeddings."""
    from fext.checkpoints import is_checkpoint
    from fext.data import ImageDecodeError, load_image
    from fext.device import select_device

    recorded = metadata["checkpoint"]
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint else Path(recorded["path"])
    if not is_checkpoint(ckpt):
        raise FeXTError(
            f"The checkpoint that wrote {emb_dir}, {recorded['name']}, is not at {ckpt} any more. "
            "Move it back, pass its new location with --checkpoint, or query an image already in the index."
        )
    if checkpoint_identity(ckpt)["hash"] != recorded["hash"]:
        raise FeXTError(
            f"{ckpt} is not the checkpoint that wrote {emb_dir} (its weights differ), so its vectors are not "
            f"comparable. Pass the checkpoint {recorded['name']} with --checkpoint, or encode the images again."
        )
    try:
        pixels = load_image(image, metadata["img_size"])  # (S, S, 3) uint8
    except ImageDecodeError as e:
        raise FeXTError(f"Cannot read the query image {image}: {e.reason}") from e
    device = select_device(cfg.device.DEVICE, cfg.device.DEVICE_ID)
    model = load_model(ckpt, device)
    return embed(model, pixels[None], device, cfg.device.MIXED_PRECISION)[0]


def top_k_cosine(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cosine similarities of the ``k`` rows of ``matrix`` (N, D) closest to ``query`` (D,).

    Exact: every row is scored, a block at a time. Ties are ordered by row. All-zero vectors
    score 0.
    """
    n, d = matrix.shape
    k = min(k, n)
    q = np.asarray(query, dtype=np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    best_rows, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    block = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (4 * d)))
    for lo in range(0, n, block):
        x = np.asarray(matrix[lo:lo + block], dtype=np.float32)  # (b, D)
        norms = np.linalg.norm(x, axis=1)
        scores = (x @ q) / np.where(norms > 0, norms, 1.0)
        if len(scores) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
        else:
            keep = np.arange(len(scores))
        rows = np.concatenate([best_rows, lo + keep])
        values = np.concatenate([best_scores, scores[keep]])
        order = np.lexsort((rows, -values))[:k]
        best_rows, best_scores = rows[order], values[order]
    return best_rows, best_scores


def print_results(results: list[tuple[int, float, str]]) -> None:
    """Print ``rank  score  path`` lines, best first."""
    print(f"{'rank':>4}  {'score':>7}  path")
    for rank, score, path in results:
        print(f"{rank:>4}  {score:7.4f}  {path}")


def write_contact_sheet(sheet: Path, query_image: Path, results: list[tuple[int, float, str]], root: Path) -> None:
    """A PNG grid: the query first, then each result's thumbnail titled with its rank and score."""
    from matplotlib.figure import Figure

    from fext._io import save_figure

    tiles = [(query_image, "query\n" + _short(query_image.name))]
    tiles += [(root / path, f"{rank}. {score:.3f}\n{_short(path)}") for rank, score, path in results]
    cols = min(6, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = Figure(figsize=(2.2 * cols, 2.6 * rows), layout="constrained")  # no pyplot: any backend, any thread
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, title) in zip(axes.flat, tiles):
        thumb = _thumbnail(path)
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(thumb)
        ax.set_title(title, fontsize=8)
    axes.flat[0].set_title(tiles[0][1], fontsize=8, fontweight="bold")
    save_figure(fig, sheet, dpi=100)


def _thumbnail(path: Path, size: int = 192) -> np.ndarray | None:
    from fext.data import ImageDecodeError, open_rgb

    try:
        image = open_rgb(path, draft_size=size)
    except ImageDecodeError:
        return None
    image.thumbnail((size, size))
    return np.asarray(image)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
