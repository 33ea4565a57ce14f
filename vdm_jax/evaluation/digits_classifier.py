"""The metric network of the embedded digits default: a small CNN on 8×8×1 images in [-1, 1]
(the network is vdm_jax.nn.encoders.digits.DigitsCNN; this module trains and caches it).

Needs no outside weights: trained with optax on the digits training split it is given (a few
seconds on CPU), then cached under `cache_dir` keyed by a hash of the training data and the
training recipe, so it is trained once per workdir. Its penultimate activations (64-d) give a
digits-FID (Fréchet distance of `features`), its argmax the labels for the conditional accuracy
(fraction of class-conditional samples classified as the class they were drawn for).

Images follow the conventions: NHWC float, x = 2(k + ½)/17 − 1 for the 17 grey levels k = 0..16.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vdm_jax.io import write_npz
from vdm_jax.nn.encoders.digits import DigitsCNN, abstract_digits_cnn, from_arrays, to_arrays

__all__ = ["DigitsCNN", "DigitsClassifier", "train_digits_cnn", "train_or_load_digits_classifier"]

_RECIPE = {  # part of the cache key: change any of these and the classifier is retrained
    "version": 2, "feature_dim": 64, "epochs": 40, "batch_size": 64, "lr": 2e-3,
    "weight_decay": 1e-4,
}
_EVAL_BATCH = 512


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:] != (8, 8, 1):
        raise ValueError(f"digits images must have shape (N, 8, 8, 1), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"digits images must be float in [-1, 1] (x = 2(k + ½)/17 − 1), got {images.dtype}"
        )
    return images.astype(np.float32)


def _as_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int32)


def train_digits_cnn(
    images: np.ndarray, labels: np.ndarray, num_classes: int = 10, seed: int = 0
) -> DigitsCNN:
    """Trains a DigitsCNN with AdamW and cross-entropy (40 epochs, batch 64; ~5 s on CPU)."""
    x, y = _as_images(images), _as_labels(labels, len(images), num_classes)
    r = _RECIPE
    # Jitted init: eager per-layer initializers cost seconds on CPU.
    model = nnx.jit(lambda: DigitsCNN(num_classes, r["feature_dim"], rngs=nnx.Rngs(seed)))()
    graphdef, params = nnx.split(model)
    opt = optax.adamw(r["lr"], weight_decay=r["weight_decay"])
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p: nnx.State, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, p)(xb)                         # (B, num_classes)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(p: nnx.State, opt_state: optax.OptState, batch_idx: jax.Array):
        grads = jax.grad(loss_fn)(p, x_dev[batch_idx], y_dev[batch_idx])
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    # A Python loop over a jitted step, not lax.scan: XLA:CPU runs convolutions inside a scan
    # body an order of magnitude slower (~60 s vs ~3 s here).
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(x) // r["batch_size"]
    opt_state = opt.init(params)
    for _ in range(r["epochs"]):
        perm = rng.permutation(len(x))[: steps_per_epoch * r["batch_size"]]
        for batch_idx in perm.reshape(steps_per_epoch, r["batch_size"]):
            params, opt_state = step(params, opt_state, batch_idx)
    return nnx.merge(graphdef, params)


class DigitsClassifier:
    """Batched, jitted `features` (N, 64), `logits` (N, C), `predict` (N,) of a DigitsCNN."""

    def __init__(self, model: DigitsCNN):
        self.model = model
        graphdef, state = nnx.split(model)
        self._state = state

        @jax.jit
        def apply(state: nnx.State, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            m = nnx.merge(graphdef, state)
            feats = m.features(x)
            return feats, m.head(feats)

        self._apply = apply

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _as_images(images)
        feats, logits = [], []
        for i in range(0, len(x), _EVAL_BATCH):
            chunk = x[i : i + _EVAL_BATCH]
            pad = _EVAL_BATCH - len(chunk)  # fixed batch shape → a single compilation
            f, lg = self._apply(self._state, np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0))))
            feats.append(np.asarray(f)[: len(chunk)])
            logits.append(np.asarray(lg)[: len(chunk)])
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate activations (N, 64) of images (N, 8, 8, 1) in [-1, 1] (digits-FID)."""
        return self._run(images)[0]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted class (N,) int64."""
        return self.logits(images).argmax(axis=1).astype(np.int64)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images classified as `labels`: the conditional accuracy of samples."""
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        return float((self.predict(images) == labels).mean())


def _cache_key(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> str:
    h = hashlib.sha256(repr((sorted(_RECIPE.items()), num_classes, seed)).encode())
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def train_or_load_digits_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    cache_dir: str | os.PathLike,
    num_classes: int = 10,
    seed: int = 0,
) -> DigitsClassifier:
    """The digits classifier trained on (train_images (N, 8, 8, 1), train_labels (N,)), cached.

    The parameters live in `cache_dir/digits_classifier-<hash>.npz`, the hash covering the data,
    labels, seed and recipe; an unreadable cache file is retrained over.
    """
    x, y = _as_images(train_images), _as_labels(train_labels, len(train_images), num_classes)
    path = Path(cache_dir) / f"digits_classifier-{_cache_key(x, y, num_classes, seed)}.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
            model = from_arrays(abstract_digits_cnn(num_classes, _RECIPE["feature_dim"]), arrays,
                                str(path))
            return DigitsClassifier(model)
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            warnings.warn(f"ignoring unreadable digits classifier cache {path}: {e}", stacklevel=2)
    model = train_digits_cnn(x, y, num_classes, seed)
    # Atomic: concurrent processes never read a partial file.
    write_npz(path, to_arrays(model))
    return DigitsClassifier(model)
