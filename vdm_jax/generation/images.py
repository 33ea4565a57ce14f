"""A trained model's images as uint8 on the host: the one path from the sampler to pixels.

    images = make_image_sampler(model, batch_size, spec, data, weights, sharding=...)
    pixels = images(params, labels, rng)      # (B, H, W, C) uint8 on the host

is draw (sample z_{t_min} with `make_generate_fn`, then, for a latent model, decode it with the
autoencoder that made its latents: `make_decoder`; on device, dispatched and not awaited, with
the sampler's NFE: measured by an adaptive solver, the fixed count of the others) then
fetch (gather to the host, `parallel.mesh.to_host`, and quantize the [−1, 1] floats to
`num_levels` levels as uint8, `data.pixels.unit_to_uint8`). The two halves are apart so a loop
can fetch batch i while batch i + 1 runs (`generation.batches`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from vdm_jax.data.pixels import unit_to_uint8
from vdm_jax.generation.decode import make_decoder
from vdm_jax.generation.generate import make_generate_fn
from vdm_jax.model import DataSpec, DiffusionModel
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.sampling_spec import SamplingSpec

__all__ = ["ImageSampler", "make_image_sampler"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ImageSampler:
    """generate: the jitted fn(params, labels (B,), rng) -> (z_{t_min}, NFE) of
    `make_generate_fn(..., return_nfe=True)`; decode: the latent model's decoder, or None for a
    pixel model; num_levels: the data's."""

    generate: Callable[[Any, Array, Array], tuple[Array, Array]]
    decode: Callable[[Array], Array] | None
    num_levels: int

    def draw(self, params: Any, labels: Array, rng: Array) -> tuple[Array, Array]:
        """(images (B, H, W, C) float in [−1, 1] on device (decoded for a latent model), the
        sampler's NFE: an int32 scalar on device)."""
        images, nfe = self.generate(params, labels, rng)
        return (images if self.decode is None else self.decode(images)), nfe

    def fetch(self, images: Array) -> np.ndarray:
        """`draw`'s images (B, H, W, C) as uint8 on the host."""
        return unit_to_uint8(np.asarray(mesh_lib.to_host(images)), self.num_levels)

    def __call__(self, params: Any, labels: Array, rng: Array) -> np.ndarray:
        """fetch(draw(params, labels, rng)'s images): (B, H, W, C) uint8 on the host."""
        return self.fetch(self.draw(params, labels, rng)[0])


def make_image_sampler(
    model: DiffusionModel, batch_size: int, spec: SamplingSpec, data: DataSpec,
    autoencoder_weights: str | os.PathLike | None, *,
    sharding: jax.sharding.Sharding | None = None, guide: DiffusionModel | None = None,
) -> ImageSampler:
    """The `ImageSampler` of `model` drawing `batch_size` images with `spec` (module docstring);
    autoencoder_weights: a latent model's decoder weights (`make_decoder`), unused for pixels;
    guide: AutoGuidance's guide network (then params = (model's, guide's): make_generate_fn)."""
    decode = make_decoder(data, autoencoder_weights)  # None for a pixel model
    generate = make_generate_fn(model, batch_size, spec, sharding=sharding, guide=guide,
                                return_nfe=True)
    return ImageSampler(generate, decode, model.num_levels)
