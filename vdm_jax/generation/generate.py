"""Generating images from a trained `DiffusionModel` with a `SamplingSpec`: one jitted call.

    fn = make_generate_fn(model, batch_size, spec, sharding=batch_sharding)
    images = fn(params, labels, rng)      # (B, H, W, C) float in model space

Class-conditional models sample the given labels with classifier-free guidance at
`spec.guidance_scale` (1 = the plain conditional model: one forward pass, no null batch);
unconditional models ignore the labels. DDPM with `variance='learned'` reads the network's
variance half (models trained with learned σ); every other sampler sees only the prediction.
A MeanFlow model (prediction 'average_velocity') samples with the 'meanflow' sampler, which calls
its two-time network u(z, r, t); guidance is part of its training, not of sampling.
AutoGuidance (spec.guidance = 'auto', Karras et al. 2024) guides the model with a second, weaker
network of the same data and prediction (`guide`, e.g. a smaller model at an early checkpoint):
D_guide + w (D_main − D_guide) at t in the guidance interval, D_main outside (core.guidance);
both networks run in the one jitted sampling program, which then takes params = (main params,
guide params).
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
from vdm_jax.core.guidance import autoguidance, classifier_free_guidance, guided_inputs
from vdm_jax.model import DiffusionModel
from vdm_jax.sampling_spec import SamplingSpec

__all__ = ["check_guide", "class_balanced_labels", "encoder_sharing_schedule",
           "make_generate_fn"]

Array = jax.Array


def make_generate_fn(
    model: DiffusionModel,
    batch_size: int,
    spec: SamplingSpec,
    *,
    sharding: jax.sharding.Sharding | None = None,
    guide: DiffusionModel | None = None,
    return_nfe: bool = False,
) -> Callable[[Any, Array, Array], Array | tuple[Array, Array]]:
    """A jitted fn(params, labels (B,), rng) -> images (B, H, W, C), the sampler's z_{t_min};
    with return_nfe, (images, NFE): an int32 scalar, measured by an adaptive solver ('dopri5')
    and the fixed count of the others. The network computes in the model's dtype: a spec of
    another dtype samples a model from `vdm_jax.model.with_compute_dtype`.

    With AutoGuidance (spec.guidance 'auto', w ≠ 1) `guide` is the weaker network (it must
    fit `model`: `check_guide`) and params is the pair (model's, guide's). Compiles once per
    (batch_size, spec); new params, labels or rng do not recompile.
    """
    fn = _sample_fn(model, batch_size, spec, sharding, guide=guide)

    def run(params: Any, labels: Array, rng: Array) -> Array | tuple[Array, Array]:
        out = fn(params, labels, rng)
        return (out.samples, out.evaluation_count) if return_nfe else out.samples

    return jax.jit(run)


def _sample_fn(
    model: DiffusionModel, batch_size: int, spec: SamplingSpec,
    sharding: jax.sharding.Sharding | None, refresh: np.ndarray | None = None,
    record: bool = False, guide: DiffusionModel | None = None,
) -> Callable[[Any, Array, Array], samplers.SampleOutput]:
    """fn(params, labels, rng) -> the sampler's SampleOutput (with `record`, every step's
    shared condition), to trace."""
    shape = (batch_size, *model.image_shape)
    guided = spec.guided(model.num_classes)
    spec.check_channels(model.image_shape[-1])
    auto = guided and spec.guidance == "auto"
    if auto:
        if guide is None:
            raise ValueError("guidance 'auto' (AutoGuidance) needs a guide run: --guide_workdir")
        check_guide(model, guide)
    learned = spec.sampler_options.get("variance") == "learned"
    if learned and auto:
        raise ValueError("variance='learned' reads the model's variance half, which AutoGuidance "
                         "does not combine; use 'posterior' or 'forward'")
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
    if refresh is not None and auto:
        raise ValueError("encoder_interval / encoder_steps with guidance 'auto': sharing one "
                         "condition between a model and its guide is not defined; share with "
                         "CFG or sample AutoGuidance without encoder sharing")
    if model.time_shift != 1.0:
        grid["time_shift"] = model.time_shift  # the grid the model was trained on (φ_α)

    def apply(params: Any, labels: Array, rng: Array) -> samplers.SampleOutput:
        if auto:
            params, guide_params = params

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
        extra = {"channels": spec.guidance_channels} if spec.guidance_channels else {}
        if auto:
            y = labels if model.num_classes else model.null_labels(batch_size)
            model_fn = autoguidance(
                forward, lambda z, t, y_: guide.predict(guide_params, z, t, y_), y,
                spec.guidance_scale, spec.guidance_interval, **extra)
            encode = None
        elif guided:
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


def check_guide(model: DiffusionModel, guide: DiffusionModel) -> None:
    """ValueError naming what differs when `guide` cannot guide `model` (AutoGuidance needs the
    same data shape, classes and levels, and the same prediction on the same noise path:
    schedule and time shift). The latent space (autoencoder) is the runs' DataSpecs',
    compared by generation.batches.check_guide_run."""
    ours = dict(image_shape=model.image_shape, num_classes=model.num_classes,
                num_levels=model.num_levels, prediction=model.prediction,
                time_shift=model.time_shift, meanflow=model.is_meanflow)
    theirs = dict(image_shape=guide.image_shape, num_classes=guide.num_classes,
                  num_levels=guide.num_levels, prediction=guide.prediction,
                  time_shift=guide.time_shift, meanflow=guide.is_meanflow)
    differ = [f"{k} {theirs[k]!r} (the model's: {ours[k]!r})" for k in ours
              if ours[k] != theirs[k]]
    if model.fixed_schedule is None or guide.fixed_schedule is None:
        differ.append("a learned schedule (AutoGuidance needs fixed, equal schedules)")
    else:
        # Schedules hold functions: compare λ(t) on a grid of the open interval.
        grid = jnp.linspace(0.01, 0.99, 99)
        a, b = model.fixed_schedule, guide.fixed_schedule
        if a.family != b.family or not np.allclose(np.asarray(a.log_snr(grid)),
                                                   np.asarray(b.log_snr(grid)), rtol=1e-6):
            differ.append("its noise schedule")
    if differ:
        raise ValueError("the guide cannot guide this model: it differs in "
                         + "; ".join(differ))
