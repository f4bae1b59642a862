"""Model evaluation (``fext evaluate``): how good a checkpoint is, in numbers and pictures.

- :mod:`~fext.evaluation.evaluate`: :func:`evaluate_checkpoints` (several checkpoints, summary, comparison) and
  :func:`evaluate_checkpoint` (metrics, figures, baseline and report of one).
- :mod:`~fext.evaluation.scoring`: one split's per-image metrics and latents, and the PCA baseline's.
- :mod:`~fext.evaluation.baseline`: the PCA baseline (best linear compressor of the latent's size).
- :mod:`~fext.evaluation.figures`: reconstruction sheets, worst images, latent PCA, curves, comparison.
- :mod:`~fext.evaluation.summary`: ``checkpoints_summary.csv`` and ``comparison.html`` across checkpoints.
- :mod:`~fext.evaluation.pages`: the HTML of ``report.html`` and ``comparison.html``.
"""

from fext.evaluation.baseline import PCABaseline, fit_pca
from fext.evaluation.evaluate import MAX_TRAIN_IMAGES, MAX_VALIDATION_IMAGES, evaluate_checkpoint, evaluate_checkpoints
from fext.evaluation.scoring import PCA_MAX_IMAGES
from fext.evaluation.summary import SUMMARY_COLUMNS, write_checkpoints_summary, write_comparison

__all__ = [
    "MAX_TRAIN_IMAGES",
    "MAX_VALIDATION_IMAGES",
    "PCA_MAX_IMAGES",
    "PCABaseline",
    "SUMMARY_COLUMNS",
    "evaluate_checkpoint",
    "evaluate_checkpoints",
    "fit_pca",
    "write_comparison",
    "write_checkpoints_summary",
]
