"""The RAE discriminator's weights → vdm_jax.nn.encoders.dino_disc.DinoDiscriminator:

  * the frozen DINO ViT: the DINO release's file (the official config's
    models/discs/dino_vit_small_patch8_224.pth, i.e. dino_deitsmall8_pretrain.pth; `.pth` needs
    torch, the same tensors as `.safetensors` do not): cls_token, pos_embed, patch_embed.proj,
    blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}; `norm.*` and `head.*` are
    not used by the discriminator and ignored. The key bias (middle third of attn.qkv.bias) is
    zeroed, as the official loader does.
  * the trained heads, optionally: a state dict of the official DinoDisc (`heads.{j}.0.0.*`
    Block₁'s spectral conv: weight_orig (O, I, k), weight_u, weight_v, bias; `.0.1.*` its
    BatchNormLocal weight/bias; `.1.fn.0/1.*` the residual block; `.2.*` the output conv), or
    one nested under "disc" / "discriminator" / "model" of a training checkpoint. Without it the
    heads keep their initialization (training from scratch, as the official run).

Conv kernels (k, I, O) ← weight_orig (O, I, k); Linear (I, O) ← (O, I); patch kernel
(p·p·3, D) ← (D, 3, p, p). Width, depth, patch and grid are read from the shapes; heads of the
attention default to width / 64 (DINO's), key depths to the config's (those below the depth).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.importers.common import (
    Tensor,
    assign,
    check_anchors,
    conv_kernel,
    identity,
    linear_kernel,
    read_state_dict,
    weights_at,
)
from vdm_jax.nn.encoders.dino_disc import DinoDiscConfig, DinoDiscriminator

__all__ = ["GET_WEIGHTS", "dino_disc_config_of", "load_dino_discriminator"]

GET_WEIGHTS = (
    "download DINO's ViT-S/8 (https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/"
    "dino_deitsmall8_pretrain.pth, the official RAE's models/discs/dino_vit_small_patch8_224.pth)"
)
_IGNORED = ("norm.", "head.")


def dino_disc_config_of(state: dict[str, Any], *, source: str, num_heads: int | None = None,
                        base: DinoDiscConfig | None = None) -> DinoDiscConfig:
    """The discriminator's config from a DINO state dict's shapes (and `base` for the rest)."""
    base = base or DinoDiscConfig()
    check_anchors(state, ("cls_token", "patch_embed.proj.weight"),
                  f"{source} does not hold a DINO ViT", get=GET_WEIGHTS)
    d, _, p, _ = np.shape(state["patch_embed.proj.weight"])
    n = np.shape(state["pos_embed"])[1] - 1 if "pos_embed" in state else 0
    g = math.isqrt(n)
    if g * g != n or g * p != base.image_size:
        raise ValueError(f"{source}: pos_embed holds {n} patch positions, not the "
                         f"({base.image_size}/{p})² grid of the discriminator's input")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))),
                    default=-1)
    return dataclasses.replace(
        base, embed_dim=int(d), depth=depth, patch_size=int(p),
        num_heads=num_heads or max(int(d) // 64, 1),
        key_depths=tuple(k for k in base.key_depths if k < depth))


def _dino_source_of(cfg: DinoDiscConfig):
    d, p = cfg.embed_dim, cfg.patch_size

    def qkv_bias(a: np.ndarray) -> np.ndarray:
        a = np.array(a, copy=True)
        a[d:2 * d] = 0.0  # the key bias, zeroed as the official DinoDisc does
        return a

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        if path[0] == "patch_embed":
            if path[1] == "kernel":
                return Tensor("patch_embed.proj.weight", (d, 3, p, p),
                              lambda a: conv_kernel(a).reshape(p * p * 3, d))
            return Tensor("patch_embed.proj.bias", shape, identity)
        if path[0] in ("cls_token", "pos_embed"):
            return Tensor(path[0], shape, identity)
        i, module, leaf = path[1], path[2], path[3]
        name = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1",
                "fc2": "mlp.fc2"}.get(module, module)
        full = f"blocks.{i}.{name}.{'bias' if leaf == 'bias' else 'weight'}"
        if leaf == "kernel":
            return Tensor(full, shape[::-1], linear_kernel)
        if module == "qkv" and leaf == "bias":
            return Tensor(full, shape, qkv_bias)
        return Tensor(full, shape, identity)

    return source_of


def _heads_source_of(prefix: str):
    where = {"block": "0.0", "residual": "1.fn.0", "out": "2"}
    norm = {"block": "0.1", "residual": "1.fn.1"}

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        j, part = path[0], path[1]
        if part == "out":
            leaf, base = path[2], f"{prefix}{j}.{where['out']}"
        elif path[2] == "norm":
            return Tensor(f"{prefix}{j}.{norm[part]}.{path[3]}", shape, identity)
        else:
            leaf, base = path[3], f"{prefix}{j}.{where[part]}"
        if leaf == "kernel":
            k, ci, co = shape
            return Tensor(f"{base}.weight_orig", (co, ci, k), lambda a: a.transpose(2, 1, 0))
        name = {"u": "weight_u", "v": "weight_v", "bias": "bias"}[leaf]
        return Tensor(f"{base}.{name}", shape, identity)

    return source_of


def load_dino_discriminator(dino: str | os.PathLike, heads: str | os.PathLike | None = None, *,
                            num_heads: int | None = None, config: DinoDiscConfig | None = None,
                            dtype: Any = jnp.float32, seed: int = 0) -> DinoDiscriminator:
    """The discriminator with the DINO backbone of `dino` and, when given, the heads of
    `heads` (module docstring); otherwise heads initialized from `seed`. Raises
    FileNotFoundError / ValueError (WeightMismatchError listing every misfit)."""
    for p in (dino, heads):
        if p is not None:
            weights_at(p, "discriminator weights file", GET_WEIGHTS, file=True)
    state = read_state_dict(dino)
    cfg = dino_disc_config_of(state, source=str(dino), num_heads=num_heads, base=config)
    head_state = None
    if heads is not None:
        head_state = read_state_dict(heads, nested=("disc", "discriminator", "model"))
        res = head_state.get("heads.0.1.fn.0.weight_orig")
        if res is None:
            raise ValueError(f"{heads} holds no DinoDisc heads (no heads.0.1.fn.0.weight_orig)")
        cfg = dataclasses.replace(cfg, kernel_size=int(np.shape(res)[-1]))
    model = DinoDiscriminator(cfg, dtype=dtype, rngs=nnx.Rngs(seed))
    assign(model.dino, state, _dino_source_of(cfg), source=str(dino),
           what=f"the DINO ViT (width {cfg.embed_dim}, {cfg.depth} blocks, patch "
                f"{cfg.patch_size})", ignore=lambda k: k.startswith(_IGNORED))
    if head_state is not None:
        assign(model.heads, head_state, _heads_source_of("heads."), source=str(heads),
               what=f"{len(model.heads)} DinoDisc heads (kernel {cfg.kernel_size})")
    return model
