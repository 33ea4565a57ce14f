"""The ELBO: exact on a known Gaussian with the optimal denoiser; discrete T approaches it from
above."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import elbo
from vdm_jax.core import schedules as sch

D = 16
MU = jnp.linspace(-0.8, 0.8, D)
STD = jnp.linspace(0.4, 2.0, D)
# Exact expected NLL of x ~ N(μ, diag(s²)): Σ_d ½ log(2π s_d²) + ½.
NLL = float(jnp.sum(0.5 * jnp.log(2 * jnp.pi * STD**2) + 0.5))
SCHEDULE = sch.vdm_linear(-12.0, 12.0)  # λ ∈ [−12, 12]: prior and decoder gaps < 1e-4 nats


def optimal_denoiser(z, t):
    """E[x | z_t] for Gaussian data: μ + α s² / (α² s² + σ²) (z − α μ)."""
    alpha, sigma = sch.alpha_sigma(SCHEDULE, t[:, None])
    return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * MU)


def _elbo_estimate(num_steps, batch, seed=0):
    key = jax.random.PRNGKey(seed)
    x = MU + STD * jax.random.normal(key, (batch, D))
    terms = jax.jit(lambda x, k: elbo.elbo_terms(
        optimal_denoiser, SCHEDULE, x, k, prediction="x", num_levels=0,
        num_steps=num_steps, decoder="gaussian"))(x, jax.random.fold_in(key, 1))
    total = np.asarray(terms["total"], np.float64)
    return total.mean(), total.std() / math.sqrt(batch)


def test_continuous_elbo_equals_exact_nll_for_gaussian_data():
    value, se = _elbo_estimate(0, 1_000_000)
    assert se < 0.005 * NLL  # the Monte Carlo error is small enough for a 1% comparison
    assert abs(value - NLL) < 0.01 * NLL, (value, NLL)


def test_discrete_elbo_approaches_from_above_monotonically():
    values = [_elbo_estimate(T, 400_000, seed=T)[0] for T in (10, 100, 1000)]
    assert values[0] > values[1] > values[2] > NLL, values
    continuous, _ = _elbo_estimate(0, 400_000, seed=3)
    assert values[2] - NLL < 0.1 * NLL and abs(continuous - NLL) < values[2] - NLL


def test_discrete_kl_term_equals_weighted_eps_form():
    """KL(q(z_s|z_t,x) ‖ q(z_s|z_t,x̂)) = ½ (SNR(s) − SNR(t)) ‖x − x̂‖² = ½ expm1(λ_s − λ_t) ‖ε − ε̂‖²,
    and DDPM's β_t² / (2 σ_t² α_t (1 − ᾱ_t)) ‖ε − ε̂‖² with σ_t² = β̃_t (Ho et al. eq. 12)."""
    from vdm_jax.core.diffusion import gaussian_kl, q_posterior, sum_except_batch

    # float64: the KL of two nearby Gaussians cancels digits; the identity is algebraic.
    with jax.enable_x64(True):
        T = 1000
        schedule = sch.ddpm_linear(T)
        i = np.array([5, 50, 400, 900])
        t, s = i / T, (i - 1) / T
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.uniform(keys[0], (4, 8), jnp.float64, minval=-1, maxval=1)
        eps = jax.random.normal(keys[1], x.shape, jnp.float64)
        eps_hat = eps + 0.3 * jax.random.normal(keys[2], x.shape, jnp.float64)
        alpha, sigma = sch.alpha_sigma(schedule, t[:, None])
        z = alpha * x + sigma * eps
        x_hat = (z - sigma * eps_hat) / alpha
        mean, var = q_posterior(schedule, s, t, z, x)
        mean_hat, _ = q_posterior(schedule, s, t, z, x_hat)
        kl = sum_except_batch(gaussian_kl(mean, var, mean_hat, var))
        weighted_eps = elbo.diffusion_loss_discrete(schedule, eps, eps_hat, t, T) / T
        np.testing.assert_allclose(kl, weighted_eps, rtol=1e-5)
        snr = lambda u: jnp.exp(schedule.log_snr(u))
        np.testing.assert_allclose(
            kl, 0.5 * (snr(s) - snr(t)) * jnp.sum((x - x_hat) ** 2, axis=1), rtol=1e-4)
        kl, eps, eps_hat = np.asarray(kl), np.asarray(eps), np.asarray(eps_hat)  # stay float64
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    b, ab_t, ab_s = betas[i - 1], ab[i - 1], ab[i - 2]
    post_var = (1 - ab_s) / (1 - ab_t) * b
    coef = b**2 / (2 * post_var * (1 - b) * (1 - ab_t))
    np.testing.assert_allclose(kl, coef * np.sum((eps - eps_hat) ** 2, axis=1), rtol=1e-3)


def test_discretized_decoder_is_a_normalized_distribution():
    """Σ_k P(x_k) = 1 over the K bins, for any mean and scale."""
    K = 17
    levels = 2 * (jnp.arange(K) + 0.5) / K - 1
    for mean, scale in [(0.13, 0.05), (-0.9, 0.3), (1.4, 2.0), (0.0, 1e-4)]:
        p = jnp.exp(-elbo.discretized_gaussian_nll(levels, mean, scale, K))
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    # Sharp decoder centred on the true level: NLL → 0.
    assert float(elbo.discretized_gaussian_nll(levels[3], levels[3], 1e-3, K)) < 1e-6


def test_prior_term_is_kl_to_standard_normal_for_vp():
    schedule = sch.vdm_linear(-13.3, 5.0)
    x = jnp.array([[0.5, -1.0, 0.0]])
    alpha, sigma = sch.alpha_sigma(schedule, jnp.ones(()))
    expected = 0.5 * np.sum(alpha**2 * np.asarray(x) ** 2 + sigma**2 - 1 - np.log(sigma**2))
    np.testing.assert_allclose(elbo.prior_loss(schedule, x), [expected], rtol=1e-4)


def test_bits_per_dim_units():
    nats = jnp.array([64 * math.log(2)])
    np.testing.assert_allclose(elbo.bits_per_dim(nats, (1, 8, 8, 1)), [1.0], rtol=1e-6)


def test_unknown_decoder_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown decoder"):
        elbo.reconstruction_loss(SCHEDULE, jnp.zeros((1, 2)), jnp.zeros((1, 2)), 256, "logistic")
