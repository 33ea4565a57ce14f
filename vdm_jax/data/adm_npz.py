"""ADM-format `.npz` image batches, written by generation and read by evaluation: reference
batches and sample batches (the files of openai/guided-diffusion's `evaluations/`).

Reference batch (guided-diffusion `evaluations/`): `mu` (D,), `sigma` (D, D) of pool3 features,
`mu_s`, `sigma_s` of the sFID spatial features, and `arr_0` uint8 NHWC reference images (used for
precision/recall). `mu`/`sigma` are required; `mu_s`/`sigma_s` come as a pair; `arr_0` is optional.
Sample batch: `arr_0` uint8 NHWC images (3 or 1 channels), optional `arr_1` int labels (N,).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vdm_jax.io import write_npz

__all__ = [
    "ReferenceBatch",
    "SampleBatch",
    "load_reference",
    "load_samples",
    "save_reference",
    "save_samples",
    "validate_images",
]


@dataclass(frozen=True)
class ReferenceBatch:
    mu: np.ndarray             # (D,)      pool3 mean
    sigma: np.ndarray          # (D, D)    pool3 covariance
    mu_s: np.ndarray | None    # (Ds,)     spatial mean (sFID), or None
    sigma_s: np.ndarray | None  # (Ds, Ds)  spatial covariance, or None
    images: np.ndarray | None  # (N, H, W, C) uint8, or None (absent or not loaded)
    path: Path


@dataclass(frozen=True)
class SampleBatch:
    images: np.ndarray         # (N, H, W, C) uint8, C in {1, 3}
    labels: np.ndarray | None  # (N,) int64, or None
    path: Path


def validate_images(images: np.ndarray, source: str) -> np.ndarray:
    """Checks an ADM image array: uint8, NHWC, 3 or 1 channels; returns it unchanged."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"{source}: arr_0 must be uint8 images in 0..255, got dtype {images.dtype} "
            "(convert float images in [-1, 1] with round((x + 1) * 127.5) before saving)"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"{source}: arr_0 must be NHWC with 3 or 1 channels, got shape {images.shape}"
            + (" (channels-first? transpose to NHWC)" if images.ndim == 4 else "")
        )
    return images


def _check_stats(mu: np.ndarray, sigma: np.ndarray, names: str, source: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{source}: {names} must have shapes (D,) and (D, D), got {mu.shape} and {sigma.shape}"
        )


@contextmanager
def _open_npz(path: Path, what: str) -> Iterator[Any]:
    """np.load of an `.npz` with one clear error for a missing, truncated or foreign file (a
    junk file would otherwise surface as numpy's misleading `allow_pickle` message)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what} {path} is not a readable .npz file (truncated or not an "
                         f"array archive: {type(e).__name__}); regenerate it") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{what} {path} holds a single array, expected an .npz archive")
    try:
        with npz:
            yield npz
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        if isinstance(e, ValueError) and str(path) in str(e):
            raise  # our own validation message
        raise ValueError(f"{what} {path} is damaged (an array could not be read: "
                         f"{type(e).__name__}); regenerate it") from None


def load_reference(path: str | os.PathLike, load_images: bool = True) -> ReferenceBatch:
    """Reads and validates an ADM reference batch `.npz` (see the module docstring)."""
    path = Path(path).expanduser()
    with _open_npz(path, "reference batch") as npz:
        keys = set(npz.files)
        missing = [k for k in ("mu", "sigma") if k not in keys]
        if missing:
            raise ValueError(
                f"reference batch {path} lacks {', '.join(missing)} (has: {sorted(keys)}); an ADM "
                "reference .npz holds mu, sigma, mu_s, sigma_s and arr_0"
            )
        if ("mu_s" in keys) != ("sigma_s" in keys):
            absent = "sigma_s" if "mu_s" in keys else "mu_s"
            raise ValueError(
                f"reference batch {path} has only one of mu_s/sigma_s ({absent} missing)"
            )
        mu, sigma = npz["mu"], npz["sigma"]
        _check_stats(mu, sigma, "mu/sigma", str(path))
        mu_s = sigma_s = None
        if "mu_s" in keys:
            mu_s, sigma_s = npz["mu_s"], npz["sigma_s"]
            _check_stats(mu_s, sigma_s, "mu_s/sigma_s", str(path))
        images = None
        if load_images and "arr_0" in keys:
            images = validate_images(npz["arr_0"], str(path))
    return ReferenceBatch(mu, sigma, mu_s, sigma_s, images, path)


def save_reference(
    path: str | os.PathLike,
    mu: np.ndarray,
    sigma: np.ndarray,
    mu_s: np.ndarray | None = None,
    sigma_s: np.ndarray | None = None,
    images: np.ndarray | None = None,
) -> Path:
    """Writes an ADM reference batch; statistics stored as float64, images validated."""
    path = Path(path)
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    _check_stats(arrays["mu"], arrays["sigma"], "mu/sigma", str(path))
    if (mu_s is None) != (sigma_s is None):
        raise ValueError("give both mu_s and sigma_s, or neither")
    if mu_s is not None:
        arrays["mu_s"] = np.asarray(mu_s, np.float64)
        arrays["sigma_s"] = np.asarray(sigma_s, np.float64)
        _check_stats(arrays["mu_s"], arrays["sigma_s"], "mu_s/sigma_s", str(path))
    if images is not None:
        arrays["arr_0"] = validate_images(images, str(path))
    return write_npz(path, arrays)


def load_samples(path: str | os.PathLike) -> SampleBatch:
    """Reads and validates a sample batch `.npz`: `arr_0` uint8 NHWC (C 3|1), optional `arr_1`."""
    path = Path(path).expanduser()
    with _open_npz(path, "sample batch") as npz:
        if "arr_0" not in npz.files:
            raise ValueError(f"sample batch {path} has no arr_0 (has: {sorted(npz.files)})")
        images = validate_images(npz["arr_0"], str(path))
        labels = npz["arr_1"] if "arr_1" in npz.files else None
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: arr_1 must be integer labels of shape ({images.shape[0]},), got "
                f"{labels.dtype} {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return SampleBatch(images, labels, path)


def save_samples(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None
) -> Path:
    """Writes an ADM sample batch: `arr_0` images (validated), `arr_1` labels if given."""
    path = Path(path)
    arrays = {"arr_0": validate_images(images, str(path))}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        arrays["arr_1"] = labels
    return write_npz(path, arrays)
