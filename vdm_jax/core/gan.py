"""The adversarial parts of RAE's decoder training (official `src/disc/gan_loss.py`,
`src/disc/diffaug.py`), pure JAX.

    hinge_d_loss(l_real, l_fake) = ½ (mean relu(1 − l_real) + mean relu(1 + l_fake))
    vanilla_g_loss(l_fake)       = −mean l_fake        (the official "vanilla" G loss)
    adaptive_weight(g_rec, g_gan) = clip(‖g_rec‖ / (‖g_gan‖ + ε), 0, max)  (VQGAN's, on the
                                   gradients of the reconstruction and GAN losses w.r.t. the
                                   decoder's last layer)

DiffAug (StyleGAN-T's, as the official copy): with probability p each of translation, colour and
cutout is applied to the whole batch, with per-example random amounts r ∈ [0, 1)^(7, B):
  translation by round(r·(2Δ + 1)) − Δ pixels, Δ = round(H/8) (resp. W), zero fill;
  colour: x + (r₂ − ½); then (x − mean_c x)·2r₃ + mean_c x (saturation); then
          (x − mean_chw x)(r₄ + ½) + mean_chw x (contrast);
  cutout: a zero square of side round(H·ratio) centred at ⌊r₅(H + 1 − side mod 2)⌋ (ratio 0 in
          the official RAE config: no cutout).
`diffaug_apply` takes the draws explicitly (so it can be checked against the reference with the
same draws); `diffaug` draws them from a key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["adaptive_weight", "diffaug", "diffaug_apply", "hinge_d_loss", "vanilla_g_loss"]

Array = jax.Array


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """½ (E relu(1 − D(x)) + E relu(1 + D(x̂))), a scalar."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                  jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_g_loss(logits_fake: Array) -> Array:
    """−E D(x̂), a scalar."""
    return -jnp.mean(logits_fake)


def adaptive_weight(grad_rec: Array, grad_gan: Array, max_weight: float = 1e4,
                    eps: float = 1e-4) -> Array:
    """VQGAN's λ = ‖∇L_rec‖ / (‖∇L_gan‖ + eps), clipped to [0, max_weight], no gradient (eps
    1e-4 in VQGAN; RAE's `train_stage1.calculate_adaptive_weight` uses 1e-6)."""
    w = jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_gan) + eps)
    return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def diffaug_apply(x: Array, apply: Array, r: Array, cutout: float = 0.0) -> Array:
    """x (B, H, W, C) → augmented x; apply (3,) bool (translation, colour, cutout), r (7, B)
    in [0, 1) (module docstring)."""
    _, h, w, _ = x.shape
    x = x.astype(jnp.float32)

    def translate(x):
        dh, dw = round(h * 0.125), round(w * 0.125)
        th = jnp.floor(r[0] * (2 * dh + 1)).astype(jnp.int32) - dh  # (B,)
        tw = jnp.floor(r[1] * (2 * dw + 1)).astype(jnp.int32) - dw
        gh = jnp.clip(jnp.arange(h)[None] + th[:, None] + 1, 0, h + 1)  # (B, H) padded rows
        gw = jnp.clip(jnp.arange(w)[None] + tw[:, None] + 1, 0, w + 1)  # (B, W)
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero border
        return jax.vmap(lambda im, rows, cols: im[rows][:, cols])(xp, gh, gw)  # (B, H, W, C)

    def colour(x):
        x = x + (r[2] - 0.5)[:, None, None, None]
        m = jnp.mean(x, axis=-1, keepdims=True)
        x = (x - m) * (2.0 * r[3])[:, None, None, None] + m
        m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        return (x - m) * (r[4] + 0.5)[:, None, None, None] + m

    def cut(x):
        ch, cw = round(h * cutout), round(w * cutout)
        if ch == 0 or cw == 0:
            return x
        oh = jnp.floor(r[5] * (h + (1 - ch % 2))).astype(jnp.int32) - ch // 2  # (B,)
        ow = jnp.floor(r[6] * (w + (1 - cw % 2))).astype(jnp.int32) - cw // 2
        rows = jnp.arange(h)[None]
        cols = jnp.arange(w)[None]
        in_h = (rows >= jnp.clip(oh, 0, h - 1)[:, None]) & (
            rows <= jnp.clip(oh + ch - 1, 0, h - 1)[:, None])  # (B, H)
        in_w = (cols >= jnp.clip(ow, 0, w - 1)[:, None]) & (
            cols <= jnp.clip(ow + cw - 1, 0, w - 1)[:, None])  # (B, W)
        mask = 1.0 - (in_h[:, :, None] & in_w[:, None, :]).astype(x.dtype)  # (B, H, W)
        return x * mask[..., None]

    x = jax.lax.cond(apply[0], translate, lambda x: x, x)
    x = jax.lax.cond(apply[1], colour, lambda x: x, x)
    return jax.lax.cond(apply[2], cut, lambda x: x, x)


def diffaug(key: Array, x: Array, prob: float = 1.0, cutout: float = 0.0) -> Array:
    """DiffAug with draws from `key`: each policy with probability `prob`."""
    k1, k2 = jax.random.split(key)
    apply = jax.random.uniform(k1, (3,)) <= prob
    r = jax.random.uniform(k2, (7, x.shape[0]))
    return diffaug_apply(x, apply, r, cutout)
