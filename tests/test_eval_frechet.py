"""Fréchet distance against scipy.linalg.sqrtm and closed forms; streaming statistics."""

import numpy as np
import pytest
from scipy import linalg

from vdm_jax.evaluation.frechet import (
    StatsAccumulator,
    feature_statistics,
    frechet_distance,
    frechet_from_features,
)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.05 * np.eye(d)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    # Independent reference: the TTUR / ADM formula with a general matrix square root.
    covmean = linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_on_random_covariances(seed):
    rng = np.random.default_rng(seed)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(3)
    mu, s = rng.standard_normal(64), _random_cov(rng, 64)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)
    mu2, s2 = rng.standard_normal(64), _random_cov(rng, 64)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu, s), rel=1e-10
    )


def test_closed_form_for_commuting_singular_covariances():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute: Tr (Σ1 Σ2)^½ = Σ sqrt(a_i b_i). Zeros in a and b
    # make both covariances singular (the case where sqrtm needs ADM's ε·I fallback).
    rng = np.random.default_rng(4)
    d = 32
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0, 2, d), rng.uniform(0, 2, d)
    a[:5], b[3:9] = 0.0, 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_univariate_closed_form():
    # 1-d Gaussians: d² = (μ1 − μ2)² + (σ1 − σ2)².
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_feature_statistics_and_accumulator_match_numpy():
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((500, 16)) * 3 + 1000.0  # large mean: tests the shifted sums
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    acc = StatsAccumulator()
    for chunk in np.array_split(feats, 7):
        acc.update(chunk)
    mu_a, sigma_a = acc.finalize()
    np.testing.assert_allclose(mu_a, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma_a, sigma, rtol=1e-8, atol=1e-9)
    other = rng.standard_normal((400, 16))
    assert frechet_from_features(feats, other) == pytest.approx(
        frechet_distance(mu, sigma, *feature_statistics(other)), rel=1e-12
    )


def test_bad_inputs_raise_clear_errors():
    s = np.eye(4)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros(4), s, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(4), np.eye(3), np.zeros(4), s)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(4, np.nan), s, np.zeros(4), s)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))
