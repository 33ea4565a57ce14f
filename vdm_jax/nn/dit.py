"""DiT: diffusion transformer with AdaLN-Zero conditioning (Peebles & Xie 2023), Flax NNX.

    x (B,H,W,C) → patchify p×p → Linear → + fixed 2D sin-cos position → N × DiTBlock(·, c)
      → FinalLayer(·, c) → unpatchify → (B,H,W,C) or (B,H,W,2C) with learn_sigma,
    c = TimestepEmbedder(t) + LabelEmbedder(y) [+ TimestepEmbedder'(t − r) with second_time].

A DiTBlock with c-dependent (shift, scale, gate) from Linear(SiLU(c)) → 6D:
    x ← x + gate_msa · Attn(LN(x)·(1 + scale_msa) + shift_msa)
    x ← x + gate_mlp · MLP(LN(x)·(1 + scale_mlp) + shift_mlp)
AdaLN-Zero initializes the modulation Linear to zero, so every block starts as the identity and
the output (whose final Linear is also zero) starts at exactly 0.

Time: the network takes continuous t ∈ [0, 1] (t = 0 data, t = 1 noise) and embeds
time_scale·t + time_shift, by default 1000·t, so the sinusoid frequencies cover the same range as
DiT's integer steps 0..999; imported checkpoints keep their own map (official DiT: 1000·t − 1, its
0-based step index; SiT: 1 − t, see vdm_jax.importers.dit). Labels: int32 in
[0, num_classes], index num_classes being the null class used for classifier-free guidance; the
model holds no rng, label dropout is the pure function `label_dropout`.

Two times (MeanFlow, Geng et al. 2025): with second_time=True the model is u(z_t, r, t), r ≤ t,
and also embeds the interval h = t − r, the paper's (t, t − r) choice (its Tables 1c and 4), by a
second TimestepEmbedder whose output Linear is zero-initialized: at init a two-time model computes
exactly the one-time model, whatever r. Called without r it takes r = t (h = 0).

Precision: parameters float32; matmuls and the residual stream in `dtype` (bfloat16 on
accelerators); LayerNorm/RMSNorm, the timestep frequencies, attention softmax (inside
jax.nn.dot_product_attention) and the final projection in float32.

Sharding: every kernel carries logical axis names via nnx.with_partitioning, read back with
`nnx.get_partition_spec(nnx.state(model))` (see `vdm_jax.nn.logical_axes`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vdm_jax.nn.layers import (
    TIME_SCALE,
    AdaLNModulation,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    check_hidden_index,
    check_inputs,
    dense,
    grid_size,
    layer_norm,
    modulate,
    patchify,
    sincos_2d,
    unpatchify,
)

Array = jax.Array
Dtype = Any


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


class DiT(nnx.Module):
    """Diffusion transformer: model(x, t, y) → (B, H, W, C_out), C_out = 2C with learn_sigma.

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1]; y: (B,) int32 labels,
    index num_classes = null class; r: (B,) second time r ≤ t, only with second_time (model(x, t,
    y, r=r)). The timestep embedder sees time_scale·t + time_shift (the second one
    time_scale·(t − r)). Use `vdm_jax.nn.registry.build_model` to build a registry size.
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
        second_time: bool = False,
        time_scale: float = TIME_SCALE,
        time_shift: float = 0.0,
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
        self.t_embedder = TimestepEmbedder(
            d, time_scale=time_scale, time_shift=time_shift, dtype=dtype, rngs=rngs
        )
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [DiTBlock(d, num_heads, mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(
            d, p, self.out_channels, layer_norm(d, rngs), dtype=dtype, rngs=rngs
        )
        # Built last so the other weights draw the same random numbers as a one-time model's.
        self.h_embedder = (
            TimestepEmbedder(d, time_scale=time_scale, dtype=dtype, rngs=rngs, zero_output=True)
            if second_time else None
        )

    def pos_embed(self) -> np.ndarray:
        """Fixed 2D sin-cos position embedding (T, D); a constant, not a parameter."""
        return sincos_2d(self.hidden_size, self.grid)

    def __call__(
        self, x: Array, t: Array, y: Array, r: Array | None = None, *,
        return_hidden: int | None = None,
    ) -> Array | tuple[Array, Array]:
        """The output (B, H, W, C_out); with return_hidden = i also the hidden state after the
        first i blocks (B, T, D), 1 ≤ i ≤ depth (REPA's encoder_depth: what it aligns), from
        the same forward pass."""
        check_inputs(x, t, y, self.image_size, self.in_channels)
        check_hidden_index(return_hidden, len(self.blocks))
        if r is not None and self.h_embedder is None:
            raise ValueError("This DiT takes one time; build it with spec 'second_time': True "
                             "to pass a second time r.")
        if r is not None and jnp.shape(r) != jnp.shape(t):
            raise ValueError(f"r must have the shape of t {jnp.shape(t)}, got {jnp.shape(r)}.")
        x = patchify(x, self.patch_size).astype(self.dtype)  # (B, T, p·p·C)
        x = self.x_embedder(x) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        if self.h_embedder is not None:
            h = jnp.zeros_like(t) if r is None else t - r  # (B,) interval h = t − r
            c = c + self.h_embedder(h)  # (B, D)
        hidden = None
        for i, block in enumerate(self.blocks):
            x = block(x, c)  # (B, T, D)
            if i + 1 == return_hidden:
                hidden = x  # (B, T, D) after i + 1 blocks
        x = self.final_layer(x, c)  # (B, T, p·p·C_out) f32
        out = unpatchify(x, self.grid, self.patch_size)  # (B, H, W, C_out) f32
        return out if return_hidden is None else (out, hidden)
