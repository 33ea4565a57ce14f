"""Generating images from a trained `DiffusionModel` with a `SamplingSpec`: one jitted call.

    fn = make_generate_fn(model, batch_size, spec, sharding=batch_sharding)
    images = fn(params, labels, rng)      # (B, H, W, C) float in model space

Class-conditional models sample the given labels with classifier-free guidance at
`spec.guidance_scale` (1 = the plain conditional model: one forward pass, no null batch);
unconditional models ignore the labels. DDPM with `variance='learned'` reads the network's
variance half (models trained with learned σ); every other sampler sees only the prediction.
A MeanFlow model (prediction 'average_velocity') samples with the 'meanflow' sampler, which calls
its two-time network u(z, r, t); guidance is part of its training, not of sampling.
A spec with encoder_interval / encoder_steps shares a DDT's condition encoder across steps
(core.encoder_sharing.SharedEncoder, its value in the sampler's scan carry). Used by the
trainer's grids, `generation.batches` (launch/sample.py) and end-of-run metrics;
`encoder_sharing_schedule` finds DDT's non-uniform sharing schedule for a trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.core import samplers
from vdm_jax.core.encoder_sharing import SharedEncoder, sharing_schedule_dp
from vdm_jax.core.guidance import classifier_free_guidance, guided_inputs
from vdm_jax.model import DiffusionModel
from vdm_jax.sampling_spec import SamplingSpec

__all__ = ["class_balanced_labels", "encoder_sharing_schedule", "make_generate_fn"]

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
    fn = _sample_fn(model, batch_size, spec, sharding)
    return jax.jit(lambda params, labels, rng: fn(params, labels, rng).samples)


def _sample_fn(
    model: DiffusionModel, batch_size: int, spec: SamplingSpec,
    sharding: jax.sharding.Sharding | None, refresh: np.ndarray | None = None,
    record: bool = False,
) -> Callable[[Any, Array, Array], samplers.SampleOutput]:
    """fn(params, labels, rng) -> the sampler's SampleOutput (with `record`, every step's
    shared condition), to trace."""
    shape = (batch_size, *model.image_shape)
    guided = spec.guided(model.num_classes)
    spec.check_channels(model.image_shape[-1])
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
    spec.check_prediction(model.prediction)
    refresh = spec.encoder_refresh() if refresh is None else refresh
    if refresh is not None and not model.shares_encoder:
        raise ValueError("encoder_interval / encoder_steps share a condition encoder across "
                         "sampling steps; only DDT models have one (model.spec family 'ddt')")

    def apply(params: Any, labels: Array, rng: Array) -> samplers.SampleOutput:
        def forward(*zt_y: Array, condition: Array | None = None) -> Array:
            # zt_y = (z, t, y), or (z, r, t, y) for MeanFlow's u(z, r, t). The network's raw
            # output (prediction + variance half), the prediction alone, or u; from a shared
            # condition (DDT) when given.
            if model.is_meanflow:
                return model.average_velocity(params, *zt_y)
            if learned:
                return model.network(params, *zt_y, condition=condition)
            return model.predict(params, *zt_y, condition=condition)

        def decode(*zt_y_c: Array) -> Array:  # (z, t, y, c): the model from a shared condition
            return forward(*zt_y_c[:-1], condition=zt_y_c[-1])

        fn = forward if refresh is None else decode
        if guided:
            extra = {"channels": spec.guidance_channels} if spec.guidance_channels else {}
            model_fn = classifier_free_guidance(
                fn, labels, model.num_classes, spec.guidance_scale, spec.guidance_interval,
                **extra,
            )
            encode = lambda z, t: model.encode(
                params, *guided_inputs(z, t, labels, model.num_classes))
        else:
            y = labels if model.num_classes else model.null_labels(batch_size)

            def model_fn(*args: Array) -> Array:  # (z, t), (z, r, t), or sharing (z, t, c)
                return fn(*args, y) if refresh is None else fn(*args[:2], y, args[2])

            encode = lambda z, t: model.encode(params, z, t, y)
        shared = None if refresh is None else SharedEncoder(encode, refresh, record)
        return samplers.sample(
            samplers.SamplingModel(model_fn, sharding, shared), model.schedule(params), shape,
            rng, sampler=spec.sampler, num_steps=spec.num_steps, prediction=model.prediction,
            **grid, **spec.sampler_options,
        )

    return apply


def encoder_sharing_schedule(
    model: DiffusionModel, params: Any, spec: SamplingSpec, budget: int, *,
    batch_size: int = 8, seed: int = 0,
) -> tuple[int, ...]:
    """DDT's non-uniform sharing schedule for `spec`: the `budget` steps at which recomputing
    the condition encoder loses least (core.encoder_sharing.sharing_schedule_dp), measured as the
    reference does on one trajectory of `batch_size` samples (class-balanced labels, seed
    `seed`) that recomputes every step: error[m, j] = 1 − mean over samples (and the guided null
    batch) and tokens of cos(condition at step m, at step j), the condition being SiLU(t_emb + s)
    as the reference's DP compares it. Use the result as
    spec.replace(options={'encoder_steps': list(schedule)})."""
    n = spec.num_steps
    sample = _sample_fn(model, batch_size, spec.replace(
        options={"encoder_interval": None, "encoder_steps": None}), None,
        refresh=np.ones((n,), bool), record=True)

    @jax.jit
    def similarity(params: Any, labels: Array, rng: Array) -> Array:
        history = sample(params, labels, rng).conditions  # (N, B', T, D): each step's condition
        # The reference compares SiLU(t_emb + s), what its AdaLN Linears read (ours apply the
        # SiLU inside AdaLNModulation).
        states = jax.nn.silu(history.reshape(n, -1, history.shape[-1]).astype(jnp.float32))
        states = states / jnp.maximum(jnp.linalg.norm(states, axis=-1, keepdims=True), 1e-12)
        return jnp.einsum("imd,jmd->ij", states, states) / states.shape[1]  # (N, N)

    labels = class_balanced_labels(batch_size, model.num_classes)
    sim = np.asarray(similarity(params, labels, jax.random.key(seed)), np.float64)
    return sharing_schedule_dp(1.0 - sim, budget)


def class_balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Labels 0, 1, …, K−1, 0, 1, … (num_samples,) int32; zeros when unconditional."""
    if not num_classes:
        return np.zeros((num_samples,), np.int32)
    return (np.arange(num_samples) % num_classes).astype(np.int32)
