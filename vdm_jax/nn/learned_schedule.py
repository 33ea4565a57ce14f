"""The VDM learned noise schedule (Kingma et al. 2021, appendix / `NoiseSchedule_NNet`), NNX.

VDM's γ(t) = −λ(t) is a monotone network

    γ_raw(t) = l1(t) + l3(φ(l2(t))),   l1: 1 → 1,  l2: 1 → F (with bias),  φ = sigmoid,
                                       l3: F → 1 (averaged over the F features),

with all weights kept non-negative, here as w = softplus(w_raw) > 0 (VDM uses |w|). Every term
is then increasing in t, so γ_raw is strictly increasing. It is rescaled to fixed endpoints:

    s(t) = (γ_raw(t) − γ_raw(0)) / (γ_raw(1) − γ_raw(0)) ∈ [0, 1],
    γ(t) = (1 − s(t)) · γ_min + s(t) · γ_max,

so γ(0) = γ_min and γ(1) = γ_max exactly (t = 0 data, t = 1 noise; λ = −γ decreases from −γ_min
to −γ_max; t outside [0, 1] is clamped to the endpoints). Constant offsets cancel in s, so l1 and
l3 carry no bias, and each sigmoid feature has σ(b) subtracted so that γ_raw(0) = 0 exactly.
`learned_schedule(net)` wraps it as a `vdm_jax.core.schedules.Schedule`; train it jointly with the
denoiser by differentiating the ELBO (which depends on it through λ and dλ/dt) wrt the net.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.core.schedules import Schedule

Array = jax.Array


class LearnedGamma(nnx.Module):
    """Monotone γ(t) with exact endpoints (module docstring). t: any shape → γ: same shape, f32.

    Args:
      gamma_min, gamma_max: γ(0) and γ(1); VDM's defaults −13.3 and 5.0 (λ from 13.3 to −5).
      n_features: width F of the sigmoid layer (VDM: 1024).
    """

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        n_features: int = 1024,
        *,
        rngs: nnx.Rngs,
    ):
        if not gamma_min < gamma_max:
            raise ValueError(f"Need gamma_min < gamma_max, got {gamma_min} and {gamma_max}.")
        if n_features < 1:
            raise ValueError(f"n_features must be positive, got {n_features}.")
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        normal = nnx.initializers.normal(1.0)
        # l1 starts at weight softplus(w) = 1: a linear γ plus the sigmoid-feature term.
        self.w1 = nnx.Param(jnp.full((), math.log(math.e - 1.0), jnp.float32))
        self.w2 = nnx.Param(normal(rngs.params(), (n_features,), jnp.float32))
        self.b2 = nnx.Param(normal(rngs.params(), (n_features,), jnp.float32))
        self.w3 = nnx.Param(normal(rngs.params(), (n_features,), jnp.float32))

    def raw(self, t: Array) -> Array:
        """γ_raw(t) − γ_raw(0): strictly increasing, exactly 0 at t = 0. t: (...) → (...)."""
        t = jnp.asarray(t, jnp.float32)
        w1, w2, w3 = (jax.nn.softplus(w[...]) for w in (self.w1, self.w2, self.w3))
        b2 = self.b2[...]
        feats = jax.nn.sigmoid(t[..., None] * w2 + b2) - jax.nn.sigmoid(b2)  # (..., F), 0 at t=0
        return w1 * t + jnp.mean(feats * w3, axis=-1)  # (...)

    def __call__(self, t: Array) -> Array:
        t = jnp.asarray(t, jnp.float32)
        s = self.raw(t) / self.raw(jnp.float32(1.0))  # (...), in [0, 1] up to rounding
        # Rounding (and XLA's constant folding of raw(1)) can leave s a few ulps off 0 or 1 at
        # the endpoints. Snap the value to [0, 1] and to exactly 0 / 1 at t = 0 / 1 without
        # touching derivatives: s + stop_gradient(snapped − s) has the value of `snapped` and
        # the gradient (wrt t and parameters) of s, so dλ/dt stays exact at the endpoints too.
        snapped = jnp.where(t <= 0.0, 0.0, jnp.where(t >= 1.0, 1.0, jnp.clip(s, 0.0, 1.0)))
        s = s + jax.lax.stop_gradient(snapped - s)
        return (1.0 - s) * self.gamma_min + s * self.gamma_max  # (...)


def learned_schedule(net: LearnedGamma) -> Schedule:
    """The learned γ network as a schedule: λ(t) = −γ(t), variance preserving.

    Returns `vdm_jax.core.schedules.Schedule(log_snr=lambda t: -net(t), family="vp")`.
    """
    return Schedule(log_snr=lambda t: -net(t), family="vp")
