"""Evaluation results files: `{"metrics": …, "settings": …}` JSON beside what was evaluated, and
the plain-text table the launch scripts print.

Settings merge the sampling settings that `sample.py` writes beside the samples
(`RunDir.settings_of(npz)`) with the evaluation's own (reference, Inception weights, FID
preprocessing, k, splits), so every figure is reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vdm_jax.evaluation.inception_metrics import PR_K
from vdm_jax.io import read_json_object, write_json
from vdm_jax.rundir import RunDir

__all__ = ["format_table", "read_sample_settings", "write_results_json"]


def read_sample_settings(
    samples_path: str | os.PathLike, settings_from: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The sampling settings of a sample batch: `settings_from` if given (must exist), else
    `RunDir.settings_of(samples_path)` if it exists, else {}."""
    if settings_from is not None:
        path = Path(settings_from)
        if not path.is_file():
            raise FileNotFoundError(f"settings file {path} does not exist")
    else:
        path = RunDir.settings_of(samples_path)
        if not path.is_file():
            return {}
    return read_json_object(path, "settings file")


def write_results_json(
    path: str | os.PathLike, metrics: Mapping[str, Any], settings: Mapping[str, Any]
) -> Path:
    """Writes {"metrics": metrics, "settings": settings} atomically to `path`."""
    return write_json(path, {"metrics": dict(metrics), "settings": dict(settings)})


_ROWS = (
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("inception_score", "Inception Score (10 splits)"),
    ("precision", "precision (k={k})"),
    ("recall", "recall (k={k})"),
    ("digits_fid", "digits-FID"),
    ("digits_fid_floor", "digits-FID floor (real train vs test)"),
    ("class_accuracy", "class accuracy"),
    ("bpd", "held-out bits/dim (−ELBO)"),
    ("bpd_prior", "  prior term"),
    ("bpd_reconstruction", "  reconstruction term"),
    ("bpd_diffusion", "  diffusion term"),
    ("bpd_baseline_independent_categorical", "baseline: independent per-pixel categorical"),
    ("bpd_baseline_uniform", "baseline: uniform over K levels"),
)


def format_table(metrics: Mapping[str, Any]) -> str:
    """Plain aligned text table of the metrics present in `metrics` (n/a rows give the reason)."""
    unavailable = metrics.get("unavailable", {})
    rows = []
    for key, label in _ROWS:
        if key not in metrics:
            continue
        label = label.format(k=metrics.get("precision_recall_k", PR_K))
        value = metrics[key]
        if value is None:
            text = f"n/a ({unavailable.get(key, 'not computed')})"
        elif key == "inception_score":
            text = f"{value:.4f} ± {metrics['inception_score_std']:.4f}"
        else:
            text = f"{value:.4f}"
        rows.append((label, text))
    if not rows:
        return "(no metrics)"
    width = max(len(label) for label, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{label:<{width}}  {text}" for label, text in rows]
    return "\n".join(lines)
