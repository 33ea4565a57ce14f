"""Noise schedules in log-SNR form.

A schedule is the function λ(t) = log(α_t² / σ_t²) on t ∈ [0, 1] (t = 0 data, t = 1 noise),
strictly decreasing, together with a *family* that says how α_t and σ_t follow from λ:

    'vp'   variance preserving  α² + σ² = 1:  α² = sigmoid(λ),  σ² = sigmoid(−λ)
    'flow' rectified flow       α + σ = 1:    α = sigmoid(λ/2), σ = sigmoid(−λ/2)
    've'   variance exploding   α = 1:        σ = exp(−λ/2)

The three families are the same process up to a per-t rescaling of z_t, so every sampler and loss
written in λ works with all of them. Everything here is a pure function of arrays (jit, vmap and
grad go through); the `Schedule` value itself holds no arrays to update, only the function.

The VDM learned schedule is a `Schedule` whose `log_snr` closes over network parameters
(see `vdm_jax.nn.learned_schedule`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
FAMILIES = ("vp", "flow", "ve")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """λ(t) and the family fixing (α_t, σ_t); see the module docstring."""

    log_snr: Callable[[Array], Array]  # t (any shape) -> λ(t) (same shape), elementwise
    family: str = "vp"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown schedule family {self.family!r}; expected {FAMILIES}.")


def alpha_sigma_from_log_snr(log_snr: Array, family: str = "vp") -> tuple[Array, Array]:
    """(α, σ) from λ for a family: see the module docstring. Shapes follow λ."""
    if family == "vp":
        return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))
    if family == "flow":
        return jax.nn.sigmoid(log_snr / 2), jax.nn.sigmoid(-log_snr / 2)
    if family == "ve":
        return jnp.ones_like(log_snr), jnp.exp(-log_snr / 2)
    raise ValueError(f"Unknown schedule family {family!r}; expected one of {FAMILIES}.")


def alpha_sigma(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(α_t, σ_t) at times t (any shape)."""
    return alpha_sigma_from_log_snr(schedule.log_snr(t), schedule.family)


def log_snr_and_derivative(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(λ(t), dλ/dt) by forward-mode autodiff (λ is elementwise: a ones tangent gives dλ_i/dt_i)."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(schedule.log_snr, (t,), (jnp.ones_like(t),))


def alpha_sigma_derivatives(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(dα/dt, dσ/dt), used by the flow-velocity parameterization u = α' x + σ' ε."""
    t = jnp.asarray(t, jnp.result_type(float))
    _, (d_alpha, d_sigma) = jax.jvp(lambda u: alpha_sigma(schedule, u), (t,), (jnp.ones_like(t),))
    return d_alpha, d_sigma


def t_from_log_snr(schedule: Schedule, log_snr: Array, num_iters: int = 40) -> Array:
    """Inverse of λ(t) by bisection on [0, 1]; λ values outside the schedule's range clip to 0 or 1.

    Works for any strictly decreasing schedule, learned ones included. 40 halvings reach
    float32 resolution (2⁻⁴⁰ < 1e-12).
    """
    log_snr = jnp.asarray(log_snr, jnp.result_type(float))

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        go_right = schedule.log_snr(mid) > log_snr  # λ decreasing: target lies at larger t
        return jnp.where(go_right, mid, lo), jnp.where(go_right, hi, mid)

    bounds = (jnp.zeros_like(log_snr), jnp.ones_like(log_snr))
    lo, hi = jax.lax.fori_loop(0, num_iters, body, bounds)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------------------
# Named schedules. Each returns a `Schedule`.
# ----------------------------------------------------------------------------------------------


def ddpm_linear(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """DDPM's linear-β schedule (Ho et al. 2020), exact at the grid points t_i = i / T.

    β_i = linspace(β_start, β_end, T), ᾱ_i = Π_{j≤i} (1 − β_j) = α²(t_i), ᾱ_0 = 1.
    Between grid points log ᾱ is interpolated linearly in t, so λ = log ᾱ − log(1 − ᾱ) is strictly
    decreasing and λ(0) = +∞ (z_0 is the data itself, as in DDPM).
    The knots are computed in float64 and read in t's dtype: in float32, λ ≈ −10 at t = 1 carries
    a rounding error ≈ 5e-7, i.e. ≈ 1e-5 relative in the β of a 4-level step there; float64 t
    (jax x64) gives float64 accuracy.
    """
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    log_alpha_bar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
    grid = np.linspace(0.0, 1.0, num_steps + 1)
    # numpy constants (not jnp): a Schedule built inside a trace must not capture tracers.

    def log_snr(t: Array) -> Array:
        t = jnp.asarray(t)
        dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
        la = jnp.interp(t, grid.astype(dtype), log_alpha_bar.astype(dtype))
        return la - jnp.log(-jnp.expm1(la))

    return Schedule(log_snr, "vp")


def cosine(s: float = 0.008) -> Schedule:
    """Cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t+s)/(1+s)).

    λ = log ᾱ − log(1 − ᾱ), with 1 − ᾱ = (cos² a − cos² b)/cos² a = sin(b − a) sin(b + a)/cos² a
    (a = π/2 · s/(1+s), b = π/2 · (t+s)/(1+s)) to avoid cancellation near t = 0, and
    cos b = sin(π/2 − b) = sin(π/2 · (1−t)/(1+s)) to avoid it near t = 1.
    Endpoints are exactly λ(0) = +∞ and λ(1) = −∞ (α_1 = 0) in every dtype; `cosine_log_snr` is
    the clipped form.
    """
    a = math.pi / 2 * s / (1 + s)

    def log_snr(t: Array) -> Array:
        b = math.pi / 2 * (t + s) / (1 + s)
        b_minus_a = math.pi / 2 * t / (1 + s)  # exact, not b − a: λ(0) must be +∞
        # Not cos(b): cos of the rounded π/2 is +6e-17 in float64 (λ(1) = −74.7, α_1 ≈ 6e-17,
        # and x̂ = (z − σ ε̂)/α then amplifies any error in ε̂ by 1e16) and −4e-8 in float32.
        # 1 − t is exact at t = 1, so cos b = 0 there; the clip keeps t > 1 at −∞, not NaN.
        cos_b = jnp.maximum(jnp.sin(math.pi / 2 * (1 - t) / (1 + s)), 0.0)
        return 2 * jnp.log(cos_b) - jnp.log(jnp.sin(b_minus_a) * jnp.sin(b + a))

    return Schedule(log_snr, "vp")


def cosine_log_snr(log_snr_min: float = -20.0, log_snr_max: float = 20.0) -> Schedule:
    """Log-SNR-clipped cosine schedule: λ(t) = −2 log tan(a t + b), λ(0) = λ_max, λ(1) = λ_min.

    b = arctan(exp(−λ_max / 2)), a = arctan(exp(−λ_min / 2)) − b. With λ_max,min → ±∞ this is the
    s = 0 cosine schedule ᾱ = cos²(π t / 2).
    """
    _check_range(log_snr_min, log_snr_max)
    b = math.atan(math.exp(-log_snr_max / 2))
    a = math.atan(math.exp(-log_snr_min / 2)) - b
    return Schedule(lambda t: -2 * jnp.log(jnp.tan(a * t + b)), "vp")


def vdm_linear(gamma_min: float = -13.3, gamma_max: float = 5.0) -> Schedule:
    """VDM's fixed schedule: γ(t) = −λ(t) = γ_min + (γ_max − γ_min) t (Kingma et al. 2021)."""
    _check_range(-gamma_max, -gamma_min)
    return Schedule(lambda t: -(gamma_min + (gamma_max - gamma_min) * t), "vp")


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Schedule:
    """EDM's σ-parameterized schedule (Karras et al. 2022), variance exploding: z_t = x + σ(t) ε.

    σ(t) = (σ_min^{1/ρ} + t (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ, λ = −2 log σ. (EDM's sampling index runs
    from σ_max to σ_min; ours runs from data to noise.)
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"EDM needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return Schedule(lambda t: -2 * rho * jnp.log(lo + t * (hi - lo)), "ve")


def rectified_flow() -> Schedule:
    """Rectified flow / flow matching: α_t = 1 − t, σ_t = t, so λ = 2 log((1 − t)/t).

    SiT, SD3 and JiT write t = 1 for data; their t is our 1 − t (SD3 already uses ours).
    """
    return Schedule(lambda t: 2 * (jnp.log1p(-t) - jnp.log(t)), "flow")


def shifted(schedule: Schedule, shift: float) -> Schedule:
    """Resolution shift (Hoogeboom et al. 2023; SD3): λ'(t) = λ(t) − 2 log(shift).

    With shift = resolution / base_resolution this is λ shifted by 2 log(base / resolution): a
    larger image keeps the same per-pixel signal at lower SNR. For rectified flow it equals SD3's
    time shift t' = shift · t / (1 + (shift − 1) t).
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}.")
    offset = 2 * math.log(shift)
    return Schedule(lambda t: schedule.log_snr(t) - offset, schedule.family)


def _check_range(log_snr_min: float, log_snr_max: float) -> None:
    if not log_snr_min < log_snr_max:
        raise ValueError(f"Need log_snr_min < log_snr_max, got {log_snr_min} >= {log_snr_max}.")


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "ddpm_linear": ddpm_linear,
    "cosine": cosine,
    "cosine_log_snr": cosine_log_snr,
    "vdm_linear": vdm_linear,
    "edm": edm,
    "rectified_flow": rectified_flow,
}


def get_schedule(name: str, shift: float = 1.0, **kwargs) -> Schedule:
    """A named schedule from `SCHEDULES` (kwargs go to its constructor), optionally shifted."""
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}.")
    try:
        schedule = SCHEDULES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"Bad arguments {kwargs} for schedule {name!r}: {e}") from None
    return shifted(schedule, shift) if shift != 1.0 else schedule
