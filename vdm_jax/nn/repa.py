"""REPA's training-only pieces (Yu et al. 2025, "Representation Alignment for Generation:
Training Diffusion Transformers Is Easier Than You Think", github.com/sihyun-yu/REPA), Flax NNX.

REPA adds to the diffusion loss an alignment of the denoiser's hidden state h_i (after block i,
tokens (B, T, D)) with the features r* (B, T, D_enc) of a frozen encoder applied to the CLEAN
image x of the same example (DINOv2-B patch tokens in the paper):

    L_REPA = λ · (1/T) Σ_n [1 − cos(r*_n, h_φ(h_i)_n)]          per example, then averaged,

h_φ a per-token MLP, Linear(D, 2048) → SiLU → Linear(2048, 2048) → SiLU → Linear(2048, D_enc)
(REPA's `build_mlp`, hidden 2048; DDT uses hidden = D). REPA's loss.py computes the negative
cosine similarity −cos; 1 − cos differs by the constant 1 (the same gradient) and is what DDT
writes; it is 0 for perfect alignment. Only h_φ and the blocks up to i receive its gradient.

Targets (`target_tokens`): DINOv2 patch tokens `x_norm_patchtokens` of the image resized to
14·(gh, gw) so the token grid equals the DiT's (REPA: 224² → 16×16 for 32×32 latents with
patch 2; 448² for 512² images), with REPA's preprocessing (vdm_jax.nn.encoders.dinov2
.preprocess: bicubic resize, ImageNet mean/std; position table resampled once with the 'repa'
rule); or the digits CNN's 4×4 feature grid (vdm_jax.nn.encoders.digits) for the CPU experiment.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.nn.encoders.digits import DigitsCNN
from vdm_jax.nn.encoders.dinov2 import DinoV2, preprocess
from vdm_jax.nn.layers import dense

__all__ = ["ENCODERS", "PROJECTOR_DIM", "RepaProjector", "alignment_loss", "target_tokens"]

Array = jax.Array
Dtype = Any

ENCODERS = ("dinov2", "digits")
PROJECTOR_DIM = 2048  # REPA's projector_dim


class RepaProjector(nnx.Module):
    """h_φ: (B, T, D) → (B, T, D_enc), three Linears with SiLU between (xavier-uniform kernels,
    zero biases, as REPA's SiT initializes every Linear)."""

    def __init__(
        self, hidden_size: int, encoder_dim: int, projector_dim: int = PROJECTOR_DIM, *,
        dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, rngs=rngs)
        # Without a mesh to shard onto: plain arrays that keep their logical-axis metadata.
        eager = jax.sharding.get_abstract_mesh().empty
        with nnx.use_eager_sharding(False) if eager else contextlib.nullcontext():
            self.fc1 = dense(hidden_size, projector_dim, ("embed", "mlp"), **kw)
            self.fc2 = dense(projector_dim, projector_dim, ("mlp", None), **kw)
            self.fc3 = dense(projector_dim, encoder_dim, ("mlp", None), **kw)

    def __call__(self, h: Array) -> Array:
        h = nnx.silu(self.fc1(h))  # (B, T, P)
        h = nnx.silu(self.fc2(h))  # (B, T, P)
        return self.fc3(h).astype(jnp.float32)  # (B, T, D_enc)


def _unit(x: Array) -> Array:
    """x / max(‖x‖, 1e-12) along the last axis (torch.nn.functional.normalize), float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def alignment_loss(projected: Array, target: Array) -> Array:
    """(1/T) Σ_n [1 − cos(target_n, projected_n)] per example: (B, T, D_enc) × 2 → (B,).
    The target carries no gradient."""
    if projected.shape != target.shape:
        raise ValueError(f"REPA: projected hidden states {projected.shape} and target features "
                         f"{target.shape} must have the same (B, T, D_enc) shape; the encoder's "
                         "token grid and width must match the denoiser's grid and the projector.")
    cos = jnp.sum(_unit(projected) * _unit(jax.lax.stop_gradient(target)), axis=-1)  # (B, T)
    return jnp.mean(1.0 - cos, axis=-1)  # (B,)


def target_tokens(encoder: nnx.Module, images: Array, grid: tuple[int, int]) -> Array:
    """Features (B, gh·gw, D_enc) float32 of clean images (B, H, W, C) in [−1, 1] from a frozen
    encoder, on the denoiser's token grid `grid` (module docstring). No gradient."""
    if isinstance(encoder, DinoV2):
        p = encoder.cfg.patch_size
        if images.shape[-1] == 1:  # grey images (the digits) as RGB
            images = jnp.repeat(images, 3, axis=-1)  # (B, H, W, 3)
        x = preprocess(images, (p * grid[0], p * grid[1]))  # (B, 14·gh, 14·gw, 3)
        out = encoder(x)["x_norm_patchtokens"]  # (B, gh·gw, D_enc)
    elif isinstance(encoder, DigitsCNN):
        if tuple(grid) != (4, 4):
            raise ValueError(f"the digits CNN's features form a 4×4 grid; the denoiser's token "
                             f"grid is {tuple(grid)} (use patch size 2 on the 8×8 digits)")
        out = encoder.tokens(images)  # (B, 16, 64)
    else:
        raise ValueError(f"no REPA targets for a {type(encoder).__name__}; expected one of "
                         f"{ENCODERS}")
    return jax.lax.stop_gradient(out.astype(jnp.float32))
