"""IDDPM's learned variance (Nichol & Dhariwal 2021, "hybrid" loss; DiT's learn_sigma): the
network's second C channels v give log Σ = v log β_t + (1 − v) log β̃_t, trained by

    ℓ_vlb(b) = L_vlb in bits/dim (vdm_jax.core.objectives.learned_variance_vlb)

on the grid t ∈ {1/T, …, 1} of diffusion.timesteps = T, with weight λ = diffusion.vlb_weight; its
x̂ comes from stop_gradient(pred), so only the variance head learns from it. No params or inputs of
its own: the head is part of the denoiser (model.learn_sigma doubles its output channels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax

from vdm_jax.core import objectives
from vdm_jax.model.terms.base import Forward, LossTerm

__all__ = ["LearnedVariance"]

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LearnedVariance(LossTerm):
    """ℓ_vlb with weight `weight` on a grid of `num_steps` = T levels, for data on `num_levels`."""

    name: ClassVar[str] = "learned_variance"
    num_steps: int
    num_levels: int
    weight: float = 1.0

    @classmethod
    def build(cls, config: Mapping[str, Any], data: Any, denoiser: Any, seed: int
              ) -> tuple[LearnedVariance, None, None] | None:
        if not config["model"]["learn_sigma"]:
            return None
        diffusion = config["diffusion"]
        term = cls(num_steps=int(diffusion.get("timesteps") or 0), num_levels=data.num_levels,
                   weight=float(diffusion.get("vlb_weight", 1.0)))
        return term, None, None

    def loss(self, params: Any, inputs: Any, forward: Forward, batch: Mapping[str, Array]
             ) -> tuple[Array, dict[str, Array]]:
        c = forward.pred.shape[-1]
        vlb = objectives.learned_variance_vlb(
            forward.schedule, forward.x, forward.z, forward.t, forward.pred, forward.prediction,
            forward.output[..., c:], self.num_steps, self.num_levels,
        )  # (B,) bits/dim
        return vlb, {"vlb_loss": vlb.mean()}
