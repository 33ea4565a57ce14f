"""Generating images from a trained `DiffusionModel` with a `SamplingSpec`: one jitted call.

    fn = make_generate_fn(model, batch_size, spec, sharding=batch_sharding)
    images = fn(params, labels, rng)      # (B, H, W, C) float in model space

Class-conditional models sample the given labels with classifier-free guidance at
`spec.guidance_scale` (1 = the plain conditional model: one forward pass, no null batch);
unconditional models ignore the labels. DDPM with `variance='learned'` reads the network's
variance half (models trained with learned σ); every other sampler sees only the prediction.
A MeanFlow model (prediction 'average_velocity') samples with the 'meanflow' sampler, which calls
its two-time network u(z, r, t); guidance is part of its training, not of sampling.
Used by the trainer's grids, `generation.batches` (launch/sample.py) and end-of-run metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vdm_jax.core import samplers
from vdm_jax.model import DiffusionModel
from vdm_jax.sampling_spec import SamplingSpec

__all__ = ["class_balanced_labels", "make_generate_fn"]

Array = jax.Array


def make_generate_fn(
    model: DiffusionModel,
    batch_size: int,
    spec: SamplingSpec,
    *,
    sharding: jax.sharding.Sharding | None = None,
) -> Callable[[Any, Array, Array], Array]:
    """A jitted fn(params, labels (B,), rng) -> images (B, H, W, C), the sampler's z_{t_min}.

    Compiles once per (batch_size, spec); new params, labels or rng do not recompile.
    """
    shape = (batch_size, *model.image_shape)
    guided = spec.guided(model.num_classes)
    learned = spec.sampler_options.get("variance") == "learned"
    if learned and not model.learn_sigma:
        raise ValueError("variance='learned' needs a model trained with learned σ "
                         "(model.learn_sigma); use 'posterior' or 'forward'")
    grid = {}
    if spec.sampler_options.get("spacing") == "ddpm_respaced":
        if not model.ddpm_steps:
            raise ValueError("spacing 'ddpm_respaced' keeps steps of a discrete-time model's "
                             "grid: this model has no diffusion.timesteps")
        grid["num_train_steps"] = model.ddpm_steps  # T: DiT's grid of 1000 levels
    if model.is_meanflow and spec.sampler != "meanflow":
        raise ValueError(f"a MeanFlow model samples with sampler 'meanflow' (e.g. --sampler="
                         f"meanflow --steps=1), not {spec.sampler!r}")
    if spec.sampler == "meanflow" and not model.is_meanflow:
        raise ValueError(f"sampler 'meanflow' needs a MeanFlow model (diffusion.objective="
                         f"'meanflow'); this one predicts {model.prediction!r}")
    # The network's raw output (prediction + variance half), the prediction alone, or MeanFlow's
    # u(z, r, t) (its call takes the second time r: model_fn(z, r, t) below).
    forward = (model.average_velocity if model.is_meanflow
               else model.network if learned else model.predict)

    def apply(params: Any, labels: Array, rng: Array) -> Array:
        if guided:
            extra = {"channels": spec.guidance_channels} if spec.guidance_channels else {}
            model_fn = samplers.classifier_free_guidance(
                lambda z, t, y: forward(params, z, t, y), labels, model.num_classes,
                spec.guidance_scale, spec.guidance_interval, **extra,
            )
        else:
            y = labels if model.num_classes else model.null_labels(batch_size)
            model_fn = lambda *zt: forward(params, *zt, y)  # zt = (z, t), or (z, r, t)
        out = samplers.sample(
            model_fn, model.schedule(params), shape, rng, sampler=spec.sampler,
            num_steps=spec.num_steps, prediction=model.prediction, sharding=sharding,
            **grid, **spec.sampler_options,
        )
        return out.samples

    return jax.jit(apply)


def class_balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Labels 0, 1, …, K−1, 0, 1, … (num_samples,) int32; zeros when unconditional."""
    if not num_classes:
        return np.zeros((num_samples,), np.int32)
    return (np.arange(num_samples) % num_classes).astype(np.int32)
