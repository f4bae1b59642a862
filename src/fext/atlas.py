"""``fext atlas``: from a folder of images to an atlas of them in one command, resumable.

The steps are the commands a person would otherwise run one by one: analyze, train within a time
budget, evaluate (the scorecard), encode, index (large collections only) and explore. What is done
is recorded in ``resources/atlas/<folder>.json``, so a second run continues an interrupted one
(training resumes from its last epoch) and, after images were added, re-analyzes, encodes only the
new images and explores again, keeping the trained model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fext._io import write_json
from fext.config import Config, with_overrides
from fext.workspace import Workspace

log = logging.getLogger(__name__)

INDEX_FROM = 100_000
"""Vectors from which the atlas builds a faiss index (below, exact search takes well under a second)."""

MINUTES = {"cpu": ((1_000, 15), (10_000, 30), (None, 60)), "cuda": ((1_000, 5), (10_000, 10), (100_000, 20), (None, 30))}
"""Default training budgets: (fewer images than, minutes) per device kind; a CPU trains about 10x slower."""

STEPS = ("analyze", "train", "evaluate", "encode", "index", "explore")


@dataclass(frozen=True)
class Atlas:
    """What ``fext atlas`` made: the atlas page, and the checkpoint and encoded folder behind it."""

    page: Path
    checkpoint: Path
    embeddings: Path
    minutes: float
    done: dict[str, str]
    """Step -> "ran" or why it was skipped ("done before", "n vectors: exact search is fast")."""

    @property
    def url(self) -> str:
        return self.page.resolve().as_uri()

    def summary(self) -> str:
        steps = ", ".join(f"{step} {how}" for step, how in self.done.items())
        return f"Steps: {steps}\nCheckpoint: {self.checkpoint}\nEmbeddings: {self.embeddings}\nAtlas: {self.url}"


def default_minutes(images: int, device_type: str) -> float:
    """The training budget for ``images`` images on a device of ``device_type`` ("cpu", "cuda", ...)."""
    for below, minutes in MINUTES["cuda" if device_type == "cuda" else "cpu"]:
        if below is None or images < below:
            return float(minutes)
    raise AssertionError("the last budget has no bound")


def choose_minutes(cfg: Config, minutes: float | None, images: int) -> tuple[float, str]:
    """The training budget and, in words, where it came from: --minutes, the configuration, or the machine."""
    if minutes is not None:
        return minutes, "--minutes"
    if cfg.training.TIME_BUDGET_MINUTES > 0:
        return cfg.training.TIME_BUDGET_MINUTES, "training.TIME_BUDGET_MINUTES"
    from fext.distributed import device_for

    device = device_for(cfg.device.DEVICE, cfg.device.DEVICE_ID)
    kind = "a GPU" if device.type == "cuda" else "a CPU"
    return default_minutes(images, device.type), f"chosen for {kind} and {images:,} images; --minutes changes it"


def folder_fingerprint(paths: list[Path]) -> str:
    """A hash of the images' paths, sizes and modification times: it changes when images are added or edited."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def state_file(ws: Workspace, folder: Path) -> Path:
    """Where the atlas of ``folder`` records its progress: one file per image folder."""
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return ws.resources / "atlas" / f"{folder.name or 'images'}_{key}.json"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def make_atlas(cfg: Config, ws: Workspace, folder: Path | None = None, *, minutes: float | None = None,
               progress: bool = True) -> Atlas:
    """Run the steps of ``fext atlas`` on ``folder`` (default resources/dataset); return where the atlas is.

    Steps done in an earlier run on the same images are skipped; see the module docstring.
    """
    from fext.data import list_folder

    ws.ensure()
    folder = Path(folder or ws.dataset).expanduser().absolute()
    listing = list_folder(folder)
    listing.require_images("Pass a folder of images: fext atlas DIR.")
    path = state_file(ws, folder)
    state = _read_state(path)
    fingerprint = folder_fingerprint(listing.images)
    budget, why = choose_minutes(cfg, minutes, len(listing.images))
    log.info("Atlas of %s (%d images); training budget %g minutes (%s).", folder, len(listing.images), budget, why)
    cfg = with_overrides(cfg, {"training.TIME_BUDGET_MINUTES": budget})
    done: dict[str, str] = {}

    def record(step: str, how: str, **values: Any) -> None:
        done[step] = how
        state.update(values, folder=str(folder))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, state)

    _analyze(cfg, ws, folder, state, fingerprint, record, progress)
    checkpoint = _train(cfg, ws, folder, state, record, progress, longer=minutes is not None)
    _evaluate(cfg, ws, checkpoint, state, record, progress)
    embeddings = _encode(cfg, ws, folder, checkpoint, record, progress)
    _index(embeddings, record, progress)
    page = _explore(cfg, embeddings, state, record, progress)
    return Atlas(page, checkpoint, embeddings, budget, done)


def _step(number: int, what: str) -> None:
    log.info("Step %d/%d: %s", number, len(STEPS), what)


def _analyze(cfg: Config, ws: Workspace, folder: Path, state: dict, fingerprint: str, record: Any,
             progress: bool) -> None:
    """1. The dataset analysis, again only when the images changed."""
    if state.get("analyzed") == fingerprint:
        _step(1, "analyze: done before, the images have not changed")
        return record("analyze", "done before")
    from fext.analysis import analyze

    _step(1, "analyze the images (statistics, broken files, duplicates)")
    analyze(cfg, ws, dataset=folder, progress=progress)
    record("analyze", "ran", analyzed=fingerprint)


def _train(cfg: Config, ws: Workspace, folder: Path, state: dict, record: Any, progress: bool, longer: bool) -> Path:
    """2. Training within the budget: from scratch, or continuing the checkpoint an interrupted run left, or
    the finished one when ``longer`` (--minutes given) asks for a larger budget than it was trained with."""
    from fext.checkpoints import is_checkpoint, read_checkpoint
    from fext.training import train
    from fext.training.schedule import budget_spent

    known = ws.checkpoints / state["checkpoint"] if state.get("checkpoint") else None
    budget = cfg.training.TIME_BUDGET_MINUTES
    extend = longer and budget > float(state.get("minutes") or 0)
    if known is not None and is_checkpoint(known) and state.get("trained") and not extend:
        _step(2, f"train: done before ({known.name}; a larger --minutes trains it longer)")
        record("train", "done before")
        return known
    resume = known if known is not None and is_checkpoint(known) else None
    if resume is not None and budget_spent(read_checkpoint(resume).epochs, cfg.training):
        _step(2, f"train: the budget was spent by {resume.name} before it stopped")
        record("train", "done before", trained=True, minutes=cfg.training.TIME_BUDGET_MINUTES)
        return resume
    _step(2, f"train for about {cfg.training.TIME_BUDGET_MINUTES:g} minutes"
          + (f", continuing {resume.name}" if resume else ""))
    before = set(os.listdir(ws.checkpoints)) if ws.checkpoints.is_dir() else set()
    try:
        checkpoint = train(cfg, ws, resume=resume, dataset=folder, progress=progress)
    except BaseException:
        # Ctrl-C saved a resumable checkpoint (or an epoch completed before a failure): the next run continues it.
        made = sorted(name for name in set(os.listdir(ws.checkpoints)) - before if is_checkpoint(ws.checkpoints / name))
        if made:
            record("train", "interrupted", checkpoint=made[-1], trained=False)
        raise
    record("train", "ran", checkpoint=checkpoint.name, trained=True, minutes=budget)
    return checkpoint


def _evaluate(cfg: Config, ws: Workspace, checkpoint: Path, state: dict, record: Any, progress: bool) -> None:
    """3. The scorecard of the checkpoint (once per checkpoint)."""
    if state.get("evaluated") == checkpoint.name:
        _step(3, "evaluate: done before")
        return record("evaluate", "done before")
    from fext.evaluation import evaluate_checkpoints

    _step(3, "evaluate the model (scorecard, reconstructions, report)")
    for out in evaluate_checkpoints([checkpoint], cfg, ws, progress=progress):
        log.info("Report: %s", out / "report.html")
    record("evaluate", "ran", evaluated=checkpoint.name)


def _encode(cfg: Config, ws: Workspace, folder: Path, checkpoint: Path, record: Any, progress: bool) -> Path:
    """4. The feature vectors of every image (incremental: only new or changed images are encoded)."""
    from fext.encoding import encode_folder

    _step(4, "encode the images (only new or changed ones when encoded before)")
    out = encode_folder(checkpoint, folder, None, config=cfg, workspace=ws, progress=progress)
    record("encode", "ran", embeddings=str(out))
    return out


def _index(embeddings: Path, record: Any, progress: bool) -> None:
    """5. A faiss index for large collections; `fext encode` keeps an existing one up to date."""
    from fext.encoding.files import INDEX_JSON, open_encoding

    vectors = len(open_encoding(embeddings).vectors)
    if vectors < INDEX_FROM:
        _step(5, f"index: not needed for {vectors:,} vectors (exact search is fast below {INDEX_FROM:,})")
        return record("index", f"not needed ({vectors} vectors)")
    if (embeddings / INDEX_JSON).is_file():
        _step(5, "index: present (kept up to date by encode)")
        return record("index", "done before")
    from fext.index import build_index

    _step(5, f"index {vectors:,} vectors with faiss")
    build_index(embeddings, "auto", None, progress=progress)
    record("index", "ran")


def _explore(cfg: Config, embeddings: Path, state: dict, record: Any, progress: bool) -> Path:
    """6. The atlas page and CSVs, again only when the vectors changed."""
    from fext.encoding.files import EMBEDDINGS

    vectors = embeddings / EMBEDDINGS
    version = f"{vectors.stat().st_size}:{vectors.stat().st_mtime_ns}"
    page = embeddings / "explore" / "atlas.html"
    if state.get("explored") == version and page.is_file():
        _step(6, "explore: done before, the vectors have not changed")
        record("explore", "done before")
        return page
    from fext.explore.run import explore

    _step(6, "explore: map, clusters, outliers, near-duplicates")
    result = explore(embeddings, None, config=cfg, progress=progress)
    record("explore", "ran", explored=version)
    return result.output / "atlas.html"
