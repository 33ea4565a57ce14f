"""The RAE decoder's discriminator (official `src/disc/dinodisc.py`, after StyleGAN-T / VAR):
a frozen DINO ViT-S/8 whose token features at several depths feed small trainable 1-D
convolutional heads, in Flax NNX, NHWC.

    images (B, H, W, 3) in [−1, 1]
      → bilinear resize to 224² (PyTorch's, align_corners=False, no antialiasing)
      → ImageNet normalization, written as x · 0.5/σ + (0.5 − μ)/σ
      → patch 8 → [CLS] + 28·28 tokens + learned positions → 12 ViT blocks (pre-norm,
        GELU tanh-approximated as the official MLPNoDrop, LayerNorm ε 1e-6; no final norm)
      → activations a_0 = tokens after the last block, a_1..a_4 = tokens after blocks
        2, 5, 8, 11 (CLS dropped), each (B, L, D)
      → head_j(a_j): Block₁(a) → (Block_ks(·) + ·)/√2 → SpectralConv1d(D → 1, k=1) → (B, L)
      → logits (B, 5·L), heads concatenated in that order

Block_k(a) = LeakyReLU_0.2(BN_local(SpectralConv1d(D → D, kernel k, circular padding)(a))), the
convolution running along the token sequence (row-major, wrapping around). BN_local normalizes
each example's channels over its tokens (the official BatchNormLocal with virtual batch 1),
ε = 1e-6, with a learned affine. SpectralConv1d divides its weight W (as (O, I·k)) by
σ = uᵀ W v, u and v the stored power-iteration vectors (PyTorch's spectral_norm); with
`update=True` (training) one power iteration v ← W̃ᵀu / ‖·‖, u ← W v / ‖·‖ runs first and the
new u, v are stored, as PyTorch does in train mode.

The official loader zeroes the key bias of every block (the middle third of qkv.bias): it does
not change the attention (a per-query constant under the softmax); the importer does the same.
Weights: `vdm_jax.importers.dino_disc`. DiffAug and the GAN losses: `vdm_jax.core.gan`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vdm_jax.nn.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from vdm_jax.nn.layers import dense, patchify

__all__ = [
    "RECIPES",
    "BatchNormLocal",
    "DinoDiscConfig",
    "DinoDiscriminator",
    "DinoViT",
    "SpectralConv1d",
    "SpectralState",
    "bilinear_matrix",
]

Array = jax.Array
Dtype = Any

# the official recipes: (embed dim, depth, heads, patch)
RECIPES = {"S_8": (384, 12, 6, 8), "S_16": (384, 12, 6, 16), "B_16": (768, 12, 12, 16)}
SN_EPS = 1e-12  # torch.nn.utils.spectral_norm's eps
LEAKY_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class DinoDiscConfig:
    """The official discriminator: recipe S_8 (DINO ViT-S/8), key depths (2, 5, 8, 11),
    kernel ks = 9 (configs/stage1/training/DINOv2-B_decXL.yaml), 224² input."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 8
    mlp_ratio: float = 4.0
    image_size: int = 224
    key_depths: tuple[int, ...] = (2, 5, 8, 11)
    kernel_size: int = 9
    norm_eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "key_depths", tuple(int(d) for d in self.key_depths))
        bad = [d for d in self.key_depths if not 0 <= d < self.depth]
        if bad or self.image_size % self.patch_size or self.embed_dim % self.num_heads:
            raise ValueError(f"invalid DinoDiscConfig: key depths {bad} outside 0..{self.depth - 1}"
                             f", or image {self.image_size} / patch {self.patch_size}, width "
                             f"{self.embed_dim} / heads {self.num_heads} not divisible")

    @classmethod
    def for_recipe(cls, recipe: str = "S_8", **overrides) -> DinoDiscConfig:
        if recipe not in RECIPES:
            raise ValueError(f"unknown DINO recipe {recipe!r}: expected one of {sorted(RECIPES)}")
        d, depth, heads, p = RECIPES[recipe]
        return cls(**{**dict(embed_dim=d, depth=depth, num_heads=heads, patch_size=p),
                      **overrides})

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 matrix of PyTorch's F.interpolate(mode='bilinear',
    align_corners=False) along one axis: src = max(s·(i + ½) − ½, 0), s = in/out, linear between
    ⌊src⌋ and min(⌊src⌋ + 1, in − 1)."""
    m = np.zeros((out_size, in_size))
    src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    np.add.at(m, (np.arange(out_size), i0), 1.0 - w1)
    np.add.at(m, (np.arange(out_size), i1), w1)
    return m


def _sharding_context() -> contextlib.AbstractContextManager:
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)


class ViTBlock(nnx.Module):
    """x ← x + proj(MHA(LN₁(x))) with fused qkv; x ← x + fc2(GELU_tanh(fc1(LN₂(x))))."""

    def __init__(self, cfg: DinoDiscConfig, *, dtype: Dtype, rngs: nnx.Rngs):
        d, h = cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio)
        self.num_heads, self.dtype = cfg.num_heads, dtype
        self.norm1 = _layer_norm(d, cfg.norm_eps, rngs)
        self.qkv = dense(d, 3 * d, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.proj = dense(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(d, cfg.norm_eps, rngs)
        self.fc1 = dense(d, h, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(h, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        qkv = self.qkv(self.norm1(x).astype(self.dtype))  # (B, T, 3D)
        q, k, v = rearrange(qkv, "b t (s n h) -> s b t n h", s=3, n=self.num_heads)
        o = jax.nn.dot_product_attention(q, k, v)  # (B, T, N, Dh)
        x = x + self.proj(rearrange(o, "b t n h -> b t (n h)")).astype(jnp.float32)  # (B,T,D)
        h = nnx.gelu(self.fc1(self.norm2(x).astype(self.dtype)), approximate=True)  # (B,T,4D)
        return x + self.fc2(h).astype(jnp.float32)  # (B, T, D) f32


class DinoViT(nnx.Module):
    """The frozen DINO ViT: images (B, H, W, 3) in [−1, 1] → [a_0, a_1, …] (module docstring),
    each (B, L, D) float32, L = (224/p)²."""

    def __init__(self, cfg: DinoDiscConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        d, p, g = cfg.embed_dim, cfg.patch_size, cfg.grid
        self.patch_embed = dense(p * p * 3, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, d)))
        self.pos_embed = nnx.Param(jnp.zeros((1, 1 + g * g, d)))
        self.blocks = nnx.List([ViTBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])

    def __call__(self, images: Array) -> list[Array]:
        cfg, s = self.cfg, self.cfg.image_size
        x = jnp.asarray(images, jnp.float32)
        if x.shape[1:3] != (s, s):
            hp = jax.lax.Precision.HIGHEST  # float32 exact, as PyTorch's CPU resampling
            rh = jnp.asarray(bilinear_matrix(x.shape[1], s), jnp.float32)
            rw = jnp.asarray(bilinear_matrix(x.shape[2], s), jnp.float32)
            x = jnp.einsum("oh,bhwc->bowc", rh, x, precision=hp)  # (B, S, W, 3)
            x = jnp.einsum("pw,bowc->bopc", rw, x, precision=hp)  # (B, S, S, 3)
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
        x = x * (0.5 / std) + (0.5 - mean) / std  # (B, S, S, 3): [−1, 1] → normalized
        tokens = self.patch_embed(patchify(x.astype(self.dtype), cfg.patch_size))  # (B, L, D)
        cls = jnp.broadcast_to(self.cls_token.get_value(), (x.shape[0], 1, cfg.embed_dim))
        h = jnp.concatenate([cls, tokens.astype(jnp.float32)], axis=1)  # (B, 1 + L, D)
        h = h + self.pos_embed.get_value()  # (B, 1 + L, D)
        acts = []
        for i, block in enumerate(self.blocks):
            h = block(h)  # (B, 1 + L, D) f32
            if i in cfg.key_depths:
                acts.append(h[:, 1:])  # (B, L, D)
        return [h[:, 1:], *acts]


class SpectralState(nnx.Variable):
    """Power-iteration vectors u, v of a spectrally normalized weight (not trained)."""


class SpectralConv1d(nnx.Module):
    """Conv1d along tokens with circular padding k//2 and weight W / σ(W) (module docstring).
    x (B, L, Cin) → (B, L, Cout) float32."""

    def __init__(self, cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs):
        self.kernel_size = kernel
        bound = 1.0 / math.sqrt(cin * kernel)  # PyTorch Conv1d's default init
        key = rngs.params()
        self.kernel = nnx.Param(jax.random.uniform(key, (kernel, cin, cout), jnp.float32,
                                                   -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (cout,), jnp.float32,
                                                 -bound, bound))
        u = jax.random.normal(rngs.params(), (cout,))
        v = jax.random.normal(rngs.params(), (cin * kernel,))
        self.u = SpectralState(u / jnp.maximum(jnp.linalg.norm(u), SN_EPS))
        self.v = SpectralState(v / jnp.maximum(jnp.linalg.norm(v), SN_EPS))

    def weight_matrix(self) -> Array:
        """W as PyTorch's (O, I·k) view of its (O, I, k) weight."""
        return rearrange(self.kernel.get_value(), "k i o -> o (i k)")

    def __call__(self, x: Array, *, update: bool = False) -> Array:
        w = self.weight_matrix()  # (O, I·k)
        u, v = self.u.get_value(), self.v.get_value()
        if update:  # one power iteration without gradient, stored (PyTorch train mode)
            ws = jax.lax.stop_gradient(w)
            v = ws.T @ u
            v = v / jnp.maximum(jnp.linalg.norm(v), SN_EPS)
            u = ws @ v
            u = u / jnp.maximum(jnp.linalg.norm(u), SN_EPS)
            self.u.set_value(u)
            self.v.set_value(v)
        sigma = jnp.dot(u, w @ v)  # σ = uᵀ W v
        k = self.kernel_size
        xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)), mode="wrap")  # circular
        y = jax.lax.conv_general_dilated(
            xp, self.kernel.get_value() / sigma, (1,), "VALID",
            dimension_numbers=("NWC", "WIO", "NWC"), precision=jax.lax.Precision.HIGHEST)
        return y + self.bias.get_value()  # (B, L, Cout)


class BatchNormLocal(nnx.Module):
    """Per example and channel over the tokens: (x − mean_L) / sqrt(var_L + ε) · γ + β."""

    def __init__(self, channels: int, eps: float):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))

    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=1, keepdims=True)  # (B, 1, C)
        var = jnp.mean((x - mean) ** 2, axis=1, keepdims=True)  # (B, 1, C), biased
        return (x - mean) / jnp.sqrt(var + self.eps) * self.weight.get_value() + \
            self.bias.get_value()


class ConvBlock(nnx.Module):
    """LeakyReLU_0.2(BN_local(SpectralConv1d(x)))."""

    def __init__(self, channels: int, kernel: int, eps: float, *, rngs: nnx.Rngs):
        self.conv = SpectralConv1d(channels, channels, kernel, rngs=rngs)
        self.norm = BatchNormLocal(channels, eps)

    def __call__(self, x: Array, *, update: bool = False) -> Array:
        return jax.nn.leaky_relu(self.norm(self.conv(x, update=update)), LEAKY_SLOPE)


class DiscHead(nnx.Module):
    """a (B, L, D) → logits (B, L)."""

    def __init__(self, cfg: DinoDiscConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.block = ConvBlock(d, 1, cfg.norm_eps, rngs=rngs)
        self.residual = ConvBlock(d, cfg.kernel_size, cfg.norm_eps, rngs=rngs)
        self.out = SpectralConv1d(d, 1, 1, rngs=rngs)

    def __call__(self, a: Array, *, update: bool = False) -> Array:
        h = self.block(a, update=update)  # (B, L, D)
        h = (self.residual(h, update=update) + h) / math.sqrt(2.0)  # (B, L, D)
        return self.out(h, update=update)[..., 0]  # (B, L)


class DinoDiscriminator(nnx.Module):
    """D(images in [−1, 1]) → logits (B, (1 + len(key_depths))·L). Only `heads` are trained;
    `update=True` runs the spectral norms' power iterations (training steps)."""

    def __init__(self, cfg: DinoDiscConfig | None = None, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        cfg = cfg or DinoDiscConfig()
        self.cfg = cfg
        with _sharding_context():
            self.dino = DinoViT(cfg, dtype=dtype, rngs=rngs)
        self.heads = nnx.List([DiscHead(cfg, rngs=rngs) for _ in range(1 + len(cfg.key_depths))])

    def __call__(self, images: Array, *, update: bool = False) -> Array:
        # no stop_gradient: the generator's adversarial loss needs d logits / d images; the
        # DINO is frozen by leaving its Params out of the optimizer (only `heads` train).
        acts = self.dino(images)  # (1 + K) × (B, L, D)
        logits = [head(a, update=update) for head, a in zip(self.heads, acts, strict=True)]
        return jnp.concatenate(logits, axis=1)  # (B, heads·L)
