"""Building ADM reference batches: FID statistics of a dataset split with the FID Inception.

`iter_reference_images` reads a split through the training pipeline's preprocessing (ADM center
crop, no flips) back to 8 bits; `build_reference` streams the images through the Inception,
accumulating the pool3 and spatial statistics in float64, and writes the ADM `.npz`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vdm_jax.data import dataset_info, eval_iterator, train_iterator
from vdm_jax.data.adm_npz import ReferenceBatch, save_reference, validate_images
from vdm_jax.data.pixels import unit_to_uint8
from vdm_jax.evaluation.features import DEFAULT_BATCH_SIZE, DEFAULT_FID_MODE, inception_batches
from vdm_jax.evaluation.frechet import StatsAccumulator
from vdm_jax.nn.encoders.inception import InceptionV3

__all__ = ["build_reference", "iter_reference_images", "reference_images_from_data"]


def build_reference(
    images: np.ndarray | Iterable[np.ndarray],
    inception: InceptionV3,
    path: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_stored_images: int | None = None,
    mode: str = DEFAULT_FID_MODE,
) -> ReferenceBatch:
    """Computes an ADM reference batch from uint8 NHWC images and writes it to `path`.

    `images`: one array (N, H, W, C) or an iterable of such chunks (streamed: statistics are
    accumulated in float64 with `StatsAccumulator`, so N may exceed memory). Stores mu, sigma
    (pool3) and mu_s, sigma_s (spatial) over all N images, and the first `num_stored_images`
    (default: all) images as arr_0 for precision/recall, through FID preprocessing `mode`
    (record it beside the file: evaluation must use the same). Returns the batch as `load_reference`
    would read it.
    """
    if isinstance(images, np.ndarray):
        images = validate_images(images, "reference images")
        batch, chunks = min(batch_size, max(len(images), 1)), [images]
    else:
        batch, chunks = batch_size, images
    acc, acc_s = StatsAccumulator(), StatsAccumulator()
    stored: list[np.ndarray] = []
    budget = math.inf if num_stored_images is None else num_stored_images
    for chunk in chunks:
        chunk = validate_images(chunk, "reference images")
        if len(chunk) == 0:
            continue
        for out in inception_batches(chunk, inception, batch, mode):
            acc.update(out["pool3"])
            acc_s.update(out["spatial"])
        keep = int(min(len(chunk), budget))
        if keep:
            stored.append(chunk[:keep])
            budget -= keep
    if acc.n < 2:
        raise ValueError(f"a reference batch needs at least 2 images, got {acc.n}")
    mu, sigma = acc.finalize()
    mu_s, sigma_s = acc_s.finalize()
    arr_0 = np.concatenate(stored) if stored else None
    path = save_reference(path, mu, sigma, mu_s, sigma_s, arr_0)
    return ReferenceBatch(mu, sigma, mu_s, sigma_s, arr_0, Path(path))


def _plain_config(data_config: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    config = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
    return {**config, **overrides}


def iter_reference_images(
    data_config: Mapping[str, Any],
    split: str = "eval",
    max_images: int | None = None,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """uint8 NHWC chunks (b, H, W, C) of a dataset split, read through the data pipeline.

    split "eval": the evaluation split in order (`eval_iterator`, padding rows dropped);
    "train": a random subset of the training split without repeats or flips
    (`train_iterator` shuffled from `seed`, random_flip off). At most `max_images` images
    (default: the whole split). Pipeline floats x are mapped back to 8 bits with
    `unit_to_uint8(x, K)`, K the dataset's number of levels: for 8-bit data these are exactly
    the stored (center-cropped) pixels.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if max_images is not None and max_images <= 0:
        raise ValueError(f"max_images must be positive, got {max_images}")
    info = dataset_info(data_config)
    available = info.num_train if split == "train" else info.num_test
    n = available if max_images is None else min(max_images, available)
    if n == 0:
        raise ValueError(f"the {split} split of {data_config.get('name')!r} has no images")
    b = min(batch_size, n)
    if split == "eval":
        batches = eval_iterator(data_config, batch_size=b, process_index=0, process_count=1)
    else:
        # An infinite stream of epoch permutations: its first num_train records are distinct.
        batches = train_iterator(
            _plain_config(data_config, random_flip=False), global_batch_size=b, seed=seed,
            process_index=0, process_count=1,
        )
    taken = 0
    for batch in batches:
        x = batch["image"][batch["mask"]] if "mask" in batch else batch["image"]
        x = x[: n - taken]
        taken += len(x)
        if len(x):
            yield unit_to_uint8(x, info.num_levels)
        if taken >= n:
            break


def reference_images_from_data(
    data_config: Mapping[str, Any],
    split: str = "eval",
    max_images: int | None = None,
    *,
    seed: int = 0,
) -> np.ndarray:
    """uint8 images (N, H, W, C) of a dataset split; see `iter_reference_images`."""
    return np.concatenate(list(iter_reference_images(data_config, split, max_images, seed=seed)))
