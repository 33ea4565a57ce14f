"""Evaluation of a sample batch: FID, sFID, IS, precision/recall, digits metrics, JSON results.

Inception metrics (`sample_metrics`) of a sample batch (ADM `.npz`, `arr_0` uint8 NHWC) against
a reference batch (ADM `.npz`: `mu`, `sigma`, `mu_s`, `sigma_s` as stored, `arr_0` images):
  FID   = d²(N(μ, Σ) of the samples' pool3 features (N, 2048), N(mu, sigma) of the reference)
  sFID  = the same on the spatial features (N, 2023) against (mu_s, sigma_s)
  IS    = Inception Score of the 1008 unbiased logits, mean and std over 10 splits
  precision / recall (k = 3) of the samples' pool3 features against the reference images' pool3
        features; needs `arr_0` in the reference, otherwise reported as unavailable with a reason.
d² is the float64 Fréchet distance of `frechet.py`; IS and precision/recall are `metrics.py`'s.

Digits metrics (`digits_metrics`), needing no outside weights: the digits classifier
(`digits_classifier.py`), trained on the digits train split and cached in a directory, gives
  digits-FID       = d² between its 64-d features of the samples and of the digits test split
  digits-FID floor = d² between a real train subset of the same size and the test split
  class accuracy   = fraction of class-conditional samples it labels as their class.

Pixel conventions. Data in the pipeline is x = 2(k + ½)/K − 1 for levels k ∈ {0..K−1}
(CONVENTIONS.md). Images in `.npz` files are 8-bit, as ADM's evaluator expects:
  x → k = clip(round((x + 1)·K/2 − ½), 0, K−1)   (`unit_to_levels`: nearest level centre)
  k → v = round(k · 255/(K − 1))                 (`levels_to_uint8`: 0 → 0, K−1 → 255)
and back v → k = round(v · (K − 1)/255) (`uint8_to_levels`). For K = 256 both maps are the
identity on levels. For the digits (K = 17) the samples' 8-bit pixels are mapped back to levels
with `uint8_to_levels` and then to x with the pipeline's `levels_to_unit`, exactly how real
digits are fed to the classifier; that inverse also recovers k from ADM's round((x + 1)·127.5)
of a level centre (|error| < ½ level for K = 17), so either 8-bit convention gives the same input.
Sample writers should use `unit_to_uint8`, the composition of the first two maps.

Held-out likelihood (`bpd_metrics`) of a trained run: −ELBO bits/dim on the evaluation split and
its prior / reconstruction / diffusion terms (`likelihood.evaluate_bpd`), with the uniform and
independent per-pixel baselines (`likelihood.pixel_baselines`).

Results (`write_results_json`): {"metrics": {...}, "settings": {...}}, where the settings merge
the sampling settings that `sample.py` writes beside the samples (`settings_path`) with
the evaluation's own (reference, Inception weights, k, splits), so every figure is reproducible.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx

from vdm_jax.data import dataset_info, eval_iterator, levels_to_unit, train_iterator
from vdm_jax.data import digits as digits_data
from vdm_jax.data.pipeline import InMemorySource
from vdm_jax.data.tfds_utils import data_source
from vdm_jax.evaluation.digits_classifier import train_or_load_digits_classifier
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
    validate_images,
)
from vdm_jax.importers.inception import inception_weights_path, load_inception
from vdm_jax.nn.encoders.inception import (
    InceptionV3,
    preprocess_uint8,
    random_inception,
    spatial_features,
)

if TYPE_CHECKING:  # training imports the evaluation package
    from vdm_jax.checkpoints.restore import Restored

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "IS_SPLITS",
    "PR_K",
    "bpd_metrics",
    "bpd_results_path",
    "build_reference",
    "digits_metrics",
    "evaluate_samples_file",
    "format_table",
    "inception_outputs",
    "iter_reference_images",
    "levels_to_uint8",
    "load_eval_inception",
    "read_sample_settings",
    "reference_images_from_data",
    "results_path",
    "sample_metrics",
    "settings_path",
    "uint8_to_levels",
    "unit_to_levels",
    "unit_to_uint8",
    "write_json_atomic",
    "write_results_json",
]

DEFAULT_BATCH_SIZE = 64
IS_SPLITS = 10  # Inception Score splits (ADM / improved-GAN)
PR_K = 3  # nearest neighbours of improved precision/recall


# --------------------------------------------------------------------------- pixel conventions


def unit_to_levels(x: np.ndarray, num_levels: int) -> np.ndarray:
    """k = clip(round((x + 1)·K/2 − ½), 0, K − 1), int64: the level whose centre is nearest x.

    Exact inverse of x = 2(k + ½)/K − 1 (the pipeline's scaling) for level centres.
    """
    k = np.round((np.asarray(x, np.float64) + 1.0) * (num_levels / 2.0) - 0.5)
    return np.clip(k, 0, num_levels - 1).astype(np.int64)


def levels_to_uint8(levels: np.ndarray, num_levels: int) -> np.ndarray:
    """v = round(k · 255/(K − 1)) as uint8: levels 0..K−1 spread over the full 8-bit range."""
    k = np.asarray(levels)
    if k.size and (k.min() < 0 or k.max() > num_levels - 1):
        raise ValueError(f"levels must lie in [0, {num_levels - 1}], got {k.min()}..{k.max()}")
    return np.round(k * (255.0 / (num_levels - 1))).astype(np.uint8)


def uint8_to_levels(images: np.ndarray, num_levels: int) -> np.ndarray:
    """k = round(v · (K − 1)/255), int64: the inverse of `levels_to_uint8` (nearest level)."""
    return np.round(np.asarray(images, np.float64) * ((num_levels - 1) / 255.0)).astype(np.int64)


def unit_to_uint8(x: np.ndarray, num_levels: int) -> np.ndarray:
    """Model/data images x in [−1, 1] → 8-bit images for `.npz` files (see the module doc)."""
    return levels_to_uint8(unit_to_levels(x, num_levels), num_levels)


# --------------------------------------------------------------------------- Inception features


@functools.partial(jax.jit, static_argnums=0)
def _inception_apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> dict:
    # Module-level jit with the graphdef static: every InceptionV3 instance (random or loaded)
    # shares one compilation per batch shape, where `make_inception_fn` compiles per instance.
    # Only the features the metrics need leave the device: mixed_6 is 887 KB per image.
    out = nnx.merge(graphdef, state)(x)
    return {
        "pool3": out["pool3"],                                    # (B, 2048)
        "logits_unbiased": out["logits_unbiased"],                # (B, 1008)
        "spatial": spatial_features(out["mixed_6"]),              # (B, 2023)
    }


def _inception_batches(
    images: np.ndarray, inception: InceptionV3, batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Outputs of `images` (N, H, W, C) uint8 in blocks of `batch` rows, the last one padded."""
    graphdef, state = nnx.split(inception)
    pending = None  # (device outputs, rows): fetch block i − 1 after dispatching block i
    for i in range(0, len(images), batch):
        block = images[i : i + batch]
        n = len(block)
        # A fixed block shape: a partial last block would compile the network a second time.
        if n < batch:
            block = np.concatenate([block, np.repeat(block[-1:], batch - n, axis=0)])
        # The mode is an argument of preprocess_uint8 now; evaluation keeps pytorch-fid's until
        # it is threaded through (and recorded in the results JSON).
        out = _inception_apply(graphdef, state, preprocess_uint8(block, "pytorch_fid"))
        if pending is not None:
            yield {k: np.asarray(v)[: pending[1]] for k, v in pending[0].items()}
        pending = (out, n)
    if pending is not None:
        yield {k: np.asarray(v)[: pending[1]] for k, v in pending[0].items()}


def inception_outputs(
    images: np.ndarray, inception: InceptionV3, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict[str, np.ndarray]:
    """FID Inception features of uint8 NHWC images (N, H, W, 1|3), in batches under jit.

    Returns float32 arrays {"pool3": (N, 2048), "logits_unbiased": (N, 1008) (pool3 · W, what the
    Inception Score uses), "spatial": (N, 2023) (sFID features)}. Pixels map to 2v/255 − 1 as in
    pytorch-fid; grayscale is repeated to 3 channels; images are resized to 299² on device.
    """
    images = validate_images(images, "images")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chunks = list(_inception_batches(images, inception, min(batch_size, len(images))))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


# --------------------------------------------------------------------------- sample metrics


def sample_metrics(
    samples: SampleBatch | np.ndarray,
    reference: ReferenceBatch,
    inception: InceptionV3,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    k: int = PR_K,
    num_splits: int = IS_SPLITS,
) -> dict[str, Any]:
    """FID, sFID, IS (mean, std), precision and recall of samples against a reference batch.

    `samples`: a SampleBatch or uint8 images (N, H, W, C). Returns floats under "fid", "sfid",
    "inception_score", "inception_score_std", "precision", "recall", plus "precision_recall_k",
    "num_samples", "num_reference_images"; a metric the reference cannot give (sFID without
    mu_s/sigma_s, precision/recall without arr_0) is None, with the reason in
    "unavailable"[name].
    """
    images = samples.images if isinstance(samples, SampleBatch) else samples
    feats = inception_outputs(images, inception, batch_size)
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
        real = inception_outputs(reference.images, inception, batch_size)["pool3"]
        metrics["precision"], metrics["recall"] = precision_recall(real, feats["pool3"], k)
        metrics["num_reference_images"] = len(real)
    else:
        metrics["precision"] = metrics["recall"] = None
        metrics["num_reference_images"] = None
        reason = f"reference {reference.path} has no arr_0 images"
        unavailable["precision"] = unavailable["recall"] = reason
    metrics["unavailable"] = unavailable
    return metrics


# --------------------------------------------------------------------------- reference batches


def build_reference(
    images: np.ndarray | Iterable[np.ndarray],
    inception: InceptionV3,
    path: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_stored_images: int | None = None,
) -> ReferenceBatch:
    """Computes an ADM reference batch from uint8 NHWC images and writes it to `path`.

    `images`: one array (N, H, W, C) or an iterable of such chunks (streamed: statistics are
    accumulated in float64 with `StatsAccumulator`, so N may exceed memory). Stores mu, sigma
    (pool3) and mu_s, sigma_s (spatial) over all N images, and the first `num_stored_images`
    (default: all) images as arr_0 for precision/recall. Returns the batch as `load_reference`
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
        for out in _inception_batches(chunk, inception, batch):
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


# --------------------------------------------------------------------------- digits metrics


def _digits_split(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw levels (N, 8, 8, 1) uint8 in 0..16 and labels (N,) int64 of a digits split."""
    source = InMemorySource(data_source(digits_data.load_builder(data_dir), split))
    return source.images, source.labels.astype(np.int64)


def _check_digit_samples(images: np.ndarray) -> np.ndarray:
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
    images = _check_digit_samples(sample_images)
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


# --------------------------------------------------------------------------- bits/dim


def bpd_metrics(
    restored: Restored, *, passes: int | None = None, batch_size: int | None = None, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, settings) of the held-out bits/dim of a restored run.

    metrics: "bpd" (−ELBO in bits/dim, mean over the evaluation split and `passes` draws of
    (t, ε)), its terms "bpd_prior", "bpd_reconstruction", "bpd_diffusion", "bpd_num_examples",
    and the baselines "bpd_baseline_independent_categorical", "bpd_baseline_uniform". passes and
    batch_size default to the run's config.eval.bpd_passes and config.eval.batch_size.
    settings: {"bpd": {the checkpoint, EMA, split, passes, batch size, seed}}.
    """
    from vdm_jax.evaluation import likelihood  # it imports this module

    config = restored.config
    passes = int(passes if passes is not None else config.eval.bpd_passes)
    batch_size = int(batch_size if batch_size is not None else config.eval.batch_size)
    if passes < 1 or batch_size < 1:
        raise ValueError(f"bpd passes and batch size must be positive, got {passes}, {batch_size}")
    model = restored.model
    bpd = likelihood.evaluate_bpd(model, restored.params, config.data, batch_size=batch_size,
                                  mesh=restored.mesh, seed=seed, passes=passes)
    base = likelihood.pixel_baselines(config.data, model.num_levels)
    metrics = {
        "bpd": bpd["total"], "bpd_prior": bpd["prior"],
        "bpd_reconstruction": bpd["reconstruction"], "bpd_diffusion": bpd["diffusion"],
        "bpd_num_examples": bpd["num_examples"],
        "bpd_baseline_independent_categorical": base["independent_categorical"],
        "bpd_baseline_uniform": base["uniform"],
    }
    settings = {"bpd": {
        "checkpoint_step": int(restored.step), "ema": restored.ema or "none",
        "dataset": config.data.name, "split": "eval", "num_levels": int(model.num_levels),
        "passes": passes, "batch_size": batch_size, "seed": seed,
    }}
    return metrics, settings


def bpd_results_path(workdir: str | os.PathLike, step: int, ema: str | None) -> Path:
    """Default results file of a bits/dim-only evaluation, beside the checkpoints:
    WORKDIR/eval/bpd_step<step>_<ema>.json."""
    return Path(workdir) / "eval" / f"bpd_step{step:08d}_{ema or 'none'}.json"


# --------------------------------------------------------------------------- settings and results


def settings_path(npz_path: str | os.PathLike) -> Path:
    """The settings recorded beside `DIR/NAME.npz`: `DIR/NAME.json` (sample.py writes it for a
    sample batch, build_reference.py for a reference batch)."""
    return Path(npz_path).with_suffix(".json")


def results_path(samples_path: str | os.PathLike) -> Path:
    """Default results file of `DIR/NAME.npz`: `DIR/NAME.metrics.json`."""
    return Path(samples_path).with_suffix(".metrics.json")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_sample_settings(
    samples_path: str | os.PathLike, settings_from: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The sampling settings of a sample batch: `settings_from` if given (must exist), else
    `settings_path(samples_path)` if it exists, else {}."""
    if settings_from is not None:
        path = Path(settings_from)
        if not path.is_file():
            raise FileNotFoundError(f"settings file {path} does not exist")
    else:
        path = settings_path(samples_path)
        if not path.is_file():
            return {}
    return _read_json_object(path, "settings file")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes `obj` as indented JSON via a temporary file and os.replace (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_results_json(
    path: str | os.PathLike, metrics: Mapping[str, Any], settings: Mapping[str, Any]
) -> Path:
    """Writes {"metrics": metrics, "settings": settings} atomically to `path`."""
    return write_json_atomic(path, {"metrics": dict(metrics), "settings": dict(settings)})


# --------------------------------------------------------------------------- whole evaluation


def load_eval_inception(
    weights: str | None, random_seed: int | None = None
) -> tuple[InceptionV3, str]:
    """(model, description) of the FID Inception: random weights when `random_seed` is given
    (tests only: the figures are meaningless), else the file named by `weights` or
    $VDM_JAX_INCEPTION_WEIGHTS (FileNotFoundError saying what to obtain when absent)."""
    if random_seed is not None:
        return random_inception(random_seed), f"random (seed {random_seed}; figures meaningless)"
    path = inception_weights_path(weights)
    return load_inception(path), str(path.resolve())


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
    (default `results_path(samples_path)`). `extra` = (metrics, settings) computed elsewhere
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
        _check_digit_samples(samples.images)  # before minutes of Inception work
    metrics: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if ref_path is not None:
        reference = load_reference(ref_path)
        model, description = inception or load_eval_inception(
            inception_weights, random_inception_seed
        )
        ref_settings = settings_path(ref_path)  # written by launch/build_reference.py
        settings.update(
            reference=str(reference.path.resolve()),
            inception_weights=description,
            inception_score_splits=IS_SPLITS,
            precision_recall_k=PR_K,
        )
        if ref_settings.is_file():
            settings["reference_settings"] = _read_json_object(ref_settings, "reference settings")
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
    path = write_results_json(out if out is not None else results_path(samples_path), metrics,
                              settings)
    return metrics, settings, path


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
