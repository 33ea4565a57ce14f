"""SiT's SDE sampler (Ma et al. 2024, willisma/SiT `transport`): Euler–Maruyama with SiT's
diffusion coefficients and its last step; also REPA's SDE sampler (its `euler_maruyama_sampler`
is this one with diffusion_form 'sigma', last_step 'mean', last_step_size 0.04).

Conventions. SiT's time τ runs from noise (τ = 0) to data (τ = 1), its velocity is v = dz/dτ;
ours t = 1 − τ and û = dz/dt = −v (docs/CONVENTIONS.md). Converted here, SiT's SDE
    dz = [v + D(τ) ∇log p_τ(z)] dτ + √(2 D(τ)) dW̄
becomes, for one step t → s < t (h = t − s) with the score ∇log p = −ε̂ / σ_t,
    z_s = z_t + (s − t)(û − D(t) ∇log p) + √(2 D(t) h) ξ,      ξ ~ N(0, I)
and D(t) = norm × (diffusion_form):
    'constant'               1
    'SBDM'                   −½ σ_t² λ'_t   (SiT's score-matching form, = g²/2 of our
                             `euler_maruyama`; for the linear path t / (1 − t))
    'sigma'                  σ_t             (SiT's default; the linear path's 1 − τ)
    'linear'                 t               (SiT's 1 − τ)
    'decreasing'             ¼ (norm cos(π τ) + 1)²   (not scaled by norm again)
The grid is SiT's when the spec's sampler options give t_max = 1 and last_step_size = 0.04:
N − 1 equal Euler–Maruyama steps from t = 1 to t = 0.04 (SiT's τ ∈ [0, 0.96]), then a last
step to t = 0 without noise (`core.time_grid`), N model evaluations in all:
    'mean'     z_0 = z_h + (0 − h)(û − D ∇log p)     (SiT's default "Mean")
    'tweedie'  z_0 = x̂ = (z_h + σ_h² ∇log p) / α_h   (SiT's "Tweedie")
    'euler'    z_0 = z_h + (0 − h) û                   (SiT's "Euler": the probability-flow step)
SiT's Heun SDE step and its last_step None are not offered.

For a 'flow' model on a 'flow'-family schedule (α + σ = 1) the noise estimate is
ε̂ = z + α_t û / σ'_t, exact at t = 1 (α = 0: ε̂ = z, the point SiT starts from) where λ and its
derivative are infinite; other models convert through `parameterizations.to_x_eps`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.core import sampling_loop as loop
from vdm_jax.core.schedules import Schedule, alpha_sigma, log_snr_and_derivative

Array = jax.Array

# SiT's sample.py also lists "increasing-decreasing", but its path.py spells the key
# "inccreasing-decreasing", so SiT cannot run it: not offered.
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing")
LAST_STEPS = ("mean", "tweedie", "euler")


def diffusion_coefficient(schedule: Schedule, t: Array, form: str, norm: float) -> Array:
    """SiT's D at our time t (a scalar): see the module docstring."""
    tau = 1.0 - t
    if form == "constant":
        return jnp.asarray(norm, t.dtype)
    if form == "SBDM":
        _, d_lam = log_snr_and_derivative(schedule, t)
        _, sigma = alpha_sigma(schedule, t)
        return norm * (-0.5 * sigma**2 * d_lam)
    if form == "sigma":
        return norm * alpha_sigma(schedule, t)[1]
    if form == "linear":
        return norm * t
    if form == "decreasing":
        return 0.25 * (norm * jnp.cos(jnp.pi * tau) + 1) ** 2
    raise ValueError(f"Unknown SiT diffusion form {form!r}; expected one of {DIFFUSION_FORMS}.")


def _velocity_and_eps(schedule: Schedule, prediction: str, out: Array, z: Array, t: Array):
    """(û, ε̂) at (z_t, t) from the model's output `out` there, t a scalar; exact at t = 1 for a
    'flow' model of the 'flow' family."""
    if prediction == "flow" and schedule.family == "flow":
        alpha, _ = alpha_sigma(schedule, t)
        _, (_, d_sigma) = jax.jvp(lambda u: alpha_sigma(schedule, u), (t,), (jnp.ones_like(t),))
        # α = 0 at t = 1, where σ' may be 0·∞: ε̂ = z there (the untaken branch's NaN is unused).
        eps = jnp.where(alpha == 0, z, z + alpha * out / jnp.where(alpha == 0, 1.0, d_sigma))
        return out, eps
    _, eps = loop.x_eps(schedule, prediction, out, z, t)
    return loop.velocity(schedule, prediction, out, z, t), eps


def sit_sde(
    model: loop.ModelFn | loop.SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *, prediction: str = "eps",
    diffusion_form: str = "sigma", diffusion_norm: float = 1.0, last_step: str = "mean",
    noise: Array | None = None,
) -> loop.SampleOutput:
    """SiT's SDE on the grid ts (N + 1,): Euler–Maruyama steps t_i → t_{i+1} for i < N − 1 and
    SiT's `last_step` on the final one (module docstring). z: (B, ...) at ts[0]. noise: optional
    (N − 1, B, ...) ξ of the stochastic steps, in order (what SiT draws with torch.randn, for a
    comparison from the same noise); else drawn from rng. N NFE.
    """
    if diffusion_form not in DIFFUSION_FORMS:
        raise ValueError(f"Unknown SiT diffusion form {diffusion_form!r}; expected one of "
                         f"{DIFFUSION_FORMS}.")
    if last_step not in LAST_STEPS:
        raise ValueError(f"Unknown SiT last step {last_step!r}; expected one of {LAST_STEPS}.")
    n = ts.shape[0] - 1
    if noise is None:
        rng = loop.need_rng(rng, "sit_sde")
    elif noise.shape[0] < max(n - 1, 0) or noise.shape[1:] != z.shape:
        raise ValueError(f"noise must be (N − 1, *z.shape) = ({n - 1}, {z.shape}), got "
                         f"{noise.shape}.")

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        u, eps = _velocity_and_eps(schedule, prediction, out, z, t)
        alpha, sigma = alpha_sigma(schedule, t)
        score = -eps / sigma
        d = diffusion_coefficient(schedule, t, diffusion_form, diffusion_norm)
        mean = z + (s - t) * (u - d * score)  # SiT's mean_x = x + drift dτ
        if noise is None:
            xi = jax.random.normal(key, z.shape, z.dtype)
        else:
            xi = jnp.asarray(noise, z.dtype)[jnp.minimum(i, noise.shape[0] - 1)]
        stochastic = mean + jnp.sqrt(2 * d * (t - s)) * xi
        if last_step == "mean":
            final = mean
        elif last_step == "tweedie":
            final = (z + sigma**2 * score) / alpha
        else:
            final = z + (s - t) * u
        return (jnp.where(last, final, stochastic),)

    return loop.scan_steps(step, (z,), ts, rng, loop.as_sampling_model(model))


def check_option(key: str, value: Any) -> Any:
    """A validated, JSON-plain value of the sampler option `key` of 'sit_sde'."""
    if key == "diffusion_form":
        if value not in DIFFUSION_FORMS:
            raise ValueError(f"SiT diffusion_form {value!r}; expected one of {DIFFUSION_FORMS}")
        return value
    if key == "diffusion_norm":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"SiT diffusion_norm must be a number >= 0, got {value!r}")
        return float(value)
    if key == "last_step":
        if value not in LAST_STEPS:
            raise ValueError(f"SiT last_step {value!r}; expected one of {LAST_STEPS}")
        return value
    raise ValueError(f"unknown sampler option {key!r}")


OPTIONS = ("diffusion_form", "diffusion_norm", "last_step")
