"""The weighted-ELBO family of diffusion losses (Kingma & Gao 2023).

Every objective is a weighting w(λ) and a time density p(t):

    L_w = ½ E_{t~p} [ w(λ_t) (−dλ/dt) / p(t) · ‖ε − ε̂‖² ],        w ≡ 1, p = U: the ELBO,

with ‖·‖² averaged over dimensions here, so the ELBO objective is the diffusion term in nats per
dimension. An `Objective` stores the factor multiplying ‖ε − ε̂‖² directly (`eps_weight`): the
textbook losses (‖ε − ε̂‖², ‖x − x̂‖², ‖v − v̂‖², EDM, flow matching, JiT) are all this factor for
some w, and `implied_elbo_weight` recovers w(λ) = 2 eps_weight · p(t) / (−dλ/dt).

The network may predict any parameterization: the error in its own space is a fixed multiple of
the ε error, pred − target = c(t) (ε̂ − ε), so the loss is computed as
eps_weight / c² · ‖pred − target‖², which stays finite where ε̂ itself is ill-conditioned
(an x-predicting network near t = 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm_jax.core import time_sampling as ts
from vdm_jax.core.diffusion import (
    expand_to,
    gaussian_kl,
    mean_except_batch,
    posterior_coefficients,
    q_sample,
    q_transition,
)
from vdm_jax.core.elbo import discretized_gaussian_nll
from vdm_jax.core.parameterizations import PREDICTIONS, from_x_eps, to_x_eps
from vdm_jax.core.schedules import (
    Schedule,
    alpha_sigma_derivatives,
    alpha_sigma_from_log_snr,
    log_snr_and_derivative,
)

Array = jax.Array
# eps_weight(λ, t, dλ/dt, p(t), schedule) -> factor on mean‖ε − ε̂‖², all of shape (B,).
EpsWeight = Callable[[Array, Array, Array, Array, Schedule], Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A diffusion training objective: per-example loss eps_weight · mean‖ε − ε̂‖², t ~ density."""

    name: str
    eps_weight: EpsWeight
    density: ts.TimeDensity


def weighted_elbo(
    w: Callable[[Array], Array], density: ts.TimeDensity, name: str = "weighted_elbo"
) -> Objective:
    """The objective ½ w(λ) (−dλ/dt) / p(t) · ‖ε − ε̂‖² for a weighting w(λ) and density p."""
    return Objective(name, lambda lam, t, dlam, p, s: 0.5 * w(lam) * (-dlam) / p, density)


def implied_elbo_weight(objective: Objective, schedule: Schedule, t: Array) -> Array:
    """w(λ_t) = 2 eps_weight p(t) / (−dλ/dt): the objective as a weighted ELBO (shape of t)."""
    lam, dlam = log_snr_and_derivative(schedule, t)
    p = objective.density.pdf(t, schedule)
    return 2 * objective.eps_weight(lam, t, dlam, p, schedule) * p / (-dlam)


def error_scale(schedule: Schedule, kind: str, t: Array) -> Array:
    """c(t) with pred − target = c (ε̂ − ε) at fixed z_t (shape of t).

    eps: 1;  x: −σ/α;  v: (α² + σ²)/α;  score: −1/σ;  flow: σ' − α' σ / α.
    """
    if kind not in PREDICTIONS:
        raise ValueError(f"Unknown prediction type {kind!r}; expected one of {PREDICTIONS}.")
    lam = schedule.log_snr(t)
    alpha, sigma = alpha_sigma_from_log_snr(lam, schedule.family)
    if kind == "eps":
        return jnp.ones_like(t)
    if kind == "x":
        return -jnp.exp(-lam / 2)
    if kind == "v":
        return (alpha**2 + sigma**2) / alpha
    if kind == "score":
        return -1 / sigma
    d_alpha, d_sigma = alpha_sigma_derivatives(schedule, t)
    return d_sigma - d_alpha * sigma / alpha


# ---------------------------------------------------------------------------------------------
# Named objectives. Each docstring gives the textbook loss it reproduces.
# ---------------------------------------------------------------------------------------------


def eps_mse() -> Objective:
    """L_simple (Ho et al. 2020): ‖ε − ε̂‖², t ~ U[0, 1]."""
    return Objective("eps_mse", lambda lam, t, dlam, p, s: jnp.ones_like(lam), ts.uniform())


def ddpm_simple(num_steps: int = 1000) -> Objective:
    """L_simple on DDPM's integer grid t ∈ {1/T, …, 1} (the DiT recipe)."""
    density = ts.uniform_discrete(num_steps)
    return dataclasses.replace(eps_mse(), name="ddpm_simple", density=density)


def x_mse() -> Objective:
    """‖x − x̂‖² = e^{−λ} ‖ε − ε̂‖², t ~ U[0, 1]."""
    return Objective("x_mse", lambda lam, t, dlam, p, s: jnp.exp(-lam), ts.uniform())


def v_mse() -> Objective:
    """‖v − v̂‖² = ((α² + σ²)/α)² ‖ε − ε̂‖² (1 + e^{−λ} for VP), t ~ U[0, 1]."""

    def eps_weight(lam, t, dlam, p, schedule):
        alpha, sigma = alpha_sigma_from_log_snr(lam, schedule.family)
        return ((alpha**2 + sigma**2) / alpha) ** 2

    return Objective("v_mse", eps_weight, ts.uniform())


def elbo() -> Objective:
    """The continuous-time ELBO's diffusion term: ½ (−dλ/dt) ‖ε − ε̂‖², t ~ U[0, 1] (w ≡ 1)."""
    return weighted_elbo(lambda lam: jnp.ones_like(lam), ts.uniform(), "elbo")


def sigmoid(bias: float = 0.0) -> Objective:
    """Sigmoid weighting w(λ) = sigmoid(b − λ) (Kingma & Gao 2023), t ~ U[0, 1]:
    ½ sigmoid(b − λ) (−dλ/dt) ‖ε − ε̂‖²."""
    return weighted_elbo(lambda lam: jax.nn.sigmoid(bias - lam), ts.uniform(), "sigmoid")


def edm(sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2) -> Objective:
    """EDM (Karras et al. 2022): λ(σ) ‖D(x + σ n) − x‖², λ(σ) = (σ² + σ_d²)/(σ σ_d)²,
    ln σ ~ N(P_mean, P_std²).

    EDM's σ is our σ/α = e^{−λ/2}, so ‖x − x̂‖² = σ² ‖ε − ε̂‖² and the ε weight is (σ² + σ_d²)/σ_d².
    """

    def eps_weight(lam, t, dlam, p, s):
        return (jnp.exp(-lam) + sigma_data**2) / sigma_data**2

    return Objective("edm", eps_weight, ts.log_snr_normal(-2 * p_mean, 2 * p_std))


def _flow_velocity_weight(lam, t, dlam, p, schedule):
    """c_flow² = (σ' − α' σ / α)²: ‖u − û‖² in ε units (1/α² for rectified flow)."""
    return error_scale(schedule, "flow", t) ** 2


def flow_matching(mean: float = 0.0, std: float = 1.0, density: str = "logit_normal") -> Objective:
    """Conditional flow matching (Lipman et al. 2023): ‖u − û‖², u = ε − x for rectified flow,
    with logit(t) ~ N(mean, std²) (density 'logit_normal': SD3, DDT) or t ~ U[0, 1]
    ('uniform': SiT and the SiT-based recipes)."""
    if density == "uniform":
        return Objective("flow_matching", _flow_velocity_weight, ts.uniform())
    if density != "logit_normal":
        raise ValueError(f"flow_matching density {density!r}; expected 'logit_normal' or "
                         "'uniform'")
    return Objective("flow_matching", _flow_velocity_weight, ts.logit_normal(mean, std))


def jit(mean: float = 0.8, std: float = 0.8, t_eps: float = 0.05) -> Objective:
    """JiT (Li & He 2025): an x-predicting network trained with the v-loss on rectified flow.

    In JiT's convention (t' = 1 − t = data weight) with z = t' x + (1 − t') ε it is
    ‖v − v̂‖², v = (x − z)/max(1 − t', t_eps); ours: ‖x − x̂‖² / max(t, t_eps)², i.e. the ε weight
    e^{−λ} / max(t, t_eps)² (= 1/(1 − t)² for t ≥ t_eps), logit(t) ~ N(0.8, 0.8²).
    """

    def eps_weight(lam, t, dlam, p, s):
        return jnp.exp(-lam) / jnp.maximum(t, t_eps) ** 2

    return Objective("jit", eps_weight, ts.logit_normal(mean, std))


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "eps_mse": eps_mse,
    "ddpm_simple": ddpm_simple,
    "x_mse": x_mse,
    "v_mse": v_mse,
    "elbo": elbo,
    "sigmoid": sigmoid,
    "edm": edm,
    "flow_matching": flow_matching,
    "jit": jit,
}


def get_objective(name: str, **kwargs) -> Objective:
    """A named objective from `OBJECTIVES`, with keyword arguments for its constructor."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}.")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"Bad arguments {kwargs} for objective {name!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# The loss itself.
# ---------------------------------------------------------------------------------------------


def per_example_loss(
    objective: Objective,
    schedule: Schedule,
    pred: Array,
    prediction: str,
    x: Array,
    eps: Array,
    z: Array,
    t: Array,
) -> Array:
    """eps_weight / c² · mean‖pred − target‖² for one batch: (B, ...) arrays, t (B,) -> (B,)."""
    lam, dlam = log_snr_and_derivative(schedule, t)
    weight = objective.eps_weight(lam, t, dlam, objective.density.pdf(t, schedule), schedule)
    weight = weight / error_scale(schedule, prediction, t) ** 2
    target = from_x_eps(schedule, x, eps, prediction, z, t)
    return weight * mean_except_batch((pred - target) ** 2)


def t_bin_statistics(values: Array, t: Array, num_bins: int) -> dict[str, Array]:
    """Per-t-bin sums and counts of per-example values over [0, 1] in `num_bins` equal bins.

    Sums and counts (not means) so they add across steps and devices; mean = sum / count.
    """
    bins = jnp.clip(jnp.floor(t * num_bins).astype(jnp.int32), 0, num_bins - 1)
    one_hot = jax.nn.one_hot(bins, num_bins, dtype=values.dtype)  # (B, num_bins)
    return {"bin_sum": values @ one_hot, "bin_count": one_hot.sum(axis=0)}


def noisy_inputs(
    objective: Objective, schedule: Schedule, x: Array, rng: Array, *, antithetic: bool = True,
) -> tuple[Array, Array, Array]:
    """The training inputs of a batch x (B, ...): t ~ p(t) (stratified when `antithetic`),
    ε ~ N(0, I) and z_t = α_t x + σ_t ε. Returns (t (B,), ε, z_t)."""
    rng_t, rng_eps = jax.random.split(rng)
    t = ts.sample_time(objective.density, rng_t, x.shape[0], schedule, antithetic)
    eps = jax.random.normal(rng_eps, x.shape, x.dtype)
    return t, eps, q_sample(schedule, x, t, eps)


def diffusion_loss(
    objective: Objective,
    schedule: Schedule,
    model_fn: Callable[[Array, Array], Array],
    x: Array,
    rng: Array,
    prediction: str,
    *,
    antithetic: bool = True,
    num_bins: int = 10,
) -> tuple[Array, dict[str, Array]]:
    """One Monte Carlo estimate of the objective for a batch x (B, ...): `noisy_inputs`, then
    model_fn(z_t, t) -> prediction of type `prediction`, then `per_example_loss`. Returns
    (mean loss, aux) with aux holding the per-example losses, t, and per-t-bin sums/counts.
    """
    t, eps, z = noisy_inputs(objective, schedule, x, rng, antithetic=antithetic)
    pred = model_fn(z, t).astype(jnp.float32)
    losses = per_example_loss(objective, schedule, pred, prediction, x, eps, z, t)
    aux = {"per_example": losses, "t": t, **t_bin_statistics(losses, t, num_bins)}
    return losses.mean(), aux


def learned_variance_vlb(
    schedule: Schedule,
    x: Array,
    z: Array,
    t: Array,
    pred: Array,
    prediction: str,
    var_output: Array,
    num_steps: int,
    num_levels: int,
) -> Array:
    """L_vlb of IDDPM's learned variance (Nichol & Dhariwal 2021, eq. 15; DiT's learn_sigma), in
    bits/dim per example (B,), for t on the grid {1/T, …, 1} and s = t − 1/T.

    p(z_s | z_t) = N(μ_{s|t}(x̂), Σ), x̂ from stop_gradient(pred) (only Σ learns from this term),
    log Σ = v log β_t + (1 − v) log β̃_t, v = (var_output + 1)/2, β_t = σ²_{t|s}, β̃_t = σ̃²_{s|t}.
        t > 1/T:  KL(q(z_s | z_t, x) ‖ p(z_s | z_t))
        t = 1/T:  −log p(x | z_t), the Gaussian mass of x's bin (K levels) under p(z_0 | z_t)
    At t = 1/T, β̃ = 0 when λ(0) = ∞, so β̃ is clipped to its value at the next step (IDDPM).
    Shapes: x, z, pred, var_output (B, ...); t (B,).
    """
    dt = 1.0 / num_steps
    s = jnp.maximum(t - dt, 0.0)
    x_hat, _ = to_x_eps(schedule, jax.lax.stop_gradient(pred), prediction, z, t)
    coef_z, coef_x, var_tilde = posterior_coefficients(schedule, expand_to(s, z), expand_to(t, z))
    _, beta = q_transition(schedule, expand_to(s, z), expand_to(t, z))
    first = expand_to(s <= 0.0, z)
    _, _, var_tilde_next = posterior_coefficients(
        schedule, expand_to(jnp.full_like(t, dt), z), expand_to(jnp.full_like(t, 2 * dt), z)
    )
    log_var_tilde = jnp.log(jnp.where(first, var_tilde_next, var_tilde))
    frac = (var_output + 1.0) / 2.0
    log_var = frac * jnp.log(beta) + (1.0 - frac) * log_var_tilde
    mean_true = coef_z * z + coef_x * x
    mean_model = coef_z * z + coef_x * x_hat
    kl = gaussian_kl(mean_true, jnp.where(first, 1.0, var_tilde), mean_model, jnp.exp(log_var))
    nll = discretized_gaussian_nll(x, mean_model, jnp.exp(0.5 * log_var), num_levels)
    per_dim = jnp.where(first, nll, kl) / jnp.log(2.0)
    return mean_except_batch(per_dim)
