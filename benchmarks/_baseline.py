"""The reference algorithm of the original numpy SVCCA code, as the yardstick for the benchmarks.

Written from the description of ``cca_core.get_cca_similarity``: the joint covariance of the
stacked ``(neurons, datapoints)`` matrices by ``np.cov``, the pseudo-inverse of each diagonal
block, its inverse square root through a symmetric eigendecomposition, then the SVD of
``invsqrt_xx @ sigma_xy @ invsqrt_yy``. SVCCA first reduces each centered input by a full SVD.
Inputs here are ``(num_datapoints, num_neurons)`` like the package's; they are transposed (a
view) into the reference orientation.
"""

from __future__ import annotations

import _common  # noqa: F401  (fixes thread counts before numpy loads)
import numpy as np


def _matrix_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """All canonical correlations of ``x`` (n, dx) and ``y`` (n, dy), descending."""
    acts_x, acts_y = x.T, y.T  # reference orientation (neurons, datapoints)
    dx, dy = acts_x.shape[0], acts_y.shape[0]
    sigma = np.cov(np.vstack([acts_x, acts_y]))
    sigma_xx, sigma_xy, sigma_yy = sigma[:dx, :dx], sigma[:dx, dx:], sigma[dx:, dx:]
    invsqrt_xx = _matrix_sqrt(np.linalg.pinv(sigma_xx))
    invsqrt_yy = _matrix_sqrt(np.linalg.pinv(sigma_yy))
    _, s, _ = np.linalg.svd(invsqrt_xx @ sigma_xy @ invsqrt_yy)
    return s[: min(dx, dy)]


def mean_cca(x: np.ndarray, y: np.ndarray) -> float:
    """Mean canonical correlation, as the reference code's ``mean(cca_coef1)``."""
    return float(np.mean(canonical_correlations(x, y)))


def _svd_reduce(x: np.ndarray, keep: float) -> np.ndarray:
    """Center, full SVD, keep the fewest directions reaching ``keep`` of the variance."""
    acts = x.T - x.T.mean(axis=1, keepdims=True)
    _, s, vh = np.linalg.svd(acts, full_matrices=False)
    fraction = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.sum(fraction < keep - 1e-12)) + 1
    return (s[:k, None] * vh[:k]).T  # scores (n, k)


def svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA: reduce each input by its leading singular directions, then mean CCA."""
    return mean_cca(_svd_reduce(x, keep), _svd_reduce(y, keep))


def floor_gram(stacked: np.ndarray) -> np.ndarray:
    """The least work of any exact method: one float64 Gram product of ``[x, y]`` (n, dx+dy)."""
    return stacked.T @ stacked
