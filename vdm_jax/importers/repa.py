"""REPA's frozen target networks from their weight files (vdm_jax.nn.repa uses them):

    'dinov2'   a released DINOv2 (torch-hub .pth or Hugging Face folder; ViT-B/14 in the paper),
               via vdm_jax.importers.dinov2.load_dinov2 with REPA's position-table rule
    'digits'   the digits CNN (vdm_jax.nn.encoders.digits) saved as .npz in `to_arrays`'s layout
               (benchmarks/repa_digits.py trains the digits classifier and writes it)

Every problem is one ValueError / FileNotFoundError naming the file and what to do.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.importers.common import weights_at
from vdm_jax.importers.dinov2 import load_dinov2, where_to_get
from vdm_jax.nn.encoders.digits import TOKEN_DIM, abstract_digits_cnn, from_arrays
from vdm_jax.nn.encoders.dinov2 import DinoV2Config, abstract_dinov2
from vdm_jax.nn.repa import ENCODERS

__all__ = ["abstract_target_encoder", "load_target_encoder", "target_width"]


def target_width(encoder: str, model: nnx.Module) -> int:
    """Width D_enc of the target tokens of a loaded encoder."""
    return TOKEN_DIM if encoder == "digits" else model.cfg.hidden_size


def load_target_encoder(
    encoder: str, path: str | os.PathLike | None, *, size: str = "", dim: int = 0,
    dtype: Any = jnp.float32,
) -> nnx.Module:
    """The frozen network of `encoder` (one of ENCODERS) with the weights at `path`.

    size: DINOv2 size the weights must have ('vitb14', …; '' = whatever the file holds).
    dim: the target width the run was built for (its projector's output; 0 = not checked).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown REPA encoder {encoder!r}; expected one of {ENCODERS}")
    if not path:
        raise ValueError(f"REPA needs the {encoder} encoder's weights: set repa.encoder_path "
                         f"({_how_to_get(encoder, size)})")
    p = Path(path).expanduser()
    if encoder == "dinov2":
        model = load_dinov2(p, size=size or None, interpolation="repa", dtype=dtype)
    else:
        model = _load_digits(p)
    width = target_width(encoder, model)
    if dim and width != dim:
        raise ValueError(f"{p} holds a {encoder} encoder with {width}-d features, but the run's "
                         f"projector maps to repa.encoder_dim={dim}: pass weights of that width "
                         "or change repa.encoder_dim / repa.encoder_size")
    return model


def _how_to_get(encoder: str, size: str) -> str:
    if encoder == "dinov2":
        return where_to_get(size or "vitb14")
    return ("run `python -m benchmarks.repa_digits`, which trains the digits classifier and "
            "saves it as an .npz, or save a DigitsCNN with vdm_jax.nn.encoders.digits.to_arrays")


def _load_digits(path: Path) -> nnx.Module:
    weights_at(path, "digits CNN weights", _how_to_get("digits", ""), file=True)
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz of digits CNN weights "
                         f"({type(e).__name__}: {e})") from None
    return from_arrays(abstract_digits_cnn(), arrays, str(path))


def abstract_target_encoder(encoder: str, *, size: str = "", dtype: Any = jnp.float32
                            ) -> nnx.Module:
    """`load_target_encoder`'s network with shape-only parameters and no weights file (for
    compiling ahead of time): DINOv2 of `size` at its released pretraining resolution with
    REPA's position-table rule, or the digits CNN."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown REPA encoder {encoder!r}; expected one of {ENCODERS}")
    if encoder == "dinov2":
        cfg = DinoV2Config.for_size(size or "vitb14", interpolation="repa")
        return abstract_dinov2(cfg, dtype=dtype)
    return abstract_digits_cnn()
