"""atlas.html: one self-contained page (data, thumbnails, script and style inside) written atomically.

The page template, script and style are package data files beside this module; the data goes
in as one JSON block with numeric columns as base64 typed arrays (compact, and decoded in
milliseconds by the browser), the thumbnails as a few sprite-sheet data URIs.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fext._io import atomic_open
from fext.explore.clusters import Clusters
from fext.explore.duplicates import Duplicates
from fext.explore.neighbours import Neighbours
from fext.explore.outliers import Outliers
from fext.explore.thumbnails import Sprites, iter_sheet_uris
from fext.similarity import BANDS

TOP_OUTLIERS = 48
MAX_GROUPS = 300
"""Duplicate groups shown on the page (duplicates.csv lists them all)."""


@dataclass(frozen=True)
class PageNotes:
    """The sentences the page shows under its title and sections."""

    title: str
    summary: str
    clusters: str
    outliers: str
    duplicates: str
    thumbnails: str = ""
    selection: str = ""


def write_page(
    path: Path,
    paths: list[str],
    xy: np.ndarray,
    clusters: Clusters,
    outliers: Outliers,
    duplicates: Duplicates,
    neighbours: Neighbours,
    sprites: Sprites | None,
    image_base: str | None,
    notes: PageNotes,
    selection: list[int] | None = None,
    bands: dict[str, float] | None = None,
) -> None:
    """Write atlas.html to ``path``; ``image_base``: URL prefix (relative to the page) of the original images;
    ``selection``: rows marked as selected when the page opens (``fext explore --selection``); ``bands``: the
    encoding's similarity bands (:mod:`fext.similarity`), whose words the page shows beside neighbours' scores."""
    n = len(paths)
    present = sprites.present if sprites else np.zeros(n, dtype=bool)
    data = {
        "n": n, "k": clusters.k, "neighbours": neighbours.k, "image_base": image_base,
        "paths": paths,
        "x": _b64(xy[:, 0], np.float32), "y": _b64(xy[:, 1], np.float32),
        "cluster": _b64(clusters.labels, np.int16), "score": _b64(outliers.score, np.float32),
        "nbr": _b64(neighbours.indices, np.int32), "nsim": _b64(neighbours.similarities, np.float32),
        "present": _b64(present, np.uint8),
        "tile": sprites.tile if sprites else 0, "columns": sprites.columns if sprites else 0,
        "sheets": list(iter_sheet_uris(sprites)) if sprites else [],
        "clusters": clusters.summary(),
        "outliers": outliers.ranking()[:TOP_OUTLIERS].tolist(),
        "why": [outliers.why(r) for r in outliers.ranking()[:TOP_OUTLIERS].tolist()],
        "selection": [int(r) for r in selection or []],
        "bands": [[name, bands.get(name)] for name in BANDS] if bands else None,  # the last band: no lower edge
        "duplicates": [
            {"rows": group, "kind": kind, "min": float(np.nanmin(duplicates.similarity[group][1:]))}
            for group, kind in zip(duplicates.groups[:MAX_GROUPS], duplicates.kinds)
        ],
    }
    parts = {
        "TITLE": html.escape(notes.title), "SUMMARY": html.escape(notes.summary),
        "CLUSTER_NOTE": html.escape(notes.clusters), "OUTLIER_NOTE": html.escape(notes.outliers),
        "DUPLICATE_NOTE": html.escape(notes.duplicates), "SELECTION_NOTE": html.escape(notes.selection),
        "THUMBNAIL_NOTE": f'<p class="hint">{html.escape(notes.thumbnails)}</p>' if notes.thumbnails else "",
        "CSS": _asset("atlas.css"), "JS": _asset("atlas.js"),
        # "</script" or "<!--" in a path would confuse the HTML parser; "\u003c" is the same JSON string.
        "DATA": json.dumps(data, separators=(",", ":")).replace("<", "\\u003c"),
    }
    page = re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], _asset("atlas.html"))
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)


def _asset(name: str) -> str:
    return resources.files("fext.explore").joinpath(name).read_text(encoding="utf-8")


def _b64(values: Any, dtype: Any) -> str:
    """Little-endian bytes of ``values`` as ``dtype``, base64 (the browser's typed arrays read them as they are)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")
