"""Decoding a latent model's samples to pixels with the autoencoder that made its latents.

A latent model (DataSpec.is_latent) samples normalized latents x; its images are
    decode((x / latent_scale) + latent_shift)  clipped to [−1, 1],   (B, H, W, 3)
with the autoencoder whose weights are `autoencoder.weights` (checked against the SHA-256 the
latent dataset recorded: other weights would decode other images). Pixel models need no decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.data.latents import check_matches
from vdm_jax.importers.autoencoders import load_autoencoder
from vdm_jax.model import DataSpec

__all__ = ["make_decoder", "output_shape"]

Array = jax.Array


def output_shape(data: DataSpec) -> tuple[int, int, int]:
    """(H, W, C) of the images a model of `data` produces: the decoded pixels for latents."""
    return tuple(data.pixel_shape or data.image_shape)


def make_decoder(data: DataSpec, weights: str | os.PathLike | None
                 ) -> Callable[[Array], Array] | None:
    """None for a pixel model; for a latent model a jitted fn(x (B, h, w, c)) → images
    (B, H, W, C) float32 in [−1, 1] (module docstring). ValueError / FileNotFoundError when the
    weights are not given, missing, or not those that made the latents."""
    if not data.is_latent:
        return None
    if not weights:
        raise ValueError("this is a latent model: its samples are decoded by the autoencoder that "
                         "made its latents; give --config.autoencoder.weights=PATH")
    check_matches({"autoencoder": data.autoencoder}, weights=weights, image_size=None,
                  where="this run's latent dataset")
    graphdef, state = nnx.split(load_autoencoder(weights))
    shift = jnp.asarray(data.latent_shift, jnp.float32)
    scale = jnp.asarray(data.latent_scale, jnp.float32)

    @jax.jit
    def decode(state: nnx.State, x: Array) -> Array:
        z = x.astype(jnp.float32) / scale + shift  # (B, h, w, c) the autoencoder's latents
        return nnx.merge(graphdef, state).decode(z, clip=True)  # (B, H, W, C) in [−1, 1]

    return lambda x: decode(state, x)
