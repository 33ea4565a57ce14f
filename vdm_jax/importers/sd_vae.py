"""Stable Diffusion VAE weights → the Flax NNX AutoencoderKL (vdm_jax.nn.autoencoders.sd_vae).

`load_autoencoder(path)` accepts the files users have:

  * a diffusers folder: `config.json` + `diffusion_pytorch_model.safetensors` (or `.bin`, or the
    `.fp16` variants), e.g. stabilityai/sd-vae-ft-ema or sd-vae-ft-mse as downloaded, or a full
    pipeline folder with a `vae/` subfolder. Both attention namings load: current diffusers'
    `to_q / to_k / to_v / to_out.0` and the older `query / key / value / proj_attn`.
  * a single-file LDM/CompVis checkpoint, `.safetensors` or `.ckpt` (`.pt`, `.pth` too; a
    Lightning `state_dict` inside is descended into): keys `encoder.down.0.block.0.norm1.weight`,
    …, mid attention as 1×1 convs `q / k / v / proj_out`, decoder levels numbered from the
    full-resolution end. A `first_stage_model.` (full SD checkpoint) or `vae.` prefix is
    stripped and everything outside it ignored; inside, the training-only `loss.*` tensors
    (LPIPS, discriminator, logvar) and `model_ema.*` (EMA bookkeeping) are ignored too. LDM
    files carry no config: the architecture is read from the tensor shapes (levels and their
    widths, ResNet blocks per level, latent/image channels, whether quant convs and the mid
    attention exist), with what shapes cannot tell taken from the SD-VAE: 32 GroupNorm groups,
    scaling factor 0.18215, no shift. Pass `config=` for other VAEs (e.g. SDXL's, 0.13025).

Names (NNX path → diffusers name → LDM name), L = number of levels:
    encoder.down_blocks.i.resnets.j.X  → same                    → encoder.down.i.block.j.X
        X ∈ norm1, conv1, norm2, conv2, conv_shortcut (LDM: nin_shortcut)
    encoder.down_blocks.i.downsample   → …downsamplers.0         → encoder.down.i.downsample
    decoder.up_blocks.i.resnets.j.X    → same                    → decoder.up.(L−1−i).block.j.X
    decoder.up_blocks.i.upsample       → …upsamplers.0           → decoder.up.(L−1−i).upsample
    *.mid_block.resnets.0 / 1          → same                    → *.mid.block_1 / block_2
    *.mid_block.attention.group_norm   → *.mid_block.attentions.0.group_norm → *.mid.attn_1.norm
    *.mid_block.attention.to_q/k/v     → ….attentions.0.to_q/k/v (old: query/key/value)
                                                                 → *.mid.attn_1.q/k/v
    *.mid_block.attention.to_out       → ….attentions.0.to_out.0 (old: proj_attn)
                                                                 → *.mid.attn_1.proj_out
    *.conv_norm_out                    → same                    → *.norm_out
    encoder.quant_conv, decoder.post_quant_conv → quant_conv, post_quant_conv (both layouts)
Layouts (PyTorch NCHW → NHWC): conv kernel (kh, kw, I, O) ← weight (O, I, kh, kw); attention
kernel (I, O) ← Linear weight (O, I) or LDM's 1×1 conv weight (O, I, 1, 1); GroupNorm
scale ← weight; biases as they are.

`.safetensors` need no torch; `.bin` / `.ckpt` / `.pt` / `.pth` need torch (MissingDependencyError,
a ValueError, without it). Every missing, misshaped or unexpected tensor is listed in one
WeightMismatchError; a missing path raises FileNotFoundError saying what to download.
`describe_weights` gives what to record with latents made by these weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.importers.common import (
    Tensor,
    assign,
    conv_kernel,
    file_sha256,
    identity,
    linear_kernel,
    read_state_dict,
    save_state_dict,
    strip_prefix,
    weights_at,
)
from vdm_jax.io import read_json_object, write_json
from vdm_jax.nn.autoencoders.sd_vae import AutoencoderConfig, AutoencoderKL, abstract_autoencoder

__all__ = [
    "DIFFUSERS_WEIGHT_NAMES",
    "GET_WEIGHTS",
    "describe_weights",
    "diffusers_name",
    "ldm_name",
    "load_autoencoder",
    "locate_weights",
    "save_autoencoder",
]

CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
LDM_PREFIXES = ("first_stage_model.", "vae.")
NOT_AUTOENCODER = ("loss.", "model_ema.")  # LDM training-only tensors, ignored
GET_WEIGHTS = (
    "download stabilityai/sd-vae-ft-ema (or sd-vae-ft-mse) from the Hugging Face Hub — its "
    "config.json and diffusion_pytorch_model.safetensors — into a folder and pass that folder, "
    "or pass a single-file LDM checkpoint (e.g. vae-ft-mse-840000-ema-pruned.safetensors)"
)
_OLD_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value"}
_LDM_RENAME = {
    "mid_block": "mid", "attention": "attn_1", "group_norm": "norm", "to_q": "q", "to_k": "k",
    "to_v": "v", "to_out": "proj_out", "conv_shortcut": "nin_shortcut",
    "conv_norm_out": "norm_out",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}

ConfigLike = AutoencoderConfig | str | os.PathLike | None


# --------------------------------------------------------------------------------- names


def _top_level(path: tuple[str, ...]) -> list[str]:
    # quant_conv / post_quant_conv sit at the top of both source layouts.
    if path[:2] in (("encoder", "quant_conv"), ("decoder", "post_quant_conv")):
        return list(path[1:])
    return list(path)


def diffusers_name(path: tuple[str, ...], *, old_attention: bool = False) -> str:
    """NNX variable path → diffusers state-dict name (old_attention: query/key/value/proj_attn)."""
    *modules, leaf = _top_level(path)
    out: list[str] = []
    for m in modules:
        if m == "downsample":
            out += ["downsamplers", "0"]
        elif m == "upsample":
            out += ["upsamplers", "0"]
        elif m == "attention":
            out += ["attentions", "0"]
        elif m == "to_out":
            out += ["proj_attn"] if old_attention else ["to_out", "0"]
        elif old_attention and m in _OLD_ATTENTION:
            out.append(_OLD_ATTENTION[m])
        else:
            out.append(m)
    return ".".join([*out, _LEAF[leaf]])


def ldm_name(path: tuple[str, ...], *, levels: int) -> str:
    """NNX variable path → LDM/CompVis state-dict name (`levels` = len(block_out_channels))."""
    *modules, leaf = _top_level(path)
    out: list[str] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        if m in ("down_blocks", "up_blocks"):
            level = int(modules[i + 1])
            out += ["down", str(level)] if m == "down_blocks" else ["up", str(levels - 1 - level)]
            i += 2
        elif m == "resnets":
            j = int(modules[i + 1])
            out += [f"block_{j + 1}"] if modules[i - 1] == "mid_block" else ["block", str(j)]
            i += 2
        else:
            out.append(_LDM_RENAME.get(m, m))
            i += 1
    return ".".join([*out, _LEAF[leaf]])


def _source_of(layout: str, state: Mapping[str, np.ndarray], levels: int):
    """`source_of` for common.assign: NNX (path, shape) → Tensor(name, PyTorch shape, map)."""
    old = any(".attentions.0.query." in k for k in state)

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        if layout == "ldm":
            name = ldm_name(path, levels=levels)
        else:
            name = diffusers_name(path, old_attention=old)
        if path[-1] == "kernel" and len(shape) == 4:  # conv (kh, kw, I, O) ← (O, I, kh, kw)
            kh, kw, ci, co = shape
            return Tensor(name, (co, ci, kh, kw), conv_kernel)
        if path[-1] == "kernel":  # attention projection (I, O)
            ci, co = shape
            given = state.get(name)
            if layout == "ldm" and not (given is not None and np.ndim(given) == 2):
                return Tensor(name, (co, ci, 1, 1), lambda a: a[:, :, 0, 0].T)  # 1×1 conv
            return Tensor(name, (co, ci), linear_kernel)
        return Tensor(name, shape, identity)

    return source_of


def _layout(state: Mapping[str, Any]) -> str | None:
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        return "ldm"
    return None


# ------------------------------------------------------------------------------- locating


def locate_weights(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weights file, its diffusers config.json or None) for a diffusers folder, a pipeline
    folder with a `vae/` subfolder, a diffusers weights file or a single-file checkpoint.
    Raises FileNotFoundError saying what to download when nothing usable is there."""
    p = weights_at(path, "SD-VAE weights", GET_WEIGHTS)
    if p.is_file():
        sibling = p.parent / CONFIG_NAME
        is_diffusers = p.name in DIFFUSERS_WEIGHT_NAMES and sibling.is_file()
        return p, sibling if is_diffusers else None
    if not (p / CONFIG_NAME).is_file() and (p / "vae" / CONFIG_NAME).is_file():
        p = p / "vae"  # a full diffusers pipeline folder
    if not (p / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{p} is a folder without {CONFIG_NAME}, so not a diffusers AutoencoderKL folder: "
            f"{GET_WEIGHTS}"
        )
    for name in DIFFUSERS_WEIGHT_NAMES:
        if (p / name).is_file():
            return p / name, p / CONFIG_NAME
    raise FileNotFoundError(
        f"{p} has {CONFIG_NAME} but no weights file ({', '.join(DIFFUSERS_WEIGHT_NAMES)}): "
        f"{GET_WEIGHTS}"
    )


def _read_config_json(path: Path) -> AutoencoderConfig:
    data = read_json_object(path, "config")
    try:
        return AutoencoderConfig.from_diffusers_config(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _as_config(config: ConfigLike) -> AutoencoderConfig | None:
    if config is None or isinstance(config, AutoencoderConfig):
        return config
    p = Path(config).expanduser()
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"no diffusers config.json at {p}")
    return _read_config_json(p)


def _infer_config(state: Mapping[str, np.ndarray], layout: str, source: Path) -> AutoencoderConfig:
    """The architecture from tensor shapes; the SD-VAE's where the file has no autoencoder
    (then `assign` lists what is missing and unexpected)."""
    name = (lambda path: ldm_name(path, levels=0)) if layout == "ldm" else diffusers_name

    def shape(*path: str) -> tuple[int, ...] | None:
        a = state.get(name(path))
        return tuple(np.shape(a)) if a is not None else None

    channels: list[int] = []
    while (s := shape("encoder", "down_blocks", str(len(channels)), "resnets", "0", "conv1",
                      "kernel")) and len(s) == 4:
        channels.append(s[0])
    conv_in, dec_in, dec_out = (shape("encoder", "conv_in", "kernel"),
                                shape("decoder", "conv_in", "kernel"),
                                shape("decoder", "conv_out", "kernel"))
    if not channels or not all(s and len(s) == 4 for s in (conv_in, dec_in, dec_out)):
        return AutoencoderConfig()
    layers = 0
    while shape("encoder", "down_blocks", "0", "resnets", str(layers), "conv1", "kernel"):
        layers += 1
    fields = dict(
        in_channels=conv_in[1], out_channels=dec_out[0], block_out_channels=tuple(channels),
        layers_per_block=layers, latent_channels=dec_in[1],
        use_quant_conv=shape("encoder", "quant_conv", "kernel") is not None,
        use_post_quant_conv=shape("decoder", "post_quant_conv", "kernel") is not None,
        mid_block_add_attention=shape("encoder", "mid_block", "attention", "group_norm",
                                      "scale") is not None,
    )
    try:
        return AutoencoderConfig(**fields)
    except ValueError as e:
        raise ValueError(
            f"{source}: the architecture read from its tensor shapes does not build with the "
            f"SD-VAE's defaults for what shapes cannot tell ({e}); pass config= (an "
            f"AutoencoderConfig, or a diffusers config.json or its folder)"
        ) from None


def _read(path: str | os.PathLike, config: ConfigLike):
    """(weights file, autoencoder state dict, layout, config) of `path`."""
    weights, config_file = locate_weights(path)
    state = read_state_dict(weights, nested=("state_dict",))
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = strip_prefix(state, prefix)
            break
    layout = _layout(state) or ("diffusers" if config_file else "ldm")
    cfg = _as_config(config)
    if cfg is None:
        cfg = _read_config_json(config_file) if config_file else _infer_config(state, layout,
                                                                              weights)
    return weights, state, layout, cfg


# ---------------------------------------------------------------------------------- public


def load_autoencoder(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                     config: ConfigLike = None) -> AutoencoderKL:
    """The AutoencoderKL with the weights at `path` (module docstring: accepted layouts).

    dtype: compute dtype (float32 or bfloat16); parameters are float32 whatever the file holds.
    config: the architecture, overriding config.json / what the tensor shapes say — an
    AutoencoderConfig, or a diffusers config.json or its folder. Needed for single-file
    checkpoints of VAEs that are not the SD-VAE in what shapes cannot tell (GroupNorm groups,
    scaling/shift factor).

    Raises FileNotFoundError (nothing there: says what to download), ValueError (unreadable
    file or config, MissingDependencyError for a torch pickle without torch) or
    WeightMismatchError (a ValueError listing every missing, misshaped and unexpected tensor,
    e.g. for the weights of another network).
    """
    weights, state, layout, cfg = _read(path, config)
    model = abstract_autoencoder(cfg, dtype=dtype)
    names = "LDM/CompVis" if layout == "ldm" else "diffusers"
    what = (f"the SD-VAE AutoencoderKL ({names} names; block_out_channels "
            f"{cfg.block_out_channels}, layers_per_block {cfg.layers_per_block}, latent_channels "
            f"{cfg.latent_channels})")
    ignore = (lambda k: k.startswith(NOT_AUTOENCODER)) if layout == "ldm" else (lambda k: False)
    source_of = _source_of(layout, state, len(cfg.block_out_channels))
    return assign(model, state, source_of, source=str(weights), what=what, ignore=ignore)


def describe_weights(path: str | os.PathLike, *, config: ConfigLike = None) -> dict[str, Any]:
    """What to record with latents made by these weights, JSON-ready and the same on every call:
    {"path": the absolute path given, "weights_file": the file read, "sha256": its SHA-256,
    "layout": "diffusers" | "ldm", "config": the AutoencoderConfig fields}."""
    weights, _, layout, cfg = _read(path, config)
    return {
        "path": str(Path(path).expanduser().resolve()),
        "weights_file": str(weights.resolve()),
        "sha256": file_sha256(weights),
        "layout": layout,
        "config": cfg.to_dict(),
    }


def save_autoencoder(model: AutoencoderKL, folder: str | os.PathLike) -> Path:
    """Write `model` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors,
    PyTorch layouts), which `load_autoencoder` and diffusers' AutoencoderKL.from_pretrained
    read. For models trained or made here (e.g. tiny random ones in tests); no torch needed."""
    folder = Path(folder).expanduser()
    state = {}
    for key, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(str(k) for k in key)
        value = np.asarray(var.get_value(), np.float32)
        if path[-1] == "kernel" and value.ndim == 4:  # (kh, kw, I, O) → (O, I, kh, kw)
            value = value.transpose(3, 2, 0, 1)
        elif path[-1] == "kernel":  # (I, O) → Linear (O, I)
            value = value.T
        state[diffusers_name(path)] = value
    config = {"_class_name": "AutoencoderKL", **model.config.to_dict(),
              "down_block_types": ["DownEncoderBlock2D"] * len(model.config.block_out_channels),
              "up_block_types": ["UpDecoderBlock2D"] * len(model.config.block_out_channels),
              "act_fn": "silu"}
    write_json(folder / CONFIG_NAME, config)
    save_state_dict(folder / DIFFUSERS_WEIGHT_NAMES[0], state)
    return folder
