"""Equivalent network outputs and the conversions between them, given z_t and t.

With z = α x + σ ε (shapes (B, ...); t of shape (B,)):
    'eps'    ε
    'x'      x (the clean data, "x₀")
    'v'      v = α ε − σ x                       (Salimans & Ho 2022)
    'score'  ∇ log q(z_t) estimate = −ε / σ
    'flow'   u = dz_t/dt = α' x + σ' ε            (= ε − x for rectified flow)
Every conversion goes through the pair (x, ε), which z = α x + σ ε ties together:
    from v:    x = (α z − σ v) / (α² + σ²),  ε = (σ z + α v) / (α² + σ²)
    from u:    x = (σ' z − σ u) / D,          ε = (α u − α' z) / D,   D = α σ' − σ α'
The posterior mean μ = E[z_s | z_t, x̂] needs a second time s: see `mu_from_x` / `x_from_mu`.
"""

from __future__ import annotations

import jax

from vdm_jax.core.diffusion import expand_to, posterior_coefficients, q_posterior
from vdm_jax.core.schedules import Schedule, alpha_sigma, alpha_sigma_derivatives

Array = jax.Array
PREDICTIONS = ("eps", "x", "v", "score", "flow")


def _check(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"Unknown prediction type {kind!r}; expected one of {PREDICTIONS}.")


def to_x_eps(
    schedule: Schedule, pred: Array, kind: str, z: Array, t: Array
) -> tuple[Array, Array]:
    """(x̂, ε̂) implied by a prediction of type `kind` at (z_t, t)."""
    _check(kind)
    alpha, sigma = alpha_sigma(schedule, expand_to(t, z))
    if kind == "eps":
        return (z - sigma * pred) / alpha, pred
    if kind == "x":
        return pred, (z - alpha * pred) / sigma
    if kind == "v":
        r2 = alpha**2 + sigma**2
        return (alpha * z - sigma * pred) / r2, (sigma * z + alpha * pred) / r2
    if kind == "score":
        eps = -sigma * pred
        return (z - sigma * eps) / alpha, eps
    d_alpha, d_sigma = alpha_sigma_derivatives(schedule, expand_to(t, z))
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * z - sigma * pred) / det, (alpha * pred - d_alpha * z) / det


def from_x_eps(
    schedule: Schedule, x: Array, eps: Array, kind: str, z: Array, t: Array
) -> Array:
    """The prediction of type `kind` equivalent to (x, ε) at time t (z only fixes the shape)."""
    _check(kind)
    if kind == "eps":
        return eps
    if kind == "x":
        return x
    alpha, sigma = alpha_sigma(schedule, expand_to(t, z))
    if kind == "v":
        return alpha * eps - sigma * x
    if kind == "score":
        return -eps / sigma
    d_alpha, d_sigma = alpha_sigma_derivatives(schedule, expand_to(t, z))
    return d_alpha * x + d_sigma * eps


def convert(schedule: Schedule, pred: Array, src: str, dst: str, z: Array, t: Array) -> Array:
    """Convert a prediction from parameterization `src` to `dst` at (z_t, t)."""
    if src == dst:
        _check(src)
        return pred
    x, eps = to_x_eps(schedule, pred, src, z, t)
    return from_x_eps(schedule, x, eps, dst, z, t)


def mu_from_x(schedule: Schedule, s: Array, t: Array, z_t: Array, x: Array) -> Array:
    """Posterior-mean parameterization μ = E_q[z_s | z_t, x̂] for s < t."""
    return q_posterior(schedule, s, t, z_t, x)[0]


def x_from_mu(schedule: Schedule, s: Array, t: Array, z_t: Array, mu: Array) -> Array:
    """Inverse of `mu_from_x`: μ = a z_t + b x̂, so x̂ = (μ − a z_t) / b."""
    coef_z, coef_x, _ = posterior_coefficients(schedule, expand_to(s, z_t), expand_to(t, z_t))
    return (mu - coef_z * z_t) / coef_x
