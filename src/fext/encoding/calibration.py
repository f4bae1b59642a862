"""The similarity bands of an encoded folder, measured on edited copies of its own images (see :mod:`fext.similarity`).

Run once a folder is finished: a sample of its images is edited (cropped, re-saved, halved) and encoded again
with the same checkpoint, and pairs of different images are compared; ``metadata.json`` then records the
bands under ``"bands"``, with the sample size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fext.config import Config
from fext.encoding import files
from fext.encoding.inference import device_of, embed, load_model
from fext.errors import FeXTError
from fext.similarity import bands_from, copy_similarities
from fext.vectors import normalized, seeded_rows

log = logging.getLogger(__name__)

SAMPLE = 64
"""Images whose edited copies measure the bands (with their pairs: 2,016 pairs of different images)."""


def record_bands(output: Path, ckpt: Path, config: Config, seed: int = 0) -> dict[str, float] | None:
    """Measure the bands of the finished folder ``output`` and record them in its metadata.json; return them.

    A folder whose images are gone, or with fewer than two images, keeps no bands (said in a log line).
    """
    encoding = files.open_encoding(output)
    paths = [Path(encoding.metadata.input) / p for p in files.row_paths(output)]
    if len(paths) < 2:
        log.info("%s: too few images to measure what similarity scores mean", output)
        return None
    rows = seeded_rows(len(paths), SAMPLE, seed)
    device = device_of(config)
    model = load_model(ckpt, device)
    vectors = np.asarray(encoding.vectors[rows], dtype=np.float32)
    copies = copy_similarities(lambda images: embed(model, images, device, config.device.MIXED_PRECISION),
                               [paths[r] for r in rows], vectors, encoding.metadata.img_size)
    if np.isnan(copies).all():
        log.info("%s: its images cannot be read any more, so what similarity scores mean is not measured", output)
        return None
    unit = normalized(vectors)
    pairs = (unit @ unit.T)[np.triu_indices(len(rows), k=1)]
    bands = bands_from(copies, pairs)
    files.write_metadata(output, encoding.metadata.with_bands(bands, int(len(rows))))
    log.info("What similarity scores mean here (measured on edited copies of %d images): duplicate >= %.3f, "
             "near-duplicate >= %.3f, similar >= %.3f, unrelated below", len(rows), bands["duplicate"],
             bands["near-duplicate"], bands["similar"])
    return bands


def read_bands(folder: Path) -> dict[str, float] | None:
    """The bands recorded in ``folder``'s metadata.json, or None (an older folder, or one that is not readable:
    the command that opens it says what is wrong). Reads metadata.json alone, so it adds no pass over the vectors."""
    try:
        return files.read_metadata(Path(folder)).bands
    except FeXTError:
        return None
