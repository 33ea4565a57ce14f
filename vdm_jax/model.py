"""A diffusion model as the trainer, samplers and evaluation see it: network + schedule + objective.

`DiffusionModel` holds only static things (graph definitions and choices from the config); the
arrays live in a pure-dict pytree `params = {"denoiser": ..., "schedule": ..., "repa": ...}`
("schedule" only for VDM's learned schedule, "repa" only with REPA: its projector), so every
method is a pure function of `params` that jit, grad and sharding go through, and `params` is
what checkpoints hold.

Training loss (per example, then averaged):
    L = objective(pred, target)                                  the weighted-ELBO family
      + L_vlb(variance head)       with model.learn_sigma       (Nichol & Dhariwal 2021 "hybrid")
      + λ · (1/T) Σ_n [1 − cos(r*_n, h_φ(h_i)_n)]   with REPA   (Yu et al. 2025, vdm_jax.nn.repa)
where the denoiser's labels are dropped to the null class with probability
`diffusion.label_dropout` (classifier-free guidance). With a learned schedule the objective is
the continuous-time ELBO and its gradient trains the schedule jointly (Kingma et al. 2021).

MeanFlow (diffusion.objective = 'meanflow', core.meanflow) is no weighted ELBO: its network is a
two-time DiT u(z, r, t) (prediction 'average_velocity') trained on the MeanFlow identity, with
the same label dropout; `meanflow_loss` is that branch. Its `predict` is u(z, t, t), the
instantaneous velocity, and it has no bits/dim.

REPA. h_i is the denoiser's hidden state after block i = repa.depth of the same forward pass
(a DDT: of its condition encoder), h_φ the projector in params["repa"] (trained, checkpointed,
in the EMAs), r* the features of a frozen encoder applied to the CLEAN image of each example.
Samplers, exports and generation read only params["denoiser"]: they never see the projector.
Where r* comes from (`repa.features`):
  'online' (default)  computed inside the (sharded, jitted) train step by the frozen encoder,
                      whose parameters enter as a non-trained input (`TargetEncoder`, loaded
                      by `load_target_encoder`), on `batch["image"]`, or on `batch["pixels"]`
                      (B, H, W, 3) in [−1, 1] (or uint8) for latent data, whose "image" is the
                      latent;
  'stored'            read from `batch["repa_features"]` (B, T, D_enc) (float16 on disk),
                      written beside the latents by the data pipeline.
Why online is the default — the costs at REPA's setting (DINOv2-B/14 on 224², T = 256, the
project's MACs convention, vdm_jax.nn.cost.dinov2_cost): the encoder's forward pass is
23.2 GMACs = 46.3 GFLOPs per image, 11.9 TFLOPs per step at batch 256, i.e. +6.5% on top of a
SiT-XL/2 train step (3 × 118.6 GMACs = 356 GMACs per image); it needs no storage and sees every
augmentation (flips) exactly. Measured on the project's shared 2-core CPU (load average ≈ 11,
float32, benchmarks/repa_features.py): 11.4 s for 4 images, 2.8 s per image. Stored features
cost T·D_enc·2 bytes = 256·768·2 = 384 KiB per image and view (768 KiB with the flipped view the
latent pipeline also keeps), 504 GB (1.0 TB) for ImageNet's 1.28M training images — 24× the
latents themselves (16 KiB of float16 moments per view) — and 101 MB read per step at batch 256;
they pay only where the encoder's forward pass is the bottleneck. Online features of latent
data need the clean pixels in the batch ("pixels").
"""

from __future__ import annotations

import copy
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
from vdm_jax.core.encoder_sharing import ConditionCache
from vdm_jax.importers.repa import load_target_encoder
from vdm_jax.nn.encoders.digits import TOKEN_DIM as DIGITS_DIM
from vdm_jax.nn.encoders.dinov2 import SIZES as DINOV2_SIZES
from vdm_jax.nn.layers import label_dropout
from vdm_jax.nn.learned_schedule import LearnedGamma, learned_schedule
from vdm_jax.nn.registry import build_model, logical_specs, resolve_spec
from vdm_jax.nn.repa import RepaProjector, alignment_loss, target_tokens

Array = jax.Array
Params = dict[str, Any]
BPD_NOT_APPLICABLE = (
    "bits/dim does not apply to a MeanFlow model: it learns the average velocity u(z, r, t) of "
    "the flow, not a denoiser whose weighted ELBO bounds the likelihood")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}  # model.dtype
REPA_FEATURES = ("online", "stored")


@dataclasses.dataclass(frozen=True, eq=False)
class Repa:
    """Static REPA settings (module docstring): align the hidden state after block `depth` with
    weight λ = `weight`; `projector_def` is h_φ's graph; targets 'online' from `encoder`
    ('dinov2' | 'digits') on batch[`image_key`], or 'stored' in batch["repa_features"];
    `grid` the denoiser's token grid and `encoder_dim` the targets' width."""

    depth: int
    weight: float
    encoder: str
    features: str
    projector_def: Any
    grid: tuple[int, int]
    encoder_dim: int
    image_key: str = "image"


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["graphdef"])
@dataclasses.dataclass(frozen=True)
class TargetEncoder:
    """REPA's frozen encoder as a train-step input: its graph (static) and parameters (arrays,
    never trained), a pytree that jit and sharding go through."""

    graphdef: Any
    params: Any

    def tokens(self, images: Array, grid: tuple[int, int]) -> Array:
        """Target features (B, gh·gw, D_enc) of clean images (vdm_jax.nn.repa.target_tokens)."""
        return target_tokens(nnx.merge(self.graphdef, self.params), images, grid)

    def specs(self) -> Any:
        """Logical PartitionSpecs of `params` (for vdm_jax.parallel.mesh.param_shardings)."""
        return logical_specs(nnx.merge(self.graphdef, self.params))


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
    repa: Repa | None = None
    family: str = "dit"  # the denoiser's (vdm_jax.nn.registry): 'dit' | 'jit' | 'ddt'

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
        return self.family == "ddt"

    def average_velocity(self, params: Params, z: Array, r: Array, t: Array, y: Array) -> Array:
        """A MeanFlow network's u(z_t, r, t) (B, H, W, C), float32; z (B, H, W, C), r ≤ t (B,)."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        return net(z, t, y, r=r).astype(jnp.float32)

    def network(
        self, params: Params, z: Array, t: Array, y: Array, *, return_hidden: int | None = None,
        cache: ConditionCache | None = None,
    ) -> Array | tuple[Array, Array]:
        """The raw network output (B, H, W, C or 2C with learn_sigma), float32; with
        return_hidden = i also the hidden state after block i (B, T, D) of the same pass.
        cache: DDT's encoder sharing while sampling (the condition comes from the cache)."""
        net = nnx.merge(self.denoiser_def, params["denoiser"])
        if cache is not None:
            if not self.shares_encoder:
                raise ValueError("encoder sharing (sampler options encoder_interval / "
                                 "encoder_steps) needs a model with a condition encoder (DDT)")
            cond = cache(lambda: net.encode(z, t, y))  # (B, T, D), recomputed or reused
            return net.decode(z, cond).astype(jnp.float32)
        if return_hidden is None:
            return net(z, t, y).astype(jnp.float32)
        out, hidden = net(z, t, y, return_hidden=return_hidden)
        return out.astype(jnp.float32), hidden

    def predict(
        self, params: Params, z: Array, t: Array, y: Array, *,
        cache: ConditionCache | None = None,
    ) -> Array:
        """The prediction of kind `self.prediction` (B, H, W, C); the variance head is dropped."""
        out = self.network(params, z, t, y, cache=cache)
        return out[..., : self.image_shape[-1]]

    def model_fn(self, params: Params, y: Array) -> Callable[[Array, Array], Array]:
        """model_fn(z, t) -> prediction for fixed labels y: the samplers' and ELBO's interface."""
        return lambda z, t: self.predict(params, z, t, y)

    def null_labels(self, batch_size: int) -> Array:
        return jnp.full((batch_size,), self.num_classes, jnp.int32)

    # ------------------------------------------------------------------------------ losses
    def repa_targets(self, batch: Mapping[str, Array], frozen: TargetEncoder | None) -> Array:
        """REPA's r* (B, T, D_enc) float32 for a batch (module docstring)."""
        repa = self.repa
        if repa.features == "stored":
            if "repa_features" not in batch:
                raise ValueError("repa.features='stored' needs batches with 'repa_features' "
                                 "(B, T, D_enc), written beside the latents; use 'online'")
            return jax.lax.stop_gradient(jnp.asarray(batch["repa_features"], jnp.float32))
        if frozen is None:
            raise ValueError("REPA with online features needs the frozen target encoder "
                             "(load_target_encoder) passed to the loss")
        if repa.image_key not in batch:
            raise ValueError(f"REPA's online features need the clean images in "
                             f"batch[{repa.image_key!r}]")
        images = batch[repa.image_key]
        if jnp.issubdtype(images.dtype, jnp.integer):  # uint8 pixels: x = 2(k + ½)/256 − 1
            images = (images.astype(jnp.float32) + 0.5) / 128.0 - 1.0
        return frozen.tokens(images, repa.grid)

    def loss(
        self, params: Params, batch: Mapping[str, Array], rng: Array, num_bins: int = 10,
        frozen: TargetEncoder | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        """Mean training loss of a batch {"image": (B,H,W,C), "label": (B,)} and its diagnostics:
        'per_example' (B,), 't' (B,), per-t-bin sums/counts of the objective ('bin_sum',
        'bin_count'), 'vlb' (the learned-variance term's mean) with learn_sigma, and 'repa'
        (the mean alignment loss before λ) with REPA; MeanFlow's are listed in `meanflow_loss`.
        frozen: REPA's target encoder (online features)."""
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
        if self.repa is None:
            out = self.network(params, z, t, y)  # (B, H, W, C) or (B, H, W, 2C) with learn_sigma
        else:
            out, hidden = self.network(params, z, t, y, return_hidden=self.repa.depth)  # +(B,T,D)
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
        if self.repa is not None:
            projector = nnx.merge(self.repa.projector_def, params["repa"])
            target = self.repa_targets(batch, frozen)  # (B, T, D_enc), no gradient
            align = alignment_loss(projector(hidden), target)  # (B,)
            per_example = per_example + self.repa.weight * align
            aux["repa"] = align.mean()
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
    repa = None
    rcfg = config.get("repa")
    if rcfg is not None and rcfg["enabled"]:
        dim = repa_encoder_dim(rcfg)
        projector = RepaProjector(
            denoiser.hidden_size, dim, int(rcfg["projector_dim"]), dtype=DTYPES[mcfg["dtype"]],
            rngs=nnx.Rngs(params=seed + 2),
        )
        projector_def, projector_params = nnx.split(projector)
        params["repa"] = nnx.to_pure_dict(projector_params)
        specs["repa"] = logical_specs(projector)
        repa = Repa(
            depth=int(rcfg["depth"]), weight=float(rcfg["weight"]), encoder=rcfg["encoder"],
            features=rcfg["features"], projector_def=projector_def,
            grid=tuple(denoiser.grid), encoder_dim=dim,
            # Latent data (a DataSpec with pixel_shape) carries the clean image as "pixels".
            image_key="pixels" if getattr(data, "pixel_shape", None) else "image",
        )
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
        repa=repa,
        family=resolve_spec(spec)["family"],
    )
    return model, params


def with_compute_dtype(
    model: DiffusionModel, config: Mapping[str, Any], data: DataSpec, dtype: str,
) -> DiffusionModel:
    """`model` (built from `config`) computing in `dtype` ('float32' | 'bfloat16'; '' = as
    built): the same parameters (float32 whatever the compute dtype), another graph. Sampling
    precision is a sampling setting (SamplingSpec.dtype), independent of training's."""
    if not dtype or dtype == config["model"]["dtype"]:
        return model
    if dtype not in DTYPES:
        raise ValueError(f"compute dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    changed = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    changed["model"]["dtype"] = dtype
    holder: dict[str, DiffusionModel] = {}

    def params_only() -> Params:
        holder["model"], params = build(changed, data, int(changed.get("seed", 0)))
        return params

    jax.eval_shape(params_only)  # the graph only: no parameter is computed
    return holder["model"]


def repa_encoder_dim(repa: Mapping[str, Any]) -> int:
    """Width D_enc of REPA's targets: repa.encoder_dim, else that of repa.encoder_size (DINOv2)
    or 64 (the digits CNN)."""
    if repa["encoder_dim"]:
        return int(repa["encoder_dim"])
    if repa["encoder"] == "digits":
        return DIGITS_DIM
    if repa["encoder_size"] not in DINOV2_SIZES:
        raise ValueError(f"repa.encoder_size={repa['encoder_size']!r}: set a DINOv2 size "
                         f"{sorted(DINOV2_SIZES)} or repa.encoder_dim (the features' width)")
    return DINOV2_SIZES[repa["encoder_size"]][0]


def load_target_encoder_for(config: Mapping[str, Any]) -> TargetEncoder | None:
    """REPA's frozen target encoder of a config (online features), loaded from
    repa.encoder_path; None without REPA or with stored features. Bad or missing weights
    raise ValueError / FileNotFoundError naming the file and what to get."""
    rcfg = config.get("repa")
    if rcfg is None or not rcfg["enabled"] or rcfg["features"] != "online":
        return None
    encoder = load_target_encoder(
        rcfg["encoder"], rcfg["encoder_path"], size=rcfg["encoder_size"],
        dim=repa_encoder_dim(rcfg), dtype=DTYPES[config["model"]["dtype"]],
    )
    graphdef, params = nnx.split(encoder)
    return TargetEncoder(graphdef, nnx.to_pure_dict(params))
