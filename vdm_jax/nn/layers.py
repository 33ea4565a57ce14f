"""Building blocks shared by the transformer backbones (DiT, JiT, DDT), Flax NNX.

Conventions of every layer here: parameters float32, compute in `dtype` (bfloat16 on
accelerators), normalizations and the timestep frequencies in float32; every kernel carries
logical axis names ('embed', 'mlp', 'heads', 'patch', 'vocab', 'cond') for FSDP
(see vdm_jax.parallel.mesh). Shapes: B batch, T tokens, D width, N heads, Dh head width.

Time: networks take continuous t ∈ [0, 1] (t = 0 data, t = 1 noise; docs/CONVENTIONS.md) and
embed time_scale·t + time_shift, by default 1000·t, so the sinusoid frequencies cover the range
of DiT's integer steps 0..999. Imported checkpoints set the affine map to their own convention
(vdm_jax.importers.dit: official DiT embeds 1000·t − 1, SiT embeds 1 − t).
Labels: int32 in [0, num_classes], index num_classes being the null class of classifier-free
guidance; models hold no rng, label dropout is the pure function `label_dropout`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

Array = jax.Array
Dtype = Any

xavier_uniform = nnx.initializers.xavier_uniform()
zeros_init = nnx.initializers.zeros_init()
normal_002 = nnx.initializers.normal(0.02)

DEFAULT_LABEL_DROPOUT = 0.1  # DiT's class_dropout_prob
TIME_SCALE = 1000.0  # t ∈ [0, 1] → DiT's step range [0, 1000) before the frequency embedding
FREQ_DIM = 256


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


def grid_size(input_size: tuple[int, int] | int, patch_size: int) -> tuple[int, int]:
    """(H, W) → (H/p, W/p), with a clear error when p does not divide H or W."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive, got {(h, w)}.")
    for side, n in (("height", h), ("width", w)):
        if n % patch_size:
            raise ValueError(
                f"Input {side} {n} is not divisible by patch size {patch_size}; "
                f"resize or pad the input to a multiple of {patch_size}."
            )
    return h // patch_size, w // patch_size


def label_dropout(rng: Array, labels: Array, p: float | Array, num_classes: int) -> Array:
    """Classifier-free guidance dropout: each label is replaced by the null class num_classes
    with probability p (p = 0 keeps all, p = 1 drops all; DiT uses DEFAULT_LABEL_DROPOUT = 0.1).
    labels: (B,) int → (B,) int."""
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"Label dropout probability must be in [0, 1], got {p}.")
    drop = jax.random.bernoulli(rng, p, jnp.shape(labels))  # (B,) bool; uniform < p
    return jnp.where(drop, num_classes, labels).astype(jnp.asarray(labels).dtype)


def timestep_embedding(
    t: Array, dim: int = FREQ_DIM, max_period: float = 10_000.0, *,
    scale: float = TIME_SCALE, shift: float = 0.0,
) -> Array:
    """[cos(s·ω_k), sin(s·ω_k)] at s = scale·t + shift, ω_k = max_period^(−k/(dim/2)), k < dim/2
    (GLIDE/DiT). t: (B,) float → (B, dim) float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
    s = scale * jnp.asarray(t, jnp.float32) + shift  # (B,) the argument the weights were trained on
    args = s[:, None] * freqs[None]  # (B, half)
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


def per_token(v: Array) -> Array:
    """A per-sample (B, D) conditioning vector as (B, 1, D); a per-token (B, T, D) one unchanged
    (DDT's decoder is modulated token by token)."""
    return v[:, None, :] if v.ndim == 2 else v


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """x·(1 + scale) + shift. x (B, T, D); shift, scale (B, D) per sample or (B, T, D) per token."""
    return x * (1 + per_token(scale)) + per_token(shift)


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


def check_hidden_index(index: int | None, depth: int) -> None:
    """`return_hidden` must name a block: 1 ≤ index ≤ depth (None: no hidden state)."""
    if index is not None and not (isinstance(index, int) and 1 <= index <= depth):
        raise ValueError(f"return_hidden={index!r}: the hidden state after block i exists for "
                         f"1 <= i <= {depth} (the model's blocks).")


class TimestepEmbedder(nnx.Module):
    """t (B,) → MLP(freq_embed(time_scale·t + time_shift)) (B, D): Linear(256, D) → SiLU →
    Linear(D, D), N(0, 0.02). The affine map of t is static (model spec keys), default 1000·t.

    zero_output: zero-initialize the output Linear, so the embedding starts at exactly 0 (an
    added conditioning input, e.g. MeanFlow's second time, then leaves the model unchanged)."""

    def __init__(
        self, hidden_size: int, *, time_scale: float = TIME_SCALE, time_shift: float = 0.0,
        dtype: Dtype, rngs: nnx.Rngs, zero_output: bool = False,
    ):
        self.time_scale, self.time_shift = float(time_scale), float(time_shift)
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=normal_002)
        self.fc1 = dense(FREQ_DIM, hidden_size, (None, "embed"), **kw)
        if zero_output:
            kw["kernel_init"] = zeros_init
        self.fc2 = dense(hidden_size, hidden_size, ("embed", None), **kw)

    def __call__(self, t: Array) -> Array:
        h = timestep_embedding(t, scale=self.time_scale, shift=self.time_shift)  # (B, 256) f32
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



# ------------------------------------------------------------------------------------------------
# RMSNorm, 2D RoPE and the two MLPs (GELU: DiT; SwiGLU: JiT, DDT)
# ------------------------------------------------------------------------------------------------


def rms_norm(num_features: int, axis_name: str | None, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """x / sqrt(mean(x²) + 1e-6) · scale, scale initialized to 1, computed in float32."""
    return nnx.RMSNorm(
        num_features,
        epsilon=1e-6,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis_name,)),
        rngs=rngs,
    )


def rope_2d(
    grid: tuple[int, int], head_dim: int, num_prefix: int = 0, theta: float = 10_000.0,
    extent: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables (num_prefix + gh·gw, head_dim) of 2D RoPE (EVA-02 / JiT layout).

    Channels [0, head_dim/2) rotate with the row position, [head_dim/2, head_dim) with the
    column position; inside each half, pair k = (2k, 2k+1) turns by angle pos·θ^(−4k/head_dim).
    Positions are the indices 0..g−1 (JiT), or with `extent` g points evenly spread over
    [0, extent] (DDT: extent 16 whatever the grid). Prefix (in-context) tokens get cos = 1,
    sin = 0, i.e. no rotation.
    """
    gh, gw = grid
    half = head_dim // 2
    freqs = 1.0 / theta ** (np.arange(0, half, 2, dtype=np.float64) / half)  # (head_dim/4,)

    def positions(g: int) -> np.ndarray:
        return np.arange(g, dtype=np.float64) if extent is None else np.linspace(0.0, extent, g)

    ang_h = np.repeat(positions(gh)[:, None] * freqs[None], 2, axis=-1)  # (gh, half) paired
    ang_w = np.repeat(positions(gw)[:, None] * freqs[None], 2, axis=-1)  # (gw, half) paired
    ang = np.concatenate(
        [np.broadcast_to(ang_h[:, None], (gh, gw, half)),
         np.broadcast_to(ang_w[None, :], (gh, gw, half))],
        axis=-1,
    ).reshape(gh * gw, head_dim)  # (gh·gw, head_dim), row-major tokens
    cos = np.concatenate([np.ones((num_prefix, head_dim)), np.cos(ang)], axis=0)
    sin = np.concatenate([np.zeros((num_prefix, head_dim)), np.sin(ang)], axis=0)
    return cos.astype(np.float32), sin.astype(np.float32)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x·cos + rot(x)·sin with rot(x)_(2k, 2k+1) = (−x_(2k+1), x_(2k)).
    x (B, T, N, Dh); cos, sin (T, Dh) → (B, T, N, Dh)."""
    pairs = rearrange(x, "... (d r) -> ... d r", r=2)  # (B, T, N, Dh/2, 2)
    rot = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)  # (B, T, N, Dh)
    return x * cos[None, :, None, :] + rot * sin[None, :, None, :]


class Mlp(nnx.Module):
    """Linear(D, M) → GELU(tanh) → Linear(M, D) (timm's Mlp as used by DiT)."""

    def __init__(self, hidden_size: int, mlp_hidden: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = dense(hidden_size, mlp_hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(mlp_hidden, hidden_size, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = nnx.gelu(self.fc1(x), approximate=True)  # (B, T, M)
        return self.fc2(h)  # (B, T, D)


class SwiGLU(nnx.Module):
    """w3(SiLU(x w1) ⊙ x w2), w1 and w2 fused as one Linear(D, 2h), h = int(2/3 · mlp_hidden);
    with biases (JiT) or without (LightningDiT / DDT: use_bias=False)."""

    def __init__(
        self, hidden_size: int, mlp_hidden: int, *, dtype: Dtype, rngs: nnx.Rngs,
        use_bias: bool = True,
    ):
        h = int(mlp_hidden * 2 / 3)
        kw = dict(dtype=dtype, rngs=rngs, use_bias=use_bias)
        self.w12 = dense(hidden_size, 2 * h, ("embed", "mlp"), **kw)
        self.w3 = dense(h, hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        x1, x2 = jnp.split(self.w12(x), 2, axis=-1)  # 2 × (B, T, h)
        return self.w3(nnx.silu(x1) * x2)  # (B, T, D)
