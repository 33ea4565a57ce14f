"""Inception Score, improved precision/recall, sFID.

FID / sFID: `frechet_from_features` (or `frechet_distance` on stored statistics) applied to
pool3 features (B, 2048) and to `inception.spatial_features(mixed_6)` (B, 2023), as ADM does.

Inception Score (Salimans et al. 2016):  IS = exp E_x KL(p(y|x) ‖ p(y)),  p(y) = E_x p(y|x),
averaged over 10 contiguous splits. Class set: all 1008 outputs of the FID Inception, as
improved-GAN's reference code, ADM's evaluator (softmax over `pool3 · W`, no bias) and
torch-fidelity do — not the first 1000. Feed it the model's `logits_unbiased` for ADM numbers.
With 50,000 samples, 10 splits of 5,000 are exactly ADM's `split_size=5000`.

Improved precision and recall (Kynkäänniemi et al. 2019), k = 3: each set's manifold is the union
of balls around its points with radius the distance to the point's k-th nearest neighbour in its
own set (the point itself excluded), precision = fraction of generated points inside the real
manifold, recall = fraction of real points inside the generated manifold. Squared Euclidean
distances, compared as squared, in row blocks so 50k × 50k never materializes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

__all__ = ["inception_score", "knn_radii", "manifold_coverage", "precision_recall"]


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `num_splits` contiguous splits of exp(E KL(p(y|x) ‖ p(y))); logits (N, C).

    Computed in float64 from log-softmax; entries with p = 0 contribute 0 (not NaN as in ADM).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or not np.isfinite(logits).all():
        raise ValueError(f"logits must be a finite (N, C) array, got shape {logits.shape}")
    if logits.shape[0] < num_splits:
        raise ValueError(f"need at least num_splits={num_splits} samples, got {logits.shape[0]}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))   # log p(y|x)  (N, C)
    scores = []
    for part in np.array_split(log_p, num_splits):
        p = np.exp(part)                                          # (n, C)
        log_py = logsumexp(part, axis=0) - np.log(len(part))      # log p(y)   (C,)
        # 0 · log 0 = 0: classes no sample predicts (p(y) underflows to 0) contribute nothing.
        with np.errstate(invalid="ignore"):
            terms = np.where(p > 0, p * (part - log_py), 0.0)      # (n, C)
        kl = terms.sum(axis=1)                                    # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """‖a_i − b_j‖² (n, m) for a (n, D), b (m, D), clamped at 0 against round-off."""
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_smallest(d: jax.Array, k: int) -> jax.Array:
    return -jax.lax.top_k(-d, k + 1)[0][:, k]  # index 0 is the point itself (distance 0)


@jax.jit
def _inside_any(d: jax.Array, radii: jax.Array) -> jax.Array:
    return (d <= radii[None, :]).any(axis=1)


def knn_radii(features: np.ndarray, k: int = 3, max_block_elems: int = 1 << 25) -> np.ndarray:
    """Squared distance (N,) of each point to its k-th nearest neighbour in `features` (N, D)."""
    f = jnp.asarray(features, dtype=jnp.float32)
    n = f.shape[0]
    if n <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {n}")
    step = max(1, max_block_elems // n)  # rows per block of the (rows, N) distance matrix
    out = [_kth_smallest(_sq_dists(f[i : i + step], f), k) for i in range(0, n, step)]
    return np.asarray(jnp.concatenate(out))


def manifold_coverage(
    manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, max_block_elems: int = 1 << 25
) -> float:
    """Fraction of `queries` (M, D) inside ⋃_j ball(manifold_j, radius_j); radii squared (N,)."""
    ref = jnp.asarray(manifold, dtype=jnp.float32)
    r = jnp.asarray(radii, dtype=jnp.float32)
    q = jnp.asarray(queries, dtype=jnp.float32)
    step = max(1, max_block_elems // ref.shape[0])
    hits = [_inside_any(_sq_dists(q[i : i + step], ref), r) for i in range(0, q.shape[0], step)]
    return float(jnp.concatenate(hits).mean())


def precision_recall(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    k: int = 3,
    max_block_elems: int = 1 << 25,
) -> tuple[float, float]:
    """Improved (precision, recall) of generated features (M, D) w.r.t. real features (N, D).

    `max_block_elems` bounds each block of the distance matrix (default 2²⁵ floats = 128 MiB).
    Features are centred on the real mean first: distances are unchanged, and the
    ‖a‖² − 2a·b + ‖b‖² expansion loses less to cancellation in float32.
    """
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D) with equal D, got {real.shape} and {fake.shape}"
        )
    center = real.mean(axis=0)
    real, fake = (real - center).astype(np.float32), (fake - center).astype(np.float32)
    r_real = knn_radii(real, k, max_block_elems)
    r_fake = knn_radii(fake, k, max_block_elems)
    precision = manifold_coverage(real, r_real, fake, max_block_elems)
    recall = manifold_coverage(fake, r_fake, real, max_block_elems)
    return precision, recall
