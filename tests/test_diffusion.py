"""Forward process, transition, posterior and Gaussian KL against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import diffusion as dif
from vdm_jax.core import schedules as sch


def _chain_moments_check(z_chain, x, schedule, t):
    """Monte Carlo mean/variance of the chain's z_t against q(z_t | x) within 4 standard errors."""
    n = z_chain.shape[0]
    alpha, sigma = (np.asarray(a, np.float64) for a in sch.alpha_sigma(schedule, jnp.asarray(t)))
    z = np.asarray(z_chain, np.float64)
    mean_se = sigma / np.sqrt(n)
    var_se = sigma**2 * np.sqrt(2.0 / (n - 1))
    assert np.all(np.abs(z.mean(0) - alpha * x) < 4 * mean_se)
    assert np.all(np.abs(z.var(0, ddof=1) - sigma**2) < 4 * var_se)


def test_ddpm_markov_chain_matches_closed_form_marginal():
    """Iterate x_i = √(1 − β_i) x_{i−1} + √β_i ε with DDPM's literal β's; compare to q(z_t|x)."""
    T, n = 1000, 20000
    betas = np.linspace(1e-4, 0.02, T)
    x = np.array([0.7, -0.3, 0.0], np.float32)
    key = jax.random.PRNGKey(0)

    def step(z, inputs):
        beta, k = inputs
        z = jnp.sqrt(1 - beta) * z + jnp.sqrt(beta) * jax.random.normal(k, z.shape)
        return z, None

    z0 = jnp.broadcast_to(x, (n, 3))
    for stop in (10, 100, 1000):
        keys = jax.random.split(jax.random.fold_in(key, stop), stop)
        z, _ = jax.lax.scan(step, z0, (jnp.asarray(betas[:stop], jnp.float32), keys))
        _chain_moments_check(z, x, sch.ddpm_linear(T), stop / T)


def test_cosine_chain_of_transitions_matches_closed_form_marginal():
    """Iterate q(z_{t_i} | z_{t_{i−1}}) on a 50-step grid; compare with q(z_t | x)."""
    schedule, n, steps = sch.cosine(), 20000, 50
    grid = jnp.linspace(0.0, 0.9, steps + 1)
    x = np.array([0.5, -0.9], np.float32)
    alpha_ts, var_ts = dif.q_transition(schedule, grid[:-1], grid[1:])

    def step(z, inputs):
        a, v, k = inputs
        return a * z + jnp.sqrt(v) * jax.random.normal(k, z.shape), None

    keys = jax.random.split(jax.random.PRNGKey(1), steps)
    z, _ = jax.lax.scan(step, jnp.broadcast_to(x, (n, 2)), (alpha_ts, var_ts, keys))
    _chain_moments_check(z, x, schedule, 0.9)


def test_q_sample_is_alpha_x_plus_sigma_eps():
    schedule = sch.vdm_linear()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 1))
    eps = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    t = jnp.array([0.1, 0.4, 0.6, 0.9])
    alpha, sigma = sch.alpha_sigma(schedule, t)
    expected = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
    np.testing.assert_allclose(dif.q_sample(schedule, x, t, eps), expected, rtol=1e-6)


@pytest.mark.parametrize("schedule", [sch.cosine_log_snr(), sch.rectified_flow(), sch.edm()],
                         ids=["vp", "flow", "ve"])
def test_posterior_matches_bayes_rule_numerically(schedule):
    """p(z_s | z_t, x) ∝ q(z_t | z_s) q(z_s | x) on a fine grid of z_s (float64 quadrature)."""
    s, t = jnp.array([0.3, 0.55]), jnp.array([0.35, 0.8])
    x, z_t = jnp.array([0.4, -0.8]), jnp.array([0.9, 0.2])
    mean, var = dif.q_posterior(schedule, s, t, z_t, x)
    a_s, sg_s = (np.asarray(v, np.float64) for v in sch.alpha_sigma(schedule, s))
    a_ts, v_ts = (np.asarray(v, np.float64) for v in dif.q_transition(schedule, s, t))
    for i in range(2):
        grid = np.linspace(a_s[i] * x[i] - 12 * sg_s[i], a_s[i] * x[i] + 12 * sg_s[i], 400001)
        log_w = (-0.5 * (float(z_t[i]) - a_ts[i] * grid) ** 2 / v_ts[i]
                 - 0.5 * (grid - a_s[i] * float(x[i])) ** 2 / sg_s[i] ** 2)
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        m = (w * grid).sum()
        np.testing.assert_allclose(float(mean[i]), m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(var[i]), (w * (grid - m) ** 2).sum(), rtol=1e-5)


def test_ddpm_posterior_is_the_s_equals_t_minus_one_step_case():
    """β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t and DDPM's mean coefficients (Ho et al. eq. 7)."""
    T = 1000
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    i = np.array([2, 10, 500, 999])  # 1-based step i uses β_i = betas[i-1]
    beta, ab_t, ab_s = betas[i - 1], ab[i - 1], ab[i - 2]
    coef_x = np.sqrt(ab_s) * beta / (1 - ab_t)
    coef_z = np.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t)
    var = (1 - ab_s) / (1 - ab_t) * beta
    a, b, v = dif.posterior_coefficients(sch.ddpm_linear(T), jnp.asarray((i - 1) / T),
                                         jnp.asarray(i / T))
    np.testing.assert_allclose(a, coef_z, rtol=2e-5)
    np.testing.assert_allclose(b, coef_x, rtol=2e-4)
    np.testing.assert_allclose(v, var, rtol=2e-4)


def test_gaussian_kl_matches_monte_carlo():
    m1, v1, m2, v2 = 0.3, 0.5, -0.4, 1.7
    n = 2_000_000
    z = m1 + np.sqrt(v1) * np.random.default_rng(0).standard_normal(n)
    log_ratio = (-0.5 * np.log(v1) - 0.5 * (z - m1) ** 2 / v1) - (
        -0.5 * np.log(v2) - 0.5 * (z - m2) ** 2 / v2)
    mc, se = log_ratio.mean(), log_ratio.std() / np.sqrt(n)
    kl = float(dif.gaussian_kl(m1, v1, m2, v2))
    assert abs(kl - mc) < 4 * se
    assert float(dif.gaussian_kl(m1, v1, m1, v1)) == 0.0
