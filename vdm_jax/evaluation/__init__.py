"""Evaluation metrics: FID / sFID / IS / precision-recall with the FID Inception, digits metrics.

Submodules: frechet (Fréchet distance, statistics), inception (FID Inception-v3 in Flax NNX),
convert_inception (pytorch-fid weights → Flax, weight-path resolution), metrics (IS,
precision/recall), reference (ADM .npz files), digits_classifier (metric net of the digits
default). Nothing here downloads weights; tests use random Inception weights.
"""

from vdm_jax.evaluation.convert_inception import (
    INCEPTION_ENV_VAR,
    inception_weights_path,
    load_inception,
    load_pt_state_dict,
)
from vdm_jax.evaluation.digits_classifier import DigitsClassifier, train_or_load_digits_classifier
from vdm_jax.evaluation.frechet import (
    StatsAccumulator,
    feature_statistics,
    frechet_distance,
    frechet_from_features,
)
from vdm_jax.evaluation.inception import (
    InceptionV3,
    make_inception_fn,
    preprocess_uint8,
    random_inception,
    spatial_features,
)
from vdm_jax.evaluation.metrics import inception_score, precision_recall
from vdm_jax.evaluation.reference import (
    ReferenceBatch,
    SampleBatch,
    load_reference,
    load_samples,
    save_reference,
    save_samples,
)

__all__ = [
    "INCEPTION_ENV_VAR",
    "DigitsClassifier",
    "InceptionV3",
    "ReferenceBatch",
    "SampleBatch",
    "StatsAccumulator",
    "feature_statistics",
    "frechet_distance",
    "frechet_from_features",
    "inception_score",
    "inception_weights_path",
    "load_inception",
    "load_pt_state_dict",
    "load_reference",
    "load_samples",
    "make_inception_fn",
    "precision_recall",
    "preprocess_uint8",
    "random_inception",
    "save_reference",
    "save_samples",
    "spatial_features",
    "train_or_load_digits_classifier",
]
