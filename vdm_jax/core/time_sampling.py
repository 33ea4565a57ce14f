"""Densities p(t) over diffusion time and variance-reduced sampling from them.

Every density is sampled by its inverse CDF applied to uniforms u ∈ (0, 1). By default the
uniforms are VDM's stratified ("antithetic") set u_i = (u₀ + i/B) mod 1, which covers [0, 1)
evenly within a batch and lowers the variance of the ELBO estimate (Kingma et al. 2021, app. I.1).
A density over λ (EDM's log-normal σ) is turned into one over t through the schedule: t = λ⁻¹(λ)
and p(t) = p_λ(λ(t)) |dλ/dt|.

The time shift (config diffusion.time_shift; RAE, Zheng et al. 2025, after SD3) warps time
itself: t' = φ_α(t) = α t / (1 + (α − 1) t), applied to the training draws (`shifted`) and to the
sampling grid (core.samplers.time_grid's time_shift), so the network is trained and sampled on
the same warped times and sees t' as its input. RAE's dimension-dependent choice is
α = sqrt(D / 4096), D = H·W·C of what the model diffuses (`dimension_shift`; α ≈ 6.93 for
16×16×768 latents). For rectified flow this puts the same noise level at t as the schedule
shift diffusion.shift = α (λ'(t) = λ(t) − 2 log α), but that one keeps the network's time input
and velocity target in the unwarped t; RAE's released networks read the warped t and predict
dz/dt' = ε − x, which is what the time shift gives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
from jax.scipy.stats import norm

from vdm_jax.core.schedules import Schedule, log_snr_and_derivative, t_from_log_snr

Array = jax.Array
_U_EPS = 1e-6  # keeps u (hence t) off the endpoints, where λ = ±∞ for several schedules
SHIFT_BASE_DIM = 4096  # RAE's time_dist_shift_base: α = sqrt(D / 4096)


@dataclasses.dataclass(frozen=True)
class TimeDensity:
    """p(t) on [0, 1]: `inverse_cdf(u, schedule)` maps uniforms to t; `pdf(t, schedule)` is p(t)."""

    name: str
    inverse_cdf: Callable[[Array, Schedule], Array]
    pdf: Callable[[Array, Schedule], Array]


def uniform_samples(rng: Array, batch_size: int, antithetic: bool = True) -> Array:
    """u ∈ (0, 1) of shape (B,): VDM's stratified set if `antithetic`, else i.i.d."""
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


def time_shift(t: Array, alpha: float) -> Array:
    """φ_α(t) = α t / (1 + (α − 1) t): φ(0) = 0, φ(1) = 1, α > 1 moves times toward the noise."""
    return alpha * t / (1 + (alpha - 1) * t)


def dimension_shift(dim: int, base: int = SHIFT_BASE_DIM) -> float:
    """RAE's α = sqrt(dim / base) for data of dim = H·W·C numbers (base 4096 = 64·64·1)."""
    return math.sqrt(dim / base)


def resolve_time_shift(value: str | float, image_shape: Sequence[int]) -> float:
    """α of config diffusion.time_shift: 'dimension' → `dimension_shift`(H·W·C of image_shape),
    a positive number → itself."""
    if value == "dimension":
        return dimension_shift(math.prod(image_shape))
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"diffusion.time_shift={value!r} must be 'dimension' or a positive "
                         "number (1 = no shift)")
    return float(value)


def shifted(density: TimeDensity, alpha: float) -> TimeDensity:
    """The density of t' = φ_α(t), t ~ density: inverse CDF φ_α ∘ F⁻¹, and
    p'(t') = p(φ_α⁻¹(t')) · α / (α − (α − 1) t')², φ_α⁻¹(t') = t' / (α − (α − 1) t')."""
    if alpha == 1.0:
        return density

    def pdf(t: Array, schedule: Schedule) -> Array:
        denom = alpha - (alpha - 1) * t
        return density.pdf(t / denom, schedule) * alpha / denom**2

    return TimeDensity(
        f"{density.name}_shift{alpha:g}",
        lambda u, schedule: time_shift(density.inverse_cdf(u, schedule), alpha), pdf)
