"""FID, sFID, Inception Score and precision/recall of a sample batch against an ADM reference.

Against a reference batch (ADM `.npz`: `mu`, `sigma`, `mu_s`, `sigma_s` as stored, `arr_0`):
  FID   = d²(N(μ, Σ) of the samples' pool3 features (N, 2048), N(mu, sigma) of the reference)
  sFID  = the same on the spatial features (N, 2023) against (mu_s, sigma_s)
  IS    = Inception Score of the 1008 unbiased logits, mean and std over 10 splits
  precision / recall (k = 3) of the samples' pool3 features against the reference images' pool3
        features; needs `arr_0` in the reference, otherwise reported as unavailable with a reason.
d² is the float64 Fréchet distance of `frechet.py`; IS and precision/recall are `metrics.py`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vdm_jax.data.adm_npz import ReferenceBatch, SampleBatch
from vdm_jax.evaluation.features import DEFAULT_BATCH_SIZE, DEFAULT_FID_MODE, inception_outputs
from vdm_jax.evaluation.frechet import feature_statistics, frechet_distance
from vdm_jax.evaluation.metrics import inception_score, precision_recall
from vdm_jax.nn.encoders.inception import InceptionV3

__all__ = ["IS_SPLITS", "PR_K", "sample_metrics"]

IS_SPLITS = 10  # Inception Score splits (ADM / improved-GAN)
PR_K = 3  # nearest neighbours of improved precision/recall


def sample_metrics(
    samples: SampleBatch | np.ndarray,
    reference: ReferenceBatch,
    inception: InceptionV3,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    k: int = PR_K,
    num_splits: int = IS_SPLITS,
    mode: str = DEFAULT_FID_MODE,
) -> dict[str, Any]:
    """FID, sFID, IS (mean, std), precision and recall of samples against a reference batch, the
    Inception fed with FID preprocessing `mode` (the reference's statistics must have been made
    with the same one; `evaluate.evaluate_samples_file` checks it).

    `samples`: a SampleBatch or uint8 images (N, H, W, C). Returns floats under "fid", "sfid",
    "inception_score", "inception_score_std", "precision", "recall", plus "precision_recall_k",
    "num_samples", "num_reference_images"; a metric the reference cannot give (sFID without
    mu_s/sigma_s, precision/recall without arr_0) is None, with the reason in
    "unavailable"[name].
    """
    images = samples.images if isinstance(samples, SampleBatch) else samples
    feats = inception_outputs(images, inception, batch_size, mode=mode)
    metrics: dict[str, Any] = {"num_samples": len(feats["pool3"])}
    unavailable: dict[str, str] = {}

    mu, sigma = feature_statistics(feats["pool3"])
    metrics["fid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    if reference.mu_s is not None:
        mu_s, sigma_s = feature_statistics(feats["spatial"])
        metrics["sfid"] = frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s)
    else:
        metrics["sfid"] = None
        unavailable["sfid"] = f"reference {reference.path} has no mu_s/sigma_s"
    is_mean, is_std = inception_score(feats["logits_unbiased"], num_splits)
    metrics["inception_score"], metrics["inception_score_std"] = is_mean, is_std

    metrics["precision_recall_k"] = k
    if reference.images is not None:
        real = inception_outputs(reference.images, inception, batch_size, mode=mode)["pool3"]
        metrics["precision"], metrics["recall"] = precision_recall(real, feats["pool3"], k)
        metrics["num_reference_images"] = len(real)
    else:
        metrics["precision"] = metrics["recall"] = None
        metrics["num_reference_images"] = None
        reason = f"reference {reference.path} has no arr_0 images"
        unavailable["precision"] = unavailable["recall"] = reason
    metrics["unavailable"] = unavailable
    return metrics
