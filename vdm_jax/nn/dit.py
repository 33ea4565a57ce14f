"""DiT: diffusion transformer with AdaLN-Zero conditioning (Peebles & Xie 2023), Flax NNX.

    x (B,H,W,C) → patchify p×p → Linear → + fixed 2D sin-cos position → N × DiTBlock(·, c)
      → FinalLayer(·, c) → unpatchify → (B,H,W,C) or (B,H,W,2C) with learn_sigma,
    c = TimestepEmbedder(t) + LabelEmbedder(y) [+ TimestepEmbedder'(t − r) with second_time].

A block (vdm_jax.nn.blocks, DIT_BLOCK parts) with c-dependent (shift, scale, gate) from
Linear(SiLU(c)) → 6D:
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

from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.nn.blocks import DIT_BLOCK, Backbone, BackboneArgs, num_layers
from vdm_jax.nn.layers import (
    TIME_SCALE,
    LabelEmbedder,
    TimestepEmbedder,
    dense,
    layer_norm,
    sincos_2d,
)

Array = jax.Array
Dtype = Any


class DiT(Backbone):
    """Diffusion transformer: model(x, t, y) → (B, H, W, C_out), C_out = 2C with learn_sigma.

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1]; y: (B,) int32 labels,
    index num_classes = null class; r: (B,) second time r ≤ t, only with second_time (model(x, t,
    y, r=r)). The timestep embedder sees time_scale·t + time_shift (the second one
    time_scale·(t − r)). Use `vdm_jax.nn.registry.build_model` to build a registry size.
    """

    def __init__(
        self, *, depth: int, second_time: bool = False, time_scale: float = TIME_SCALE,
        time_shift: float = 0.0, rngs: nnx.Rngs, **args: Unpack[BackboneArgs],
    ):
        super().__init__(DIT_BLOCK, **args)
        p, d, dtype = self.patch_size, self.hidden_size, self.dtype
        in_channels, num_classes = self.in_channels, self.num_classes

        # Patch embedding = p×p stride-p conv, written as a Linear on flattened patches; xavier
        # on the flattened kernel as in DiT's initialize_weights.
        self.x_embedder = dense(p * p * in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.t_embedder = TimestepEmbedder(
            d, time_scale=time_scale, time_shift=time_shift, dtype=dtype, rngs=rngs
        )
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        self.blocks = self.make_blocks(depth, rngs)
        self.final_layer = self.make_final_layer(layer_norm(d, rngs), rngs)
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
        self.check(x, t, y, return_hidden, num_layers(self.blocks))
        if r is not None and self.h_embedder is None:
            raise ValueError("This DiT takes one time; build it with spec 'second_time': True "
                             "to pass a second time r.")
        if r is not None and jnp.shape(r) != jnp.shape(t):
            raise ValueError(f"r must have the shape of t {jnp.shape(t)}, got {jnp.shape(r)}.")
        x = self.tokens(x)  # (B, T, p·p·C)
        x = self.x_embedder(x) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        if self.h_embedder is not None:
            h = jnp.zeros_like(t) if r is None else t - r  # (B,) interval h = t − r
            c = c + self.h_embedder(h)  # (B, D)
        x, hidden = self.run_with_hidden(self.blocks, x, c, None, return_hidden)  # 2 × (B,T,D)
        x = self.final_layer(x, c)  # (B, T, p·p·C_out) f32
        out = self.image(x)  # (B, H, W, C_out) f32
        return out if return_hidden is None else (out, hidden)
