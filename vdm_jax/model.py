"""A diffusion model as the trainer, samplers and evaluation see it: network + schedule + objective.

`DiffusionModel` holds only static things (graph definitions and choices from the config); the
arrays live in a pure-dict pytree `params = {"denoiser": ..., "schedule": ...}` ("schedule" only
for VDM's learned schedule), so every method is a pure function of `params` that jit, grad and
sharding go through, and `params` is what checkpoints hold.

Training loss (per example, then averaged):
    L = objective(pred, target)                                  the weighted-ELBO family
      + L_vlb(variance head)       with model.learn_sigma       (Nichol & Dhariwal 2021 "hybrid")
where the denoiser's labels are dropped to the null class with probability
`diffusion.label_dropout` (classifier-free guidance). With a learned schedule the objective is
the continuous-time ELBO and its gradient trains the schedule jointly (Kingma et al. 2021).

MeanFlow (diffusion.objective = 'meanflow', core.meanflow) is no weighted ELBO: its network is a
two-time DiT u(z, r, t) (prediction 'average_velocity') trained on the MeanFlow identity, with
the same label dropout; `meanflow_loss` is that branch. Its `predict` is u(z, t, t), the
instantaneous velocity, and it has no bits/dim.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.core import elbo as elbo_lib
from vdm_jax.core import meanflow, objectives
from vdm_jax.core import schedules as sch
from vdm_jax.nn.layers import label_dropout
from vdm_jax.nn.learned_schedule import LearnedGamma, learned_schedule
from vdm_jax.nn.registry import build_model, logical_specs

Array = jax.Array
Params = dict[str, Any]
BPD_NOT_APPLICABLE = (
    "bits/dim does not apply to a MeanFlow model: it learns the average velocity u(z, r, t) of "
    "the flow, not a denoiser whose weighted ELBO bounds the likelihood")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # model.dtype


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionModel:
    """Static description of a diffusion model; see the module docstring.

    denoiser_def / schedule_def: nnx graph definitions (schedule_def None for a fixed schedule).
    """

    denoiser_def: Any
    schedule_def: Any | None
    fixed_schedule: sch.Schedule | None
    objective: objectives.Objective | meanflow.MeanFlowObjective
    prediction: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int
    learn_sigma: bool
    label_dropout: float
    ddpm_steps: int  # T of the learned-variance term's grid (diffusion.timesteps; DiT: 1000)
    vlb_weight: float
    param_specs: Any  # logical PartitionSpecs, a pytree like params (see parallel.mesh)

    # ------------------------------------------------------------------------------ pieces
    def schedule(self, params: Params) -> sch.Schedule:
        """The noise schedule; a function of `params` when it is learned."""
        if self.schedule_def is None:
            return self.fixed_schedule
        return learned_schedule(nnx.merge(self.schedule_def, params["schedule"]))

    @property
    def is_meanflow(self) -> bool:
        return isinstance(self.objective, meanflow.MeanFlowObjective)

    def network(self, params: Params, z: Array, t: Array, y: Array) -> Array:
        """The raw network output (B, H, W, C or 2C with learn_sigma), float32."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        return net(z, t, y).astype(jnp.float32)

    def average_velocity(self, params: Params, z: Array, r: Array, t: Array, y: Array) -> Array:
        """A MeanFlow network's u(z_t, r, t) (B, H, W, C), float32; z (B, H, W, C), r ≤ t (B,)."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        return net(z, t, y, r=r).astype(jnp.float32)

    def predict(self, params: Params, z: Array, t: Array, y: Array) -> Array:
        """The prediction of kind `self.prediction` (B, H, W, C); the variance head is dropped."""
        out = self.network(params, z, t, y)
        return out[..., : self.image_shape[-1]]

    def model_fn(self, params: Params, y: Array) -> Callable[[Array, Array], Array]:
        """model_fn(z, t) -> prediction for fixed labels y: the samplers' and ELBO's interface."""
        return lambda z, t: self.predict(params, z, t, y)

    def null_labels(self, batch_size: int) -> Array:
        return jnp.full((batch_size,), self.num_classes, jnp.int32)

    # ------------------------------------------------------------------------------ losses
    def loss(
        self, params: Params, batch: Mapping[str, Array], rng: Array, num_bins: int = 10
    ) -> tuple[Array, dict[str, Array]]:
        """Mean training loss of a batch {"image": (B,H,W,C), "label": (B,)} and its diagnostics:
        'per_example' (B,), 't' (B,), per-t-bin sums/counts of the objective ('bin_sum',
        'bin_count'), and 'vlb' (the learned-variance term's mean) with learn_sigma; MeanFlow's
        are listed in `meanflow_loss`."""
        rng_drop, rng_loss = jax.random.split(rng)
        x, y = batch["image"], batch["label"]
        if self.num_classes:
            y = label_dropout(rng_drop, y, self.label_dropout, self.num_classes)
        else:
            y = self.null_labels(x.shape[0])
        if self.is_meanflow:
            return self.meanflow_loss(params, x, y, rng_loss, num_bins)
        schedule = self.schedule(params)
        c = self.image_shape[-1]
        t, eps, z = objectives.noisy_inputs(self.objective, schedule, x, rng_loss)  # (B,), x, x
        out = self.network(params, z, t, y)  # (B, H, W, C) or (B, H, W, 2C) with learn_sigma
        pred = out[..., :c]  # (B, H, W, C) the prediction of kind self.prediction
        per_example = objectives.per_example_loss(
            self.objective, schedule, pred, self.prediction, x, eps, z, t)  # (B,)
        aux = {"t": t, **objectives.t_bin_statistics(per_example, t, num_bins)}
        if self.learn_sigma:
            vlb = objectives.learned_variance_vlb(
                schedule, x, z, t, pred, self.prediction, out[..., c:], self.ddpm_steps,
                self.num_levels,
            )  # (B,) bits/dim
            per_example = per_example + self.vlb_weight * vlb
            aux["vlb"] = vlb.mean()
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


# ---------------------------------------------------------------------------------- building


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model must know of its data: image_shape (H, W, C) of a batch (for a latent model,
    the latents'), num_classes (0 = unconditional) and num_levels K (bits/dim are for data on K
    levels; for latent data, the 256 levels of the decoded pixels). Latent data adds pixel_shape
    (the decoded images'), the normalization x = (z − latent_shift) · latent_scale per channel,
    and the autoencoder record (vdm_jax.importers.sd_vae.describe_weights) whose weights decode
    it. Training takes it from the dataset; checkpoints store it, so a run directory alone
    rebuilds the model and decodes its samples."""

    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int
    pixel_shape: tuple[int, int, int] | None = None
    latent_shift: tuple[float, ...] | None = None
    latent_scale: tuple[float, ...] | None = None
    autoencoder: dict | None = None

    @property
    def is_latent(self) -> bool:
        return self.pixel_shape is not None

    @classmethod
    def from_info(cls, info: Any) -> DataSpec:
        """From a vdm_jax.data.DatasetInfo (duck-typed: the model layer does not import data)."""
        return cls(tuple(info.image_shape), int(info.num_classes), int(info.num_levels),
                   getattr(info, "pixel_shape", None), getattr(info, "latent_shift", None),
                   getattr(info, "latent_scale", None), getattr(info, "autoencoder", None))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        def tup(key: str, kind: type) -> tuple | None:
            return None if d.get(key) is None else tuple(kind(v) for v in d[key])

        return cls(tup("image_shape", int), int(d["num_classes"]), int(d["num_levels"]),
                   tup("pixel_shape", int), tup("latent_shift", float), tup("latent_scale", float),
                   d.get("autoencoder"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def schedule_kwargs(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule constructor's keyword arguments: diffusion.schedule_kwargs, plus num_steps =
    diffusion.timesteps for a discrete-time schedule (DDPM's linear β)."""
    kwargs = dict(diffusion.get("schedule_kwargs") or {})
    fn = sch.SCHEDULES.get(diffusion["schedule"])
    if fn is not None and _accepts(fn, "num_steps") and diffusion.get("timesteps"):
        kwargs["num_steps"] = int(diffusion["timesteps"])
    return kwargs


def build_objective(
    diffusion: Mapping[str, Any],
) -> objectives.Objective | meanflow.MeanFlowObjective:
    """The training objective of config.diffusion: a named weighted-ELBO objective, or MeanFlow's
    (diffusion.objective = 'meanflow'), with diffusion.objective_kwargs."""
    if diffusion["objective"] == meanflow.OBJECTIVE:
        return meanflow.objective(**dict(diffusion.get("objective_kwargs") or {}))
    return objectives.get_objective(diffusion["objective"], **objective_kwargs(diffusion))


def objective_kwargs(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The objective constructor's keyword arguments, with num_steps = diffusion.timesteps for
    a discrete-time objective (L_simple on DDPM's integer grid)."""
    kwargs = dict(diffusion.get("objective_kwargs") or {})
    fn = objectives.OBJECTIVES.get(diffusion["objective"])
    if fn is not None and _accepts(fn, "num_steps") and diffusion.get("timesteps"):
        kwargs["num_steps"] = int(diffusion["timesteps"])
    return kwargs


def build(config: Mapping[str, Any], data: DataSpec, seed: int) -> tuple[DiffusionModel, Params]:
    """The model and freshly initialized `params` described by config.model / config.diffusion
    for data described by `data` (config.validate has checked the values)."""
    mcfg, dcfg = config["model"], config["diffusion"]
    spec = mcfg["spec"]
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    h, w, c = data.image_shape
    num_classes = data.num_classes if dcfg.get("class_conditional", True) else 0
    denoiser = build_model(
        spec, input_size=(h, w), in_channels=c, num_classes=num_classes,
        learn_sigma=bool(mcfg["learn_sigma"]), dtype=DTYPES[mcfg["dtype"]],
        rngs=nnx.Rngs(params=seed),
    )
    denoiser_def, denoiser_params = nnx.split(denoiser)
    params: Params = {"denoiser": nnx.to_pure_dict(denoiser_params)}
    specs: Params = {"denoiser": logical_specs(denoiser)}
    schedule_def, fixed = None, None
    if dcfg["learned_schedule"]:
        kw = dict(dcfg.get("schedule_kwargs") or {})
        net = LearnedGamma(
            gamma_min=kw.get("gamma_min", -13.3), gamma_max=kw.get("gamma_max", 5.0),
            n_features=int(dcfg.get("learned_schedule_features", 1024)),
            rngs=nnx.Rngs(params=seed + 1),
        )
        schedule_def, schedule_params = nnx.split(net)
        params["schedule"] = nnx.to_pure_dict(schedule_params)
        specs["schedule"] = logical_specs(net)
    else:
        fixed = sch.get_schedule(dcfg["schedule"], shift=float(dcfg.get("shift", 1.0)),
                                 **schedule_kwargs(dcfg))
    model = DiffusionModel(
        denoiser_def=denoiser_def,
        schedule_def=schedule_def,
        fixed_schedule=fixed,
        objective=build_objective(dcfg),
        prediction=mcfg["prediction"],
        image_shape=data.image_shape,
        num_classes=num_classes,
        num_levels=data.num_levels,
        learn_sigma=bool(mcfg["learn_sigma"]),
        label_dropout=float(dcfg["label_dropout"]),
        ddpm_steps=int(dcfg.get("timesteps") or 0),
        vlb_weight=float(dcfg.get("vlb_weight", 1.0)),
        param_specs=specs,
    )
    return model, params
