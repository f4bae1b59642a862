"""The PCA baseline: the best linear compressor with as many numbers per image as the model's latent.

PCA with k components is the linear encoder/decoder pair of minimum mean squared error on its
training images (Eckart–Young), so an autoencoder with a D-number latent is worth its cost only
when it reconstructs unseen images better than PCA with k = D components.

Fitting works on n flattened images of d = 3·S·S pixels with n ≪ d (2,000 images of 49,152 pixels
at 128 px). Instead of a (d × d) covariance or an SVD of the (n × d) matrix, it diagonalises the
(n × n) Gram matrix of the centred images (the "Gram trick"): an n²·d product and an n³ eigen
decomposition, in float64 so that small components keep their accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

# A float32 image matrix X carries rounding noise whose singular values stay below about
# eps32 · max|x| · (√n + √d); components under ten times that bound (or under 1e-7 of the largest,
# the accuracy of a float64 Gram eigendecomposition) are noise, not directions of the images.
_NOISE_FACTOR = 10.0
_RELATIVE_FLOOR = 1e-7
# Columns per chunk when accumulating float64 products, to bound the temporary memory.
_CHUNK = 8192


@dataclass(frozen=True)
class PCABaseline:
    """A fitted PCA: ``mean`` (d,) and orthonormal ``components`` (k, d), both float32."""

    mean: torch.Tensor
    components: torch.Tensor
    explained_variance_ratio: float
    """Fraction of the training images' variance the k components hold."""
    fitted_on: int
    """Number of images it was fitted on."""
    requested: int
    """Components asked for; ``k`` is smaller when the images span fewer dimensions."""

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def to(self, device: torch.device) -> PCABaseline:
        """The same PCA with its tensors on ``device``."""
        return replace(self, mean=self.mean.to(device), components=self.components.to(device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened images (B, d) -> coefficients (B, k)."""
        return (x.float() - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Coefficients (B, k) -> flattened images (B, d)."""
        return z @ self.components + self.mean

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> their projection, clamped to [0, 1] like the model's output."""
        flat = images.float().flatten(1)
        return self.decode(self.encode(flat)).clamp(0, 1).view_as(images)


def fit_pca(x: torch.Tensor, components: int, device: torch.device | None = None) -> PCABaseline:
    """Fit PCA with up to ``components`` components on ``x`` (n, d) float32 (one flattened image a row).

    At most n - 1 components exist (centring removes one dimension), and components at the level
    of float32 rounding noise are dropped (images that span fewer dimensions than asked give a
    smaller ``k``).
    ``device``: where the float64 products run (a CUDA device makes large fits fast); the result
    is on the CPU.
    """
    device = device if device is not None and device.type == "cuda" else torch.device("cpu")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix, got shape {tuple(x.shape)}")
    x = x.float()
    n, d = x.shape
    mean = x.mean(0)
    xc = (x - mean).to(device)  # (n, d)
    requested = components
    k = max(0, min(components, n - 1))
    gram = torch.zeros(n, n, dtype=torch.float64, device=device)
    for j in range(0, d, _CHUNK):
        block = xc[:, j : j + _CHUNK].double()
        gram += block @ block.T
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
    eigenvalues, eigenvectors = eigenvalues.cpu(), eigenvectors.cpu()
    total = float(eigenvalues.sum())
    singular = eigenvalues.sqrt()
    noise = _NOISE_FACTOR * torch.finfo(torch.float32).eps * float(x.abs().max()) * (n**0.5 + d**0.5)
    tolerance = max(noise, _RELATIVE_FLOOR * float(singular[0]))
    k = min(k, int((singular > tolerance).sum())) if total > 0 else 0
    # Right singular vectors v_i = Xcᵀ u_i / s_i, one chunk of pixels at a time.
    scaled = (eigenvectors[:, :k] / singular[:k]).to(device)  # (n, k)
    basis = torch.empty(k, d, dtype=torch.float32, device=device)
    for j in range(0, d, _CHUNK):
        basis[:, j : j + _CHUNK] = (xc[:, j : j + _CHUNK].double().T @ scaled).T.float()
    basis = basis.cpu()
    if k:
        basis /= basis.norm(dim=1, keepdim=True)
    ratio = float(eigenvalues[:k].sum()) / total if total > 0 else 1.0
    return PCABaseline(mean=mean, components=basis, explained_variance_ratio=ratio, fitted_on=n, requested=requested)


def project_2d_3d(features: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The first three principal coordinates of ``features`` (n, D) and each one's variance fraction.

    Returns (n, c) with c = min(3, n - 1, D) columns (zero columns pad missing ones up to 3) and
    the c variance ratios (zeros for padding).
    """
    f = features.double()
    f = f - f.mean(0)
    n = f.shape[0]
    c = min(3, n - 1, f.shape[1])
    coords = torch.zeros(n, 3)
    total = float(f.pow(2).sum())
    if c < 1 or total == 0:
        return coords, [0.0, 0.0, 0.0]
    # Randomised SVD of the centred features: only the top three directions are needed.
    u, s, _ = torch.pca_lowrank(f, q=c, center=False, niter=6)
    coords[:, :c] = (u * s).float()
    ratios = [float(v) / total for v in s.pow(2)] + [0.0] * (3 - c)
    return coords, ratios
