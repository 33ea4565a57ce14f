"""What every importer of released weights shares: reading a state dict, mapping it onto an NNX
module tensor by tensor, and one message for everything that does not fit.

A *state dict* here is a flat {name: np.ndarray} in the source's own names and layouts (PyTorch:
`Linear.weight` (O, I), `Conv2d.weight` (O, I, kh, kw), NCHW). An importer supplies one function

    source_of(path, flax_shape) -> Tensor(name, source_shape, to_flax)

giving, for each NNX variable (its path as a tuple of strings and its shape), the source tensor's
name, the shape it must have there, and the function taking the source array to the Flax layout
(several variables may read slices of one tensor, e.g. a fused qkv projection).
`assign` then checks the whole state dict first — every missing, misshaped and unexpected tensor
is listed in one `WeightMismatchError` — and only then writes the arrays into the module.

Bad input is said once, the same way by every importer: `weights_at` — nothing at the path
(FileNotFoundError saying what to download); `check_anchors` — a file that is not the expected
model (its identifying tensors missing, what it holds instead).

Formats: `.safetensors` are read with the safetensors package's NumPy API (no torch); `.bin`,
`.pt`, `.pth` and `.ckpt` are torch pickles and need torch, an optional dependency
(`pip install torch`; the CPU wheel suffices), imported only here and only for those files.
Pickles are always loaded with `weights_only=True` (tensors and plain containers only, never
code); a caller that expects one more plain class in a file (argparse.Namespace in a DiT
train.py checkpoint) allows exactly that class through `safe_globals`. `save_state_dict`
writes the other way (an exporter's state dict to `.safetensors`, or with torch to `.pt`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.io import atomic_write

__all__ = [
    "TORCH_SUFFIXES",
    "MissingDependencyError",
    "Tensor",
    "WeightMismatchError",
    "assign",
    "check_anchors",
    "conv_kernel",
    "file_sha256",
    "flat_variables",
    "identity",
    "linear_kernel",
    "read_checkpoint",
    "read_state_dict",
    "save_state_dict",
    "strip_prefix",
    "tensor_names",
    "weights_at",
]

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_LISTED = 12  # names listed per kind of mismatch; the count is always given


class WeightMismatchError(ValueError):
    """A state dict that does not fit the module: names every missing, misshaped and unexpected
    tensor (a ValueError, so the launch scripts report it as bad input, exit 2)."""


class MissingDependencyError(ValueError):
    """Reading this file needs an optional package (torch) that is not installed."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """Where an NNX variable comes from: the source tensor's `name`, the `shape` it has there,
    and `to_flax`, the map from the source array to the NNX variable's layout."""

    name: str
    shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
    return a


def linear_kernel(a: np.ndarray) -> np.ndarray:
    """PyTorch Linear.weight (O, I) → Flax kernel (I, O)."""
    return a.T


def conv_kernel(a: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d.weight (O, I, kh, kw) → Flax kernel (kh, kw, I, O)."""
    return a.transpose(2, 3, 1, 0)


def flat_variables(module: nnx.Module) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(path, shape) of every variable of `module` (abstract or concrete), in NNX order."""
    return [
        (tuple(str(k) for k in path), tuple(var.get_value().shape))
        for path, var in nnx.to_flat_state(nnx.state(module))
    ]


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors under `prefix` (e.g. 'first_stage_model.') with it removed; all of them
    unchanged if none carries it."""
    if not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def weights_at(path: str | os.PathLike, what: str, get: str, *, file: bool = False) -> Path:
    """`path` (~ expanded) when something is there (a file, with `file`); otherwise
    FileNotFoundError "no {what} at {path}: {get}", `get` saying what to download."""
    p = Path(path).expanduser()
    if not (p.is_file() if file else p.exists()):
        raise FileNotFoundError(f"no {what} at {p}: {get}")
    return p


def tensor_names(state: Mapping[str, Any], n: int = 6) -> str:
    """'N tensors (a, b, …)': the count and the first `n` names, sorted, of what a file holds
    (for the message on a file that is not the expected model)."""
    names = ", ".join(sorted(state)[:n]) + (", ..." if len(state) > n else "")
    return f"{len(state)} tensor{'' if len(state) == 1 else 's'} ({names or 'none'})"


def check_anchors(
    state: Mapping[str, Any],
    anchors: Iterable[str],
    not_it: str,
    *,
    get: str = "",
    error: type[ValueError] = ValueError,
) -> None:
    """Raises `error` when `state` lacks any of `anchors`, the tensors that identify the
    expected model: "{not_it}: missing a, b; found N tensors (…)", then "; {get}" (what to
    download) when given."""
    missing = [k for k in anchors if k not in state]
    if missing:
        raise error(f"{not_it}: missing {', '.join(missing)}; found {tensor_names(state)}"
                    + (f"; {get}" if get else "."))


def _block(title: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:MAX_LISTED]) + more


def assign(
    module: nnx.Module,
    state_dict: Mapping[str, Any],
    source_of: Callable[[tuple[str, ...], tuple[int, ...]], Tensor],
    *,
    source: str,
    what: str,
    ignore: Callable[[str], bool] = lambda name: False,
    dtype: Any = jnp.float32,
) -> nnx.Module:
    """Writes `state_dict` into `module` (in place; an abstract module from `nnx.eval_shape`
    works and is filled) through `source_of` (module docstring) and returns it.

    `source` names the file in messages, `what` the expected model (e.g. "the SD-VAE
    AutoencoderKL (diffusers names)"); tensors for which `ignore(name)` holds are skipped
    (e.g. BatchNorm's num_batches_tracked). Raises WeightMismatchError listing every missing,
    misshaped and unexpected tensor before anything is written.
    """
    given = {k: v for k, v in state_dict.items() if not ignore(k)}
    arrays: list[tuple[tuple[Any, ...], Any]] = []
    missing, misshaped, used = [], [], set()
    for key, var in nnx.to_flat_state(nnx.state(module)):
        # source_of sees string paths; the update needs the original keys (ints in nnx.List).
        path, flax_shape = tuple(str(k) for k in key), tuple(var.get_value().shape)
        t = source_of(path, flax_shape)
        first_use = t.name not in used  # a tensor feeding several variables is listed once
        used.add(t.name)
        if t.name not in given:
            if first_use:
                missing.append(f"{t.name} {tuple(t.shape)}")
            continue
        value = np.asarray(given[t.name])
        if tuple(value.shape) != tuple(t.shape):
            if first_use:
                misshaped.append(f"{t.name}: got {tuple(value.shape)}, expected {tuple(t.shape)}")
            continue
        arrays.append((key, jnp.asarray(t.to_flax(value), dtype=dtype)))
    unexpected = sorted(k for k in given if k not in used)
    if missing or misshaped or unexpected:
        msg = f"weights from {source} do not match {what}:"
        if missing:
            msg += _block("missing tensors", missing)
        if misshaped:
            msg += _block("misshaped tensors", misshaped)
        if unexpected:
            msg += _block("unexpected tensors", unexpected)
        raise WeightMismatchError(msg)
    nnx.update(module, nnx.from_flat_state(arrays))
    return module


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .safetensors file: {e}") from None


def _import_torch(path: Path, doing: str = "reading") -> Any:
    try:
        import torch  # optional: only torch pickles need it
    except ImportError:
        raise MissingDependencyError(
            f"{doing} {path} needs PyTorch, which is not installed: `pip install torch` (the CPU "
            "wheel suffices), or use a .safetensors file, which needs no torch."
        ) from None
    return torch


def _read_torch(path: Path, safe_globals: Iterable[type] = ()) -> Any:
    torch = _import_torch(path)
    allowed = list(safe_globals)
    try:
        # weights_only=True: tensors and plain containers only, plus the `allowed` classes; a
        # pickle naming anything else is refused, never executed.
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            torch.serialization.add_safe_globals(allowed)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign pickle
        refused = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise ValueError(
                f"{path} holds Python objects that a weights-only load refuses "
                f"({refused[0].split(' was not')[0]}); vdm_jax does not unpickle arbitrary "
                "objects (they can run code). Save the tensors alone (torch.save(model."
                "state_dict(), ...) or a .safetensors file) and import that."
            ) from None
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {e}") from None

    def to_numpy(tree: Any) -> Any:
        if hasattr(tree, "detach"):
            t = tree.detach().cpu()
            return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        if isinstance(tree, Mapping):
            return {k: to_numpy(v) for k, v in tree.items()}
        return tree

    return to_numpy(obj)


def read_checkpoint(path: str | os.PathLike, *, safe_globals: Iterable[type] = ()) -> Any:
    """Everything a weights file holds, tensors as NumPy arrays: a flat state dict for
    `.safetensors`; for a torch pickle whatever was saved (e.g. DiT train.py's {"model": ...,
    "ema": ..., "opt": ..., "args": Namespace}), loaded weights-only with the classes in
    `safe_globals` allowed as well. Raises FileNotFoundError for a missing file, ValueError for
    an unreadable one, MissingDependencyError for a torch pickle without torch."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path, safe_globals)
    raise ValueError(
        f"unknown weights format {path.name!r}: expected .safetensors or a torch pickle "
        f"({', '.join(TORCH_SUFFIXES)})"
    )


def read_state_dict(path: str | os.PathLike, *, nested: Iterable[str] = ()) -> dict[str, Any]:
    """The tensors of a weights file as NumPy arrays, by suffix: `.safetensors` without torch,
    `.bin` / `.pt` / `.pth` / `.ckpt` with torch (MissingDependencyError without it).

    `nested`: keys to descend into when the file holds a dict of state dicts (e.g. 'state_dict'
    of a Lightning `.ckpt`, 'ema' of a DiT training checkpoint); the first one present is used.
    Raises FileNotFoundError for a missing file and ValueError for an unreadable one.
    """
    path = Path(path).expanduser()
    obj = read_checkpoint(path)
    for key in nested:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> Path:
    """Writes a flat {name: array} state dict atomically (vdm_jax.io.atomic_write), by suffix:
    `.safetensors` with the safetensors package (no torch), `.pt` / `.pth` / `.bin` / `.ckpt`
    as a torch pickle of CPU tensors (needs torch). Returns the path."""
    path = Path(path).expanduser()
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.numpy import save

        data = save(arrays)
        return atomic_write(path, lambda f: f.write(data))
    if path.suffix in TORCH_SUFFIXES:
        torch = _import_torch(path, "writing")
        # from_numpy shares memory; a read-only array (e.g. from a jax.Array) is copied.
        tensors = {k: torch.from_numpy(v if v.flags.writeable else v.copy())
                   for k, v in arrays.items()}
        return atomic_write(path, lambda f: torch.save(tensors, f))
    raise ValueError(
        f"unknown weights format {path.name!r}: write .safetensors or a torch pickle "
        f"({', '.join(TORCH_SUFFIXES)})"
    )


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (recorded with what was made from the weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
