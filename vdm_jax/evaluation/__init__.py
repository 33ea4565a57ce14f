"""Evaluation metrics: FID / sFID / IS / precision-recall with the FID Inception, digits metrics.

Submodules: frechet (Fréchet distance, statistics), inception (FID Inception-v3 in Flax NNX),
convert_inception (pytorch-fid weights → Flax, weight-path resolution), metrics (IS,
precision/recall), reference (ADM .npz files), digits_classifier (metric net of the digits
default), evaluate (whole evaluations of sample batches, reference building, results JSON).
Nothing here downloads weights; tests use random Inception weights.
"""

from vdm_jax.evaluation.digits_classifier import DigitsClassifier, train_or_load_digits_classifier
from vdm_jax.evaluation.evaluate import (
    build_reference,
    digits_metrics,
    evaluate_samples_file,
    format_table,
    inception_outputs,
    iter_reference_images,
    levels_to_uint8,
    load_eval_inception,
    read_sample_settings,
    reference_images_from_data,
    results_path,
    sample_metrics,
    settings_path,
    uint8_to_levels,
    unit_to_levels,
    unit_to_uint8,
    write_json_atomic,
    write_results_json,
)
from vdm_jax.evaluation.frechet import (
    StatsAccumulator,
    feature_statistics,
    frechet_distance,
    frechet_from_features,
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
from vdm_jax.importers.inception import (
    INCEPTION_ENV_VAR,
    inception_weights_path,
    load_inception,
    load_pt_state_dict,
)
from vdm_jax.nn.encoders.inception import (
    InceptionV3,
    make_inception_fn,
    preprocess_uint8,
    random_inception,
    spatial_features,
)

__all__ = [
    "INCEPTION_ENV_VAR",
    "DigitsClassifier",
    "InceptionV3",
    "ReferenceBatch",
    "SampleBatch",
    "StatsAccumulator",
    "build_reference",
    "digits_metrics",
    "evaluate_samples_file",
    "feature_statistics",
    "format_table",
    "frechet_distance",
    "frechet_from_features",
    "inception_outputs",
    "inception_score",
    "inception_weights_path",
    "iter_reference_images",
    "levels_to_uint8",
    "load_eval_inception",
    "load_inception",
    "load_pt_state_dict",
    "load_reference",
    "load_samples",
    "make_inception_fn",
    "precision_recall",
    "preprocess_uint8",
    "random_inception",
    "read_sample_settings",
    "reference_images_from_data",
    "results_path",
    "sample_metrics",
    "save_reference",
    "save_samples",
    "settings_path",
    "spatial_features",
    "train_or_load_digits_classifier",
    "uint8_to_levels",
    "unit_to_levels",
    "unit_to_uint8",
    "write_json_atomic",
    "write_results_json",
]
