"""The records the input pipeline (`vdm_jax.data.pipeline`) reads, and how it prepares each.

Sources (random access, like tfds's array_record sources; their repr is stable, as grain checks
it on restore): `SyntheticSource` (random records for timing the trainer) and `InMemorySource`
(a small split decoded once into arrays). Transforms, in numpy/Pillow, per example:
`center_crop` (ADM's), then for training an optional horizontal flip drawn from grain's
per-record rng, then levels k ∈ {0..K−1} → x = 2(k + ½)/K − 1 (`TrainPreprocess`,
`EvalPreprocess`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain.python as grain
import numpy as np
from PIL import Image

from vdm_jax.data.pixels import levels_to_unit

__all__ = ["EvalPreprocess", "InMemorySource", "SyntheticSource", "TrainPreprocess",
           "center_crop"]

SYNTHETIC_EXAMPLES = 65_536  # records of the synthetic dataset (any index is as random as any)


class SyntheticSource:
    """Random training records of a given shape, for timing the trainer without a dataset
    (data.name='synthetic'): record i is {"image": (S, S, C) uint8 levels uniform in 0..255,
    "label": i mod num_classes}, a pure function of i (its rng is seeded with (seed, i)), so
    shuffling, sharding and resuming behave as with a real source. No evaluation split."""

    def __init__(self, size: int, channels: int, num_classes: int, seed: int = 0,
                 num_examples: int = SYNTHETIC_EXAMPLES):
        self.shape, self.num_classes = (size, size, channels), num_classes
        self.seed, self.num_examples = seed, num_examples

    def __repr__(self) -> str:  # stable: grain checks it on restore
        return (f"SyntheticSource(shape={self.shape}, num_classes={self.num_classes}, "
                f"seed={self.seed}, num_examples={self.num_examples})")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, int(index)))
        return {"image": rng.integers(0, 256, self.shape, dtype=np.uint8),
                "label": np.int32(int(index) % self.num_classes)}


class InMemorySource:
    """A split's images and labels decoded once into arrays: (N, H, W, C) uint8 and (N,).

    For small datasets (the digits) this removes tfds's per-record deserialization; it is a
    random-access source like tfds's, so sampling, sharding and checkpointing are unchanged.
    """

    def __init__(self, source: Any):
        examples = source.__getitems__(list(range(len(source))))
        self.images = np.stack([np.asarray(ex["image"]) for ex in examples])
        self.labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
        self._repr = f"InMemorySource({source!r})"  # stable: grain checks it on restore

    def __repr__(self) -> str:
        return self._repr

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ADM's center crop: (H, W, C) uint8 -> (size, size, C) uint8.

    Halves the image with a BOX filter while min(H, W) ≥ 2·size, resizes it with BICUBIC so that
    min(H, W) = size (each side rounded), then keeps the central size × size square.
    """
    height, width, channels = image.shape
    if (height, width) == (size, size):
        return image
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
    out = np.asarray(pil).reshape(pil.size[1], pil.size[0], channels)  # (h, w, C)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    return out[top : top + size, left : left + size]


def _preprocess(
    example: Mapping[str, Any], size: int, num_levels: int, flip: bool
) -> dict[str, np.ndarray]:
    image = center_crop(np.asarray(example["image"]), size)  # (size, size, C) uint8
    if flip:
        image = image[:, ::-1]
    return {
        "image": levels_to_unit(image, num_levels),  # (size, size, C) float32
        "label": np.int32(example["label"]),
    }


@dataclasses.dataclass(frozen=True)
class TrainPreprocess(grain.RandomMapTransform):
    """Center crop, random flip (grain's per-record rng), scaling to [−1, 1]."""

    image_size: int
    num_levels: int
    random_flip: bool

    def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
        flip = self.random_flip and bool(rng.random() < 0.5)
        return _preprocess(element, self.image_size, self.num_levels, flip)


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.MapTransform):
    """Center crop and scaling to [−1, 1], no augmentation."""

    image_size: int
    num_levels: int

    def map(self, element: Mapping[str, Any]) -> dict:
        return _preprocess(element, self.image_size, self.num_levels, flip=False)
