"""The forward process q and its posterior, in closed form (Kingma et al. 2021, appendix A).

z_t = α_t x + σ_t ε. For s < t:
    q(z_t | z_s) = N(α_{t|s} z_s, σ²_{t|s}),  α_{t|s} = α_t / α_s,
                   σ²_{t|s} = σ_t² − α²_{t|s} σ_s² = −σ_t² expm1(λ_t − λ_s)
    q(z_s | z_t, x) = N(μ_{s|t}, σ̃²_{s|t}),
                   μ_{s|t} = (α_{t|s} σ_s² / σ_t²) z_t + (α_s σ²_{t|s} / σ_t²) x,
                   σ̃²_{s|t} = σ²_{t|s} σ_s² / σ_t²
DDPM's q(x_{t−1} | x_t, x_0) is the case s = t − 1/T. The expm1 form keeps σ²_{t|s} accurate when
s and t are close.

Times are arrays of shape (B,) (or scalars) broadcast against data of shape (B, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm_jax.core.schedules import Schedule, alpha_sigma, alpha_sigma_from_log_snr

Array = jax.Array


def expand_to(a: Array, x: Array) -> Array:
    """Reshape a per-example array (B,) (or a scalar) to broadcast against x (B, ...)."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(schedule: Schedule, x: Array, t: Array, eps: Array) -> Array:
    """z_t = α_t x + σ_t ε.  x, eps: (B, ...); t: (B,) -> (B, ...)."""
    alpha, sigma = alpha_sigma(schedule, expand_to(t, x))
    return alpha * x + sigma * eps


def q_transition(schedule: Schedule, s: Array, t: Array) -> tuple[Array, Array]:
    """(α_{t|s}, σ²_{t|s}) of q(z_t | z_s) for s < t; shapes of s and t."""
    lam_s, lam_t = schedule.log_snr(s), schedule.log_snr(t)
    alpha_s, _ = alpha_sigma_from_log_snr(lam_s, schedule.family)
    alpha_t, sigma_t = alpha_sigma_from_log_snr(lam_t, schedule.family)
    return alpha_t / alpha_s, -(sigma_t**2) * jnp.expm1(lam_t - lam_s)


def posterior_coefficients(
    schedule: Schedule, s: Array, t: Array
) -> tuple[Array, Array, Array]:
    """(a, b, σ̃²) with q(z_s | z_t, x) = N(a z_t + b x, σ̃²) for s < t; shapes of s and t.

    a = α_{t|s} σ_s² / σ_t², b = α_s c, σ̃² = c σ_s², where c = σ²_{t|s} / σ_t² = −expm1(λ_t − λ_s).
    """
    lam_s, lam_t = schedule.log_snr(s), schedule.log_snr(t)
    alpha_s, sigma_s = alpha_sigma_from_log_snr(lam_s, schedule.family)
    alpha_t, sigma_t = alpha_sigma_from_log_snr(lam_t, schedule.family)
    c = -jnp.expm1(lam_t - lam_s)
    return (alpha_t / alpha_s) * (sigma_s**2 / sigma_t**2), alpha_s * c, c * sigma_s**2


def q_posterior(
    schedule: Schedule, s: Array, t: Array, z_t: Array, x: Array
) -> tuple[Array, Array]:
    """Mean and variance of q(z_s | z_t, x) for s < t.  z_t, x: (B, ...); s, t: (B,).

    Returns μ_{s|t} with the shape of z_t and σ̃²_{s|t} broadcastable to it.
    """
    coef_z, coef_x, var = posterior_coefficients(schedule, expand_to(s, z_t), expand_to(t, z_t))
    return coef_z * z_t + coef_x * x, var


def gaussian_kl(mean1: Array, var1: Array, mean2: Array, var2: Array) -> Array:
    """Elementwise KL(N(m1, v1) ‖ N(m2, v2)) = ½ [log(v2/v1) + (v1 + (m1 − m2)²)/v2 − 1]."""
    return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def sum_except_batch(x: Array) -> Array:
    """Sum over every axis but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(axis=1)


def mean_except_batch(x: Array) -> Array:
    """Mean over every axis but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(axis=1)
