"""Sample grids: uint8 images (N, H, W, C) → one padded, row-major grid image, saved as PNG.

The trainer writes one after each sample interval (and TensorBoard shows the same, upscaled,
image); `launch/sample.py` writes one beside every sample batch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from einops import rearrange
from PIL import Image

from vdm_jax.io import atomic_write

__all__ = ["grid_upscale", "image_grid", "save_grid"]


def image_grid(images: np.ndarray, num_cols: int | None = None, pad: int = 1,
               upscale: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) → (rows·(s·H + pad) + pad, cols·(s·W + pad) + pad, C), s = upscale
    (nearest neighbour), row-major, white padding; missing cells of the last row are white."""
    n, h, w, c = images.shape
    cols = num_cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)  # (N, sH, sW, C)
        h, w = h * upscale, w * upscale
    cells = np.full((rows * cols, h + pad, w + pad, c), 255, np.uint8)
    cells[:n, pad:, pad:] = images  # each cell: pad on its top and left
    grid = rearrange(cells, "(r q) h w c -> (r h) (q w) c", r=rows, q=cols)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=255)


def grid_upscale(image_size: int, target: int = 64) -> int:
    """The integer nearest-neighbour factor that brings small images to about `target` pixels."""
    return max(1, target // image_size)


def save_grid(images: np.ndarray, path: str | os.PathLike, num_cols: int | None = None,
              upscale: int = 1) -> Path:
    """Save uint8 images (N, H, W, C) as one PNG grid (see `image_grid`), atomically."""
    grid = image_grid(images, num_cols, upscale=upscale)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))
