"""What a training step optimises: the inputs it feeds the model and the loss, per recipe.

``training.RECIPE`` chooses:

- ``"reconstruction"`` (also ``"seed"``): the original project's autoencoder training, exactly: the batch, augmented as a whole by
  :func:`~fext.data.augment.augment_batch` when ``dataset.IMG_AUGMENT``, is reconstructed and the
  loss is the mean absolute error.
- ``"views"``: two views of every image, each drawn independently per image (random resized
  crop, colour jitter, blur, optionally masked patches; one random flip per image that both views
  share, or one per view), go through the model one after the other (for half the memory; see
  :func:`fext.training.loop.compute_gradients`) or as one batch. Each view is reconstructed (MAE
  against the clean view), and VICReg terms on the two views' latents, and again on their
  :class:`Projector` outputs, make the feature vector useful for search: invariance (the two views
  of an image get the same vector), variance (every number keeps a spread over the batch, so the
  vectors cannot collapse to a constant that would make invariance trivial) and covariance
  (numbers do not repeat each other). Reconstruction alone teaches the latent to store pixels; the
  views teach it which pixel changes do not change the image. Bardes, Ponce and LeCun, "VICReg", 2022.

Both recipes keep the model's architecture and latent size; only the loss and the inputs differ.
The projector exists in training only: it is saved in the trainer state (for resuming), never in
the model's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fext.config import Config, ViewsConfig
from fext.data.augment import augment_batch, flip_half, mask_patches, random_view

VARIANCE_EPS = 1e-4
"""Added to the variance before the square root, so the hinge's gradient stays finite at zero spread."""


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's training loss: mean absolute error over every pixel of the batch, in float32."""
    return F.l1_loss(reconstruction.float(), target.float())


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two views' latents (B, D): zero exactly when they agree."""
    return F.mse_loss(z1.float(), z2.float())


def variance_loss(z: torch.Tensor) -> torch.Tensor:
    """Mean over the D latent numbers of max(0, 1 - std over the batch): zero when each spreads by 1 or more.

    A batch of one image has no spread to measure: the term is then zero (not nan).
    """
    if z.shape[0] < 2:
        return z.float().sum() * 0.0
    std = (z.float().var(dim=0) + VARIANCE_EPS).sqrt()
    return F.relu(1.0 - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances of the latent numbers over the batch, divided by D."""
    z = z.float()
    b, d = z.shape
    z = z - z.mean(0)
    cov = (z.T @ z) / max(b - 1, 1)  # (D, D)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


class Projector(nn.Sequential):
    """The "views" recipe's projector: latent (N, D) -> (N, width) by Linear, LayerNorm, ReLU, Linear.

    The "expander" of VICReg: the VICReg terms also act on its wider output, where matching the
    views and decorrelating the numbers does not have to be done within the latent's own D numbers
    and spatial layout (Bardes et al. 2022, section 4.5; Bordes et al., "Guillotine
    regularization", 2023). The terms on the latent itself stay, so the feature vector is
    invariant and decorrelated too.
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__(nn.Linear(dim, width), nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, width))


def recipe_projector(cfg: Config, feature_dim: int) -> Projector | None:
    """The projector a run of ``cfg`` trains beside the model, or None (the "reconstruction" recipe, PROJECTOR_DIM 0)."""
    width = cfg.training.VIEWS.PROJECTOR_DIM
    if cfg.training.RECIPE != "views" or width == 0:
        return None
    return Projector(feature_dim, width)


def vicreg_terms(z: torch.Tensor, views: ViewsConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum and the (unweighted) invariance, variance and covariance terms of ``z``
    (2B, N): the first B rows one view of each image, the last B the other."""
    z1, z2 = z.float().chunk(2)
    terms = {
        "invariance": invariance_loss(z1, z2),
        "variance": (variance_loss(z1) + variance_loss(z2)) / 2,
        "covariance": (covariance_loss(z1) + covariance_loss(z2)) / 2,
    }
    total = (views.INVARIANCE_WEIGHT * terms["invariance"] + views.VARIANCE_WEIGHT * terms["variance"]
             + views.COVARIANCE_WEIGHT * terms["covariance"])
    return total, terms


def views_latent_loss(
    latent: torch.Tensor, views: ViewsConfig, projector: nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted VICReg terms of the two views' latents (2B, D), first B rows one view of each
    image, and again of their ``projector`` outputs when there is one; and the unweighted terms
    (those of the projection prefixed "projection_")."""
    total, terms = vicreg_terms(latent, views)
    if projector is not None:
        projected, projection_terms = vicreg_terms(projector(latent.float()), views)
        total = total + projected
        terms.update({f"projection_{k}": v for k, v in projection_terms.items()})
    return total, terms


def views_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, views: ViewsConfig, latent: torch.Tensor | None = None,
    projector: nn.Module | None = None, share: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The "views" recipe's loss, or the share of it one pass carries.

    Both views in one pass: ``reconstruction`` and ``target`` (2B, 3, S, S), the first B rows one
    view of each image, the last B the other; ``latent`` (2B, D); ``share`` 1. One view at a time
    (``training.VIEWS.ONE_VIEW_AT_A_TIME``): ``reconstruction`` and ``target`` of one view (B rows)
    and ``share`` 1/2 (the mean over 2B rows is the mean of the two views' means); ``latent``, both
    views' latents, in one of the two passes only. The total is RECONSTRUCTION_WEIGHT x ``share`` x
    the reconstruction MAE, plus :func:`views_latent_loss` of ``latent`` (the recipe's
    :class:`Projector` or None). Returns it and its terms (unweighted, detached) for the logs.
    """
    reconstruction_term = reconstruction_loss(reconstruction, target)
    total = views.RECONSTRUCTION_WEIGHT * share * reconstruction_term
    terms = {"reconstruction": reconstruction_term}
    if latent is not None:
        latent_total, latent_terms = views_latent_loss(latent, views, projector)
        total = total + latent_total
        terms.update(latent_terms)
    return total, {k: v.detach() for k, v in terms.items()}


def training_inputs(x: torch.Tensor, cfg: Config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input, reconstruction target) of a training batch ``x`` (B, 3, S, S) for the recipe.

    "reconstruction": the batch (augmented as a whole when ``dataset.IMG_AUGMENT``) is both, (B, ...).
    "views": two views per image, (2B, ...): the target is the clean views, the input the views
    with ``MASK_RATIO`` of their patches greyed. All draws come from ``generator``.
    """
    if cfg.training.RECIPE == "reconstruction":
        if cfg.dataset.IMG_AUGMENT:
            x = augment_batch(x, generator)
        return x, x
    views = cfg.training.VIEWS
    if views.SHARED_FLIP:
        x = flip_half(x, generator)  # the flip is drawn once per image: both views keep that orientation
    target = torch.cat([random_view(x, generator, views.CROP_MIN_AREA, views.COLOR_JITTER, views.BLUR,
                                    flip=not views.SHARED_FLIP) for _ in range(2)])
    return mask_patches(target, views.MASK_RATIO, generator), target


def training_loss(
    out: dict[str, torch.Tensor], target: torch.Tensor, cfg: Config, projector: nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The recipe's loss of the model's output ``out`` for ``target`` (float32), and its terms.

    ``projector``: the run's :func:`recipe_projector` (possibly wrapped for DDP), or None.
    """
    if cfg.training.RECIPE == "reconstruction":
        return reconstruction_loss(out["reconstruction"], target), {}
    return views_loss(out["reconstruction"], target, cfg.training.VIEWS, out["latent"], projector)
