"""DiT^DH: a DiT backbone with a wide, shallow DDT head (Zheng, Xie et al. 2025, "Diffusion
Transformers with Representation Autoencoders", github.com/bytetriper/RAE stage2/models/DDT.py
`DiTwDDTHead`), Flax NNX.

    tokens = patchify(z_t)                                              (B, T, p·p·C)
    t_e = GaussianFourier(t) = MLP([sin 2πtW, cos 2πtW]), W ~ N(0, 1)^256 fixed   (B, D)
    c   = SiLU(t_e + LabelEmbedder(y))                                  (B, D)
    backbone: s = Linear_s(tokens) + sincos_2d → N × Block_D(·, c; RoPE)  (B, T, D)
    head:     s' = Linear(SiLU(t_e + s)) (D → D_h; identity when D = D_h)  (B, T, D_h)
              h = Linear_x(tokens) → M × Block_{D_h}(·, s'; RoPE) → FinalLayer(·, s') → unpatchify

Every block is vdm_jax.nn.blocks's AdaLN-Zero block with LightningDiT's parts as the released
models use them (RAE_BLOCK: RMSNorm with a learned scale, qkv bias, no q/k norm, 2D RoPE on
positions 0..g−1, SwiGLU with biases of width int(2/3 · 4D)); the head's blocks are as wide as
the head (D_h, its own head count) and are modulated token by token by s'. The final layer's
norm is an RMSNorm. The conditioning goes through SiLU twice, as in the reference: c (and the
head's condition) is SiLU(t_e + ·) and every AdaLN Linear reads SiLU(c) again.

Time and prediction are ours (docs/CONVENTIONS.md) and the reference's alike: its Linear path is
z_t = (1 − t) x + t ε (t = 0 data, t = 1 noise) and its network predicts the velocity
u = dz_t/dt = ε − x (model.prediction='flow'), so t enters the Fourier features unchanged.
W (256,) is a fixed random draw stored with the weights (the reference's frozen parameter); it
is a parameter here too, read through stop_gradient, and 1-D, so exempt from weight decay: it
never changes during training.

Sizes (`vdm_jax.nn.registry`, "DiTDH-XL/1" etc.): backbones as DiT's S/B/L/XL, head 2 blocks of
width 2048 with 16 heads (the released configs define S: [384, 2048], [12, 2], [6, 16] and XL:
[1152, 2048], [28, 2], [16, 16]; B and L take DiT's backbones with the same head, as in the
paper). DiT^DH-XL/1 on 16×16×768 latents with 1000 classes has 838,675,796 parameters counted as
the reference's module.parameters() does (tests/test_dit_dh.py), i.e. with W and the sin-cos
position table, which the reference stores as frozen parameters; the paper says 839M.
"""

from __future__ import annotations

import math
from typing import Any, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.nn.blocks import AdaLNBlock, Backbone, BackboneArgs, BlockSpec, num_layers
from vdm_jax.nn.layers import (
    FinalLayer,
    LabelEmbedder,
    dense,
    normal_002,
    per_token,
    rms_norm,
    rope_2d,
    sincos_2d,
)

Array = jax.Array
Dtype = Any

# LightningDiT's block as the released DiT^DH uses it (use_qknorm=False, use_swiglu=True,
# use_rmsnorm=True; qkv and SwiGLU with biases).
RAE_BLOCK = BlockSpec(norm="rms", qk_norm=False, qkv_bias=True, mlp="swiglu", mlp_bias=True)
FOURIER_DIM = 256  # the reference's GaussianFourierEmbedding size


class GaussianFourierEmbedder(nnx.Module):
    """t (B,) → Linear(SiLU(Linear([sin 2πtW, cos 2πtW]))) (B, D); W (256,) a fixed N(0, 1)
    draw (a parameter read through stop_gradient), the Linears N(0, 0.02)."""

    def __init__(self, hidden_size: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.W = nnx.Param(jax.random.normal(rngs.params(), (FOURIER_DIM,), jnp.float32))
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=normal_002)
        self.fc1 = dense(2 * FOURIER_DIM, hidden_size, (None, "embed"), **kw)
        self.fc2 = dense(hidden_size, hidden_size, ("embed", None), **kw)

    def __call__(self, t: Array) -> Array:
        w = jax.lax.stop_gradient(self.W[...])  # (256,) frozen
        arg = jnp.asarray(t, jnp.float32)[:, None] * w[None] * (2 * math.pi)  # (B, 256)
        h = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)  # (B, 512) f32
        return self.fc2(nnx.silu(self.fc1(h)))  # (B, D)


class DiTDH(Backbone):
    """DiT^DH: model(x, t, y) → (B, H, W, C_out) (module docstring).

    x: (B, H, W, C) float NHWC; t: (B,) float in [0, 1] (t = 0 data); y: (B,) int32 labels,
    index num_classes = null class. depth, hidden_size, num_heads: the backbone's;
    head_depth, head_hidden_size, head_num_heads: the DDT head's. return_hidden = i also returns
    the backbone's hidden state after block i (B, T, D) (REPA).
    """

    def __init__(
        self, *, depth: int, head_depth: int, head_hidden_size: int, head_num_heads: int,
        rngs: nnx.Rngs, **args: Unpack[BackboneArgs],
    ):
        super().__init__(RAE_BLOCK, **args)
        p, d, dh, dtype = self.patch_size, self.hidden_size, head_hidden_size, self.dtype
        patch_dim = p * p * self.in_channels
        self.head_hidden_size, self.head_num_heads = head_hidden_size, head_num_heads
        self.x_embedder = dense(patch_dim, dh, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.s_embedder = dense(patch_dim, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.s_projector = (
            dense(d, dh, ("embed", None), dtype=dtype, rngs=rngs) if d != dh else None
        )
        self.t_embedder = GaussianFourierEmbedder(d, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(self.num_classes, d, dtype=dtype, rngs=rngs)
        self.final_layer = FinalLayer(dh, p, self.out_channels, rms_norm(dh, "embed", rngs),
                                      dtype=dtype, rngs=rngs)
        self.blocks = self.make_blocks(depth, rngs)
        self.head_blocks = nnx.List([
            AdaLNBlock(dh, head_num_heads, self.mlp_ratio, RAE_BLOCK, dtype=dtype, rngs=rngs)
            for _ in range(head_depth)
        ])

    def pos_embed(self) -> np.ndarray:
        """Fixed 2D sin-cos position embedding of the backbone (T, D); a constant."""
        return sincos_2d(self.hidden_size, self.grid)

    def _rope(self, width: int, heads: int) -> tuple[Array, Array]:
        cos, sin = rope_2d(self.grid, width // heads)  # (T, Dh) each, positions 0..g−1
        return jnp.asarray(cos), jnp.asarray(sin)

    def __call__(
        self, x: Array, t: Array, y: Array, *, return_hidden: int | None = None
    ) -> Array | tuple[Array, Array]:
        self.check(x, t, y, return_hidden, num_layers(self.blocks))
        tokens = self.tokens(x)  # (B, T, p·p·C)
        t_emb = self.t_embedder(t)  # (B, D)
        c = nnx.silu(t_emb + self.y_embedder(y))  # (B, D)
        s = self.s_embedder(tokens) + self.pos_embed().astype(self.dtype)  # (B, T, D)
        rope = self._rope(self.hidden_size, self.num_heads)
        # The backbone's blocks (scanned and rematerialized as the spec says), split after
        # block return_hidden when asked: s (B, T, D), hidden (B, T, D) or None.
        s, hidden = self.run_with_hidden(self.blocks, s, c, rope, return_hidden)
        s = nnx.silu(per_token(t_emb) + s)  # (B, T, D)
        if self.s_projector is not None:
            s = self.s_projector(s)  # (B, T, D_h)
        h = self.x_embedder(tokens)  # (B, T, D_h)
        rope = self._rope(self.head_hidden_size, self.head_num_heads)
        for block in self.head_blocks:  # 2 wide blocks, always unrolled
            h = block(h, s, rope)  # (B, T, D_h)
        out = self.image(self.final_layer(h, s))  # (B, H, W, C_out) f32
        return out if return_hidden is None else (out, hidden)
