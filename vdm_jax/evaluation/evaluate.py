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
from vdm_jax.evaluation.features import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FID_MODE,
    FID_MODES,
    load_eval_inception,
)
from vdm_jax.evaluation.inception_metrics import IS_SPLITS, PR_K, sample_metrics
from vdm_jax.evaluation.results import read_sample_settings, write_results_json
from vdm_jax.io import read_json_object
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
    fid_mode: str | None = None,
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

    FID preprocessing (`fid_mode`, recorded as settings["fid_preprocessing"]): the mode recorded
    beside the reference by launch/build_reference.py, else 'adm' (ADM's reference batches carry
    no record and were made by the ADM evaluator); an explicit mode that contradicts the
    reference's record is refused, as are samples whose resolution or channels differ from the
    reference images'.
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
        ref_json = RunDir.settings_of(ref_path)  # written by launch/build_reference.py
        ref_settings = read_json_object(ref_json, "reference settings") if ref_json.is_file() \
            else {}
        mode = _fid_mode(fid_mode, ref_settings.get("fid_mode"), reference.path)
        ref_shape = _check_resolution(samples.images.shape[1:], reference, ref_settings)
        model, description = inception or load_eval_inception(
            inception_weights, random_inception_seed
        )
        settings.update(
            reference=str(reference.path.resolve()),
            reference_image_shape=ref_shape,
            inception_weights=description,
            fid_preprocessing=mode,
            inception_score_splits=IS_SPLITS,
            precision_recall_k=PR_K,
        )
        if ref_settings:
            settings["reference_settings"] = ref_settings
        found = sample_metrics(samples, reference, model, batch_size=batch_size, mode=mode)
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


def _fid_mode(requested: str | None, recorded: str | None, reference: Path) -> str:
    """The FID preprocessing to use with `reference` (see `evaluate_samples_file`)."""
    for mode in (requested, recorded):
        if mode is not None and mode not in FID_MODES:
            raise ValueError(f"unknown FID preprocessing {mode!r}; expected one of {FID_MODES}")
    if requested is not None and recorded is not None and requested != recorded:
        raise ValueError(
            f"reference batch {reference} was built with FID preprocessing {recorded!r}; "
            f"statistics of {requested!r} features are not comparable with it. Drop --fid_mode "
            "or rebuild the reference with the same mode")
    return requested or recorded or DEFAULT_FID_MODE


def _check_resolution(sample_shape: tuple[int, ...], reference: Any,
                      ref_settings: Mapping[str, Any]) -> list[int] | None:
    """The reference images' (H, W, C) (from its arr_0, else its recorded settings); ValueError
    when the samples' differ: Inception features of other resolutions are not comparable."""
    if reference.images is not None:
        ref_shape = list(reference.images.shape[1:])
    elif ref_settings.get("image_shape"):
        ref_shape = [int(v) for v in ref_settings["image_shape"]]
    else:
        return None  # ADM batches without arr_0 record no resolution: nothing to compare
    if list(sample_shape) != ref_shape:
        h, w, c = sample_shape
        rh, rw, rc = ref_shape
        raise ValueError(
            f"the samples are {h}×{w}×{c} images but reference batch {reference.path} holds "
            f"{rh}×{rw}×{rc}: evaluate against a reference of the samples' resolution and "
            "channels (launch/build_reference.py builds one)")
    return ref_shape
