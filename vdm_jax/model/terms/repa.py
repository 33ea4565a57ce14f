"""REPA (Yu et al. 2025, vdm_jax.nn.repa): align the denoiser's hidden state with the features of
a frozen encoder,

    ℓ_repa(b) = (1/T) Σ_n [1 − cos(r*_n, h_φ(h_i)_n)],   weight λ = repa.weight.

h_i is the denoiser's hidden state after block i = repa.depth of the same forward pass (a DDT: of
its condition encoder), h_φ the projector in params["repa"] (trained, checkpointed, in the EMAs),
r* the features of a frozen encoder applied to the CLEAN image of each example. Samplers, exports
and generation read only params["denoiser"]: they never see the projector.
Where r* comes from (`repa.features`):
  'online' (default)  computed inside the (sharded, jitted) train step by the frozen encoder,
                      whose parameters are this term's input (`TargetEncoder`, loaded by
                      `load_target_encoder_for`), on `batch["image"]`, or on `batch["pixels"]`
                      (B, H, W, 3) in [−1, 1] (or uint8) for latent data, whose "image" is the
                      latent;
  'stored'            read from `batch["repa_features"]` (B, T, D_enc) (float16 on disk),
                      written beside the latents by the data pipeline.
Online is the default: it needs no storage and sees every augmentation (flips) exactly, at the
cost of the encoder's forward pass in every step (vdm_jax.nn.cost.dinov2_cost; the measured
costs of both are in the README). Stored features take T·D_enc·2 bytes per image and view, and
pay only where the encoder's forward pass is the bottleneck. Online features of latent data need
the clean pixels in the batch ("pixels").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.importers.repa import abstract_target_encoder, load_target_encoder
from vdm_jax.model.core import DTYPES
from vdm_jax.model.terms.base import Forward, LossTerm
from vdm_jax.nn.encoders.digits import TOKEN_DIM as DIGITS_DIM
from vdm_jax.nn.encoders.dinov2 import SIZES as DINOV2_SIZES
from vdm_jax.nn.registry import logical_specs
from vdm_jax.nn.repa import RepaProjector, alignment_loss, target_tokens

__all__ = ["REPA_FEATURES", "Repa", "TargetEncoder", "load_target_encoder_for",
           "repa_encoder_dim"]

Array = jax.Array
REPA_FEATURES = ("online", "stored")


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
        """Logical PartitionSpecs of `params`."""
        return logical_specs(nnx.merge(self.graphdef, self.params))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Repa(LossTerm):
    """Static REPA settings (module docstring): align the hidden state after block `hidden_depth`
    with weight λ = `weight`; `projector_def` is h_φ's graph; targets 'online' from `encoder`
    ('dinov2' | 'digits') on batch[`image_key`], or 'stored' in batch["repa_features"]; `grid`
    the denoiser's token grid and `encoder_dim` the targets' width."""

    name: ClassVar[str] = "repa"
    hidden_depth: int
    weight: float
    encoder: str
    features: str
    projector_def: Any
    grid: tuple[int, int]
    encoder_dim: int
    image_key: str = "image"

    @classmethod
    def build(cls, config: Mapping[str, Any], data: Any, denoiser: Any, seed: int
              ) -> tuple[Repa, Any, Any] | None:
        rcfg = config.get("repa")
        if rcfg is None or not rcfg["enabled"]:
            return None
        dim = repa_encoder_dim(rcfg)
        projector = RepaProjector(
            denoiser.hidden_size, dim, int(rcfg["projector_dim"]),
            dtype=DTYPES[config["model"]["dtype"]], rngs=nnx.Rngs(params=seed + 2),
        )
        projector_def, projector_params = nnx.split(projector)
        term = cls(
            hidden_depth=int(rcfg["depth"]), weight=float(rcfg["weight"]),
            encoder=rcfg["encoder"], features=rcfg["features"], projector_def=projector_def,
            grid=tuple(denoiser.grid), encoder_dim=dim,
            # Latent data (a DataSpec with pixel_shape) carries the clean image as "pixels".
            image_key="pixels" if getattr(data, "pixel_shape", None) else "image",
        )
        return term, nnx.to_pure_dict(projector_params), logical_specs(projector)

    @classmethod
    def load_inputs(cls, config: Mapping[str, Any]) -> TargetEncoder | None:
        return load_target_encoder_for(config)

    @classmethod
    def abstract_inputs(cls, config: Mapping[str, Any]) -> TargetEncoder | None:
        rcfg = config.get("repa")
        if rcfg is None or not rcfg["enabled"] or rcfg["features"] != "online":
            return None
        net = abstract_target_encoder(rcfg["encoder"], size=rcfg["encoder_size"],
                                      dtype=DTYPES[config["model"]["dtype"]])
        graphdef, params = nnx.split(net)
        return TargetEncoder(graphdef, nnx.to_pure_dict(params))

    @classmethod
    def check_data(cls, config: Mapping[str, Any], info: Any) -> None:
        rcfg = config.get("repa")
        if (rcfg is not None and rcfg["enabled"] and rcfg["features"] == "stored"
                and not getattr(info, "repa_features", None)):
            raise ValueError(f"repa.features='stored' needs a dataset that stores REPA features "
                             f"beside its examples, and data.name={config['data']['name']!r} "
                             "does not; use repa.features='online'")

    def input_specs(self, inputs: TargetEncoder) -> TargetEncoder:
        return dataclasses.replace(inputs, params=inputs.specs())

    def targets(self, batch: Mapping[str, Array], encoder: TargetEncoder | None) -> Array:
        """r* (B, T, D_enc) float32 for a batch (module docstring)."""
        if self.features == "stored":
            if "repa_features" not in batch:
                raise ValueError("repa.features='stored' needs batches with 'repa_features' "
                                 "(B, T, D_enc), written beside the latents; use 'online'")
            return jax.lax.stop_gradient(jnp.asarray(batch["repa_features"], jnp.float32))
        if encoder is None:
            raise ValueError("REPA with online features needs the frozen target encoder "
                             "(load_target_encoder) passed to the loss")
        if self.image_key not in batch:
            raise ValueError(f"REPA's online features need the clean images in "
                             f"batch[{self.image_key!r}]")
        images = batch[self.image_key]
        if jnp.issubdtype(images.dtype, jnp.integer):  # uint8 pixels: x = 2(k + ½)/256 − 1
            images = (images.astype(jnp.float32) + 0.5) / 128.0 - 1.0
        return encoder.tokens(images, self.grid)

    def loss(self, params: Any, inputs: TargetEncoder | None, forward: Forward,
             batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        projector = nnx.merge(self.projector_def, params)
        target = self.targets(batch, inputs)  # (B, T, D_enc), no gradient
        align = alignment_loss(projector(forward.hidden), target)  # (B,)
        return align, {"repa_loss": align.mean()}


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
