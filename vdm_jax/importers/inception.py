"""Weights of the FID Inception: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` → Flax NNX.

PyTorch state-dict names are the NNX module paths joined by dots, with these leaf renames and
layout changes (NCHW/OIHW → NHWC/HWIO):
    <conv>.conv.weight   (O, I, kh, kw)  → <conv>.conv.kernel   (kh, kw, I, O)
    <conv>.bn.weight / .bias / .running_mean / .running_var
                                         → <conv>.bn.scale / .bias / .mean / .var
    fc.weight            (1008, 2048)    → fc.kernel            (2048, 1008)
    fc.bias              (1008,)         → fc.bias
BatchNorm's `num_batches_tracked` counters carry no weights and are ignored.

The converted file (`save_inception_npz`) stores the Flax arrays keyed by '/'-joined NNX path.
Only `read_pt_state_dict` needs torch, imported there.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from vdm_jax.cli import MissingDependencyError
from vdm_jax.importers.common import (
    Tensor,
    assign,
    conv_kernel,
    identity,
    linear_kernel,
)
from vdm_jax.io import write_npz
from vdm_jax.nn.encoders.inception import InceptionV3, abstract_inception

__all__ = [
    "INCEPTION_ENV_VAR",
    "PTH_FILENAME",
    "PTH_URL",
    "convert_pth_to_npz",
    "inception_weights_path",
    "load_inception",
    "load_inception_npz",
    "load_pt_state_dict",
    "read_pt_state_dict",
    "save_inception_npz",
]

INCEPTION_ENV_VAR = "VDM_JAX_INCEPTION_WEIGHTS"
PTH_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PTH_FILENAME
)
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _source_of_pt(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> Tensor:
    """NNX path + Flax shape → the pytorch-fid tensor (name, PyTorch shape, → Flax map)."""
    *prefix, leaf = path
    module = ".".join(prefix)
    if leaf == "kernel" and len(flax_shape) == 4:  # conv (kh, kw, I, O) ← (O, I, kh, kw)
        kh, kw, ci, co = flax_shape
        return Tensor(f"{module}.weight", (co, ci, kh, kw), conv_kernel)
    if leaf == "kernel":  # fc (I, O) ← (O, I)
        return Tensor(f"{module}.weight", flax_shape[::-1], linear_kernel)
    if prefix[-1] == "bn":
        return Tensor(f"{module}.{_BN_LEAVES[leaf]}", flax_shape, identity)
    return Tensor(f"{module}.{leaf}", flax_shape, identity)  # fc.bias


def _source_of_npz(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> Tensor:
    """A converted `.npz` keys each array by its '/'-joined NNX path, in the Flax layout."""
    return Tensor("/".join(path), flax_shape, identity)


_WHAT = (f"the FID Inception-v3 (pytorch-fid names; expected the state dict of {PTH_FILENAME}, "
         f"{PTH_URL})")


def load_pt_state_dict(
    model: InceptionV3 | None, state_dict: Mapping[str, Any], source: str = "state dict"
) -> InceptionV3:
    """Copies a pytorch-fid FIDInceptionV3 state dict (name → array) into `model` (in place).

    `model=None` loads into a fresh abstract model (no random init). Values may be NumPy arrays
    or anything `np.asarray` accepts. Raises WeightMismatchError (a ValueError) naming every
    missing, misshaped and unexpected tensor; nothing is modified in that case. BatchNorm's
    `num_batches_tracked` counters carry no weights and are ignored.
    """
    model = abstract_inception() if model is None else model
    return assign(model, state_dict, _source_of_pt, source=source, what=_WHAT,
                  ignore=lambda name: name.endswith("num_batches_tracked"))


def read_pt_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch `.pth` state dict into NumPy arrays (needs torch, imported here only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        import torch  # only the .pth reader needs torch
    except ImportError as e:
        raise MissingDependencyError(
            f"reading {path} needs PyTorch (`pip install torch`, the CPU wheel suffices). "
            "Alternatively run `python launch/convert_inception.py --pth IN --out OUT.npz` on a "
            "machine with torch once, and point the flag or $" + INCEPTION_ENV_VAR + " at OUT.npz."
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # junk, truncated, or a pickle of more than tensors
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); expected {PTH_FILENAME}"
                         ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def save_inception_npz(model: InceptionV3, path: str | os.PathLike) -> Path:
    """Writes the model's arrays to `.npz`, keyed by '/'-joined NNX path (Flax layout)."""
    arrays = {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model))
    }
    return write_npz(path, arrays)


def load_inception_npz(path: str | os.PathLike) -> InceptionV3:
    """Loads a model saved by `save_inception_npz`; WeightMismatchError naming any mismatched
    array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path) as npz:
            given = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # junk, text, truncated
        raise ValueError(f"{path} is not a readable .npz of Inception weights (truncated or not "
                         f"an array archive: {type(e).__name__}); write it again with "
                         "launch/convert_inception.py") from None
    return assign(abstract_inception(), given, _source_of_npz, source=str(path), what=_WHAT)


def load_inception(path: str | os.PathLike) -> InceptionV3:
    """The FID Inception from a converted `.npz` or the original pytorch-fid `.pth`."""
    path = Path(path)
    if path.suffix == ".npz":
        return load_inception_npz(path)
    if path.suffix in (".pth", ".pt"):
        return load_pt_state_dict(None, read_pt_state_dict(path), source=str(path))
    raise ValueError(
        f"unknown Inception weight format {path.name!r}: expected {PTH_FILENAME} (.pth) or an .npz"
        " written by launch/convert_inception.py"
    )


def inception_weights_path(flag_value: str | None) -> Path:
    """Path of the FID Inception weights: the flag if given, else $VDM_JAX_INCEPTION_WEIGHTS.

    Raises FileNotFoundError saying what to obtain and where to put it when neither names an
    existing file.
    """
    how = (
        f"FID/sFID/IS/precision-recall need the FID Inception weights: download {PTH_FILENAME} "
        f"from the pytorch-fid GitHub releases ({PTH_URL}), optionally convert it once with "
        "`python launch/convert_inception.py --pth {PTH} --out inception_fid.npz` (torch needed "
        f"only for that), and pass the file with --inception_weights=PATH or set "
        f"{INCEPTION_ENV_VAR}=PATH."
    ).replace("{PTH}", PTH_FILENAME)
    if flag_value:
        origin, value = "--inception_weights", flag_value
    elif os.environ.get(INCEPTION_ENV_VAR):
        origin, value = f"${INCEPTION_ENV_VAR}", os.environ[INCEPTION_ENV_VAR]
    else:
        raise FileNotFoundError(f"no Inception weights given. {how}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{origin} points to {path}, a directory: give the weights file itself "
                         f"({PTH_FILENAME} or a converted .npz)")
    if not path.is_file():
        raise FileNotFoundError(f"{origin} points to {path}, which does not exist. {how}")
    return path


def convert_pth_to_npz(pth: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Reads the pytorch-fid `.pth`, validates it against the model and writes the Flax `.npz`."""
    model = load_pt_state_dict(None, read_pt_state_dict(pth), source=str(pth))
    return save_inception_npz(model, out)
