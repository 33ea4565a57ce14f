"""A diffusion model as the trainer, samplers and evaluation see it: network + schedule + objective
+ loss terms.

`DiffusionModel` holds only static things (graph definitions and choices from the config); the
arrays live in a pure-dict pytree `params = {"denoiser": ..., "schedule": ..., <term>: ...}`
("schedule" only for VDM's learned schedule; a term's own params under its name, e.g. "repa":
REPA's projector), so every method is a pure function of `params` that jit, grad and sharding go
through, and `params` is what checkpoints hold.

Training loss (per example, then averaged):
    L = objective(pred, target)  +  Σ_terms λ_term · ℓ_term           the weighted-ELBO family
where the terms are the add-ons of vdm_jax.model.terms (IDDPM's learned variance, REPA, …), each
given the same forward pass (`Forward`) and its own params and inputs, and the denoiser's labels
are dropped to the null class with probability `diffusion.label_dropout` (classifier-free
guidance). With a learned schedule the objective is the continuous-time ELBO and its gradient
trains the schedule jointly (Kingma et al. 2021).

MeanFlow (diffusion.objective = 'meanflow', core.meanflow) is no weighted ELBO: its network is a
two-time DiT u(z, r, t) (prediction 'average_velocity') trained on the MeanFlow identity, with
the same label dropout; `meanflow_loss` is that branch. It is the objective, not a term: it
replaces the ELBO's loss (another network signature, a target made from the network's own JVP)
instead of adding to it. Its `predict` is u(z, t, t), the instantaneous velocity, and it has no
bits/dim.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.core import elbo as elbo_lib
from vdm_jax.core import meanflow, objectives
from vdm_jax.core import schedules as sch
from vdm_jax.nn.layers import label_dropout
from vdm_jax.nn.learned_schedule import learned_schedule

__all__ = ["BPD_NOT_APPLICABLE", "DTYPES", "DiffusionModel", "Forward"]

Array = jax.Array
Params = dict[str, Any]
BPD_NOT_APPLICABLE = (
    "bits/dim does not apply to a MeanFlow model: it learns the average velocity u(z, r, t) of "
    "the flow, not a denoiser whose weighted ELBO bounds the likelihood")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # model.dtype


@dataclasses.dataclass(frozen=True)
class Forward:
    """One training forward pass of the denoiser, as the terms see it (shapes for a batch of B
    images (H, W, C)): x the clean data, y the labels after dropout (B,), t (B,), eps the noise
    and z = α_t x + σ_t ε (B, H, W, C); output the raw network output (B, H, W, C, or 2C with a
    variance head), pred = output[..., :C] of kind `prediction`; hidden (B, T, D) the state after
    block `hidden_depth` (None when no term asked for it)."""

    x: Array
    y: Array
    t: Array
    eps: Array
    z: Array
    schedule: sch.Schedule
    prediction: str
    output: Array
    pred: Array
    hidden: Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """Static description of a diffusion model; see the module docstring.

    denoiser_def / schedule_def: nnx graph definitions (schedule_def None for a fixed schedule).
    terms: the loss terms (vdm_jax.model.terms.LossTerm instances), summed in this order.
    """

    denoiser_def: Any
    schedule_def: Any | None
    fixed_schedule: sch.Schedule | None
    objective: objectives.Objective | meanflow.MeanFlowObjective
    prediction: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int
    learn_sigma: bool  # the denoiser has a variance head (output 2C channels)
    label_dropout: float
    ddpm_steps: int  # T of the discrete grid (diffusion.timesteps; DiT: 1000), 0 if continuous
    param_specs: Any  # logical PartitionSpecs, a pytree like params (see parallel.mesh)
    terms: tuple[Any, ...] = ()
    network_family: str = "dit"  # vdm_jax.nn.registry's: 'dit' | 'jit' | 'ddt' | 'dit_dh'
    # α of diffusion.time_shift: training draws and the sampling grid are φ_α-warped
    # (core.time_sampling.time_shift); 1 = none.
    time_shift: float = 1.0

    # ------------------------------------------------------------------------------ pieces
    def schedule(self, params: Params) -> sch.Schedule:
        """The noise schedule; a function of `params` when it is learned."""
        if self.schedule_def is None:
            return self.fixed_schedule
        return learned_schedule(nnx.merge(self.schedule_def, params["schedule"]))

    @property
    def is_meanflow(self) -> bool:
        return isinstance(self.objective, meanflow.MeanFlowObjective)

    @property
    def shares_encoder(self) -> bool:
        """Whether the denoiser has a condition encoder that sampling may share across steps
        (DDT: `encode` / `decode`)."""
        return self.network_family == "ddt"

    @property
    def hidden_depth(self) -> int | None:
        """The block after which a loss term reads the denoiser's hidden state (None: none)."""
        depths = {t.hidden_depth for t in self.terms if t.hidden_depth is not None}
        if len(depths) > 1:
            raise ValueError(f"loss terms read the hidden state after different blocks "
                             f"{sorted(depths)}; one forward pass returns one")
        return depths.pop() if depths else None

    def term_input_specs(self, term_inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Logical PartitionSpecs of the terms' inputs {name: pytree}, the same structure."""
        by_name = {t.name: t for t in self.terms}
        return {name: by_name[name].input_specs(v) for name, v in term_inputs.items()}

    def average_velocity(self, params: Params, z: Array, r: Array, t: Array, y: Array) -> Array:
        """A MeanFlow network's u(z_t, r, t) (B, H, W, C), float32; z (B, H, W, C), r ≤ t (B,)."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        return net(z, t, y, r=r).astype(jnp.float32)

    def encode(self, params: Params, z: Array, t: Array, y: Array) -> Array:
        """A DDT's condition c = encode(z_t, t, y) (B, T, D), which sampling may share across
        steps (core.encoder_sharing.SharedEncoder)."""
        if not self.shares_encoder:
            raise ValueError("encoder sharing (sampler options encoder_interval / "
                             "encoder_steps) needs a model with a condition encoder (DDT)")
        return nnx.merge(self.denoiser_def, params["denoiser"]).encode(z, t, y)

    def network(
        self, params: Params, z: Array, t: Array, y: Array, *, return_hidden: int | None = None,
        condition: Array | None = None,
    ) -> Array | tuple[Array, Array]:
        """The raw network output (B, H, W, C or 2C with learn_sigma), float32; with
        return_hidden = i also the hidden state after block i (B, T, D) of the same pass.
        condition: a DDT's c from `encode` (shared across sampling steps): only decoded."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        if condition is not None:
            return net.decode(z, condition).astype(jnp.float32)
        if return_hidden is None:
            return net(z, t, y).astype(jnp.float32)
        out, hidden = net(z, t, y, return_hidden=return_hidden)
        return out.astype(jnp.float32), hidden

    def predict(
        self, params: Params, z: Array, t: Array, y: Array, *, condition: Array | None = None,
    ) -> Array:
        """The prediction of kind `self.prediction` (B, H, W, C); the variance head is dropped.
        condition: as in `network`."""
        out = self.network(params, z, t, y, condition=condition)
        return out[..., : self.image_shape[-1]]

    def model_fn(self, params: Params, y: Array) -> Callable[[Array, Array], Array]:
        """model_fn(z, t) -> prediction for fixed labels y: the samplers' and ELBO's interface."""
        return lambda z, t: self.predict(params, z, t, y)

    def null_labels(self, batch_size: int) -> Array:
        return jnp.full((batch_size,), self.num_classes, jnp.int32)

    # ------------------------------------------------------------------------------ losses
    def loss(
        self, params: Params, batch: Mapping[str, Array], rng: Array, num_bins: int = 10,
        term_inputs: Mapping[str, Any] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Mean training loss of a batch {"image": (B,H,W,C), "label": (B,)} and its diagnostics:
        'per_example' (B,), 't' (B,), per-t-bin sums/counts of the objective ('bin_sum',
        'bin_count') and 'terms', the terms' metrics (scalars, e.g. 'repa_loss': REPA's mean
        alignment loss before λ); MeanFlow's are listed in `meanflow_loss`.
        term_inputs: {term name: its non-trained inputs} (REPA's target encoder)."""
        rng_drop, rng_loss = jax.random.split(rng)
        x, y = batch["image"], batch["label"]
        if self.num_classes:
            y = label_dropout(rng_drop, y, self.label_dropout, self.num_classes)
        else:
            y = self.null_labels(x.shape[0])
        if self.is_meanflow:
            if self.terms:
                raise ValueError("loss terms add to a weighted-ELBO objective, not to MeanFlow's")
            loss, aux = self.meanflow_loss(params, x, y, rng_loss, num_bins)
            return loss, {**aux, "terms": {}}
        schedule = self.schedule(params)
        c = self.image_shape[-1]
        t, eps, z = objectives.noisy_inputs(self.objective, schedule, x, rng_loss)  # (B,), x, x
        depth, hidden = self.hidden_depth, None
        if depth is None:
            out = self.network(params, z, t, y)  # (B, H, W, C) or (B, H, W, 2C) with learn_sigma
        else:
            out, hidden = self.network(params, z, t, y, return_hidden=depth)  # + (B, T, D)
        pred = out[..., :c]  # (B, H, W, C) the prediction of kind self.prediction
        per_example = objectives.per_example_loss(
            self.objective, schedule, pred, self.prediction, x, eps, z, t)  # (B,)
        aux = {"t": t, **objectives.t_bin_statistics(per_example, t, num_bins)}
        forward = Forward(x, y, t, eps, z, schedule, self.prediction, out, pred, hidden)
        inputs = term_inputs or {}
        metrics: dict[str, Array] = {}
        for term in self.terms:
            value, m = term.loss(params.get(term.name), inputs.get(term.name), forward, batch)
            per_example = per_example + term.weight * value  # (B,)
            metrics.update(m)
        aux["terms"] = metrics
        aux["per_example"] = per_example
        return per_example.mean(), aux

    def meanflow_loss(
        self, params: Params, x: Array, y: Array, rng: Array, num_bins: int = 10
    ) -> tuple[Array, dict[str, Array]]:
        """MeanFlow's objective (core.meanflow.meanflow_loss) of images x (B, H, W, C) with labels
        y (B,), already dropped to the null class where they are (rows whose target is then not
        guided), and its diagnostics: 'per_example' loss sg(w) ‖Δ‖², 'r', 't', 'sq_error' ‖Δ‖²,
        'weight' w (each (B,)), and per-t-bin sums/counts ('bin_sum', 'bin_count') of ‖Δ‖² / D:
        with p = 1 the loss itself is ‖Δ‖² / (‖Δ‖² + c) ≈ 1 in every bin, so the trainer's
        per-t curves show the squared error per dimension instead."""
        u_fn = functools.partial(self.average_velocity, params)  # (z, r, t, y) -> u
        loss, aux = self.objective.loss(u_fn, x, y, rng, null_label=self.num_classes,
                                        num_bins=num_bins)
        bins = objectives.t_bin_statistics(aux["sq_error"] / x[0].size, aux["t"], num_bins)
        keep = ("per_example", "r", "t", "sq_error", "weight")
        return loss, {**{k: aux[k] for k in keep}, **bins}

    def elbo_bpd(self, params: Params, x: Array, y: Array, rng: Array) -> dict[str, Array]:
        """One-sample −ELBO terms in bits/dim per example (B,): prior, reconstruction, diffusion
        (continuous time) and total, for data on the dataset's K levels."""
        if self.is_meanflow:
            raise ValueError(BPD_NOT_APPLICABLE)
        if not self.num_classes:
            y = self.null_labels(x.shape[0])
        terms = elbo_lib.elbo_terms(
            self.model_fn(params, y), self.schedule(params), x, rng,
            prediction=self.prediction, num_levels=self.num_levels,
        )
        return {k: elbo_lib.bits_per_dim(v, x.shape) for k, v in terms.items()}

