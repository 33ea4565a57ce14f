"""LPIPS with VGG16 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), Flax NNX, NHWC: the perceptual loss of RAE's decoder training (the official
code's `src/disc/lpips.py`, VQGAN's copy of the `lpips` package's LPIPS(net='vgg')).

    d(x, y) = Σ_l mean_{h,w} Σ_c w_{l,c} · (x̂^l_{hwc} − ŷ^l_{hwc})²,
    x̂^l = f^l(s(x)) / (‖f^l(s(x))‖₂ over channels + 1e-10),

x, y images (B, H, W, 3) in [−1, 1]; s(x) = (x − shift) / scale with shift (−0.030, −0.088,
−0.188), scale (0.458, 0.448, 0.450) (the package's ScalingLayer); f^l the VGG16 features after
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision's vgg16().features, 3×3 convolutions
with padding 1 and ReLU, 2×2 max-pooling between the stages); w_l ≥ 0 the learned linear heads
(1×1 convolutions without bias, `lin0` … `lin4`). Returns (B,) distances.

Weights: vdm_jax.importers.lpips (torchvision's vgg16 weights + the package's vgg.pth heads).
Precision: parameters float32; convolutions in `dtype`; normalization, heads and the distance
in float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["LPIPS", "SCALE", "SHIFT", "VGG16_STAGES", "VGG16Features", "abstract_lpips"]

Array = jax.Array
Dtype = Any

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# VGG16 ("D") stages: the widths of the 3×3 convolutions of each stage; a 2×2 max-pool precedes
# every stage but the first, and LPIPS taps the ReLU output at the end of each stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512),
)
EPS = 1e-10


def _sharding_context() -> contextlib.AbstractContextManager:
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


class VGG16Features(nnx.Module):
    """images (B, H, W, 3) (already scaled) → the 5 stage outputs (B, H/2^l, W/2^l, C_l) f32."""

    def __init__(self, stages=VGG16_STAGES, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.stages = tuple(tuple(s) for s in stages)
        self.dtype = dtype
        convs, cin = [], 3
        for stage in self.stages:
            for cout in stage:
                convs.append(nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                                      param_dtype=jnp.float32, rngs=rngs))
                cin = cout
        self.convs = nnx.List(convs)

    def __call__(self, x: Array) -> list[Array]:
        h, k, taps = x.astype(self.dtype), 0, []
        for i, stage in enumerate(self.stages):
            if i:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))  # (B, H/2^i, W/2^i, C)
            for _ in stage:
                h = jax.nn.relu(self.convs[k](h))  # (B, H/2^i, W/2^i, C_i)
                k += 1
            taps.append(h.astype(jnp.float32))
        return taps


class LPIPS(nnx.Module):
    """lpips(x, y) → (B,) perceptual distances of images in [−1, 1] (module docstring)."""

    def __init__(self, stages=VGG16_STAGES, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        with _sharding_context():
            self.net = VGG16Features(stages, dtype=dtype, rngs=rngs)
        for i, stage in enumerate(self.net.stages):  # lin_i: (C_i,) weights of the 1×1 head
            setattr(self, f"lin{i}", nnx.Param(jnp.full((stage[-1],), 1.0 / stage[-1])))

    def __call__(self, x: Array, y: Array) -> Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS takes two NHWC RGB batches of one shape, got {x.shape} "
                             f"and {y.shape}")
        shift, scale = np.asarray(SHIFT, np.float32), np.asarray(SCALE, np.float32)
        both = jnp.concatenate([x, y]).astype(jnp.float32)  # (2B, H, W, 3)
        feats = self.net((both - shift) / scale)  # 5 × (2B, h, w, C)
        b = x.shape[0]
        total = jnp.zeros((b,), jnp.float32)
        for i, f in enumerate(feats):
            f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)  # unit channels
            d = (f[:b] - f[b:]) ** 2  # (B, h, w, C)
            w = getattr(self, f"lin{i}").get_value()  # (C,)
            total = total + jnp.mean(jnp.einsum("bhwc,c->bhw", d, w), axis=(1, 2))  # (B,)
        return total


def abstract_lpips(*, dtype: Dtype = jnp.float32) -> LPIPS:
    """The model with shape-only variables, to be filled by vdm_jax.importers.lpips."""
    return nnx.eval_shape(lambda: LPIPS(dtype=dtype, rngs=nnx.Rngs(0)))
