"""JiT: "Just image Transformer", a pixel-space DiT with large patches (Li & He 2025,
"Back to Basics: Let Denoising Generative Models Denoise", github.com/LTH14/JiT), Flax NNX.

Differences from DiT (dit.py), following the reference model_jit.py (the block is
vdm_jax.nn.blocks's with JIT_BLOCK parts):
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

import itertools
from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.nn.blocks import JIT_BLOCK, Backbone, BackboneArgs, num_layers
from vdm_jax.nn.layers import (
    LabelEmbedder,
    TimestepEmbedder,
    dense,
    normal_002,
    rms_norm,
    rope_2d,
    sincos_2d,
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


class JiT(Backbone):
    """Pixel-space JiT: model(x, t, y) → (B, H, W, C_out), C_out = 2C with learn_sigma.

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1]; y: (B,) int32 labels,
    index num_classes = null class. Use `vdm_jax.nn.build_model` to build a registry size.
    """

    def __init__(
        self, *, depth: int, bottleneck_dim: int = 128, in_context_len: int = 32,
        in_context_start: int = 4, rngs: nnx.Rngs, **args: Unpack[BackboneArgs],
    ):
        if in_context_len > 0 and not 0 <= in_context_start < depth:
            raise ValueError(f"in_context_start {in_context_start} must be in [0, {depth}).")
        super().__init__(JIT_BLOCK, **args)
        self.in_context_len = in_context_len
        self.in_context_start = in_context_start
        p, d, dtype = self.patch_size, self.hidden_size, self.dtype
        in_channels, num_classes = self.in_channels, self.num_classes

        self.x_embedder = BottleneckPatchEmbed(
            p * p * in_channels, bottleneck_dim, d, dtype=dtype, rngs=rngs
        )
        self.t_embedder = TimestepEmbedder(d, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        if in_context_len > 0:
            init = nnx.with_partitioning(normal_002, (None, "embed"))
            self.in_context_posemb = nnx.Param(init(rngs.params(), (in_context_len, d)))
        self.blocks = self.make_blocks(depth, rngs)
        self.final_layer = self.make_final_layer(rms_norm(d, "embed", rngs), rngs)

    def pos_embed(self) -> np.ndarray:
        """Fixed 2D sin-cos position embedding (T, D) of the patch tokens; not a parameter."""
        return sincos_2d(self.hidden_size, self.grid)

    def __call__(
        self, x: Array, t: Array, y: Array, *, return_hidden: int | None = None
    ) -> Array | tuple[Array, Array]:
        """The output (B, H, W, C_out); with return_hidden = i also the image tokens' hidden
        state after the first i blocks (B, T, D) (REPA), from the same forward pass."""
        depth = num_layers(self.blocks)
        self.check(x, t, y, return_hidden, depth)
        n_ctx = self.in_context_len
        rope_img = tuple(map(jnp.asarray, rope_2d(self.grid, self.head_dim)))  # 2 × (T, Dh)
        rope_ctx = tuple(map(jnp.asarray, rope_2d(self.grid, self.head_dim, n_ctx)))  # (L+T, Dh)

        x = self.tokens(x)  # (B, T, p·p·C)
        x = self.x_embedder(x) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        y_emb = self.y_embedder(y)  # (B, D)
        c = self.t_embedder(t) + y_emb  # (B, D)
        # Runs of blocks between the points where the sequence changes (the class tokens
        # join) or the hidden state is read; a scanned stack splits there.
        start = self.in_context_start if n_ctx > 0 else depth
        bounds = sorted({0, start, depth} | ({return_hidden} if return_hidden else set()))
        for lo, hi in itertools.pairwise(bounds):
            if lo == start:
                ctx = y_emb[:, None, :] + self.in_context_posemb[...].astype(self.dtype)  # (B,L,D)
                x = jnp.concatenate([ctx, x], axis=1)  # (B, L + T, D)
            with_ctx = lo >= start
            x = self.run_blocks(self.blocks, x, c, rope_ctx if with_ctx else rope_img, lo, hi)
            if hi == return_hidden:
                hidden = x[:, n_ctx:] if with_ctx else x  # (B, T, D) image tokens
        x = x[:, n_ctx:] if n_ctx > 0 else x  # (B, T, D)
        x = self.final_layer(x, c)  # (B, T, p·p·C_out) f32
        out = self.image(x)  # (B, H, W, C_out) f32
        return out if return_hidden is None else (out, hidden)
