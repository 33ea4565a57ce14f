"""JiT: "Just image Transformer", a pixel-space DiT with large patches (Li & He 2025,
"Back to Basics: Let Denoising Generative Models Denoise", github.com/LTH14/JiT), Flax NNX.

Differences from DiT (dit.py), following the reference model_jit.py (the RoPE attention, RMSNorm
and SwiGLU are the shared layers of vdm_jax.nn.layers):
  - bottleneck patch embedding: p×p stride-p conv to a narrow width b without bias, then a 1×1
    conv (Linear) b → D with bias; both written as Linears on flattened patches;
  - RMSNorm (learned scale, eps 1e-6) instead of affine-free LayerNorm, in float32;
  - attention with RMS-normalized q and k per head (learned scale) and 2D rotary position
    embedding (RoPE): half of each head's channels rotate with the row index, half with the
    column index, in interleaved pairs; the fixed 2D sin-cos embedding is still added to the
    patch tokens, as in the reference;
  - SwiGLU MLP: w3(SiLU(x w1) ⊙ x w2) with hidden width int(2/3 · mlp_ratio · D), with biases;
  - in-context class tokens: from block `in_context_start` on, `in_context_len` copies of the
    label embedding plus a learned position (N(0, 0.02)) are prepended to the sequence; RoPE
    leaves them unrotated; they are dropped before the final layer.
The time embedding, label table, AdaLN-Zero modulation and final layer are DiT's.

Conventions: the reference feeds t with t = 1 at the data; here, like every vdm_jax network,
the model takes our t (t = 0 data, t = 1 noise) and embeds 1000·t. The network does not know
the objective; what its output means (x, ε, v, u) is a config field of the trainer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.nn.layers import (
    AdaLNModulation,
    FinalLayer,
    LabelEmbedder,
    RoPEAttention,
    SwiGLU,
    TimestepEmbedder,
    check_hidden_index,
    check_inputs,
    dense,
    grid_size,
    modulate,
    normal_002,
    patchify,
    rms_norm,
    rope_2d,
    sincos_2d,
    unpatchify,
)

Array = jax.Array
Dtype = Any


class BottleneckPatchEmbed(nnx.Module):
    """(B, T, p·p·C) patches → Linear(p·p·C, b, no bias) → Linear(b, D) → (B, T, D)."""

    def __init__(self, patch_dim: int, bottleneck: int, hidden_size: int, *, dtype, rngs):
        self.proj1 = dense(
            patch_dim, bottleneck, ("patch", None), dtype=dtype, rngs=rngs, use_bias=False
        )
        self.proj2 = dense(bottleneck, hidden_size, (None, "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.proj2(self.proj1(x))  # (B, T, b) → (B, T, D)


class JiTBlock(nnx.Module):
    """DiT's AdaLN-Zero block with RMSNorm, RoPE attention and a SwiGLU MLP."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        self.norm1 = rms_norm(hidden_size, "embed", rngs)
        self.attn = RoPEAttention(hidden_size, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = rms_norm(hidden_size, "embed", rngs)
        self.mlp = SwiGLU(hidden_size, int(hidden_size * mlp_ratio), dtype=dtype, rngs=rngs)
        self.adaLN_modulation = AdaLNModulation(hidden_size, 6, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, c: Array, rope: tuple[Array, Array]) -> Array:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)
        h = modulate(self.norm1(x.astype(jnp.float32)), shift_msa, scale_msa)  # (B, T, D) f32
        x = x + gate_msa[:, None] * self.attn(h.astype(self.dtype), rope)  # (B, T, D)
        h = modulate(self.norm2(x.astype(jnp.float32)), shift_mlp, scale_mlp)  # (B, T, D) f32
        x = x + gate_mlp[:, None] * self.mlp(h.astype(self.dtype))  # (B, T, D)
        return x


class JiT(nnx.Module):
    """Pixel-space JiT: model(x, t, y) → (B, H, W, C_out), C_out = 2C with learn_sigma.

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1]; y: (B,) int32 labels,
    index num_classes = null class. Use `vdm_jax.nn.build_model` to build a registry size.
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
        bottleneck_dim: int = 128,
        in_context_len: int = 32,
        in_context_start: int = 4,
        learn_sigma: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_context_len > 0 and not 0 <= in_context_start < depth:
            raise ValueError(f"in_context_start {in_context_start} must be in [0, {depth}).")
        self.grid = grid_size(input_size, patch_size)
        self.image_size = (self.grid[0] * patch_size, self.grid[1] * patch_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.head_dim = hidden_size // num_heads
        self.in_context_len = in_context_len
        self.in_context_start = in_context_start
        self.dtype = dtype
        p, d = patch_size, hidden_size

        self.x_embedder = BottleneckPatchEmbed(
            p * p * in_channels, bottleneck_dim, d, dtype=dtype, rngs=rngs
        )
        self.t_embedder = TimestepEmbedder(d, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        if in_context_len > 0:
            init = nnx.with_partitioning(normal_002, (None, "embed"))
            self.in_context_posemb = nnx.Param(init(rngs.params(), (in_context_len, d)))
        self.blocks = nnx.List(
            [JiTBlock(d, num_heads, mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(
            d, p, self.out_channels, rms_norm(d, "embed", rngs), dtype=dtype, rngs=rngs
        )

    def pos_embed(self) -> np.ndarray:
        """Fixed 2D sin-cos position embedding (T, D) of the patch tokens; not a parameter."""
        return sincos_2d(self.hidden_size, self.grid)

    def __call__(
        self, x: Array, t: Array, y: Array, *, return_hidden: int | None = None
    ) -> Array | tuple[Array, Array]:
        """The output (B, H, W, C_out); with return_hidden = i also the image tokens' hidden
        state after the first i blocks (B, T, D) (REPA), from the same forward pass."""
        check_inputs(x, t, y, self.image_size, self.in_channels)
        check_hidden_index(return_hidden, len(self.blocks))
        n_ctx = self.in_context_len
        rope_img = tuple(map(jnp.asarray, rope_2d(self.grid, self.head_dim)))  # 2 × (T, Dh)
        rope_ctx = tuple(map(jnp.asarray, rope_2d(self.grid, self.head_dim, n_ctx)))  # (L+T, Dh)

        x = patchify(x, self.patch_size).astype(self.dtype)  # (B, T, p·p·C)
        x = self.x_embedder(x) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        y_emb = self.y_embedder(y)  # (B, D)
        c = self.t_embedder(t) + y_emb  # (B, D)
        for i, block in enumerate(self.blocks):
            if n_ctx > 0 and i == self.in_context_start:
                ctx = y_emb[:, None, :] + self.in_context_posemb[...].astype(self.dtype)  # (B,L,D)
                x = jnp.concatenate([ctx, x], axis=1)  # (B, L + T, D)
            with_ctx = n_ctx > 0 and i >= self.in_context_start
            x = block(x, c, rope_ctx if with_ctx else rope_img)  # (B, [L +] T, D)
            if i + 1 == return_hidden:
                hidden = x[:, n_ctx:] if with_ctx else x  # (B, T, D) image tokens
        x = x[:, n_ctx:] if n_ctx > 0 else x  # (B, T, D)
        x = self.final_layer(x, c)  # (B, T, p·p·C_out) f32
        out = unpatchify(x, self.grid, self.patch_size)  # (B, H, W, C_out) f32
        return out if return_hidden is None else (out, hidden)
