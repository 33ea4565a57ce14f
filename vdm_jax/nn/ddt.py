"""DDT: Decoupled Diffusion Transformer (Wang, Tian, Huang & Wang 2025, github.com/MCG-NJU/DDT),
Flax NNX: a condition encoder of many blocks and a velocity decoder of few.

    tokens = patchify(z_t)                                               (B, T, p·p·C)
    encoder:  s = Linear_s(tokens) → N_enc × Block(·, c)                 (B, T, D)
              c = TimestepEmbedder(t) + LabelEmbedder(y)                 (B, D)
              condition s_t = TimestepEmbedder(t) + s                    (B, T, D)
    decoder:  h = Linear_x(tokens) → N_dec × Block(·, s_t) → FinalLayer(·, s_t) → unpatchify

The encoder's output, a self-condition that depends on z_t, replaces the class embedding as the
decoder's AdaLN conditioning, token by token: every decoder block and the final layer take
(shift, scale, gate) from Linear(SiLU(s_t)) per token rather than per sample (the reference
computes SiLU(t + s) once and feeds it to an AdaLN Linear; the same function). The condition
carries the time embedding of the step it was computed at, so reusing it at later sampling steps
(encoder sharing, see `vdm_jax.core.encoder_sharing.SharedEncoder`) reuses exactly what the
reference reuses. REPA aligns the encoder's hidden state after `return_hidden` blocks (the
reference: block 8 of the encoder).

Blocks are LightningDiT's, as the reference's: RMSNorm (learned scale, eps 1e-6) instead of
LayerNorm (the final layer keeps DiT's affine-free LayerNorm), attention with RMS-normalized q
and k and 2D RoPE, fused qkv without bias, SwiGLU MLP without biases (hidden int(2/3 · 4D)),
AdaLN modulation (shift, scale, gate) × 2: vdm_jax.nn.blocks's block with DDT_BLOCK parts.
There is no absolute position embedding: positions enter through RoPE only, at g points evenly
spread over [0, 16] per axis as in the reference (`rope_2d(extent=16)`).

Differences from the reference (none changes what the network can represent):
  - RoPE channel layout: the reference interleaves column and row pairs (pair 2k: column, pair
    2k + 1: row); here the first half of each head rotates with the row, the second with the
    column (JiT's layout) — the same rotations up to a fixed permutation of the head channels;
  - time: like every vdm_jax network, the model takes our t (t = 0 data, t = 1 noise) and
    embeds 1000·t with DiT's frequencies; the reference feeds its own t (t = 1 data) with
    max_period 10 and predicts v = x − ε (ours, with model.prediction='flow': u = ε − x);
  - initialization: DiT's (xavier-uniform Linears, AdaLN-Zero modulations, zero final layer);
    the reference zeroes only the final layer and leaves the blocks at PyTorch's defaults;
  - the learned-σ head (learn_sigma) is available as in DiT; the reference has none.
DDT-XL/2 (22 encoder + 6 decoder blocks, D = 1152, 16 heads, patch 2, 4 latent channels, 1000
classes) has 674,646,352 parameters, as the reference class has; its README says "675M"
(tests/test_ddt.py::test_ddt_xl2_parameter_count).

Precision, as DiT/JiT: parameters float32, matmuls and the residual stream in `dtype`, norms,
RoPE and the final projection in float32.
"""

from __future__ import annotations

from typing import Any, Unpack

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.nn.blocks import DDT_BLOCK, Backbone, BackboneArgs, num_layers
from vdm_jax.nn.layers import (
    LabelEmbedder,
    TimestepEmbedder,
    dense,
    layer_norm,
    per_token,
    rope_2d,
)

Array = jax.Array
Dtype = Any

ROPE_EXTENT = 16.0  # the reference spreads RoPE positions over [0, 16] on every grid


class DDT(Backbone):
    """Decoupled diffusion transformer: model(x, t, y) → (B, H, W, C_out) (module docstring).

    x: (B, H, W, C) float NHWC; t: (B,) float continuous time in [0, 1] (t = 0 data); y: (B,)
    int32 labels, index num_classes = null class. `encode` and `decode` are the two halves
    (model(x, t, y) = decode(x, encode(x, t, y))), which encoder sharing calls separately.
    Use `vdm_jax.nn.registry.build_model` to build a registry size ("DDT-XL/2").
    """

    def __init__(
        self, *, encoder_depth: int, decoder_depth: int, rngs: nnx.Rngs,
        **args: Unpack[BackboneArgs],
    ):
        super().__init__(DDT_BLOCK, **args)
        p, d, dtype = self.patch_size, self.hidden_size, self.dtype
        in_channels, num_classes = self.in_channels, self.num_classes

        # Two patch embeddings (p×p stride-p convs written as Linears): one per half.
        self.s_embedder = dense(p * p * in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.x_embedder = dense(p * p * in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.t_embedder = TimestepEmbedder(d, dtype=dtype, rngs=rngs)
        self.y_embedder = LabelEmbedder(num_classes, d, dtype=dtype, rngs=rngs)
        self.encoder_blocks = self.make_blocks(encoder_depth, rngs)
        self.decoder_blocks = self.make_blocks(decoder_depth, rngs)
        # The reference's final norm is an affine-free LayerNorm, not an RMSNorm.
        self.final_layer = self.make_final_layer(layer_norm(d, rngs), rngs)

    def rope(self) -> tuple[Array, Array]:
        """2D RoPE tables (T, Dh) on the reference's position extent; constants."""
        cos, sin = rope_2d(self.grid, self.head_dim, extent=ROPE_EXTENT)
        return jnp.asarray(cos), jnp.asarray(sin)

    def encode(
        self, x: Array, t: Array, y: Array, *, return_hidden: int | None = None
    ) -> Array | tuple[Array, Array]:
        """The self-condition s_t (B, T, D) of (z_t, t, y); with return_hidden = i also the
        encoder's hidden state after its first i blocks (B, T, D) (REPA)."""
        self.check(x, t, y, return_hidden, num_layers(self.encoder_blocks))
        rope = self.rope()
        tokens = self.tokens(x)  # (B, T, p·p·C)
        s = self.s_embedder(tokens)  # (B, T, D)
        t_emb = self.t_embedder(t)  # (B, D)
        c = t_emb + self.y_embedder(y)  # (B, D)
        s, hidden = self.run_with_hidden(self.encoder_blocks, s, c, rope, return_hidden)  # (B,T,D)
        cond = per_token(t_emb) + s  # (B, T, D): the decoder's per-token conditioning
        return cond if return_hidden is None else (cond, hidden)

    def decode(self, x: Array, cond: Array) -> Array:
        """The output (B, H, W, C_out) for z_t = x under the self-condition cond (B, T, D)."""
        rope = self.rope()
        tokens = self.tokens(x)  # (B, T, p·p·C)
        h = self.x_embedder(tokens)  # (B, T, D)
        cond = cond.astype(self.dtype)  # (B, T, D)
        h = self.run_blocks(self.decoder_blocks, h, cond, rope)  # (B, T, D)
        h = self.final_layer(h, cond)  # (B, T, p·p·C_out) f32
        return self.image(h)  # (B, H, W, C_out) f32

    def __call__(
        self, x: Array, t: Array, y: Array, *, return_hidden: int | None = None
    ) -> Array | tuple[Array, Array]:
        """decode(x, encode(x, t, y)): (B, H, W, C_out), and with return_hidden = i the
        encoder's hidden state after block i (B, T, D), from the same forward pass."""
        if return_hidden is None:
            return self.decode(x, self.encode(x, t, y))
        cond, hidden = self.encode(x, t, y, return_hidden=return_hidden)
        return self.decode(x, cond), hidden
