"""Densities p(t) over diffusion time and variance-reduced sampling from them.

Every density is sampled by its inverse CDF applied to uniforms u ∈ (0, 1). By default the
uniforms are VDM's low-discrepancy ("antithetic") set u_i = (u₀ + i/B) mod 1, which covers [0, 1)
evenly within a batch and lowers the variance of the ELBO estimate (Kingma et al. 2021, app. I.1).
A density over λ (EDM's log-normal σ) is turned into one over t through the schedule: t = λ⁻¹(λ)
and p(t) = p_λ(λ(t)) |dλ/dt|.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
from jax.scipy.stats import norm

from vdm_jax.core.schedules import Schedule, log_snr_and_derivative, t_from_log_snr

Array = jax.Array
_U_EPS = 1e-6  # keeps u (hence t) off the endpoints, where λ = ±∞ for several schedules


@dataclasses.dataclass(frozen=True)
class TimeDensity:
    """p(t) on [0, 1]: `inverse_cdf(u, schedule)` maps uniforms to t; `pdf(t, schedule)` is p(t)."""

    name: str
    inverse_cdf: Callable[[Array, Schedule], Array]
    pdf: Callable[[Array, Schedule], Array]


def uniform_samples(rng: Array, batch_size: int, antithetic: bool = True) -> Array:
    """u ∈ (0, 1) of shape (B,): VDM's low-discrepancy set if `antithetic`, else i.i.d."""
    if antithetic:
        u = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)
    else:
        u = jax.random.uniform(rng, (batch_size,))
    return jnp.clip(u, _U_EPS, 1 - _U_EPS)


def sample_time(
    density: TimeDensity, rng: Array, batch_size: int, schedule: Schedule, antithetic: bool = True
) -> Array:
    """t ~ p(t), shape (B,)."""
    return density.inverse_cdf(uniform_samples(rng, batch_size, antithetic), schedule)


def uniform() -> TimeDensity:
    """t ~ U[0, 1]."""
    return TimeDensity("uniform", lambda u, _: u, lambda t, _: jnp.ones_like(t))


def uniform_discrete(num_steps: int) -> TimeDensity:
    """t uniform on the grid {1/T, …, 1}: DDPM's integer-step training, t_i = i / T.

    `pdf` is the constant 1 of the underlying u; it is a probability mass, not a density, so use
    this density only with objectives that do not divide by p(t) (L_simple and the DiT recipe).
    """
    return TimeDensity(
        f"uniform_discrete_{num_steps}",
        lambda u, _: jnp.ceil(u * num_steps) / num_steps,
        lambda t, _: jnp.ones_like(t),
    )


def logit_normal(mean: float = 0.0, std: float = 1.0) -> TimeDensity:
    """logit(t) ~ N(mean, std²) (SD3): p(t) = N(logit t; mean, std²) / (t (1 − t)).

    In JiT's convention (t = 1 data) its P_mean = −0.8 is our mean = +0.8.
    """

    def pdf(t: Array, _: Schedule) -> Array:
        return norm.pdf(jnp.log(t) - jnp.log1p(-t), mean, std) / (t * (1 - t))

    return TimeDensity("logit_normal", lambda u, _: jax.nn.sigmoid(mean + std * ndtri(u)), pdf)


def log_snr_normal(mean: float, std: float) -> TimeDensity:
    """λ ~ N(mean, std²), mapped to t through the schedule. EDM's ln σ ~ N(P_mean, P_std²) with
    σ = e^{−λ/2} is mean = −2 P_mean, std = 2 P_std."""

    def inverse_cdf(u: Array, schedule: Schedule) -> Array:
        return t_from_log_snr(schedule, mean + std * ndtri(u))

    def pdf(t: Array, schedule: Schedule) -> Array:
        lam, dlam = log_snr_and_derivative(schedule, t)
        return norm.pdf(lam, mean, std) * jnp.abs(dlam)

    return TimeDensity("log_snr_normal", inverse_cdf, pdf)
