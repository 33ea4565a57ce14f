"""Samplers: pure functions (model, schedule, shape, rng, options) -> samples, for jax.jit.

A model function maps (z_t: (B, ...), t: (B,)) to a prediction of one kind in
`parameterizations.PREDICTIONS` ('eps', 'x', 'v', 'score', 'flow'); every sampler reads it through
the conversions x̂, ε̂ = to_x_eps(...) and, where it needs the flow velocity,
û = α'_t x̂ + σ'_t ε̂ = E[dz_t/dt | z_t] (the probability-flow ODE's right-hand side).

Sampling runs a decreasing time grid t_0 = t_max > t_1 > ... > t_N = t_min (`time_grid`); one
step goes from t = t_i to s = t_{i+1} < t:

    'ddpm'            z_s = a z_t + b x̂ + σ_step ξ   (ancestral; q(z_s | z_t, x̂) of `diffusion`)
                      σ²_step = σ̃²_{s|t} = c σ_s² ('posterior', DDPM's β̃)
                              or σ²_{t|s} = −σ_t² expm1(λ_t − λ_s) ('forward', DDPM's β)
                              or log σ²_step = f log σ²_{t|s} + (1 − f) log σ̃²_{s|t},
                                 f = (v + 1)/2 ('learned': IDDPM's learned range, DiT's learn_sigma;
                                 the model also outputs v ∈ [−1, 1], see `ddpm`)
    'ddim'            z_s = α_s x̂ + σ_s √(1 − η² c) ε̂ + η √c σ_s ξ      (Song et al. 2021)
                      η = 0 deterministic; η = 1 is 'ddpm' with σ̃² on the same grid (same ξ)
    'euler'           z_s = z_t + (s − t) û(z_t, t)                        (probability-flow ODE)
    'heun'            z̃ = z_t + (s − t) û_t,  z_s = z_t + (s − t)(û_t + û(z̃, s)) / 2
                      (Karras et al. 2022, Alg. 1), the last step always the Euler step z̃
    'euler_maruyama'  reverse SDE, g² = −σ_t² λ'_t:
                      z_s = z_t + (s − t)(û_t − ½ σ_t λ'_t ε̂) + √(g² (t − s)) ξ
    'dpm_solver_2m'   DPM-Solver++(2M) (Lu et al. 2022) in h = (λ_s − λ_t)/2 (their λ is ours / 2):
                      z_s = (σ_s/σ_t) z_t − α_s expm1(−h) D,
                      D = x̂_t + (h / 2h_prev)(x̂_t − x̂_prev)   (D = x̂_t on the first step, the
                      last step when `lower_order_final`, and any step with h = ∞)
    'meanflow'        z_s = z_t − (t − s) u(z_t, s, t)   (MeanFlow, Geng et al. 2025, Alg. 2): the
                      network's average velocity over [s, t] jumps the whole step; the model is
                      u(z, r, t) with a second time r = s (prediction 'average_velocity', see
                      core.meanflow); t_max defaults to 1, so one step is the 1-NFE
                      z_0 = z_1 − u(z_1, 0, 1)
    'sit_sde'         SiT's SDE (its diffusion-coefficient forms and last step; REPA's SDE too):
                      core.sit_sde. N NFE
    'dopri5'          the probability-flow ODE by adaptive Dormand–Prince 5(4) (diffrax) to
                      tolerances rtol, atol: core.adaptive_ode; NFE measured (SampleOutput
                      .evaluations), the grid's interior unused
with a = α_{t|s} σ_s²/σ_t², b = α_s c, c = −expm1(λ_t − λ_s) and ξ ~ N(0, I) fresh each step.
The final step adds no noise (Ho et al. 2020, Alg. 2): the stochastic samplers end on the mean.
'ddpm' and 'ddim' take `clip_denoised` (x̂ clipped to [−1, 1], and for 'ddim' ε̂ re-derived from
the clipped x̂, as guided-diffusion does); off by default (DiT samples without it).

DiT's sampler. DiT (Peebles & Xie 2023) samples with `create_diffusion("250")`: the 1000-step
linear-β DDPM respaced to 250 steps, learned variance, no clipping. That is
    sample(model_fn, ddpm_linear(1000), shape, rng, sampler='ddpm', num_steps=250,
           spacing='ddpm_respaced', num_train_steps=1000, variance='learned')
with model_fn(z, t) = the network at DiT's integer timestep k = t·T − 1 (its index k is our level
k + 1, t = (k + 1)/T; `time_grid`), returning both output halves, and, for guidance,
`classifier_free_guidance(..., channels=3)` (DiT's `forward_with_cfg` guides 3 of the 4 latent
channels). Images are NHWC: DiT's channel axis 1 is our last axis.

Endpoints. The model is evaluated at t_0..t_{N−1} only (never at t_min), so t_min = 0 is fine
where λ(0) = +∞ (DDPM's linear β, cosine, rectified flow): the step to s = 0 has σ_s = 0, c = 1 and
returns x̂ (DDPM's convention). For finite λ(0) (VDM) the output is z_0 = α_0 x + σ_0 ε, not x̂.
At t = 1 rectified flow has λ = −∞ (α = 0, and dα/dt through λ is 0·∞): the default t_max is
1 where λ(1) is finite and 1 − 1e-3 otherwise (rectified flow and `cosine`, whose λ(1) = −∞ in
every dtype). A 'flow' model with 'euler' or 'heun' may be started at t_max = 1 exactly (û is the
model output, no conversion). With rectified flow the reverse SDE's g² = 2t/(1 − t) diverges at
t → 1: prefer the ODE samplers (or 'ddpm', 'ddim') for it.

The initial noise is z_{t_max} ~ N(0, (α² + σ²) I) at t_max: N(0, I) for 'vp', ≈ σ_max² for 've'.
Entry points: `sample` (returns `SampleOutput(samples, nfe)`), `make_sampler` (jitted
fn(params, rng)), `nfe`, `time_grid`, `ddpm_respaced_indices`, `ddpm_mean_log_variance`,
`ddim_invert`, and, re-exported, `core.guidance.classifier_free_guidance` and
`core.time_grid`'s functions; the samplers themselves map (z_{t_max}, ts) to
z_{t_min}. What a sampler samples with is one value: a model function, or a `SamplingModel`
that adds the batch's sharding (kept on z through the loop) and DDT's encoder sharing
(`core.encoder_sharing.SharedEncoder`: a condition recomputed only on the steps of its mask and
carried, as a value of the scan carry, in between).

A sampler is fn(model, schedule, z, ts, rng, *, prediction, **its options) -> SampleOutput,
registered in SAMPLERS, _SAMPLER_FNS and SAMPLER_OPTIONS; a fixed-grid one writes its step
step(carry, t, s, key, i, last, out, f) (out: the model's output at (z_t, t); f: any further
evaluation) and runs it with `scan_steps`, which handles rng keys, sharding and the shared
condition. Every loop is a `lax.scan` (one compiled step, not N copies); nothing returns to
the host between steps. The same rng gives the same samples. `SamplingModel`, `SampleOutput`
and `scan_steps` live in core.sampling_loop (re-exported here), below the samplers, so the
samplers in their own modules (core.sit_sde, core.adaptive_ode) import it and not this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.core.adaptive_ode import dopri5 as dopri5
from vdm_jax.core.diffusion import posterior_coefficients, q_transition
from vdm_jax.core.guidance import classifier_free_guidance as classifier_free_guidance
from vdm_jax.core.guidance import guided_inputs as guided_inputs
from vdm_jax.core.parameterizations import PREDICTIONS, from_x_eps, to_x_eps
from vdm_jax.core.sampling_loop import ModelFn as ModelFn
from vdm_jax.core.sampling_loop import SampleOutput as SampleOutput
from vdm_jax.core.sampling_loop import SamplingModel as SamplingModel
from vdm_jax.core.sampling_loop import as_sampling_model as as_sampling_model
from vdm_jax.core.sampling_loop import constrain, need_rng, step_noise, times, velocity, x_eps
from vdm_jax.core.sampling_loop import scan_steps as scan_steps
from vdm_jax.core.schedules import (
    Schedule,
    alpha_sigma,
    alpha_sigma_from_log_snr,
    log_snr_and_derivative,
)
from vdm_jax.core.sit_sde import sit_sde as sit_sde
from vdm_jax.core.time_grid import SPACINGS as SPACINGS
from vdm_jax.core.time_grid import T_MAX_IF_SINGULAR as T_MAX_IF_SINGULAR
from vdm_jax.core.time_grid import ddpm_respaced_indices as ddpm_respaced_indices
from vdm_jax.core.time_grid import default_t_max, initial_noise, time_grid

Array = jax.Array
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "euler_maruyama", "dpm_solver_2m", "meanflow",
            "sit_sde", "dopri5")
# Samplers whose number of model evaluations is known only after sampling (adaptive steps).
ADAPTIVE = ("dopri5",)
# The prediction of a MeanFlow network u(z, r, t): the average velocity over [r, t]. It has two
# times, so it is no function of (x̂, ε̂) at one time: only the 'meanflow' sampler reads it.
AVERAGE_VELOCITY = "average_velocity"
VARIANCES = ("posterior", "forward", "learned")


def nfe(sampler: str, num_steps: int) -> int | None:
    """Model evaluations of `sampler` with `num_steps` steps: N, or 2N − 1 for 'heun'; None for
    an adaptive solver (its count comes with the samples: `SampleOutput.evaluations`)."""
    _check_sampler(sampler)
    if sampler in ADAPTIVE:
        return None
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def check_eta(eta: Any) -> float:
    """DDIM's η as a float in [0, 1] (the one check of it: `ddim` and `SamplingSpec` call it)."""
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM needs eta in [0, 1], got {eta}")
    return eta


def check_variance(variance: Any) -> str:
    """A DDPM variance of VARIANCES (the one check: `ddpm` and `SamplingSpec` call it)."""
    if variance not in VARIANCES:
        raise ValueError(f"Unknown DDPM variance {variance!r}; expected one of {VARIANCES}")
    return variance


# ----------------------------------------------------------------------------------------------
# One DDPM step.
# ----------------------------------------------------------------------------------------------


def ddpm_mean_log_variance(
    schedule: Schedule, z: Array, x_hat: Array, t: Array, s: Array, *,
    variance: str = "posterior", var_output: Array | None = None,
    clip_step: tuple[Array, Array] | None = None,
) -> tuple[Array, Array]:
    """Mean and log-variance of one ancestral step t → s (s < t, scalars) given x̂:
        μ = a z_t + b x̂,  a = α_{t|s} σ_s²/σ_t²,  b = α_s c,  c = −expm1(λ_t − λ_s)
        log σ²_step = log β̃ ('posterior'),  log β ('forward'),
                      f log β + (1 − f) log β̃'  ('learned', f = (var_output + 1)/2),
    with β = σ²_{t|s} (DDPM's β_t on the current grid), β̃ = σ̃²_{s|t} = c σ_s² (its β̃_t). For
    'learned', β̃' is the β̃ of the step clip_step = (t', s') (default: this step): IDDPM's
    `posterior_log_variance_clipped` uses the second step's β̃ on the first step, where β̃ = 0.
    z, x_hat, var_output: (B, ...). Returns μ (B, ...) and log σ² (B, ...) or a scalar.
    """
    check_variance(variance)
    coef_z, coef_x, var_tilde = posterior_coefficients(schedule, s, t)
    mean = coef_z * z + coef_x * x_hat
    if variance == "posterior":
        return mean, jnp.log(var_tilde)
    log_beta = jnp.log(q_transition(schedule, s, t)[1])
    if variance == "forward":
        return mean, log_beta
    if var_output is None:
        raise ValueError("variance='learned' needs var_output (the model's second half).")
    if clip_step is not None:
        var_tilde = posterior_coefficients(schedule, clip_step[1], clip_step[0])[2]
    frac = (var_output + 1.0) / 2.0
    return mean, frac * log_beta + (1.0 - frac) * jnp.log(var_tilde)


def _split_learned(out: Array, z: Array) -> tuple[Array, Array]:
    """A learned-variance output (B, ..., 2C) → (prediction, v), each (B, ..., C)."""
    c = z.shape[-1]
    expected = (*z.shape[:-1], 2 * c)
    if out.shape != expected:
        raise ValueError(f"variance='learned' needs the model's full output of shape {expected} "
                         f"(prediction and variance halves on the last axis), got {out.shape}.")
    return out[..., :c], out[..., c:]


# ----------------------------------------------------------------------------------------------
# Samplers. Each maps z_{t_0} (B, ...) along the grid ts (N + 1,) to z_{t_N}.
# ----------------------------------------------------------------------------------------------


def ddpm(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps", variance: str = "posterior", clip_denoised: bool = False,
) -> SampleOutput:
    """Ancestral sampling z_s ~ N(a z_t + b x̂, σ²_step) on any decreasing grid
    (`ddpm_mean_log_variance`). One NFE a step.

    variance: 'posterior' σ̃²_{s|t} = c σ_s² (β̃), 'forward' σ²_{t|s} (β), or 'learned': then
    the model returns the network's full output (B, ..., 2C), the prediction in the first C
    channels of the last axis and v ∈ [−1, 1] in the last C, and log σ²_step interpolates log β
    and log β̃ of the current step by (v + 1)/2 (IDDPM's 'learned_range'); on the final step
    β̃ is that of the step before (IDDPM's clipping; the final step adds no noise anyway).
    clip_denoised: clip x̂ to [−1, 1] before the step.
    """
    check_variance(variance)
    rng = need_rng(rng, "ddpm")
    learned = variance == "learned"
    n = ts.shape[0] - 1

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        var_output = None
        if learned:
            out, var_output = _split_learned(out, z)
        x_hat, _ = x_eps(schedule, prediction, out, z, t)
        if clip_denoised:
            x_hat = jnp.clip(x_hat, -1.0, 1.0)
        clip_step = None
        if learned and n >= 2:  # the final step takes β̃ of the step ts[n−2] → ts[n−1]
            clip_step = (jnp.where(last, ts[n - 2], t), jnp.where(last, ts[n - 1], s))
        mean, log_var = ddpm_mean_log_variance(schedule, z, x_hat, t, s, variance=variance,
                                               var_output=var_output, clip_step=clip_step)
        return (mean + step_noise(key, z, jnp.exp(0.5 * log_var), last),)

    return scan_steps(step, (z,), ts, rng, as_sampling_model(model))


def ddim(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps", eta: float = 0.0, clip_denoised: bool = False,
) -> SampleOutput:
    """DDIM: z_s = α_s x̂ + σ_s √(1 − η² c) ε̂ + η √c σ_s ξ, c = −expm1(λ_t − λ_s). One NFE a step.

    η = 0 is deterministic and runs either way: an increasing grid ts encodes (DDIM inversion,
    see `ddim_invert`). η = 1 equals `ddpm` with the posterior variance (same rng, same samples).
    clip_denoised: clip x̂ to [−1, 1] and use ε̂ = (z_t − α_t x̂)/σ_t of the clipped x̂.
    """
    eta = check_eta(eta)
    stochastic = eta > 0
    rng = need_rng(rng, "ddim") if stochastic else None

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        x_hat, eps_hat = x_eps(schedule, prediction, out, z, t)
        if clip_denoised:
            x_hat = jnp.clip(x_hat, -1.0, 1.0)
            alpha_t, sigma_t = alpha_sigma(schedule, t)
            eps_hat = (z - alpha_t * x_hat) / sigma_t
        lam_s = schedule.log_snr(s)
        alpha_s, sigma_s = alpha_sigma_from_log_snr(lam_s, schedule.family)
        if not stochastic:
            return (alpha_s * x_hat + sigma_s * eps_hat,)
        c = -jnp.expm1(schedule.log_snr(t) - lam_s)
        z_s = alpha_s * x_hat + sigma_s * jnp.sqrt(1 - eta**2 * c) * eps_hat
        return (z_s + step_noise(key, z, eta * jnp.sqrt(c) * sigma_s, last),)

    return scan_steps(step, (z,), ts, rng, as_sampling_model(model))


def euler(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps",
) -> SampleOutput:
    """Probability-flow ODE dz/dt = û, Euler in t: z_s = z_t + (s − t) û(z_t, t). One NFE a step."""

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        return (z + (s - t) * velocity(schedule, prediction, out, z, t),)

    return scan_steps(step, (z,), ts, None, as_sampling_model(model))


def heun(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps",
) -> SampleOutput:
    """Probability-flow ODE, Heun's method (2nd order): z̃ = z_t + (s − t) û_t,
    z_s = z_t + (s − t)(û_t + û(z̃, s))/2. The last step is always the Euler step z̃ (Karras et al.
    2022 skip the correction where σ_N = 0; here also for t_min > 0), so the model is never called
    at t_min and the order stays 2. 2N − 1 NFE.
    """

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        u = velocity(schedule, prediction, out, z, t)
        z_euler = z + (s - t) * u

        def correct(z_euler):
            u_s = velocity(schedule, prediction, f(z_euler, s), z_euler, s)
            return z + (s - t) / 2 * (u + u_s)

        return (jax.lax.cond(last, lambda z_euler: z_euler, correct, z_euler),)

    n = ts.shape[0] - 1
    return scan_steps(step, (z,), ts, None, as_sampling_model(model), nfe=2 * n - 1)


def euler_maruyama(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps",
) -> SampleOutput:
    """Reverse SDE dz = [û − ½ g² ∇log p] dt + g dw̄ with g² = −σ_t² λ'_t and ∇log p = −ε̂/σ_t,
    Euler–Maruyama: z_s = z_t + (s − t)(û − ½ σ_t λ'_t ε̂) + √(g² (t − s)) ξ. One NFE a step.
    """
    rng = need_rng(rng, "euler_maruyama")

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        t_vec = times(z, t)
        x_hat, eps_hat = to_x_eps(schedule, out, prediction, z, t_vec)
        u = out if prediction == "flow" else from_x_eps(schedule, x_hat, eps_hat, "flow", z, t_vec)
        lam, d_lam = log_snr_and_derivative(schedule, t)
        _, sigma = alpha_sigma_from_log_snr(lam, schedule.family)
        drift = u - 0.5 * sigma * d_lam * eps_hat
        g2 = -(sigma**2) * d_lam
        return (z + (s - t) * drift + step_noise(key, z, jnp.sqrt(g2 * (t - s)), last),)

    return scan_steps(step, (z,), ts, rng, as_sampling_model(model))


def dpm_solver_2m(
    model: ModelFn | SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *,
    prediction: str = "eps", lower_order_final: bool = True,
) -> SampleOutput:
    """DPM-Solver++(2M), multistep 2nd order in log-SNR on the data prediction x̂ (Lu et al. 2022):
        h = (λ_s − λ_t)/2,  z_s = (σ_s/σ_t) z_t − α_s expm1(−h) D,
        D = x̂_t + (h / 2h_prev)(x̂_t − x̂_prev)    (r = h_prev/h, D = (1 + 1/2r) x̂_t − x̂_prev/2r).
    First order (D = x̂_t, the DDIM step) on the first step, on the last when `lower_order_final`
    (which steadies few-step sampling, as in the reference implementations), and on a step to
    λ_s = +∞ (h = ∞: z_s = x̂_t). N NFE.
    """
    n = ts.shape[0] - 1

    def step(carry, t, s, key, i, last, out, f):
        z, x_prev, h_prev = carry
        x_hat, _ = x_eps(schedule, prediction, out, z, t)
        lam_t, lam_s = schedule.log_snr(t), schedule.log_snr(s)
        _, sigma_t = alpha_sigma_from_log_snr(lam_t, schedule.family)
        alpha_s, sigma_s = alpha_sigma_from_log_snr(lam_s, schedule.family)
        h = (lam_s - lam_t) / 2
        second = (i > 0) & jnp.isfinite(h) & jnp.isfinite(h_prev)
        if lower_order_final:
            second = second & (i < n - 1)
        k = jnp.where(second, h / jnp.where(second, 2 * h_prev, 1.0), 0.0)
        d = x_hat + k * (x_hat - x_prev)
        z_s = (sigma_s / sigma_t) * z - alpha_s * jnp.expm1(-h) * d
        return z_s, x_hat, h

    carry = (z, jnp.zeros_like(z), jnp.zeros((), z.dtype))
    return scan_steps(step, carry, ts, None, as_sampling_model(model))


def meanflow(
    model: Callable[[Array, Array, Array], Array] | SamplingModel, schedule: Schedule | None,
    z: Array, ts: Array, rng: Array | None = None, *, prediction: str = AVERAGE_VELOCITY,
) -> SampleOutput:
    """MeanFlow's few-step sampler: z_s = z_t − (t − s) u(z_t, s, t) for consecutive (t, s) of
    ts, with the model u(z, r, t) -> (B, ...), r and t (B,). Exact for any grid when u is the true
    average velocity; the schedule is not read (the path is rectified flow's). N NFE.
    """

    def step(carry, t, s, key, i, last, out, f):
        (z,) = carry
        u = f(z, times(z, s), times(z, t)).astype(z.dtype)  # f = model.fn: u(z, r, t)
        return (z - (t - s) * u,)

    return scan_steps(step, (z,), ts, None, as_sampling_model(model), first=False)


_SAMPLER_FNS: dict[str, Callable[..., Array]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "euler_maruyama": euler_maruyama,
    "dpm_solver_2m": dpm_solver_2m,
    "meanflow": meanflow,
    "sit_sde": sit_sde,
    "dopri5": dopri5,
}


# The options of the time grid, which every sampler takes (`time_grid`'s keywords).
GRID_OPTIONS = ("spacing", "shift", "t_min", "t_max", "num_train_steps", "last_step_size",
                "time_shift")
# The options each sampler takes beyond those (through `sample`'s **options).
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "ddpm": ("variance", "clip_denoised"),
    "ddim": ("eta", "clip_denoised"),
    "euler": (),
    "heun": (),
    "euler_maruyama": (),
    "dpm_solver_2m": ("lower_order_final",),
    "meanflow": (),
    "sit_sde": ("diffusion_form", "diffusion_norm", "last_step"),  # core.sit_sde
    "dopri5": ("rtol", "atol"),  # core.adaptive_ode
}


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; expected one of {SAMPLERS}.")


def sample(
    model: ModelFn | SamplingModel, schedule: Schedule, shape: tuple[int, ...], rng: Array, *,
    sampler: str, num_steps: int, prediction: str = "eps", z_init: Array | None = None,
    dtype: Any = None, **options: Any,
) -> SampleOutput:
    """Samples of `shape` (B, ...) from `sampler` on `time_grid(num_steps, ...)`: the sampler's
    SampleOutput(samples=z_{t_min}, nfe=nfe(sampler, num_steps)).

    model: a model function (z, t) -> prediction (for 'meanflow', (z, r, t) -> u with
    prediction 'average_velocity', and no other sampler takes that prediction), or a
    `SamplingModel` that adds the batch's sharding and DDT's encoder sharing to it.
    options: the time grid's (GRID_OPTIONS: spacing, shift, t_min, t_max = None for
    `default_t_max(schedule)` (1 for 'meanflow', whose network is evaluated at t = 1 without a
    conversion through λ), num_train_steps = T of spacing='ddpm_respaced', last_step_size = the
    size of a separate last step, time_shift = the model's α, which warps every point of the
    grid) and the sampler's (SAMPLER_OPTIONS: eta, variance, clip_denoised, lower_order_final,
    diffusion_form, diffusion_norm, last_step, rtol, atol).
    z_init: start from this z_{t_max} instead of `initial_noise` (e.g. a DDIM-inverted latent).
    Jittable with everything but rng static, e.g.
    jax.jit(functools.partial(sample, model_fn, schedule, shape, sampler='heun', num_steps=50)).
    """
    _check_sampler(sampler)
    unknown = sorted(set(options) - set(GRID_OPTIONS) - set(SAMPLER_OPTIONS[sampler]))
    if unknown:
        raise ValueError(f"Sampler {sampler!r} takes no option(s) {unknown}; its options are "
                         f"{GRID_OPTIONS + SAMPLER_OPTIONS[sampler]}.")
    if (prediction == AVERAGE_VELOCITY) != (sampler == "meanflow"):
        raise ValueError(f"A model of prediction {AVERAGE_VELOCITY!r} (MeanFlow) samples with "
                         f"sampler 'meanflow' and only it; got sampler {sampler!r} with "
                         f"prediction {prediction!r}.")
    if prediction not in (*PREDICTIONS, AVERAGE_VELOCITY):
        raise ValueError(f"Unknown prediction type {prediction!r}; expected one of {PREDICTIONS}.")
    model = as_sampling_model(model)
    grid = {k: options.pop(k) for k in GRID_OPTIONS if k in options}
    dtype = dtype or (z_init.dtype if z_init is not None else jnp.result_type(float))
    if grid.get("t_max") is None:
        grid["t_max"] = 1.0 if sampler == "meanflow" else default_t_max(schedule, dtype)
    ts = time_grid(num_steps, dtype=dtype, **grid)
    rng_init, rng_steps = jax.random.split(rng)
    if z_init is None:
        z = initial_noise(schedule, tuple(shape), rng_init, ts[0], dtype)
    else:
        if tuple(z_init.shape) != tuple(shape):
            raise ValueError(f"z_init has shape {z_init.shape}, expected {tuple(shape)}.")
        z = z_init.astype(dtype)
    z = constrain(z, model.sharding)
    return _SAMPLER_FNS[sampler](model, schedule, z, ts, rng_steps, prediction=prediction,
                                 **options)


def make_sampler(
    apply_fn: Callable[[Any, Array, Array], Array], schedule: Schedule, shape: tuple[int, ...], *,
    sampler: str, num_steps: int, prediction: str = "eps", **options: Any,
) -> Callable[[Any, Array], SampleOutput]:
    """A jitted fn(params, rng) -> SampleOutput with model_fn = (z, t) ↦ apply_fn(params, z, t)
    ((z, r, t) ↦ apply_fn(params, z, r, t) for 'meanflow').

    params is any pytree (network weights, and e.g. class labels and a guidance scale that
    apply_fn feeds to `classifier_free_guidance`); new params or rng do not recompile.
    """
    _check_sampler(sampler)

    @jax.jit
    def run(params: Any, rng: Array) -> SampleOutput:
        return sample(lambda *zt: apply_fn(params, *zt), schedule, shape, rng, sampler=sampler,
                      num_steps=num_steps, prediction=prediction, **options)

    return run


def ddim_invert(
    model: ModelFn | SamplingModel, schedule: Schedule, x: Array, *, num_steps: int,
    prediction: str = "eps", spacing: str = "uniform", t_min: float | Array = 0.0,
    t_max: float | Array | None = None, shift: float = 3.0, fixed_point_iters: int = 0,
) -> Array:
    """Encode z_{t_min} = x to z_{t_max} along the reversed `time_grid`; decode with
    `sample(..., sampler='ddim', z_init=z)` on the same grid.

    Each step s → t (s < t) starts from the explicit DDIM step z_t = α_t x̂(z_s, s) + σ_t ε̂(z_s, s),
    whose encode–decode error is first order, O(1/N). fixed_point_iters = K > 0 then solves the
    decoder's step z_s = (α_s/α_t)(z_t − σ_t ε̂_t) + σ_s ε̂_t for z_t by the iteration
        z_t ← (α_t/α_s)(z_s − σ_s ε̂(z_t, t)) + σ_t ε̂(z_t, t)      (Pan et al. 2023)
    For Gaussian data its Lipschitz factor is (1 − e^{−h}) σ_t²/(α_t² c + σ_t²) < 1 at any step
    h = (λ_s − λ_t)/2, so each iteration cuts the step's mismatch by ≈ h. N (K + 1) NFE.
    The model is called at t_min: for λ(t_min) = +∞ use t_min > 0.
    """
    if t_max is None:
        t_max = default_t_max(schedule, x.dtype)
    ts = time_grid(num_steps, spacing, t_min=t_min, t_max=t_max, shift=shift, dtype=x.dtype)
    ts = ts[::-1]
    if fixed_point_iters == 0:
        return ddim(model, schedule, x, ts, prediction=prediction).samples

    def step(carry, s, t, key, i, last, out, f):
        (z_s,) = carry
        x_hat, eps_hat = x_eps(schedule, prediction, out, z_s, s)
        alpha_s, sigma_s = alpha_sigma(schedule, s)
        alpha_t, sigma_t = alpha_sigma(schedule, t)

        def refine(_, z_t):
            _, eps_t = x_eps(schedule, prediction, f(z_t, t), z_t, t)
            return (alpha_t / alpha_s) * (z_s - sigma_s * eps_t) + sigma_t * eps_t

        z_t = alpha_t * x_hat + sigma_t * eps_hat
        return (jax.lax.fori_loop(0, fixed_point_iters, refine, z_t),)

    return scan_steps(step, (x,), ts, None, as_sampling_model(model)).samples
