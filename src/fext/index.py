"""``fext index``: a faiss index beside the embeddings, so search stays fast for millions of vectors.

Two files join an encoding folder: ``faiss.index`` (``faiss.write_index``) and ``index.json``
(kind, faiss factory string, search parameters, the measured recall@10, and the version of the
embeddings it was built from: an :class:`~fext.encoding.records.IndexDescription`, read and
written through :mod:`fext.encoding.files`). The vectors are L2-normalised before indexing, so inner product
is cosine similarity and scores mean what ``fext search`` prints without an index.

Kinds (``--kind``; ``auto`` picks):

- ``flat``: exact (every vector scored); ``auto`` up to :data:`EXACT_MAX` vectors;
- ``ivf``: an inverted file of ``√N`` k-means cells, of which ``nprobe`` are scanned per
  query. When the raw vectors fit the memory budget the cells hold them (IVF-Flat); otherwise
  they hold product-quantised codes sized to the budget (IVF-PQ), and the best candidates are
  re-ranked with their exact vectors read from ``embeddings.npy`` on disk, not kept in memory;
- ``hnsw``: a graph (HNSW, 32 links per vector) over the raw vectors: fast queries, slow build.

After building, ``nprobe`` (``efSearch`` for hnsw) is doubled until recall@10 against exact
search on a sample of stored vectors (their own row left out) reaches :data:`RECALL_TARGET`, then
doubled once more as a margin for the sample's error; the recall reached is written to index.json
and printed. An index whose embeddings changed since it was built is stale:
:func:`open_index` says so and search falls back to exact. An incremental ``fext encode``
refreshes it (:func:`refresh_index`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fext._io import atomic_path
from fext.encoding.files import (
    EMBEDDINGS, INDEX_FILE, INDEX_JSON, Encoding, UnreadableFile, embeddings_version, ignore_unreadable, open_encoding,
    read_index_description, write_index_description,
)
from fext.encoding.npy_rows import RowReader
from fext.encoding.records import BUILT_KINDS, IndexDescription
from fext.errors import FeXTError
from fext.vectors import exact_top_k, normalized, seeded_rows

log = logging.getLogger(__name__)

KINDS = ("auto", *BUILT_KINDS)
"""What --kind takes: "auto" picks one of the kinds an index.json can record."""
EXACT_MAX = 100_000
"""``auto`` builds an exact (flat) index up to this many vectors: exact search stays fast enough."""
RECALL_TARGET = 0.95
SAMPLE_QUERIES = 200
"""Stored vectors used as queries to measure recall@10."""
RERANK = 10
"""IVF-PQ re-ranks this many candidates per result with the exact vectors."""
HNSW_LINKS = 32
BLOCK_ROWS = 16384
"""Vectors normalised and added at a time (32 MB of 512-d vectors: small beside a quantised index)."""


def _faiss() -> Any:
    """faiss, imported on first use (the command line's logging set-up, :func:`fext.logs.setup_logging`, quiets
    its loader, which logs every CPU variant it tries at INFO)."""
    import faiss

    return faiss


def default_memory_mb() -> int:
    """Half of this machine's RAM: the memory budget when ``--memory`` is not given."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**21)


@dataclass
class VectorIndex:
    """A loaded faiss index and how to query it: ``search(unit queries (Q, D), k) -> (rows, scores)``."""

    faiss_index: Any
    description: IndexDescription
    folder: Path

    def set_effort(self, effort: int) -> None:
        """nprobe (ivf) or efSearch (hnsw): more scans more and finds more of the true neighbours."""
        if self.description.kind == "ivf":
            _faiss().extract_index_ivf(self.faiss_index).nprobe = effort
        elif self.description.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = max(effort, 16)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.faiss_index.ntotal
        k = min(k, n)
        wanted = min(n, k * RERANK) if self.description.rerank else k
        scores, rows = self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), wanted)
        if self.description.rerank:
            scores = _exact_scores(RowReader(self.folder / EMBEDDINGS), rows, queries)
        rows, scores = rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        order = np.lexsort((rows, -scores), axis=1)[:, :k]
        return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def _exact_scores(rows_file: RowReader, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine of each candidate row (Q, C) with its query, the exact vectors read from disk."""
    wanted = np.unique(rows[rows >= 0])
    vectors = normalized(rows_file.take(wanted))
    where = np.searchsorted(wanted, np.maximum(rows, 0))
    return np.einsum("qkd,qd->qk", vectors[where], queries)


def plan_index(n: int, d: int, kind: str, memory_mb: int) -> dict[str, Any]:
    """Choose the faiss structure for ``n`` vectors of ``d`` floats within ``memory_mb``."""
    raw_mb = n * d * 4 / 2**20
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX and raw_mb <= memory_mb else "ivf"
    if kind == "flat":
        if raw_mb > memory_mb:
            raise FeXTError(f"An exact index of {n} vectors needs about {raw_mb:.0f} MB, over the {memory_mb} MB budget; "
                            "use --kind ivf (it quantises vectors to fit) or a larger --memory")
        return {"kind": "flat", "factory": "Flat", "estimated_mb": round(raw_mb, 1)}
    if kind == "hnsw":
        need = raw_mb + n * HNSW_LINKS * 2 * 4 / 2**20
        if need > memory_mb:
            raise FeXTError(f"An HNSW index of {n} vectors needs about {need:.0f} MB, over the {memory_mb} MB budget; "
                            "use --kind ivf (it quantises vectors to fit) or a larger --memory")
        return {"kind": "hnsw", "factory": f"HNSW{HNSW_LINKS}", "estimated_mb": round(need, 1)}
    nlist = int(max(1, min(n // 39, round(np.sqrt(n)))))  # faiss wants >= 39 training points per cell
    overhead_mb = n * 8 / 2**20 + nlist * d * 4 / 2**20  # ids and centroids
    if raw_mb + overhead_mb <= memory_mb:
        return {"kind": "ivf", "factory": f"IVF{nlist},Flat", "nlist": nlist,
                "estimated_mb": round(raw_mb + overhead_mb, 1)}
    per_vector = (memory_mb - overhead_mb) * 2**20 / n  # bytes of code each vector may have
    # One byte per sub-vector of at least 8 dimensions: finer codebooks cost more to train than they recall.
    m = max((m for m in range(1, d // 8 + 1) if d % m == 0 and m <= per_vector), default=0)
    if n < 10_000:
        raise FeXTError(f"{n} vectors do not fit in {memory_mb} MB, and are too few to train a quantiser on "
                        "(10,000 or more); pass a larger --memory")
    if m < min(4, d // 8):
        raise FeXTError(f"{n} vectors do not fit in {memory_mb} MB even as 4-byte codes; pass a larger --memory")
    return {"kind": "ivf", "factory": f"IVF{nlist},PQ{m}", "nlist": nlist, "rerank": True,
            "estimated_mb": round(overhead_mb + n * m / 2**20, 1)}


def build_index(folder: str | os.PathLike, kind: str = "auto", memory_mb: int | None = None,
                progress: bool = False) -> dict[str, Any]:
    """Build the index of an encoding folder and write it beside the embeddings; return index.json's content."""
    faiss = _faiss()

    if kind not in KINDS:
        raise FeXTError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    encoding = open_encoding(folder)
    n, d = encoding.vectors.shape
    budget = memory_mb or default_memory_mb()
    if budget < 1:
        raise FeXTError(f"--memory must be a positive number of megabytes, got {memory_mb}")
    plan = IndexDescription(**plan_index(n, d, kind, budget), memory_budget_mb=budget)
    started = time.perf_counter()
    index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if plan.kind == "ivf" else None
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False  # on by default, many times the cost of the codebooks, unused here
    if not index.is_trained:
        index.train(_training_sample(encoding.rows, plan.nlist))
    _add_all(index, encoding.rows, plan.kind, progress)
    return _finish(encoding, index, plan, started)


def refresh_index(folder: Path) -> dict[str, Any] | None:
    """After the embeddings changed: re-add them to the existing index (None when there is none).

    IVF kinds keep their trained cells and codebooks (no k-means again) and take every vector
    anew, because rows are renumbered when images come and go; flat and HNSW are rebuilt.
    """
    faiss = _faiss()

    try:
        old = read_index_description(folder)
    except UnreadableFile:
        ignore_unreadable(folder / INDEX_JSON)
        return None
    except ValueError as e:  # JSON, but no index of a known kind: that one is built anew
        old = e
    if old is None or not (folder / INDEX_FILE).is_file():
        return None
    encoding = open_encoding(folder)
    started = time.perf_counter()
    # the vectors changed since it was built, so its count is not checked here
    index = _read_faiss_index(faiss, folder, old, check_count=False)
    if index is None:  # damaged: built again from scratch, of the same kind where it is known
        return build_index(folder, old.kind if isinstance(old, IndexDescription) else "auto")
    if old.kind == "ivf":
        index.reset()
        _add_all(index, encoding.rows, "ivf", progress=False)
        kept = IndexDescription(kind=old.kind, factory=old.factory, nlist=old.nlist, rerank=old.rerank,
                                memory_budget_mb=old.memory_budget_mb, estimated_mb=old.estimated_mb)
        return _finish(encoding, index, kept, started)
    return build_index(folder, old.kind, old.memory_budget_mb)


def _training_sample(vectors: RowReader, nlist: int, seed: int = 0) -> np.ndarray:
    """40 vectors per cell (faiss's k-means wants 39 or more; PQ codebooks want 10,000 or more)."""
    n = len(vectors)
    rows = seeded_rows(n, max(40 * nlist, 10_000), seed)
    return normalized(vectors.take(rows))


def _add_all(index: Any, vectors: RowReader, kind: str, progress: bool) -> None:
    """Add every vector, normalised, a block at a time; IVF lists are sized once (see :func:`_fill_ivf`)."""
    from tqdm import tqdm

    faiss = _faiss()
    blocks = tqdm(range(0, len(vectors), BLOCK_ROWS), desc="Indexing", unit="block", disable=not progress)
    if kind == "ivf":
        _fill_ivf(faiss, faiss.extract_index_ivf(index), vectors, blocks)
        return
    for lo in blocks:
        index.add(normalized(vectors[lo:lo + BLOCK_ROWS]))


def _fill_ivf(faiss: Any, ivf: Any, vectors: RowReader, blocks: Any) -> None:
    """``ivf.add`` of every vector without the slack of growing lists (up to 2x their size).

    Two passes: the first assigns every vector to its cell and sizes each list once; the second
    encodes the vectors and writes them in place, in row order within each list as ``add`` would.
    """
    n = len(vectors)
    cells = np.empty(n, np.int64)
    for lo in range(0, n, BLOCK_ROWS):
        cells[lo:lo + BLOCK_ROWS] = ivf.quantizer.search(normalized(vectors[lo:lo + BLOCK_ROWS]), 1)[1].ravel()
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    filled = np.zeros(ivf.nlist, np.int64)
    for cell, count in enumerate(np.bincount(cells, minlength=ivf.nlist).tolist()):
        lists.resize(cell, count)
    for lo in blocks:
        x, where = normalized(vectors[lo:lo + BLOCK_ROWS]), np.ascontiguousarray(cells[lo:lo + BLOCK_ROWS])
        codes = np.empty((len(x), ivf.code_size), np.uint8)
        ivf.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(where), faiss.swig_ptr(codes))
        order = np.argsort(where, kind="stable")
        present, starts = np.unique(where[order], return_index=True)
        for cell, chunk in zip(present.tolist(), np.split(order, starts[1:])):
            ids, chunk_codes = lo + chunk.astype(np.int64), np.ascontiguousarray(codes[chunk])
            lists.update_entries(cell, int(filled[cell]), len(chunk), faiss.swig_ptr(ids), faiss.swig_ptr(chunk_codes))
            filled[cell] += len(chunk)
    ivf.ntotal = n


def _finish(encoding: Encoding, index: Any, plan: IndexDescription, started: float) -> dict[str, Any]:
    """Tune the search effort to the recall target, then write faiss.index and index.json (last); return its content."""
    faiss = _faiss()

    n, _ = encoding.vectors.shape
    built = VectorIndex(index, plan, encoding.folder)
    sample = seeded_rows(n, SAMPLE_QUERIES, 1)
    queries = normalized(encoding.rows.take(sample))
    # Each query finds itself first, in its own cell: leaving that match out makes the sample behave
    # like new queries rather than flatter the recall.
    truth = _without_self(exact_top_k(encoding.rows, queries, 11)[0], sample)
    effort, recall = None, 1.0
    if plan.kind != "flat":
        limit = plan.nlist or 4096
        effort = 1 if plan.kind == "ivf" else 16
        while True:
            built.set_effort(effort)
            recall = recall_at_k(_without_self(built.search(queries, 11)[0], sample), truth)
            if recall >= RECALL_TARGET or effort >= limit:
                break
            effort *= 2
        if effort < limit:  # one step of margin: 200 sample queries measure recall to about +-0.02
            effort *= 2
            built.set_effort(effort)
            recall = recall_at_k(_without_self(built.search(queries, 11)[0], sample), truth)
    else:
        recall = recall_at_k(_without_self(built.search(queries, 11)[0], sample), truth)
    (encoding.folder / INDEX_JSON).unlink(missing_ok=True)  # a half-replaced index is never taken as current
    with atomic_path(encoding.folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    description = replace(plan, vectors=n, dim=int(encoding.vectors.shape[1]), effort=effort,
                          recall_at_10=round(float(recall), 4), recall_queries=len(sample),
                          build_seconds=round(time.perf_counter() - started, 2),
                          embeddings_version=embeddings_version(encoding.folder), faiss_version=faiss.__version__)
    write_index_description(encoding.folder, description)
    log.info("Indexed %d vectors (%s) in %.1f s: recall@10 %.3f against exact search on %d queries",
             n, description.factory, description.build_seconds, description.recall_at_10, len(sample))
    return description.to_json()


def _without_self(rows: np.ndarray, sample: np.ndarray, k: int = 10) -> np.ndarray:
    """The first ``k`` rows of each result (Q, k + 1) other than the query's own row."""
    return np.stack([[r for r in found if r != own][:k] for found, own in zip(rows.tolist(), sample.tolist())])


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true ``k`` nearest rows (Q, k) that ``found`` (Q, k) holds."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, truth.size)


def open_index(folder: Path) -> VectorIndex | None:
    """The folder's index if there is one and it is up to date; None (with a log line saying why) otherwise."""
    faiss = _faiss()

    present = [name for name in (INDEX_JSON, INDEX_FILE) if (folder / name).is_file()]
    if not present:
        log.info("No index in %s: exact search (build one with `fext index %s`)", folder, folder)
        return None
    try:
        description = read_index_description(folder)
    except UnreadableFile:
        description = None
    except ValueError as e:  # JSON, but no index of a known kind: said below, when the faiss index is read
        description = e
    if description is None or len(present) < 2:
        problem = next((f"{name} missing" for name in (INDEX_JSON, INDEX_FILE) if name not in present),
                       f"{INDEX_JSON} unreadable")
        log.warning("The index in %s is incomplete or unreadable (%s): exact search instead; run `fext index %s` "
                    "to rebuild it", folder, problem, folder)
        return None
    if isinstance(description, IndexDescription) and description.embeddings_version != embeddings_version(folder):
        log.warning("The index in %s is stale (the embeddings changed since it was built): exact search instead; "
                    "run `fext index %s` to rebuild it", folder, folder)
        return None
    faiss_index = _read_faiss_index(faiss, folder, description)
    if faiss_index is None:
        return None
    index = VectorIndex(faiss_index, description, folder)
    if description.effort:
        index.set_effort(description.effort)
    index.faiss_index = _on_gpus(faiss, index.faiss_index, description.kind)
    return index


def _read_faiss_index(faiss: Any, folder: Path, description: IndexDescription | ValueError,
                      check_count: bool = True) -> Any:
    """The faiss index of ``folder`` when it and ``index.json`` are sound; None, with a warning that says how
    to rebuild it, when either is damaged (the caller then searches exactly: slower, never wrong).
    ``description`` is index.json's, or the ValueError that says why it describes no index."""
    try:
        if isinstance(description, ValueError):
            raise description
        index = faiss.read_index(str(folder / INDEX_FILE))
        if check_count and description.vectors is not None and index.ntotal != int(description.vectors):
            raise ValueError(f"it holds {index.ntotal} vectors, {INDEX_JSON} says {description.vectors}")
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        log.warning("The index in %s is unreadable (%s): exact search instead; run `fext index %s` to rebuild it",
                    folder, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, folder)
        return None
    return index


def _on_gpus(faiss: Any, index: Any, kind: str) -> Any:
    """The index cloned onto every GPU when faiss is a CUDA build (faiss-gpu) and sees one; else as it is.

    The clone keeps the search effort (nprobe) set on the CPU index. faiss has no GPU HNSW, and a GPU
    that cannot hold the index leaves the search on the CPU with a log line.
    """
    if kind == "hnsw" or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:
        log.warning("The index stays on the CPU: faiss could not move it to the GPU (%s)", exc)
        return index
