"""Which images an evaluation scores: the checkpoint's own train/validation split, or ``--dataset``'s images.

:func:`select_splits` rebuilds the split a checkpoint was trained with from the folder and the configuration
it records (or takes every image of another folder as held out), and :func:`seeded_sample` caps a side at a
seeded sample.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from fext.checkpoints import CheckpointDescription
from fext.config import Config
from fext.data import Listing, list_folder, select_images
from fext.errors import FeXTError
from fext.evaluation.scoring import SplitImages

log = logging.getLogger(__name__)


def select_splits(
    ckpt: Path, description: CheckpointDescription, dataset: Path | None
) -> tuple[SplitImages, SplitImages, Listing, str]:
    """(train, validation, the evaluated folder's listing, source) for a checkpoint, from its recorded data or ``dataset``."""
    recorded = description.dataset
    ckpt_cfg = description.configuration
    if ckpt_cfg is None:  # a model saved outside `fext train`
        log.info("%s records no configuration: its images are split as the default configuration splits them",
                 ckpt.name)
        ckpt_cfg = Config()
    root = Path(recorded.root) if recorded and recorded.root else None

    if dataset is not None:
        dataset = Path(dataset).expanduser().absolute()
        listing = _listed(list_folder(dataset))
        if not listing.images:
            raise FeXTError(f"--dataset {dataset}: no image found in it. Pass a folder that holds images.")
        evaluated = listing.images
        train: list[Path] = []
        if root is not None and root.is_dir() and root.resolve() != dataset.resolve():
            try:
                train = select_images(ckpt_cfg, root)[0]
            except FeXTError:
                train = []
        if not train:
            log.info("The checkpoint's training images are not available: no train metrics, and the PCA baseline "
                     "is fitted on the --dataset images themselves")
        return SplitImages("train", train), SplitImages("validation", evaluated), listing, "--dataset"

    hint = f"evaluate on another folder with `fext evaluate {ckpt.name} --dataset DIR`"
    if root is None:
        raise FeXTError(f"{ckpt.name} does not record where the training images are; {hint}")
    if not root.is_dir():
        raise FeXTError(f"The training images of {ckpt.name} are gone: {root} does not exist (moved or deleted?); {hint}")
    try:
        listing = _listed(list_folder(root))
        train, validation = select_images(ckpt_cfg, root, listing)
    except FeXTError as e:
        raise FeXTError(f"The training images of {ckpt.name} cannot be found: {e} To use other images, {hint}") from None
    expected = {recorded.train + recorded.validation, recorded.train + recorded.validation + recorded.failed}
    if len(train) + len(validation) not in expected:
        log.warning("%s now holds %d images for this checkpoint where training used %d train + %d validation: "
                    "the folder changed since, so the split is not exactly the training one",
                    root, len(train) + len(validation), recorded.train, recorded.validation)
    return SplitImages("train", train), SplitImages("validation", validation), listing, "training split"


def _listed(listing: Listing) -> Listing:
    """``listing``, after one log line per kind of file not evaluated whole (listed in metrics.json)."""
    for note in listing.notes(where="not_images in metrics.json"):
        log.info("%s: %s", listing.root, note)
    return listing


def seeded_sample(paths: list[Path], cap: int, seed: int) -> list[Path]:
    """At most ``cap`` of ``paths``, drawn with ``seed``, in their original order."""
    if len(paths) <= cap:
        return list(paths)
    keep = sorted(random.Random(seed).sample(range(len(paths)), cap))
    return [paths[i] for i in keep]
