"""Evaluating a sample file: what `launch/evaluate.py` does.

Inception metrics of an ADM sample batch against a reference batch (`inception_metrics`),
digits metrics of the digits default (`digits`), and bits/dim of a run computed elsewhere
(`likelihood.bpd_metrics`), written with every setting to one results JSON (`results`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vdm_jax.data import digits as digits_data
from vdm_jax.data.adm_npz import load_reference, load_samples
from vdm_jax.evaluation.digits import check_digit_samples, digits_metrics
from vdm_jax.evaluation.features import DEFAULT_BATCH_SIZE, load_eval_inception
from vdm_jax.evaluation.inception_metrics import IS_SPLITS, PR_K, sample_metrics
from vdm_jax.evaluation.results import read_json_object, read_sample_settings, write_results_json
from vdm_jax.nn.encoders.inception import InceptionV3
from vdm_jax.rundir import RunDir

__all__ = ["evaluate_samples_file"]


def evaluate_samples_file(
    samples_path: str | os.PathLike,
    *,
    ref_path: str | os.PathLike | None = None,
    inception_weights: str | None = None,
    random_inception_seed: int | None = None,
    inception: tuple[InceptionV3, str] | None = None,
    digits: bool = False,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    settings_from: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    extra: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Everything `launch/evaluate.py` does: returns (metrics, settings, results JSON path).

    Inception metrics against `ref_path` (Inception from `inception` = (model, description) if
    given, else `load_eval_inception(inception_weights, random_inception_seed)`), digits metrics
    if `digits` (classifier cached in `cache_dir`, default the samples' directory). Every input
    is validated before the slow work starts. Settings = the sample settings
    (`read_sample_settings`) updated with the evaluation's; written with the metrics to `out`
    (default `RunDir.results_of(samples_path)`). `extra` = (metrics, settings) computed elsewhere
    (e.g. `bpd_metrics`) are merged into both.
    """
    if ref_path is None and not digits and extra is None:
        raise ValueError(
            "nothing to evaluate: give --ref=REFERENCE.npz (FID, sFID, IS, precision/recall) "
            "and/or --digits (digits-FID, class accuracy)"
        )
    samples = load_samples(samples_path)
    settings = read_sample_settings(samples_path, settings_from)
    settings.update(samples=str(Path(samples_path).resolve()), num_samples=len(samples.images))
    if digits:
        check_digit_samples(samples.images)  # before minutes of Inception work
    metrics: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if ref_path is not None:
        reference = load_reference(ref_path)
        model, description = inception or load_eval_inception(
            inception_weights, random_inception_seed
        )
        ref_settings = RunDir.settings_of(ref_path)  # written by launch/build_reference.py
        settings.update(
            reference=str(reference.path.resolve()),
            inception_weights=description,
            inception_score_splits=IS_SPLITS,
            precision_recall_k=PR_K,
        )
        if ref_settings.is_file():
            settings["reference_settings"] = read_json_object(ref_settings, "reference settings")
        found = sample_metrics(samples, reference, model, batch_size=batch_size)
        unavailable.update(found.pop("unavailable"))
        metrics.update(found)
    if digits:
        cache = Path(cache_dir) if cache_dir is not None else Path(samples_path).parent
        found = digits_metrics(samples.images, samples.labels, cache, data_dir=data_dir)
        unavailable.update(found.pop("unavailable"))
        metrics.update(found)
        settings.update(
            digits_classifier_cache=str(cache.resolve()),
            digits_reference=f"digits {digits_data.EVAL_SPLIT} split",
        )
    if extra is not None:
        metrics.update(extra[0])
        settings.update(extra[1])
    metrics["unavailable"] = unavailable
    path = write_results_json(out if out is not None else RunDir.results_of(samples_path), metrics,
                              settings)
    return metrics, settings, path
