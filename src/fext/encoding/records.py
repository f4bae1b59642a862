"""The JSON files of an embeddings folder as typed objects: ``metadata.json``, ``.encode_state.json``, ``index.json``.

Each class turns its file's object into typed fields (``from_json``, a ValueError saying what is
wrong) and back (``to_json``, with the keys in the order FeXT has always written them). Opening and
writing the files is :mod:`fext.encoding.files`' job; this module does no I/O and imports nothing
of FeXT, so every reader of an embeddings folder can use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

STATE_VERSION = 1
"""Version of the ``.encode_state.json`` layout (its ``version`` key)."""
BUILT_KINDS = ("flat", "ivf", "hnsw")
"""The kinds of faiss index an index.json can record."""
BAND_NAMES = ("duplicate", "near-duplicate", "similar")
"""The similarity bands metadata.json records (:mod:`fext.similarity`), each a lower bound."""


@dataclass(frozen=True)
class CheckpointRecord:
    """The checkpoint that wrote the vectors (:func:`fext.encoding.fingerprints.checkpoint_identity`).

    A field that an older or edited file leaves out is None.
    """

    name: str | None = None
    """The checkpoint folder's name."""
    path: str | None = None
    """Its absolute path when the vectors were written."""
    hash: str | None = None
    """BLAKE2b of its weights and architecture: equal hashes, comparable vectors."""

    def comparable(self, other: CheckpointRecord) -> bool:
        """Whether the two wrote comparable vectors: the same weights and architecture (equal hashes)."""
        return self.hash == other.hash

    def location(self, moved_to: str | os.PathLike | None = None) -> Path:
        """Where the checkpoint is: ``moved_to`` (where it is now, when it moved), else the recorded path."""
        return Path(moved_to).expanduser().resolve() if moved_to else Path(self.path or "")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("name", self.name), ("path", self.path), ("hash", self.hash)) if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointRecord:
        return cls(data.get("name"), data.get("path"), data.get("hash"))


REQUIRED_METADATA = {"checkpoint": dict, "embedding_dim": int, "images": int, "img_size": int, "input": str}
"""The keys of metadata.json that readers rely on, with their types."""


@dataclass(frozen=True, kw_only=True)
class EncodingMetadata:
    """What ``metadata.json`` says of a finished encoding. Fields in the file's key order; an optional
    field that the file leaves out (an older FeXT, a hand-made folder) is None, and is left out again."""

    checkpoint: CheckpointRecord
    preset: str | None = None
    img_size: int
    """Side of the square images the model read, in pixels."""
    batch_size: int | None = None
    device: str | None = None
    mixed_precision: bool | None = None
    similarity: str | None = None
    """What a cosine of these vectors is (files.SIMILARITY or files.UNCENTRED); None: written before centring."""
    processes: int | None = None
    """How many processes encoded (under torchrun only)."""
    not_images: int | None = None
    multi_frame: int | None = None
    embedding_dim: int
    images: int
    """Vectors (rows of embeddings.npy): the readable images."""
    failed: int | None = None
    files: int | None = None
    """Files listed: the images plus the failed ones."""
    input: str
    """The encoded folder; the paths of embeddings_index.csv are relative to it."""
    listing: str | None = None
    """Fingerprint of the listing (:func:`fext.encoding.fingerprints.listing_fingerprint`)."""
    created: str | None = None
    elapsed_seconds: float | None = None
    fext_version: str | None = None
    update: dict[str, int] | None = None
    """An incremental run's counts (reused, added, changed, removed, renamed)."""
    bands: dict[str, float] | None = None
    """The similarity bands measured on edited copies (:mod:`fext.encoding.calibration`); None: not measured."""
    bands_sample: int | None = None

    @property
    def images_per_second(self) -> float | None:
        seconds = self.elapsed_seconds
        return round(self.images / seconds, 2) if seconds is not None and seconds > 0 else None

    def with_bands(self, bands: dict[str, float], sample: int) -> EncodingMetadata:
        return replace(self, bands=bands, bands_sample=sample)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _METADATA_KEYS:
            value = getattr(self, name)
            if name == "checkpoint":
                value = value.to_json()
            if value is not None:
                data[name] = value
            if name == "elapsed_seconds" and value is not None:
                data["images_per_second"] = self.images_per_second
        return data

    @classmethod
    def from_json(cls, data: Any) -> EncodingMetadata:
        """The metadata of a metadata.json object; ValueError saying what is missing."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        for key, kind in REQUIRED_METADATA.items():
            if not isinstance(data.get(key), kind):
                raise ValueError(f"no {kind.__name__} {key!r}")
        values = {name: data.get(name) for name in _METADATA_KEYS}
        values["checkpoint"] = CheckpointRecord.from_json(data["checkpoint"])
        values["bands"] = bands if _sound_bands(bands := data.get("bands")) else None
        return cls(**values)


_METADATA_KEYS = tuple(f.name for f in fields(EncodingMetadata))
"""metadata.json's keys in the order they are written (images_per_second follows elapsed_seconds)."""


def _sound_bands(bands: Any) -> bool:
    return isinstance(bands, dict) and all(isinstance(bands.get(k), float) for k in BAND_NAMES)


@dataclass(frozen=True)
class EncodeRun:
    """What a ``fext encode`` run is of: the state records it, and a later run must match it to go on."""

    checkpoint: CheckpointRecord
    input: str
    """The input folder, absolute."""
    listing: str
    """Fingerprint of the listed files."""
    images: int
    """Files listed (the run's rows before failures are dropped)."""
    embedding_dim: int

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint.to_json(), "input": self.input, "listing": self.listing,
                "images": self.images, "embedding_dim": self.embedding_dim}


@dataclass(frozen=True)
class Failure:
    """A listed file that could not be read: its position in the listing, relative path and why."""

    position: int
    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "path": self.path, "reason": self.reason}


@dataclass
class EncodeState:
    """``.encode_state.json``: how far a run got, updated as it goes (see :mod:`fext.encoding.resumable`)."""

    run: EncodeRun
    todo: int
    """Images of the run's to-do list: every listed one, or (incremental) the new and changed ones."""
    done: int = 0
    """Images of the to-do list done (encoded or failed)."""
    failures: list[Failure] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    incremental: bool = False
    planned: bool = False
    """An incremental run planned its to-do list (``.encode_todo.npy``) and copied the reused rows."""
    counts: dict[str, int] | None = None
    """An incremental run's counts, once planned."""

    def to_json(self) -> dict[str, Any]:
        data = {"version": STATE_VERSION, **self.run.to_json(), "done": self.done, "todo": self.todo,
                "failures": [f.to_json() for f in self.failures], "elapsed_seconds": self.elapsed_seconds}
        if self.incremental:
            data.update(incremental=True, planned=self.planned)
        if self.counts is not None:
            data["counts"] = self.counts
        return data

    @classmethod
    def from_json(cls, data: Any) -> EncodeState:
        """The state of a ``.encode_state.json`` object; ValueError when it is damaged or of another version."""
        if not (isinstance(data, dict) and data.get("version") == STATE_VERSION):
            raise ValueError("damaged or of another version")
        try:
            run = EncodeRun(CheckpointRecord.from_json(data["checkpoint"]), data["input"], data["listing"],
                            data["images"], data["embedding_dim"])
            failures = [Failure(f["position"], f["path"], f["reason"]) for f in data["failures"]]
            return cls(run, data.get("todo", run.images), data["done"], failures, data["elapsed_seconds"],
                       bool(data.get("incremental")), bool(data.get("planned")), data.get("counts"))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"damaged ({type(e).__name__} {e})") from e


@dataclass(frozen=True, kw_only=True)
class IndexDescription:
    """``index.json``: how the faiss index beside the vectors was built and tuned (see :mod:`fext.index`)."""

    kind: str
    """One of :data:`BUILT_KINDS`."""
    factory: str | None = None
    """The faiss factory string (``Flat``, ``IVF64,Flat``, ``IVF512,PQ32``, ``HNSW32``)."""
    nlist: int | None = None
    rerank: bool = False
    """IVF-PQ: candidates are re-ranked with the exact vectors read from embeddings.npy."""
    estimated_mb: float | None = None
    memory_budget_mb: int | None = None
    vectors: int | None = None
    dim: int | None = None
    effort: int | None = None
    """nprobe (ivf) or efSearch (hnsw) that reached the recall target; None for flat."""
    recall_at_10: float | None = None
    recall_queries: int | None = None
    build_seconds: float | None = None
    embeddings_version: str | None = None
    """:func:`fext.encoding.files.embeddings_version` of the folder it was built from."""
    faiss_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"kind": self.kind, "factory": self.factory}
        if self.nlist is not None:
            data["nlist"] = self.nlist
        if self.rerank:
            data["rerank"] = True
        data["estimated_mb"] = self.estimated_mb
        if self.memory_budget_mb is not None:
            data["memory_budget_mb"] = self.memory_budget_mb
        if self.vectors is not None:  # a built index: every measured field
            data.update(vectors=self.vectors, dim=self.dim, effort=self.effort, recall_at_10=self.recall_at_10,
                        recall_queries=self.recall_queries, build_seconds=self.build_seconds,
                        embeddings_version=self.embeddings_version, faiss_version=self.faiss_version)
        return data

    @classmethod
    def from_json(cls, data: Any) -> IndexDescription:
        """The description of an index.json object; ValueError when it describes no index."""
        if not isinstance(data, dict) or data.get("kind") not in BUILT_KINDS:
            raise ValueError("index.json does not describe an index")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
