"""FID Inception features of uint8 image batches, batched under jit, and loading the network.

`inception_outputs(images, inception)` → {"pool3": (N, 2048), "logits_unbiased": (N, 1008),
"spatial": (N, 2023)}: pool3 for FID and precision/recall, pool3 · W (no bias) for the Inception
Score, and ADM's sFID spatial features. Images are fed in fixed-size blocks (the last one padded,
so the network compiles once) and block i − 1 is fetched while block i runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx

from vdm_jax.data.adm_npz import validate_images
from vdm_jax.importers.inception import inception_weights_path, load_inception
from vdm_jax.nn.encoders.inception import (
    FID_MODES,
    InceptionV3,
    preprocess_uint8,
    random_inception,
    spatial_features,
)

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_FID_MODE", "FID_MODES", "inception_batches",
           "inception_outputs", "load_eval_inception"]

DEFAULT_BATCH_SIZE = 64
# The preprocessing of the ADM evaluator, which made the published FIDs and reference batches.
DEFAULT_FID_MODE = "adm"


@functools.partial(jax.jit, static_argnums=0)
def _inception_apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> dict:
    # Module-level jit with the graphdef static: every InceptionV3 instance (random or loaded)
    # shares one compilation per batch shape, where `make_inception_fn` compiles per instance.
    # Only the features the metrics need leave the device: mixed_6 is 887 KB per image.
    out = nnx.merge(graphdef, state)(x)
    return {
        "pool3": out["pool3"],                                    # (B, 2048)
        "logits_unbiased": out["logits_unbiased"],                # (B, 1008)
        "spatial": spatial_features(out["mixed_6"]),              # (B, 2023)
    }


def inception_batches(
    images: np.ndarray, inception: InceptionV3, batch: int, mode: str
) -> Iterator[dict[str, np.ndarray]]:
    """Outputs of `images` (N, H, W, C) uint8 in blocks of `batch` rows, the last one padded,
    through FID preprocessing `mode` (nn.encoders.inception.FID_MODES)."""
    graphdef, state = nnx.split(inception)
    pending = None  # (device outputs, rows): fetch block i − 1 after dispatching block i
    for i in range(0, len(images), batch):
        block = images[i : i + batch]
        n = len(block)
        # A fixed block shape: a partial last block would compile the network a second time.
        if n < batch:
            block = np.concatenate([block, np.repeat(block[-1:], batch - n, axis=0)])
        out = _inception_apply(graphdef, state, preprocess_uint8(block, mode))
        if pending is not None:
            yield {k: np.asarray(v)[: pending[1]] for k, v in pending[0].items()}
        pending = (out, n)
    if pending is not None:
        yield {k: np.asarray(v)[: pending[1]] for k, v in pending[0].items()}


def inception_outputs(
    images: np.ndarray, inception: InceptionV3, batch_size: int = DEFAULT_BATCH_SIZE, *,
    mode: str = DEFAULT_FID_MODE,
) -> dict[str, np.ndarray]:
    """FID Inception features of uint8 NHWC images (N, H, W, 1|3), in batches under jit.

    Returns float32 arrays {"pool3": (N, 2048), "logits_unbiased": (N, 1008) (pool3 · W, what the
    Inception Score uses), "spatial": (N, 2023) (sFID features)}. `mode` is the preprocessing:
    'adm' (TF1's bilinear resize of the 0–255 values, then (k − 128)/128: the ADM evaluator and
    its published reference batches) or 'pytorch_fid' (half-pixel bilinear of 2k/255 − 1).
    Grayscale is repeated to 3 channels; images are resized to 299² on device.
    """
    images = validate_images(images, "images")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chunks = list(inception_batches(images, inception, min(batch_size, len(images)), mode))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def load_eval_inception(
    weights: str | None, random_seed: int | None = None
) -> tuple[InceptionV3, str]:
    """(model, description) of the FID Inception: random weights when `random_seed` is given
    (tests only: the figures are meaningless), else the file named by `weights` or
    $VDM_JAX_INCEPTION_WEIGHTS (FileNotFoundError saying what to obtain when absent)."""
    if random_seed is not None:
        return random_inception(random_seed), f"random (seed {random_seed}; figures meaningless)"
    path = inception_weights_path(weights)
    return load_inception(path), str(path.resolve())
