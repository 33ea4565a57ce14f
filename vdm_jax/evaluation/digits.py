"""Metrics of the digits default that need no outside weights.

The digits classifier (`digits_classifier.py`), trained on the digits train split and cached in
a directory, gives
  digits-FID       = d² between its 64-d features of the samples and of the digits test split
  digits-FID floor = d² between a real train subset of the same size and the test split
  class accuracy   = fraction of class-conditional samples it labels as their class.
Samples are 8-bit; they are mapped back to the K = 17 levels and to x exactly as the real
digits are (vdm_jax.data.pixels).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vdm_jax.data import digits as digits_data
from vdm_jax.data.adm_npz import validate_images
from vdm_jax.data.pixels import levels_to_unit, uint8_to_levels
from vdm_jax.data.records import InMemorySource
from vdm_jax.data.tfds_utils import data_source
from vdm_jax.evaluation.digits_classifier import train_or_load_digits_classifier
from vdm_jax.evaluation.frechet import frechet_from_features

__all__ = ["check_digit_samples", "digits_metrics"]


def _digits_split(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw levels (N, 8, 8, 1) uint8 in 0..16 and labels (N,) int64 of a digits split."""
    source = InMemorySource(data_source(digits_data.load_builder(data_dir), split))
    return source.images, source.labels.astype(np.int64)


def check_digit_samples(images: np.ndarray) -> np.ndarray:
    images = validate_images(images, "digits samples")
    if images.shape[1:] != (8, 8, 1):
        raise ValueError(
            f"digits samples must have shape (N, 8, 8, 1), got {images.shape} (are these samples "
            "of the digits model?)"
        )
    if len(images) < 2:
        raise ValueError(f"digits-FID needs at least 2 samples, got {len(images)}")
    return images


def digits_metrics(
    sample_images: np.ndarray,
    sample_labels: np.ndarray | None,
    cache_dir: str | os.PathLike,
    *,
    data_dir: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """digits-FID, its real-vs-real floor and the class accuracy of 8-bit digit samples.

    sample_images (N, 8, 8, 1) uint8 (8-bit convention, see the module doc); sample_labels (N,)
    the classes the samples were drawn for, or None for unconditional samples. The classifier
    is trained on the digits train split (or loaded from `cache_dir`). Returns
      digits_fid       d²(features(samples), features(test split))
      digits_fid_floor d²(features(n real train images), features(test split)), n = min(N,
                       N_train) drawn with `seed`: the value of a perfect sampler at this N
                       (FID is biased upwards at small N, so the floor uses the same N)
      class_accuracy   mean[argmax classifier(sample) == label], None without labels
    plus "digits_num_test_images", "digits_num_floor_images" and "unavailable" reasons.
    """
    k = digits_data.NUM_LEVELS
    images = check_digit_samples(sample_images)
    train_levels, train_labels = _digits_split(digits_data.TRAIN_SPLIT, data_dir)
    test_levels, _ = _digits_split(digits_data.EVAL_SPLIT, data_dir)
    train_x = levels_to_unit(train_levels, k)
    clf = train_or_load_digits_classifier(train_x, train_labels, cache_dir, digits_data.NUM_CLASSES)
    # The samples' 8-bit pixels → levels → x: the same x = 2(k + ½)/K − 1 as the real digits.
    sample_x = levels_to_unit(uint8_to_levels(images, k), k)
    test_feats = clf.features(levels_to_unit(test_levels, k))
    n_floor = min(len(images), len(train_x))
    floor_rows = np.random.default_rng(seed).permutation(len(train_x))[:n_floor]
    metrics: dict[str, Any] = {
        "digits_fid": frechet_from_features(clf.features(sample_x), test_feats),
        "digits_fid_floor": frechet_from_features(clf.features(train_x[floor_rows]), test_feats),
        "digits_num_test_images": len(test_feats),
        "digits_num_floor_images": n_floor,
        "unavailable": {},
    }
    if sample_labels is None:
        metrics["class_accuracy"] = None
        metrics["unavailable"]["class_accuracy"] = "unconditional samples (no arr_1 labels)"
    else:
        labels = np.asarray(sample_labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"digits sample labels must be integers of shape ({len(images)},), got "
                f"{labels.dtype} {labels.shape}"
            )
        if labels.min() < 0 or labels.max() >= digits_data.NUM_CLASSES:
            raise ValueError(
                f"digits sample labels must lie in 0..{digits_data.NUM_CLASSES - 1}, got "
                f"{labels.min()}..{labels.max()}"
            )
        metrics["class_accuracy"] = clf.accuracy(sample_x, labels)
    return metrics
