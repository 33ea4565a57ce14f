"""Generating images from a trained `DiffusionModel`: the jitted sampling call and PNG grids.
Used by the trainer's periodic samples and by launch/sample.py. Samples become 8-bit pixels
through the data's K levels with `evaluate.unit_to_uint8`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from vdm_jax.core import samplers
from vdm_jax.model import DiffusionModel

Array = jax.Array


def make_generate_fn(
    model: DiffusionModel,
    batch_size: int,
    *,
    sampler: str,
    num_steps: int,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    **options: Any,
) -> Callable[[Any, Array, Array], Array]:
    """A jitted fn(params, labels (B,), rng) -> images (B, H, W, C) float, the sampler's z_{t_min}.

    Class-conditional models sample class `labels` with classifier-free guidance at
    `guidance_scale` (1 = plain conditional: one forward pass, no null batch); unconditional
    models ignore `labels`. Compiles once per (batch_size, options).
    """
    samplers.nfe(sampler, num_steps)  # validates the sampler name early
    shape = (batch_size, *model.image_shape)
    guided = bool(model.num_classes) and guidance_scale != 1.0

    def apply(params: Any, labels: Array, rng: Array) -> Array:
        if guided:
            model_fn = samplers.classifier_free_guidance(
                lambda z, t, y: model.predict(params, z, t, y), labels, model.num_classes,
                guidance_scale, guidance_interval,
            )
        else:
            y = labels if model.num_classes else model.null_labels(batch_size)
            model_fn = model.model_fn(params, y)
        out = samplers.sample(
            model_fn, model.schedule(params), shape, rng, sampler=sampler, num_steps=num_steps,
            prediction=model.prediction, sharding=sharding, **options,
        )
        return out.samples

    return jax.jit(apply)


def image_grid(images: np.ndarray, num_cols: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) image, row-major."""
    n, h, w, c = images.shape
    cols = num_cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, num_cols: int | None = None,
              upscale: int = 1) -> Path:
    """Save uint8 images (N, H, W, C) as one PNG grid (nearest-neighbour upscaled), atomically."""
    grid = image_grid(images, num_cols)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    tmp.replace(path)
    return path


def class_balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Labels 0, 1, …, K−1, 0, 1, … (num_samples,) int32; zeros when unconditional."""
    if not num_classes:
        return np.zeros((num_samples,), np.int32)
    return (np.arange(num_samples) % num_classes).astype(np.int32)
