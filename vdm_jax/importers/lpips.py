"""LPIPS-VGG weights → vdm_jax.nn.encoders.lpips.LPIPS, from the files users have:

  * the VGG16 backbone: torchvision's ImageNet `vgg16` weights (vgg16-397923af.pth, names
    `features.{i}.weight/bias`, the classifier ignored), or a whole LPIPS state dict (the
    package's LPIPS(net='vgg').state_dict(): `net.slice{s}.{i}.weight/bias`);
  * the linear heads: the `lpips` package's weights/v0.1/vgg.pth (VQGAN's and the official
    RAE's vgg_lpips file has the same layout): `lin{l}.model.1.weight` (1, C, 1, 1)
    (`lin{l}.model.0.weight` when saved without dropout).
`.pth` files need torch; the same tensors in `.safetensors` do not.

Names: net.convs.k (the k-th 3×3 convolution) ← features.{i} with i its position in
vgg16().features (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28); kernel (3, 3, I, O) ←
weight (O, I, 3, 3). lin{l} (C,) ← lin{l}.model.1.weight[0, :, 0, 0].
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from vdm_jax.importers.common import (
    Tensor,
    assign,
    conv_kernel,
    identity,
    read_state_dict,
    weights_at,
)
from vdm_jax.nn.encoders.lpips import LPIPS, VGG16_STAGES, abstract_lpips

__all__ = ["GET_WEIGHTS", "load_lpips", "vgg16_feature_indices"]

GET_WEIGHTS = (
    "pass torchvision's vgg16 ImageNet weights (https://download.pytorch.org/models/"
    "vgg16-397923af.pth) and the lpips package's heads (lpips/weights/v0.1/vgg.pth, "
    "`pip download lpips`), or one LPIPS(net='vgg') state dict holding both"
)


def vgg16_feature_indices() -> list[tuple[int, int]]:
    """(slice s = 1…5 of the lpips package, index i in vgg16().features) per convolution."""
    out, idx = [], 0
    for s, stage in enumerate(VGG16_STAGES):
        if s:
            idx += 1  # max-pool
        for _ in stage:
            out.append((s + 1, idx))
            idx += 2  # conv, ReLU
    return out


def _head(a: np.ndarray) -> np.ndarray:
    return a[0, :, 0, 0]


def load_lpips(vgg: str | os.PathLike, heads: str | os.PathLike | None = None, *,
               dtype: Any = jnp.float32) -> LPIPS:
    """LPIPS-VGG with the backbone from `vgg` and the heads from `heads` (or from `vgg` when it
    is a whole LPIPS state dict). Raises FileNotFoundError for a missing file and ValueError
    (WeightMismatchError) for files that are not these networks, every misfit listed."""
    for p in (vgg, heads):
        if p is not None:
            weights_at(p, "LPIPS weights file", GET_WEIGHTS, file=True)
    state = dict(read_state_dict(vgg, nested=("state_dict",)))
    if heads is not None:
        state.update({k: v for k, v in read_state_dict(heads).items() if k.startswith("lin")})
    whole = any(k.startswith("net.slice") for k in state)
    indices = vgg16_feature_indices()
    # heads saved with dropout (the default) sit at model.1, without it at model.0
    slot = 0 if any(k.startswith("lin") and ".model.0.weight" in k for k in state) else 1

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        if path[0].startswith("lin"):
            return Tensor(f"{path[0]}.model.{slot}.weight", (1, shape[0], 1, 1), _head)
        k, leaf = int(path[2]), path[3]
        s, i = indices[k]
        base = f"net.slice{s}.{i}" if whole else f"features.{i}"
        if leaf == "kernel":
            kh, kw, ci, co = shape
            return Tensor(f"{base}.weight", (co, ci, kh, kw), conv_kernel)
        return Tensor(f"{base}.bias", shape, identity)

    def ignore(name: str) -> bool:  # torchvision's classifier, the package's fixed scaling
        return name.startswith(("classifier.", "scaling_layer."))

    source = str(vgg) + (f" + {heads}" if heads is not None else "")
    return assign(abstract_lpips(dtype=dtype), state, source_of, source=source,
                  what="LPIPS-VGG16 (torchvision vgg16 features + lpips linear heads)",
                  ignore=ignore)
