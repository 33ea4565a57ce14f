"""Released DINOv2 weights → `vdm_jax.nn.encoders.dinov2.DinoV2`, from either layout:

(a) torch hub files, e.g. `dinov2_vitb14_pretrain.pth`, `dinov2_vitb14_reg4_pretrain.pth`
    (https://dl.fbaipublicfiles.com/dinov2/<arch>/<file>); torch pickles, so they need torch.
(b) Hugging Face folders, e.g. `facebook/dinov2-base`, `facebook/dinov2-with-registers-base`
    (config.json + model.safetensors; no torch needed).

The architecture (width, depth, patch, pretraining grid, registers, FFN kind) is read from the
tensor shapes; the number of heads from config.json, else DINOv2's head width 64 (every released
size) unless `num_heads` is given. Names, hub ← → NNX (HF in brackets), `i` the block:

    patch_embed.proj.weight (D,C,p,p)   [embeddings.patch_embeddings.projection.weight]
                                        → patch_embed.kernel (p·p·C, D)
    cls_token, pos_embed, register_tokens, mask_token
                                        [embeddings.cls_token, .position_embeddings, ...]
    blocks.i.attn.qkv.weight (3D, D)    [encoder.layer.i.attention.attention.{query,key,value}]
                                        → blocks.i.attn.{query,key,value}.kernel (D, D)
    blocks.i.attn.proj                  [encoder.layer.i.attention.output.dense]
    blocks.i.ls1.gamma / ls2.gamma      [encoder.layer.i.layer_scale1.lambda1 / 2]
    blocks.i.norm1 / norm2              [encoder.layer.i.norm1 / norm2]
    blocks.i.mlp.fc1 / fc2              [encoder.layer.i.mlp.fc1 / fc2]
    blocks.i.mlp.w12 / w3 (ViT-g)       [encoder.layer.i.mlp.weights_in / weights_out]
    norm                                [layernorm]
(LayerNorm weight → scale; Linear weight (O, I) → kernel (I, O).) The HF names are those of the
released files; the attention names transformers 5.25 writes for Dinov2WithRegistersModel
(`attention.q_proj / k_proj / v_proj / o_proj`) are read too.

Position-embedding resampling follows the file's own release unless `interpolation` says
otherwise: 'hub' for .pth files, 'transformers' for HF folders; REPA uses 'repa'
(see vdm_jax.nn.encoders.dinov2).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from vdm_jax.importers.common import (
    MissingDependencyError,
    Tensor,
    assign,
    conv_kernel,
    identity,
    linear_kernel,
    read_state_dict,
    strip_prefix,
    tensor_names,
    weights_at,
)
from vdm_jax.io import read_json_object
from vdm_jax.nn.encoders.dinov2 import (
    SIZES,
    DinoV2,
    DinoV2Config,
    abstract_dinov2,
    pos_interpolation,
)

__all__ = [
    "HF_REPOS",
    "HUB_URL",
    "describe",
    "dinov2_config_of",
    "dinov2_source_of",
    "load_dinov2",
    "read_dinov2",
    "where_to_get",
]

HUB_URL = "https://dl.fbaipublicfiles.com/dinov2"
HF_REPOS = {"vits14": "small", "vitb14": "base", "vitl14": "large", "vitg14": "giant"}
HEAD_DIM = 64  # every released DINOv2 size has 64-wide heads

# Per layout: the source name of each NNX leaf, with {i} the block index.
_HUB = {
    "patch": "patch_embed.proj",
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "register_tokens": "register_tokens",
    "mask_token": "mask_token",
    "block": "blocks.{i}.",
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "ls1": "ls1.gamma",
    "ls2": "ls2.gamma",
    "norm1": "norm1",
    "norm2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "w12": "mlp.w12",
    "w3": "mlp.w3",
    "norm": "norm",
}
_HF = {
    "patch": "embeddings.patch_embeddings.projection",
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "mask_token": "embeddings.mask_token",
    "block": "encoder.layer.{i}.",
    "query": "attention.attention.query",
    "key": "attention.attention.key",
    "value": "attention.attention.value",
    "proj": "attention.output.dense",
    "ls1": "layer_scale1.lambda1",
    "ls2": "layer_scale2.lambda1",
    "norm1": "norm1",
    "norm2": "norm2",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "w12": "mlp.weights_in",
    "w3": "mlp.weights_out",
    "norm": "layernorm",
}
# transformers >= 5.25 writes the attention of Dinov2WithRegistersModel under new names (what
# diffusers' AutoencoderRAE.save_pretrained then stores); the released files keep the old ones.
_HF_QKV_PROJ = {
    **_HF,
    "query": "attention.q_proj",
    "key": "attention.k_proj",
    "value": "attention.v_proj",
    "proj": "attention.o_proj",
}


def _arch_name(size: str | None, registers: int | None) -> str:
    size = size or "vitb14"
    return f"dinov2_{size}" + ("_reg4" if registers else "")


def where_to_get(size: str | None = None, registers: int | None = None) -> str:
    """What to download for a size (default ViT-B/14), in either layout."""
    size = size if size in SIZES else "vitb14"
    hub = f"{HUB_URL}/dinov2_{size}/{_arch_name(size, registers)}_pretrain.pth"
    repo = "dinov2-with-registers-" if registers else "dinov2-"
    return (
        f"download the torch-hub file {hub} (needs torch to read), or the Hugging Face folder "
        f"facebook/{repo}{HF_REPOS[size]} (config.json + model.safetensors, e.g. `hf download "
        f"facebook/{repo}{HF_REPOS[size]} --local-dir DIR`), and pass the file or folder path"
    )


def describe(cfg: DinoV2Config) -> str:
    """E.g. 'ViT-B/14 (D=768, 12 blocks) without registers'."""
    letter = {384: "-S", 768: "-B", 1024: "-L", 1536: "-g"}.get(cfg.hidden_size, " (custom)")
    regs = f"with {cfg.num_registers} registers" if cfg.num_registers else "without registers"
    return (
        f"ViT{letter}/{cfg.patch_size} (D={cfg.hidden_size}, {cfg.num_layers} blocks) {regs}"
    )


def _layout(state_dict: Mapping[str, Any], source: str) -> dict[str, str]:
    if "cls_token" in state_dict:
        return _HUB
    if "embeddings.cls_token" in state_dict:
        if any(".attention.q_proj." in k for k in state_dict):
            return _HF_QKV_PROJ
        return _HF
    raise ValueError(
        f"{source} does not hold DINOv2 weights: it has neither 'cls_token' (torch-hub layout) "
        f"nor 'embeddings.cls_token' (Hugging Face layout); found {tensor_names(state_dict)}. "
        f"Expected e.g. {where_to_get()}"
    )


def dinov2_config_from_hf(
    config: Mapping[str, Any], *, interpolation: str = "transformers"
) -> DinoV2Config:
    """The `DinoV2Config` of a transformers `config.json` (model_type 'dinov2' or
    'dinov2_with_registers'); ValueError for another model or an unsupported setting."""
    model_type = config.get("model_type")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(
            f"config.json has model_type {model_type!r}; expected 'dinov2' or "
            "'dinov2_with_registers' (facebook/dinov2-* or facebook/dinov2-with-registers-*)"
        )
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"unsupported hidden_act {act!r} in config.json: DINOv2 uses 'gelu'")

    def single(key: str, default: int) -> int:
        v = config.get(key, default)
        if isinstance(v, (list, tuple)):
            if len(set(v)) != 1:
                raise ValueError(f"non-square {key} {v} in config.json is not supported")
            v = v[0]
        return int(v)

    default_registers = 4 if model_type == "dinov2_with_registers" else 0
    registers = int(config.get("num_register_tokens", default_registers))
    antialias, offset = pos_interpolation(interpolation, registers)
    return DinoV2Config(
        hidden_size=int(config.get("hidden_size", 768)),
        num_layers=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 12)),
        mlp_ratio=float(config.get("mlp_ratio", 4)),
        swiglu=bool(config.get("use_swiglu_ffn", False)),
        patch_size=single("patch_size", 14),
        image_size=single("image_size", 224),
        in_channels=int(config.get("num_channels", 3)),
        num_registers=registers,
        layerscale_value=float(config.get("layerscale_value", 1.0)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        qkv_bias=bool(config.get("qkv_bias", True)),
        pos_antialias=antialias,
        pos_offset=offset,
    )


def dinov2_config_of(
    state_dict: Mapping[str, Any],
    *,
    source: str = "state dict",
    hf_config: Mapping[str, Any] | None = None,
    num_heads: int | None = None,
    interpolation: str | None = None,
) -> DinoV2Config:
    """The architecture of a DINOv2 state dict (either layout), read from its shapes.

    Heads: `num_heads`, else config.json's, else D / 64. `interpolation`: see module docstring.
    Raises ValueError when the tensors that fix the architecture are absent or inconsistent.
    """
    names = _layout(state_dict, source)
    hub = names is _HUB

    def shape(key: str) -> tuple[int, ...] | None:
        v = state_dict.get(key)
        return None if v is None else tuple(np.shape(v))

    def need(key: str, ndim: int) -> tuple[int, ...]:
        s = shape(key)
        if s is None or len(s) != ndim:
            raise ValueError(
                f"{source}: DINOv2 tensor {key!r} is "
                + ("missing" if s is None else f"misshaped {s} (expected {ndim} dims)")
                + f"; the file is incomplete or not DINOv2. Expected e.g. {where_to_get()}"
            )
        return s

    d = need(names["cls_token"], 3)[-1]
    dw, c, p, q = need(names["patch"] + ".weight", 4)
    n_pos = need(names["pos_embed"], 3)[1] - 1
    m = math.isqrt(max(n_pos, 0))
    if dw != d or p != q or m * m != n_pos or m == 0:
        raise ValueError(
            f"{source}: inconsistent DINOv2 shapes: cls_token width {d}, patch kernel "
            f"{(dw, c, p, q)}, {n_pos} position entries (expected D × C × p × p and a square grid)"
        )
    pattern = re.compile(re.escape(names["block"]).replace(r"\{i\}", r"(\d+)"))
    blocks = {int(mt.group(1)) for k in state_dict if (mt := pattern.match(k))}
    if not blocks:
        raise ValueError(f"{source}: no transformer blocks ({names['block'].format(i='N')}*)")
    num_layers = max(blocks) + 1
    regs = shape(names["register_tokens"])
    b0 = names["block"].format(i=0)
    swiglu = shape(b0 + names["w12"] + ".weight") is not None
    fc1 = shape(b0 + names["fc1"] + ".weight")
    mlp_ratio = fc1[0] / d if (fc1 and not swiglu) else 4.0
    qkv_bias = (b0 + (names["qkv"] if hub else names["query"]) + ".bias") in state_dict
    eps, layerscale = 1e-6, 1.0  # layerscale: only the init value; the weights hold γ
    if hf_config is not None:
        cfg_hf = dinov2_config_from_hf(hf_config)
        declared = (cfg_hf.hidden_size, cfg_hf.num_layers, cfg_hf.num_registers)
        found = (d, num_layers, regs[1] if regs else 0)
        if declared != found:
            raise ValueError(
                f"{source}: config.json declares (hidden_size, layers, registers) = {declared} "
                f"but the weights have {found}; the folder mixes two models"
            )
        num_heads = num_heads or cfg_hf.num_heads
        eps, layerscale = cfg_hf.layer_norm_eps, cfg_hf.layerscale_value
    num_heads = num_heads or max(d // HEAD_DIM, 1)
    registers = regs[1] if regs else 0
    style = interpolation or ("hub" if hub else "transformers")
    antialias, offset = pos_interpolation(style, registers)
    return DinoV2Config(
        hidden_size=d, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
        swiglu=swiglu, patch_size=p, image_size=m * p, in_channels=c, num_registers=registers,
        layerscale_value=layerscale, layer_norm_eps=eps, qkv_bias=qkv_bias,
        pos_antialias=antialias, pos_offset=offset,
    )


def _source_of(names: dict[str, str], cfg: DinoV2Config):
    """NNX (path, shape) → Tensor in the layout `names` (module docstring)."""
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    hub = names is _HUB
    leaf_suffix = {"kernel": "weight", "scale": "weight", "bias": "bias"}

    def patch_kernel(a: np.ndarray) -> np.ndarray:
        return conv_kernel(a).reshape(p * p * c, d)  # (D,C,p,p) → (p,p,C,D) → (p·p·C, D)

    def qkv_part(j: int, leaf: str):
        sl = slice(j * d, (j + 1) * d)
        if leaf == "kernel":
            return lambda a: linear_kernel(a[sl])
        return lambda a: a[sl]

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        head = path[0]
        if head == "patch_embed":
            if path[1] == "kernel":
                return Tensor(names["patch"] + ".weight", (d, c, p, p), patch_kernel)
            return Tensor(names["patch"] + ".bias", shape, identity)
        if head in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
            return Tensor(names[head], shape, identity)
        if head == "norm":
            return Tensor(names["norm"] + "." + leaf_suffix[path[1]], shape, identity)
        # blocks/<i>/<module>[/<sub>]/<leaf>
        prefix = names["block"].format(i=path[1])
        module, leaf = path[2], path[-1]
        if module in ("ls1", "ls2"):
            return Tensor(prefix + names[module], shape, identity)
        if module in ("norm1", "norm2"):
            return Tensor(prefix + names[module] + "." + leaf_suffix[leaf], shape, identity)
        sub = path[3]
        if module == "attn" and sub in ("query", "key", "value") and hub:
            j = ("query", "key", "value").index(sub)
            full = (3 * d, d) if leaf == "kernel" else (3 * d,)
            return Tensor(prefix + names["qkv"] + "." + leaf_suffix[leaf], full, qkv_part(j, leaf))
        name = prefix + names[sub] + "." + leaf_suffix[leaf]
        if leaf == "kernel":
            return Tensor(name, shape[::-1], linear_kernel)
        return Tensor(name, shape, identity)

    return source_of


def dinov2_source_of(state_dict: Mapping[str, Any], cfg: DinoV2Config, *, source: str):
    """`source_of` (vdm_jax.importers.common) of a DINOv2 state dict in either layout: NNX
    (path, shape) under a DinoV2 of `cfg` → the tensor's name and layout in `state_dict`.
    For models that embed a DINOv2 (RAE's encoder) and assign it together with their own
    weights. Raises ValueError when the state dict is in neither layout."""
    return _source_of(_layout(state_dict, source), cfg)


def read_dinov2(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None, Path]:
    """(state dict with any 'dinov2.' prefix stripped, config.json or None, the weights file)
    of a torch-hub file or a Hugging Face folder; FileNotFoundError saying what to download
    when nothing is there."""
    p = weights_at(path, "DINOv2 weights", where_to_get(None, 4))
    return _read(p, None, None)


def _read(path: Path, size: str | None, registers: int | None):
    """(state dict, config.json or None, layout-default source name) of a file or HF folder."""
    hf_config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin")]
        found = [w for w in weights if w.is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} is a folder without model.safetensors (or pytorch_model.bin): "
                + where_to_get(size, registers)
            )
        if cfg_file.is_file():
            hf_config = read_json_object(cfg_file, "config")
        path = found[0]
    try:
        state_dict = read_state_dict(path)
    except MissingDependencyError:
        raise MissingDependencyError(
            f"reading the torch-hub file {path} needs PyTorch (`pip install torch`, CPU wheel "
            f"suffices); without torch use the Hugging Face folder of the same weights "
            f"(facebook/dinov2-* with config.json + model.safetensors)"
        ) from None
    return strip_prefix(state_dict, "dinov2."), hf_config, path


def load_dinov2(
    path: str | os.PathLike,
    *,
    size: str | None = None,
    registers: int | None = None,
    num_heads: int | None = None,
    interpolation: str | None = None,
    dtype: Any = jnp.float32,
) -> DinoV2:
    """A DINOv2 with the weights at `path`: a torch-hub `.pth` or a Hugging Face folder (or its
    `model.safetensors`). Parameters float32; `dtype` is the compute dtype (bfloat16 on GPU/TPU).

    size ('vits14' … 'vitg14') and registers (0 or 4), when given, must match the weights.
    interpolation: position-embedding resampling ('transformers', 'hub', 'repa'); default the
    file's own release ('hub' for .pth, 'transformers' for HF). REPA: 'repa'.
    Raises FileNotFoundError (saying what to download) for a missing path, ValueError for an
    unreadable file, another model's weights, another size than requested, or any missing,
    misshaped or unexpected tensor (all listed in one message).
    """
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown DINOv2 size {size!r}: expected one of {sorted(SIZES)}")
    p = weights_at(path, "DINOv2 weights", where_to_get(size, registers))
    state_dict, hf_config, file = _read(p, size, registers)
    source = str(file)
    cfg = dinov2_config_of(
        state_dict, source=source, hf_config=hf_config, num_heads=num_heads,
        interpolation=interpolation,
    )
    if size is not None or registers is not None:
        want = DinoV2Config.for_size(
            size or _size_of(cfg), registers=cfg.num_registers if registers is None else registers
        )
        got = (cfg.hidden_size, cfg.num_layers, cfg.num_registers, cfg.swiglu)
        if got != (want.hidden_size, want.num_layers, want.num_registers, want.swiglu):
            raise ValueError(
                f"{source} holds DINOv2 {describe(cfg)}, but {describe(want)} was requested; "
                "pass the matching weights (" + where_to_get(size, registers) + ")"
            )
    model = abstract_dinov2(cfg, dtype=dtype)
    names = _layout(state_dict, source)
    layout = "torch-hub names" if names is _HUB else "Hugging Face names"
    return assign(
        model, state_dict, _source_of(names, cfg), source=source,
        what=f"DINOv2 {describe(cfg)} ({layout})",
    )


def _size_of(cfg: DinoV2Config) -> str:
    for name, (d, layers, _, _) in SIZES.items():
        if (d, layers) == (cfg.hidden_size, cfg.num_layers):
            return name
    return "vitb14"
