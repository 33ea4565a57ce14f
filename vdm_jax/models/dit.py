"""DiT: diffusion transformer with AdaLN-Zero conditioning (Peebles & Xie 2023), Flax NNX.

    x (B,H,W,C) → patchify p×p → Linear → + fixed 2D sin-cos position → N × DiTBlock(·, c)
      → FinalLayer(·, c) → unpatchify → (B,H,W,C) or (B,H,W,2C) with learn_sigma,
    c = TimestepEmbedder(t) + LabelEmbedder(y).

A DiTBlock with c-dependent (shift, scale, gate) from Linear(SiLU(c)) → 6D:
    x ← x + gate_msa · Attn(LN(x)·(1 + scale_msa) + shift_msa)
    x ← x + gate_mlp · MLP(LN(x)·(1 + scale_mlp) + shift_mlp)
AdaLN-Zero initializes the modulation Linear to zero, so every block starts as the identity and
the output (whose final Linear is also zero) starts at exactly 0.

Time: the network takes continuous t ∈ [0, 1] (t = 0 data, t = 1 noise) and embeds 1000·t, so the
sinusoid frequencies cover the same range as DiT's integer steps 0..999. Labels: int32 in
[0, num_classes], index num_classes being the null class used for classifier-free guidance; the
model holds no rng, label dropout is the pure function `label_dropout`.

Precision: parameters float32; matmuls and the residual stream in `dtype` (bfloat16 on
accelerators); LayerNorm/RMSNorm, the timestep frequencies, attention softmax (inside
jax.nn.dot_product_attention) and the final projection in float32.

Sharding: every kernel carries logical axis names via nnx.with_partitioning, read back with
`nnx.get_partition_spec(nnx.state(model))` (see `vdm_jax.models.logical_axes`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vdm_jax.models.configs import grid_size

Array = jax.Array
Dtype = Any

xavier_uniform = nnx.initializers.xavier_uniform()
zeros_init = nnx.initializers.zeros_init()
normal_002 = nnx.initializers.normal(0.02)

DEFAULT_LABEL_DROPOUT = 0.1  # DiT's class_dropout_prob
TIME_SCALE = 1000.0  # t ∈ [0, 1] → DiT's step range [0, 1000) before the frequency embedding
FREQ_DIM = 256


# ------------------------------------------------------------------------------------------------
# Shared building blocks (also used by JiT)
# ------------------------------------------------------------------------------------------------


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
    kernel_init=xavier_uniform,
    use_bias: bool = True,
) -> nnx.Linear:
    """Linear with float32 params, `dtype` compute, logical axes `axes` on the kernel (and
    axes[1] on the bias); xavier-uniform kernel and zero bias by default (DiT's _basic_init)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(kernel_init, axes),
        bias_init=nnx.with_partitioning(zeros_init, (axes[1],)),
        rngs=rngs,
    )


def label_dropout(rng: Array, labels: Array, p: float | Array, num_classes: int) -> Array:
    """Classifier-free guidance dropout: each label is replaced by the null class num_classes
    with probability p (p = 0 keeps all, p = 1 drops all; DiT uses DEFAULT_LABEL_DROPOUT = 0.1).
    labels: (B,) int → (B,) int."""
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"Label dropout probability must be in [0, 1], got {p}.")
    drop = jax.random.bernoulli(rng, p, jnp.shape(labels))  # (B,) bool; uniform < p
    return jnp.where(drop, num_classes, labels).astype(jnp.asarray(labels).dtype)


def timestep_embedding(t: Array, dim: int = FREQ_DIM, max_period: float = 10_000.0) -> Array:
    """[cos(1000·t·ω_k), sin(1000·t·ω_k)], ω_k = max_period^(−k/(dim/2)), k < dim/2 (GLIDE/DiT).
    t: (B,) float → (B, dim) float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
    args = TIME_SCALE * jnp.asarray(t, jnp.float32)[:, None] * freqs[None]  # (B, half)
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # (B, dim)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE 1D embedding: [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(−k/(dim/2)). pos (M,) → (M, dim)."""
    omega = 1.0 / 10_000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (dim/2,)
    out = pos.reshape(-1)[:, None].astype(np.float64) * omega[None]  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """Fixed 2D sin-cos position embedding (MAE/DiT): first half encodes the column (w), second
    half the row (h); tokens in row-major (h, w) order. Works for non-square grids.
    grid (gh, gw) → (gh·gw, dim) float32 numpy constant (not a parameter)."""
    gh, gw = grid
    ww, hh = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    emb = np.concatenate([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], axis=1)
    return emb.astype(np.float32)  # (gh·gw, dim)


def patchify(x: Array, p: int) -> Array:
    """(B, H, W, C) → (B, H/p·W/p, p·p·C), patches in row-major order. A Linear on these patches
    is exactly a p×p, stride-p convolution."""
    return rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)


def unpatchify(x: Array, grid: tuple[int, int], p: int) -> Array:
    """(B, gh·gw, p·p·C) → (B, gh·p, gw·p, C); inverse of `patchify`."""
    return rearrange(x, "b (h w) (p q c) -> b (h p) (w q) c", h=grid[0], w=grid[1], p=p, q=p)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """x·(1 + scale) + shift with per-sample shift/scale. x (B,T,D), shift/scale (B,D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def check_inputs(
    x: Array, t: Array, y: Array, image_size: tuple[int, int], in_channels: int
) -> None:
    """Shape checks with readable errors (shapes are static, so this runs at trace time)."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (B, H, W, C), got shape {x.shape}.")
    if tuple(x.shape[1:3]) != tuple(image_size) or x.shape[3] != in_channels:
        raise ValueError(
            f"x has shape {x.shape} but the model was built for (B, {image_size[0]}, "
            f"{image_size[1]}, {in_channels}); rebuild with the matching input_size/in_channels."
        )
    b = x.shape[0]
    if jnp.shape(t) != (b,) or jnp.shape(y) != (b,):
        raise ValueError(
            f"t and y must have shape ({b},) (continuous time and int labels per image), "
            f"got t {jnp.shape(t)} and y {jnp.shape(y)}."
        )
    if not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        raise ValueError(f"y must be integer class labels, got dtype {jnp.asarray(y).dtype}.")


class TimestepEmbedder(nnx.Module):
    """t (B,) → MLP(freq_embed(1000·t)) (B, D): Linear(256, D) → SiLU → Linear(D, D), N(0, 0.02)."""

    def __init__(self, hidden_size: int, *, dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=normal_002)
        self.fc1 = dense(FREQ_DIM, hidden_size, (None, "embed"), **kw)
        self.fc2 = dense(hidden_size, hidden_size, ("embed", None), **kw)

    def __call__(self, t: Array) -> Array:
        h = timestep_embedding(t)  # (B, 256) float32
        h = nnx.silu(self.fc1(h))  # (B, D)
        return self.fc2(h)  # (B, D)


class LabelEmbedder(nnx.Module):
    """y (B,) int in [0, num_classes] → table[y] (B, D). The table has num_classes + 1 rows, the
    last being the null class; num_classes = 0 is an unconditional model (null row only)."""

    def __init__(self, num_classes: int, hidden_size: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.embedding_table = nnx.Embed(
            num_classes + 1,
            hidden_size,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.with_partitioning(normal_002, ("vocab", "embed")),
            rngs=rngs,
        )

    def __call__(self, y: Array) -> Array:
        return self.embedding_table(y)  # (B, D)


class AdaLNModulation(nnx.Module):
    """c (B, D) → n chunks of (B, D) from Linear(SiLU(c)) → n·D, zero-initialized (AdaLN-Zero)."""

    def __init__(self, hidden_size: int, n: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.n = n
        self.linear = dense(
            hidden_size, n * hidden_size, ("embed", "cond"), dtype=dtype, rngs=rngs,
            kernel_init=zeros_init,
        )

    def __call__(self, c: Array) -> list[Array]:
        return jnp.split(self.linear(nnx.silu(c)), self.n, axis=-1)  # n × (B, D)


def layer_norm(hidden_size: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm without affine parameters, eps 1e-6, computed in float32."""
    return nnx.LayerNorm(
        hidden_size, epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32, rngs=rngs
    )


# ------------------------------------------------------------------------------------------------
# DiT
# ------------------------------------------------------------------------------------------------


class Attention(nnx.Module):
    """Multi-head self-attention, fused qkv with bias (timm's Attention as used by DiT)."""

    def __init__(self, hidden_size: int, num_heads: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = dense(hidden_size, 3 * hidden_size, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.proj = dense(hidden_size, hidden_size, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        qkv = self.qkv(x)  # (B, T, 3D)
        q, k, v = rearrange(qkv, "b t (s n h) -> s b t n h", s=3, n=self.num_heads)  # (B,T,N,Dh)
        # implementation=None: cuDNN flash attention on GPU for bf16, XLA elsewhere; the softmax
        # is float32 in both.
        o = jax.nn.dot_product_attention(q, k, v)  # (B, T, N, Dh)
        return self.proj(rearrange(o, "b t n h -> b t (n h)"))  # (B, T, D)


class Mlp(nnx.Module):
    """Linear(D, M) → GELU(tanh) → Linear(M, D)."""

    def __init__(self, hidden_size: int, mlp_hidden: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = dense(hidden_size, mlp_hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(mlp_hidden, hidden_size, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = nnx.gelu(self.fc1(x), approximate=True)  # (B, T, M)
        return self.fc2(h)  # (B, T, D)


class DiTBlock(nnx.Module):
    """Transformer block with AdaLN-Zero conditioning (see module docstring)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        self.norm1 = layer_norm(hidden_size, rngs)
        self.attn = Attention(hidden_size, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(hidden_size, rngs)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), dtype=dtype, rngs=rngs)
        self.adaLN_modulation = AdaLNModulation(hidden_size, 6, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, c: Array) -> Array:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)
        h = modulate(self.norm1(x.astype(jnp.float32)), shift_msa, scale_msa)  # (B, T, D) f32
        x = x + gate_msa[:, None] * self.attn(h.astype(self.dtype))  # (B, T, D)
        h = modulate(self.norm2(x.astype(jnp.float32)), shift_mlp, scale_mlp)  # (B, T, D) f32
        x = x + gate_mlp[:, None] * self.mlp(h.astype(self.dtype))  # (B, T, D)
        return x


class FinalLayer(nnx.Module):
    """norm → adaLN shift/scale → Linear(D, p·p·C_out), modulation and Linear zero-initialized.
    `norm` is LayerNorm for DiT, RMSNorm for JiT. Runs in float32: it produces the output."""

    def __init__(
        self, hidden_size: int, patch_size: int, out_channels: int, norm: nnx.Module, *,
        dtype: Dtype, rngs: nnx.Rngs,
    ):
        self.norm_final = norm
        self.adaLN_modulation = AdaLNModulation(hidden_size, 2, dtype=dtype, rngs=rngs)
        self.linear = dense(
            hidden_size, patch_size * patch_size * out_channels, ("embed", None),
            dtype=jnp.float32, rngs=rngs, kernel_init=zeros_init,
        )

    def __call__(self, x: Array, c: Array) -> Array:
        shift, scale = self.adaLN_modulation(c)  # 2 × (B, D)
        h = modulate(self.norm_final(x.astype(jnp.float32)), shift, scale)  # (B, T, D) f32
        return self.linear(h)  # (B, T, p·p·C_out) f32


class DiT(nnx.Module):
    """Diffusion transformer: model(x, t, y) → (B, H, W, C_out), C_out = 2C with learn_sigma.

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1]; y: (B,) int32 labels,
    index num_classes = null class. Use `vdm_jax.models.build_model` to build a registry size.
    """

    def __init__(
        self,
        *,
        input_size: tuple[int, int] | int,
        in_channels: int,
        num_classes: int,
        patch_size: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.grid = grid_size(input_size, patch_size)
        self.image_size = (self.grid[0] * patch_size, self.grid[1] * patch_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.dtype = dtype
        p, d = patch_size, hidden_size

        # Patch embedding = p×p stride-p conv, written as a Linear on flattened patches; xavier
        # on the flattened kernel as in DiT's initialize_weights.
        self.x_embedder = dense(p * p * in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.t_embedder = TimestepEmbedder(d, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [DiTBlock(d, num_heads, mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(
            d, p, self.out_channels, layer_norm(d, rngs), dtype=dtype, rngs=rngs
        )

    def pos_embed(self) -> np.ndarray:
        """Fixed 2D sin-cos position embedding (T, D); a constant, not a parameter."""
        return sincos_2d(self.hidden_size, self.grid)

    def __call__(self, x: Array, t: Array, y: Array) -> Array:
        check_inputs(x, t, y, self.image_size, self.in_channels)
        x = patchify(x, self.patch_size).astype(self.dtype)  # (B, T, p·p·C)
        x = self.x_embedder(x) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, T, D)
        x = self.final_layer(x, c)  # (B, T, p·p·C_out) f32
        return unpatchify(x, self.grid, self.patch_size)  # (B, H, W, C_out) f32
