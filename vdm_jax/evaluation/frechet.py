"""Fréchet distance between Gaussians fitted to features (FID, sFID, digits-FID).

    d²((μ₁, Σ₁), (μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁ Σ₂)^{1/2}

All arithmetic is float64. The trace of the matrix square root uses the identity
Tr (Σ₁ Σ₂)^{1/2} = Tr (S Σ₂ S)^{1/2} with S = Σ₁^{1/2}: S Σ₂ S is symmetric positive
semi-definite, so both square roots come from symmetric eigendecompositions (real eigenvalues,
clipped at 0) instead of a general `scipy.linalg.sqrtm` of the non-symmetric product Σ₁ Σ₂. This
is the same number ADM / pytorch-fid compute, without their near-singular fallback
(adding ε·I to both covariances): singular covariances (fewer samples than dimensions, dead
features) simply contribute zero eigenvalues (those below eigh's round-off floor are set to 0).
"""

from __future__ import annotations

import numpy as np

__all__ = ["StatsAccumulator", "feature_statistics", "frechet_distance", "frechet_from_features"]


def _psd_eigenvalues_floored(w: np.ndarray) -> np.ndarray:
    """Eigenvalues (D,) of a symmetric PSD matrix with those below eigh's round-off floor
    (D · ε_float64 · max |w|) set to 0. A zero eigenvalue comes back as ±1e-16 or so, and its
    square root, ~1e-8, would otherwise enter the trace once per null direction."""
    floor = w.shape[0] * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)
    return np.where(w > floor, w, 0.0)


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (D, D) via eigh."""
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(_psd_eigenvalues_floored(w))) @ v.T


def _check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mu of shape (D,) and sigma of shape (D, D), got mu {mu.shape} and "
            f"sigma {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: statistics contain NaN or inf (were the features finite?)")
    # Covariances are symmetric up to round-off; symmetrize so eigh sees an exact symmetric matrix.
    return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D).

    Returns ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} as a Python float.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]} (statistics from "
            "different networks or layers?)"
        )
    s1 = _psd_sqrt(sigma1)
    inner = s1 @ sigma2 @ s1
    w = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_covmean = np.sqrt(_psd_eigenvalues_floored(w)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D), as ADM computes."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


class StatsAccumulator:
    """Streaming (μ, Σ) over feature chunks, in float64, for sample sets too big to hold at once.

    Accumulates n, Σ f and Σ f fᵀ around a shift (the first chunk's mean) so that large feature
    means do not cancel catastrophically; `finalize` gives the same unbiased estimate as
    `feature_statistics` on the concatenated features.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must have shape (N, D), got {f.shape}")
        if self._shift is None:
            self._shift = f.mean(axis=0) if len(f) else np.zeros(f.shape[1])
            self._sum = np.zeros(f.shape[1])
            self._outer = np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dim changed: {f.shape[1]} vs {self._shift.shape[0]}")
        c = f - self._shift  # (N, D)
        self.n += f.shape[0]
        self._sum += c.sum(axis=0)
        self._outer += c.T @ c

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors, got {self.n}")
        mean_c = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        return self._shift + mean_c, sigma
