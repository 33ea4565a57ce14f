"""The digits CNN: a small classifier of 8×8×1 digits in [−1, 1] (x = 2(k + ½)/17 − 1), Flax NNX.

    conv3×3(32) → GELU → conv3×3/2(64) → GELU   = `tokens`: a 4×4 grid of 64-d features
      → flatten → dense(64) → GELU              = `features` (64-d, the digits-FID features)
      → dense(num_classes)                      = logits

The metric network of the digits default (vdm_jax.evaluation.digits_classifier trains and caches
it) and, frozen, REPA's target network of the CPU experiment (benchmarks/repa_digits.py): its
4×4 token grid matches a patch-2 DiT on the 8×8 digits, token for token, as DINOv2's 16×16 grid
at 224² matches a patch-2 DiT on 32×32 latents. `to_arrays` / `from_arrays` are the file layout
(flat 'conv1/kernel'-style keys) that both use.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["FEATURE_DIM", "TOKEN_DIM", "DigitsCNN", "abstract_digits_cnn", "from_arrays",
           "to_arrays"]

FEATURE_DIM = 64  # width of `features`
TOKEN_DIM = 64  # width of `tokens` (conv2's channels)


class DigitsCNN(nnx.Module):
    """conv3×3(32) → conv3×3/2(64) → dense(64) = features → dense(num_classes) = logits."""

    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, TOKEN_DIM, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * TOKEN_DIM, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def feature_map(self, x: jax.Array) -> jax.Array:
        # GELU rather than ReLU so no feature dimension is dead (keeps the covariance full-rank).
        h = nnx.gelu(self.conv1(x))                                 # (B, 8, 8, 32)
        return nnx.gelu(self.conv2(h))                              # (B, 4, 4, 64)

    def tokens(self, x: jax.Array) -> jax.Array:
        """The 4×4 feature grid as tokens in row-major order (B, 16, 64): REPA's targets."""
        h = self.feature_map(x)                                     # (B, 4, 4, 64)
        return h.reshape(h.shape[0], -1, h.shape[-1])               # (B, 16, 64)

    def features(self, x: jax.Array) -> jax.Array:
        h = self.feature_map(x)                                     # (B, 4, 4, 64)
        h = h.reshape(h.shape[0], -1)                               # (B, 1024)
        return nnx.gelu(self.dense(h))                              # (B, feature_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))                          # (B, num_classes)


def abstract_digits_cnn(num_classes: int = 10, feature_dim: int = FEATURE_DIM) -> DigitsCNN:
    """The network with shape-only parameters (fill it with `from_arrays`)."""
    return nnx.eval_shape(lambda: DigitsCNN(num_classes, feature_dim, rngs=nnx.Rngs(0)))


def to_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """{'conv1/kernel': array, ...}: the parameters by flat name (the .npz layout; also that of
    a module holding the CNN, e.g. the digits RAE: 'encoder/conv1/kernel', ...)."""
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}


def from_arrays(model: nnx.Module, arrays: Mapping[str, np.ndarray], source: str) -> nnx.Module:
    """`model` (e.g. `abstract_digits_cnn()`, or any module: the names are its own) with the
    parameters `arrays` of `to_arrays`'s layout. ValueError naming the missing or misshaped
    names (`source`: for the message)."""
    flat = nnx.to_flat_state(nnx.state(model))
    names = ["/".join(map(str, p)) for p, _ in flat]
    missing = [n for n in names if n not in arrays]
    bad = [f"{n} {tuple(np.shape(arrays[n]))} (expected {tuple(v.get_value().shape)})"
           for n, (_, v) in zip(names, flat, strict=True)
           if n in arrays and tuple(np.shape(arrays[n])) != tuple(v.get_value().shape)]
    if missing or bad:
        raise ValueError(f"{source} does not hold a {type(model).__name__} of this shape: "
                         + "; ".join(([f"missing {missing}"] if missing else [])
                                     + ([f"misshaped {bad}"] if bad else [])))
    arrays_in_order = [(p, jnp.asarray(arrays[n])) for n, (p, _) in zip(names, flat, strict=True)]
    nnx.update(model, nnx.from_flat_state(arrays_in_order))
    return model
