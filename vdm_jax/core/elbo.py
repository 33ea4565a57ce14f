"""The variational lower bound of a diffusion model, VDM-style (Kingma et al. 2021), in bits/dim.

    −log p(x) ≤ −ELBO(x) = L_prior + L_recon + L_diffusion, summed over the D dimensions of x:

    L_prior     = KL(q(z_1 | x) ‖ N(0, α_1² + σ_1²))           (N(0, I) for variance preserving)
    L_recon     = E_q[−log p(x | z_0)], a decoder centred at z_0/α_0 with scale σ_0/α_0:
                  'discretized': Gaussian mass of x's bin of width 2/K (K levels, DDPM's decoder),
                  'gaussian':    density N(x; z_0/α_0, σ_0²/α_0²) for continuous data
    L_diffusion = continuous time (T → ∞):  ½ E_{t~U[0,1]} [(−dλ/dt) ‖ε − ε̂(z_t; t)‖²]
                  discrete time, T steps:   (T/2) E_{i~U{1..T}} [expm1(λ_s − λ_t) ‖ε − ε̂(z_t; t)‖²],
                                            t = i/T, s = (i − 1)/T
    (the latter is Σ_i KL(q(z_s|z_t,x) ‖ p(z_s|z_t)) = ½ Σ_i (SNR(s) − SNR(t)) ‖x − x̂‖²).
Bits per dimension: nats / (D ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from vdm_jax.core import time_sampling as ts
from vdm_jax.core.diffusion import gaussian_kl, q_sample, sum_except_batch
from vdm_jax.core.parameterizations import to_x_eps
from vdm_jax.core.schedules import Schedule, alpha_sigma, log_snr_and_derivative

Array = jax.Array
DECODERS = ("discretized", "gaussian")


def prior_loss(schedule: Schedule, x: Array) -> Array:
    """KL(q(z_1 | x) ‖ N(0, α_1² + σ_1²)) summed over dimensions: (B, ...) -> (B,)."""
    alpha, sigma = alpha_sigma(schedule, jnp.ones(()))
    return sum_except_batch(gaussian_kl(alpha * x, sigma**2, 0.0, alpha**2 + sigma**2))


def _log_mass(lower: Array, upper: Array) -> Array:
    """log(Φ(upper) − Φ(lower)) for lower < upper, accurate in both tails.

    For lower > 0 use the mirror Φ(−lower) − Φ(−upper), so the larger term is never ≈ 1 − tiny.
    """
    flip = lower > 0
    hi = jnp.where(flip, -lower, upper)
    lo = jnp.where(flip, -upper, lower)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-12)))


def discretized_gaussian_nll(x: Array, mean: Array, scale: Array, num_levels: int) -> Array:
    """−log P(x) elementwise, x on the grid 2(k+½)/K − 1: the N(mean, scale²) mass of x's bin
    [x − 1/K, x + 1/K], the outer bins reaching to ±∞ (Ho et al. 2020, eq. 13)."""
    half_bin = 1.0 / num_levels
    lower, upper = (x - half_bin - mean) / scale, (x + half_bin - mean) / scale
    first, last = x < -1 + 2 * half_bin, x > 1 - 2 * half_bin
    log_p = jnp.where(
        first, log_ndtr(upper), jnp.where(last, log_ndtr(-lower), _log_mass(lower, upper))
    )
    return -log_p


def reconstruction_loss(
    schedule: Schedule, x: Array, eps: Array, num_levels: int, decoder: str = "discretized"
) -> Array:
    """E_q[−log p(x | z_0)] for one draw z_0 = α_0 x + σ_0 ε, summed over dimensions -> (B,)."""
    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; expected one of {DECODERS}.")
    alpha, sigma = alpha_sigma(schedule, jnp.zeros(()))
    z_0 = alpha * x + sigma * eps
    mean, scale = z_0 / alpha, sigma / alpha
    if decoder == "gaussian":
        nll = 0.5 * ((x - mean) / scale) ** 2 + jnp.log(scale) + 0.5 * math.log(2 * math.pi)
    else:
        nll = discretized_gaussian_nll(x, mean, scale, num_levels)
    return sum_except_batch(nll)


def diffusion_loss_continuous(schedule: Schedule, eps: Array, eps_hat: Array, t: Array) -> Array:
    """½ (−dλ/dt) ‖ε − ε̂‖² per example (B,): the T → ∞ diffusion term for t ~ U[0, 1]."""
    _, dlam = log_snr_and_derivative(schedule, t)
    return 0.5 * (-dlam) * sum_except_batch((eps - eps_hat) ** 2)


def diffusion_loss_discrete(
    schedule: Schedule, eps: Array, eps_hat: Array, t: Array, num_steps: int
) -> Array:
    """(T/2) expm1(λ_s − λ_t) ‖ε − ε̂‖² per example (B,), t on the grid {1/T, …, 1}, s = t − 1/T."""
    lam_t, lam_s = schedule.log_snr(t), schedule.log_snr(t - 1.0 / num_steps)
    return 0.5 * num_steps * jnp.expm1(lam_s - lam_t) * sum_except_batch((eps - eps_hat) ** 2)


def elbo_terms(
    model_fn: Callable[[Array, Array], Array],
    schedule: Schedule,
    x: Array,
    rng: Array,
    *,
    prediction: str,
    num_levels: int,
    num_steps: int = 0,
    decoder: str = "discretized",
    antithetic: bool = True,
) -> dict[str, Array]:
    """One-sample estimate of −ELBO(x) in nats per example (B,), term by term.

    model_fn(z_t, t) returns a prediction of type `prediction`; num_steps = 0 means continuous time.
    Returns {'prior', 'reconstruction', 'diffusion', 'total'}.
    """
    rng_t, rng_eps, rng_eps0 = jax.random.split(rng, 3)
    u = ts.uniform_samples(rng_t, x.shape[0], antithetic)
    t = jnp.ceil(u * num_steps) / num_steps if num_steps else u
    eps = jax.random.normal(rng_eps, x.shape, x.dtype)
    z_t = q_sample(schedule, x, t, eps)
    _, eps_hat = to_x_eps(schedule, model_fn(z_t, t).astype(jnp.float32), prediction, z_t, t)
    if num_steps:
        diffusion = diffusion_loss_discrete(schedule, eps, eps_hat, t, num_steps)
    else:
        diffusion = diffusion_loss_continuous(schedule, eps, eps_hat, t)
    terms = {
        "prior": prior_loss(schedule, x),
        "reconstruction": reconstruction_loss(
            schedule, x, jax.random.normal(rng_eps0, x.shape, x.dtype), num_levels, decoder
        ),
        "diffusion": diffusion,
    }
    terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    return terms


def bits_per_dim(nats: Array, x_shape: tuple[int, ...]) -> Array:
    """nats per example -> bits per dimension, D = prod(x_shape[1:])."""
    return nats / (math.prod(x_shape[1:]) * math.log(2))

