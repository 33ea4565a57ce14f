"""Classifier-free guidance (Ho & Salimans 2022): a guided model function from a conditional one.

    p̂_w(z, t) = p̂(z, t, ∅) + w (p̂(z, t, c) − p̂(z, t, ∅))

in the model's own parameterization (every conversion of `core.parameterizations` is affine in
the prediction at fixed (z, t), so this is the same guidance in ε, x, v or u), with the
conditional and null batches run as one 2B pass (`guided_inputs`). AutoGuidance (Karras et al.
2024, `autoguidance`) is the same combination with a weaker guide network in place of the null
class: p̂_guide + w (p̂_main − p̂_guide).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.core.diffusion import expand_to

Array = jax.Array


def classifier_free_guidance(
    model_fn: Callable[..., Array], labels: Array, null_label: int,
    scale: float | Array, interval: tuple[float, float] | None = None, *,
    channels: int | None = None,
) -> Callable[..., Array]:
    """Guided model (z, t, *extra) ↦ p̂(∅) + w (p̂(c) − p̂(∅)) from a conditional
    model_fn(z, t, y, *extra) (extra: e.g. a shared condition of the 2B batch, `guided_inputs`).

    The conditional (y = labels, (B,)) and null (y = null_label) batches run as ONE forward pass
    of size 2B. The combination is in the model's own parameterization; all conversions are
    affine in the prediction at fixed (z, t), so it is the same guidance in ε, x, v or u.
    w = scale for t ∈ [t_lo, t_hi] = interval (Kynkäänniemi et al. 2024) and w = 1 (plain
    conditional) outside; the 2B pass runs at every t, keeping one compiled step. w = 1 is the
    conditional model, w = 0 the unconditional one.
    channels = k guides only the first k channels of the last axis; channels ≥ k (e.g. the 4th
    latent channel and a learned-variance half) are the conditional output. DiT's
    `forward_with_cfg` is channels=3 on its (B, H, W, 8) output. None guides every channel.
    The returned function's attribute `both_halves` gives the pass's (2B, ...) output as
    `forward_with_cfg` returns it (core.adaptive_ode solves that batch, as SiT's ODE does).
    """
    labels = jnp.asarray(labels)
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        raise ValueError(f"channels must be a positive int (or None for all), got {channels!r}.")

    def combine(z: Array, t: Array, *extra: Any) -> tuple[Array, Array, Array]:
        b = z.shape[0]
        out = model_fn(*guided_inputs(z, t, labels, null_label), *extra)
        cond, uncond = out[:b], out[b:]
        w = jnp.broadcast_to(jnp.asarray(scale, out.dtype), t.shape)
        if interval is not None:
            t_lo, t_hi = interval
            w = jnp.where((t >= t_lo) & (t <= t_hi), w, jnp.ones_like(w))
        mixed = uncond + expand_to(w, cond) * (cond - uncond)
        return mixed, cond, uncond

    def guided(z: Array, t: Array, *extra: Any) -> Array:
        mixed, cond, _ = combine(z, t, *extra)
        if channels is None:
            return mixed
        return jnp.concatenate([mixed[..., :channels], cond[..., channels:]], axis=-1)

    def both_halves(z: Array, t: Array, *extra: Any) -> Array:
        """The guided pass's whole (2B, ...) output as DiT's and SiT's `forward_with_cfg` return
        it: the guided channels twice, the unguided ones of the conditional half, then of the
        null half. An adaptive solver that integrates this 2B batch (SiT's ODE does) measures
        its error on both halves."""
        mixed, cond, uncond = combine(z, t, *extra)
        if channels is None:
            return jnp.concatenate([mixed, mixed])
        rest = jnp.concatenate([cond[..., channels:], uncond[..., channels:]])
        return jnp.concatenate([jnp.concatenate([mixed, mixed])[..., :channels], rest], axis=-1)

    guided.both_halves = both_halves
    return guided


def guided_inputs(z: Array, t: Array, labels: Array, null_label: int) -> tuple[Array, Array, Array]:
    """The one 2B batch of classifier-free guidance: ([z; z], [t; t], [labels; ∅])."""
    labels = jnp.asarray(labels)
    y = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
    return jnp.concatenate([z, z]), jnp.concatenate([t, t]), y


def autoguidance(
    model_fn: Callable[[Array, Array, Array], Array],
    guide_fn: Callable[[Array, Array, Array], Array], labels: Array, scale: float | Array,
    interval: tuple[float, float] | None = None, *, channels: int | None = None,
) -> Callable[[Array, Array], Array]:
    """AutoGuidance (Karras et al. 2024): (z, t) ↦ D_guide + w (D_main − D_guide), with
    D_main = model_fn(z, t, labels) and D_guide = guide_fn(z, t, labels), both (B, ...) in the
    same parameterization; w = scale on the interval, 1 (D_main) outside; channels as for CFG.
    It is `classifier_free_guidance` with the guide in the place of the null-class
    pass (whose 2B batch is split: first half to the model, second half to the guide), so
    the two guidance modes share one combination, interval and channel rule."""
    b = labels.shape[0]

    def pair(z2: Array, t2: Array, y2: Array) -> Array:
        main = model_fn(z2[:b], t2[:b], labels)  # (B, ...)
        weak = guide_fn(z2[b:], t2[b:], labels)  # (B, ...): the "unconditional" half
        return jnp.concatenate([main, weak.astype(main.dtype)])  # (2B, ...)

    # The null label is never read: pair() gives both halves the real labels.
    return classifier_free_guidance(pair, labels, 0, scale, interval, channels=channels)
