"""Released RAE weights → the Flax NNX RAE (vdm_jax.nn.autoencoders.rae), from either layout:

  * a diffusers `AutoencoderRAE` folder (e.g. nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08):
    `config.json` (`_class_name` "AutoencoderRAE", encoder_type "dinov2") +
    `diffusion_pytorch_model.safetensors` holding `encoder.*` (transformers'
    Dinov2WithRegistersModel names, no final-LayerNorm affine), `decoder.*`, the buffers
    `encoder_mean` / `encoder_std` (image normalization) and `_latents_mean` / `_latents_std`
    (statistics; normalization (z − mean)/(std + 1e-5), diffusers' formula); no torch needed.
  * the official files (bytetriper/RAE, nyu-visionx/RAE-collections), gathered in one folder:
        model.pt      the decoder's state_dict (models/decoders/.../model.pt; needs torch)
        stat.pt       optional {"mean", "var"} of shape (C, g, g) (models/stats/.../stat.pt;
                      normalization (z − mean)/sqrt(var + 1e-5), the official formula)
        dinov2/       the encoder: a Hugging Face folder of facebook/dinov2-with-registers-base
                      (config.json + model.safetensors); its final LayerNorm's weight and bias
                      are ignored, as the official Dinov2withNorm drops them
        config.json   optional: the official decoder config (configs/decoder/ViTXL/config.json),
                      read for the number of heads; without it the released sizes' heads
                      (width 768 → 12, 1024 → 16, 1152 → 16; else width / 64)
    The latent grid g comes from the decoder's stored position table (1, 1 + g², D) (g = 16: the
    224² encoder input of 256² images; 32: 448² for 512²), which must equal MAE's fixed sin-cos
    table; the encoder input is g · 14.
  * the digits RAE trained here (`launch/train_decoder.py --config=configs/digits_rae_decoder.py`
    writes it to RUN/autoencoder; `export_digits_rae`): `config.json` ({"_class_name":
    "DigitsRAE", "num_classes", "hidden", "layers", "heads", "mlp"}) + `digits_rae.npz`, the
    parameters of `DigitsRAE` (the frozen digits CNN and the decoder) under their flat NNX names
    ('encoder/conv1/kernel', 'decoder/decoder_embed/kernel', …; the digits CNN's file layout).
    Its latents are the CNN's 4 × 4 × 64 tokens, without statistics.

Names (NNX path → official decoder name; diffusers adds `decoder.` and renames attention):
    decoder.decoder_embed, decoder_norm, decoder_pred, trainable_cls_token → same
    decoder.decoder_layers.i.query/key/value → decoder_layers.i.attention.attention.query/…
                                              (diffusers: decoder_layers.i.attention.to_q/…)
    decoder.decoder_layers.i.out             → decoder_layers.i.attention.output.dense
                                              (diffusers: decoder_layers.i.attention.to_out.0)
    decoder.decoder_layers.i.fc1 / fc2       → decoder_layers.i.intermediate.dense / output.dense
    decoder.decoder_layers.i.layernorm_*     → same
    encoder.*                                → vdm_jax.importers.dinov2 (HF names, `encoder.`
                                               prefix in the diffusers file)
    latent_mean / latent_spread (g, g, C)    ← mean, var (official) or _latents_mean,
                                               _latents_std (diffusers), (C, g, g) transposed
Bad input raises FileNotFoundError (nothing there, saying what to get) or ValueError (another
model's weights, a mismatched statistics shape, an unsupported encoder): the launch scripts
print it as one `error:` line and exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
    check_anchors,
    file_sha256,
    identity,
    linear_kernel,
    read_state_dict,
    weights_at,
)
from vdm_jax.importers.dinov2 import (
    describe as describe_dinov2,
)
from vdm_jax.importers.dinov2 import (
    dinov2_config_of,
    dinov2_source_of,
    read_dinov2,
)
from vdm_jax.io import read_json_object, write_json, write_npz
from vdm_jax.nn.autoencoders.rae import (
    DINOV2_REGISTERS,
    RAE,
    DigitsRAE,
    RAEConfig,
    abstract_rae,
    decoder_position_table,
    digits_rae_config,
)
from vdm_jax.nn.encoders.digits import DigitsCNN, from_arrays, to_arrays
from vdm_jax.nn.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["GET_WEIGHTS", "describe_rae", "export_digits_rae", "is_rae", "load_rae", "rae_files",
           "rae_layout", "rae_sha256"]

CONFIG_NAME = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
OFFICIAL_DECODER, OFFICIAL_STATS, OFFICIAL_ENCODER = "model.pt", "stat.pt", "dinov2"
DIGITS_CLASS, DIGITS_WEIGHTS = "DigitsRAE", "digits_rae.npz"
_DIGITS_SIZES = ("num_classes", "hidden", "layers", "heads", "mlp")
_CONFIG_LAYOUTS = {"AutoencoderRAE": "diffusers", DIGITS_CLASS: "digits"}  # by _class_name
HEADS_OF_WIDTH = {768: 12, 1024: 16, 1152: 16}  # official configs/decoder/ViT{B,L,XL}
POSITION_TOLERANCE = 1e-5
GET_WEIGHTS = (
    "download the diffusers folder nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08 (config.json + "
    "diffusion_pytorch_model.safetensors), or gather the official files in one folder: "
    "model.pt (nyu-visionx/RAE-collections models/decoders/dinov2/wReg_base/ViTXL_n08/), "
    "stat.pt (models/stats/dinov2/wReg_base/imagenet1k/) and dinov2/ (the Hugging Face folder "
    "facebook/dinov2-with-registers-base)"
)
_ATTN = {
    "official": {"query": "attention.attention.query", "key": "attention.attention.key",
                 "value": "attention.attention.value", "out": "attention.output.dense"},
    "diffusers": {"query": "attention.to_q", "key": "attention.to_k", "value": "attention.to_v",
                  "out": "attention.to_out.0"},
}
_MLP = {"fc1": "intermediate.dense", "fc2": "output.dense"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


# ------------------------------------------------------------------------------- locating


def rae_layout(path: str | os.PathLike) -> str | None:
    """'diffusers' for an AutoencoderRAE folder, 'official' for a folder with model.pt and
    dinov2/ (or its model.pt), 'digits' for the digits RAE's folder, None for anything else
    (e.g. an SD-VAE)."""
    p = Path(path).expanduser()
    if p.is_file() and p.name == OFFICIAL_DECODER:
        p = p.parent
    if not p.is_dir():
        return None
    cfg = p / CONFIG_NAME
    if cfg.is_file():
        try:
            name = json.loads(cfg.read_text()).get("_class_name")
            if name in _CONFIG_LAYOUTS:
                return _CONFIG_LAYOUTS[name]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            pass
    if (p / OFFICIAL_DECODER).is_file() or (p / OFFICIAL_ENCODER).is_dir():
        return "official"
    return None


def is_rae(path: str | os.PathLike) -> bool:
    """Whether `path` is in one of the RAE layouts (module docstring)."""
    return rae_layout(path) is not None


def _folder(path: str | os.PathLike) -> Path:
    p = weights_at(path, "RAE weights", GET_WEIGHTS)
    return p.parent if p.is_file() else p


# ----------------------------------------------------------------------------- statistics


def _stats_to_nhwc(a: Any, name: str, source: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A (C, g, g) or (1, C, g, g) statistic (or a single number) → (g, g, C) float32."""
    g, _, c = shape
    arr = np.asarray(a, np.float32)
    if arr.size == 1:
        return np.full(shape, arr.reshape(()), np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (c, g, g):
        raise ValueError(
            f"{source}: latent statistic {name!r} has shape {tuple(np.shape(a))}, but the "
            f"encoder makes latents of shape (C, g, g) = {(c, g, g)}: the statistics belong to "
            f"another model or resolution"
        )
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


# -------------------------------------------------------------------------------- names


def _decoder_source_of(layout: str, prefix: str):
    attn = _ATTN[layout]

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        # path under decoder/: (name, leaf) or ('decoder_layers', i, module, leaf)
        if path[0] == "trainable_cls_token":
            return Tensor(prefix + "trainable_cls_token", shape, identity)
        if path[0] == "decoder_layers":
            i, module, leaf = path[1], path[2], path[3]
            base = f"decoder_layers.{i}." + attn.get(module, _MLP.get(module, module))
        else:
            base, leaf = path[0], path[-1]
        name = prefix + base + "." + _LEAF[leaf]
        if leaf == "kernel":
            return Tensor(name, shape[::-1], linear_kernel)
        return Tensor(name, shape, identity)

    return source_of


def _source_of(layout: str, enc_state: Mapping[str, Any], cfg: RAEConfig, enc_prefix: str,
               dec_prefix: str, source: str):
    enc = dinov2_source_of(enc_state, cfg.encoder, source=source)
    dec = _decoder_source_of(layout, dec_prefix)

    def source_of(path: tuple[str, ...], shape: tuple[int, ...]) -> Tensor:
        if path[0] == "encoder":
            t = enc(path[1:], shape)
            return Tensor(enc_prefix + t.name, t.shape, t.to_flax)
        if path[0] == "decoder":
            return dec(path[1:], shape)
        return Tensor("stat:" + path[0], shape, identity)  # latent_mean / latent_spread

    return source_of


# ------------------------------------------------------------------------------- readers


@dataclasses.dataclass
class _Read:
    layout: str
    config: RAEConfig
    state: dict[str, Any]  # every tensor under the names `source_of` gives
    source_of: Any
    files: list[Path]
    ignore: Any


def _encoder_config(enc_state: Mapping[str, Any], source: str, hf_config: Any, heads: Any):
    cfg = dinov2_config_of(enc_state, source=source, hf_config=hf_config, num_heads=heads,
                           interpolation="transformers")
    if cfg.num_registers != DINOV2_REGISTERS:
        raise ValueError(
            f"{source}: the RAE encoder is DINOv2 with {DINOV2_REGISTERS} registers (RAE drops "
            f"1 CLS + 4 register tokens), but these weights are {describe_dinov2(cfg)}"
        )
    return dataclasses.replace(cfg, norm_affine=False)


def _read_diffusers(folder: Path) -> _Read:
    config = read_json_object(folder / CONFIG_NAME, "config")
    weights = folder / DIFFUSERS_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has an AutoencoderRAE {CONFIG_NAME} but no "
                                f"{DIFFUSERS_WEIGHTS}: {GET_WEIGHTS}")
    if config.get("encoder_type", "dinov2") != "dinov2":
        raise ValueError(f"{folder / CONFIG_NAME}: encoder_type {config['encoder_type']!r} is "
                         "not supported; vdm_jax's RAE has the DINOv2 encoder")
    if not config.get("reshape_to_2d", True):
        raise ValueError(f"{folder / CONFIG_NAME}: reshape_to_2d = false is not supported "
                         "(latents are (B, g, g, C) grids)")
    state = read_state_dict(weights)
    source = str(weights)
    enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    check_anchors(state, ("encoder.embeddings.cls_token", "decoder.decoder_embed.weight"),
                  f"{weights} does not hold an AutoencoderRAE", get=GET_WEIGHTS)
    enc = _encoder_config(enc_state, source, None,
                          int(config.get("encoder_hidden_size", 768)) // 64)
    declared = (config.get("encoder_hidden_size", 768), config.get("encoder_num_hidden_layers", 12),
                config.get("encoder_patch_size", 14))
    if tuple(declared) != (enc.hidden_size, enc.num_layers, enc.patch_size):
        raise ValueError(f"{folder}: config.json declares encoder (hidden, layers, patch) = "
                         f"{tuple(declared)} but the weights have "
                         f"{(enc.hidden_size, enc.num_layers, enc.patch_size)}")

    def buffer(name: str, default: Any) -> Any:
        return np.asarray(state[name]).reshape(-1) if name in state else default

    cfg = RAEConfig(
        encoder=enc,
        encoder_input_size=int(config.get("encoder_input_size", 224)),
        decoder_hidden_size=int(config.get("decoder_hidden_size", 512)),
        decoder_num_layers=int(config.get("decoder_num_hidden_layers", 8)),
        decoder_num_heads=int(config.get("decoder_num_attention_heads", 16)),
        decoder_mlp_size=int(config.get("decoder_intermediate_size", 2048)),
        patch_size=int(config.get("patch_size", 16)),
        num_channels=int(config.get("num_channels", 3)),
        image_mean=tuple(buffer("encoder_mean", config.get("encoder_norm_mean")
                                or IMAGENET_MEAN)),
        image_std=tuple(buffer("encoder_std", config.get("encoder_norm_std") or IMAGENET_STD)),
        stats_formula="diffusers",
        scaling_factor=float(config.get("scaling_factor", 1.0)),
    )
    if config.get("image_size") not in (None, cfg.image_size):
        raise ValueError(f"{folder}: image_size {config['image_size']} is not patch_size · grid "
                         f"= {cfg.image_size}")
    mean = state.get("_latents_mean", config.get("latents_mean"))
    std = state.get("_latents_std", config.get("latents_std"))
    merged = {"encoder." + k: v for k, v in enc_state.items()}
    merged.update({k: v for k, v in state.items() if k.startswith("decoder.")})
    merged["stat:latent_mean"] = _stats_to_nhwc(0.0 if mean is None else mean, "_latents_mean",
                                                weights, cfg.latent_shape)
    merged["stat:latent_spread"] = _stats_to_nhwc(1.0 if std is None else std, "_latents_std",
                                                  weights, cfg.latent_shape)
    return _Read("diffusers", cfg, merged,
                 _source_of("diffusers", enc_state, cfg, "encoder.", "decoder.", source),
                 [folder / CONFIG_NAME, weights],
                 lambda k: k == "decoder.decoder_pos_embed")


def _check_positions(table: Any, source: Path) -> int:
    """The grid g of a stored decoder position table, which must be MAE's fixed one."""
    arr = np.asarray(table, np.float32)
    if arr.ndim != 3 or arr.shape[0] != 1 or math.isqrt(arr.shape[1] - 1) ** 2 != arr.shape[1] - 1:
        raise ValueError(f"{source}: decoder_pos_embed has shape {arr.shape}, expected "
                         "(1, 1 + g², D)")
    g = math.isqrt(arr.shape[1] - 1)
    err = float(np.abs(arr[0] - decoder_position_table(arr.shape[2], g)).max())
    if err > POSITION_TOLERANCE:
        raise ValueError(f"{source}: decoder_pos_embed differs from MAE's fixed 2-D sin-cos "
                         f"table by {err:.3g}; vdm_jax's RAE decoder uses the fixed table")
    return g


def _read_official(folder: Path) -> _Read:
    dec_file, stat_file, enc_dir = (folder / OFFICIAL_DECODER, folder / OFFICIAL_STATS,
                                    folder / OFFICIAL_ENCODER)
    for need, what in ((dec_file, "the decoder"), (enc_dir, "the DINOv2 encoder folder")):
        if not need.exists():
            raise FileNotFoundError(f"{folder} looks like an official RAE folder but lacks "
                                    f"{need.name} ({what}): {GET_WEIGHTS}")
    dec_state = read_state_dict(dec_file, nested=("state_dict", "model"))
    check_anchors(dec_state, ("decoder_embed.weight",), f"{dec_file} is not an RAE decoder",
                  get=GET_WEIGHTS)
    enc_state, hf_config, enc_file = read_dinov2(enc_dir)
    enc = _encoder_config(enc_state, str(enc_file), hf_config, None)
    d, c = np.shape(dec_state["decoder_embed.weight"])
    if c != enc.hidden_size:
        raise ValueError(f"{dec_file} decodes {c}-channel tokens, but the encoder in {enc_dir} "
                         f"makes {enc.hidden_size}-channel ones: they are not one RAE")
    layers = 0
    while f"decoder_layers.{layers}.layernorm_before.weight" in dec_state:
        layers += 1
    mlp = np.shape(dec_state.get("decoder_layers.0.intermediate.dense.weight", (4 * d, d)))[0]
    pred = np.shape(dec_state.get("decoder_pred.weight", (0, d)))[0]
    p = math.isqrt(max(pred // 3, 0))
    if p * p * 3 != pred or pred == 0:
        raise ValueError(f"{dec_file}: decoder_pred has {pred} outputs, not 3·p² (RGB patches)")
    heads = HEADS_OF_WIDTH.get(d, max(d // 64, 1))
    eps = 1e-12
    if (folder / CONFIG_NAME).is_file():
        dcfg = read_json_object(folder / CONFIG_NAME, "config")
        if dcfg.get("model_type") not in (None, "vit_mae"):
            raise ValueError(f"{folder / CONFIG_NAME} has model_type {dcfg.get('model_type')!r}; "
                             "the official RAE decoder config is a 'vit_mae' one")
        heads = int(dcfg.get("decoder_num_attention_heads", heads))
        eps = float(dcfg.get("layer_norm_eps", eps))
    stats = None
    if stat_file.is_file():
        stats = read_state_dict(stat_file)
        if not ({"mean", "var"} & set(stats)):
            raise ValueError(f"{stat_file} holds neither 'mean' nor 'var' (found "
                             f"{', '.join(sorted(stats)) or 'nothing'}): not an RAE stat.pt")
    if "decoder_pos_embed" in dec_state:
        g = _check_positions(dec_state["decoder_pos_embed"], dec_file)
    elif stats is not None and np.ndim(next(iter(stats.values()))) >= 2:
        g = int(np.shape(next(iter(stats.values())))[-1])
    else:
        g = 16
    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    if (enc_dir / "preprocessor_config.json").is_file():
        proc = read_json_object(enc_dir / "preprocessor_config.json", "config")
        image_mean = tuple(proc.get("image_mean", image_mean))
        image_std = tuple(proc.get("image_std", image_std))
    cfg = RAEConfig(
        encoder=enc, encoder_input_size=g * enc.patch_size, decoder_hidden_size=int(d),
        decoder_num_layers=layers, decoder_num_heads=heads, decoder_mlp_size=int(mlp),
        patch_size=p, decoder_layer_norm_eps=eps, image_mean=image_mean, image_std=image_std,
        stats_formula="official" if stats is not None else "none",
    )
    merged = {"encoder." + k: v for k, v in enc_state.items()}
    merged.update({"decoder." + k: v for k, v in dec_state.items()})
    mean = stats.get("mean") if stats is not None else None
    var = stats.get("var") if stats is not None else None
    merged["stat:latent_mean"] = _stats_to_nhwc(0.0 if mean is None else mean, "mean", stat_file,
                                                cfg.latent_shape)
    merged["stat:latent_spread"] = _stats_to_nhwc(1.0 if var is None else var, "var", stat_file,
                                                  cfg.latent_shape)
    files = [dec_file, *([stat_file] if stats is not None else []), enc_file]
    ignored = {"decoder.decoder_pos_embed", "encoder.layernorm.weight", "encoder.layernorm.bias"}
    return _Read("official", cfg, merged,
                 _source_of("official", enc_state, cfg, "encoder.", "decoder.", str(dec_file)),
                 files, lambda k: k in ignored)


def _digits_sizes(folder: Path) -> dict[str, int]:
    """The digits RAE's sizes from its config.json (module docstring)."""
    cfg = read_json_object(folder / CONFIG_NAME, "config")
    missing = [k for k in _DIGITS_SIZES if not isinstance(cfg.get(k), int)]
    if missing:
        raise ValueError(f"{folder / CONFIG_NAME}: a {DIGITS_CLASS} config needs integer "
                         f"{missing}")
    return {k: int(cfg[k]) for k in _DIGITS_SIZES}


def _digits_config(sizes: Mapping[str, int]) -> RAEConfig:
    return digits_rae_config(hidden=sizes["hidden"], layers=sizes["layers"],
                             heads=sizes["heads"], mlp=sizes["mlp"])


def export_digits_rae(model: DigitsRAE, folder: str | os.PathLike) -> Path:
    """Write `model` (its current parameters: the frozen CNN and the decoder) as a digits RAE
    folder (module docstring), atomically file by file; returns the folder."""
    folder = Path(folder)
    cfg = model.config
    sizes = {"num_classes": int(model.encoder.head.kernel.shape[-1]),
             "hidden": cfg.decoder_hidden_size, "layers": cfg.decoder_num_layers,
             "heads": cfg.decoder_num_heads, "mlp": cfg.decoder_mlp_size}
    write_npz(folder / DIGITS_WEIGHTS, to_arrays(model))
    write_json(folder / CONFIG_NAME, {"_class_name": DIGITS_CLASS, **sizes})
    return folder


def _load_digits(folder: Path) -> DigitsRAE:
    sizes = _digits_sizes(folder)
    weights = folder / DIGITS_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has a {DIGITS_CLASS} {CONFIG_NAME} but no "
                                f"{DIGITS_WEIGHTS}: rerun launch/train_decoder.py "
                                "--config=configs/digits_rae_decoder.py, which writes both")
    model = nnx.eval_shape(lambda: DigitsRAE(
        DigitsCNN(sizes["num_classes"], rngs=nnx.Rngs(0)), hidden=sizes["hidden"],
        layers=sizes["layers"], heads=sizes["heads"], mlp=sizes["mlp"], rngs=nnx.Rngs(0)))
    with np.load(weights) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return from_arrays(model, arrays, str(weights))


def _read(path: str | os.PathLike) -> _Read:
    folder = _folder(path)
    layout = rae_layout(folder)
    if layout == "diffusers":
        return _read_diffusers(folder)
    if layout == "official":
        return _read_official(folder)
    raise ValueError(f"{folder} is neither a diffusers AutoencoderRAE folder nor an official "
                     f"RAE folder: {GET_WEIGHTS}")


# ---------------------------------------------------------------------------------- public


def load_rae(path: str | os.PathLike, *, dtype: Any = jnp.float32) -> RAE:
    """The RAE with the weights at `path` (module docstring: accepted layouts). dtype: compute
    dtype (float32 or bfloat16); parameters and statistics are float32.

    Raises FileNotFoundError (nothing there, saying what to download) or ValueError (unreadable
    or foreign files, mismatched statistics, every missing/misshaped/unexpected tensor listed).
    """
    folder = _folder(path)
    if rae_layout(folder) == "digits":
        return _load_digits(folder)  # float32: the digits RAE is tiny
    r = _read(path)
    model = abstract_rae(r.config, dtype=dtype)
    what = (f"the RAE ({r.layout} layout: DINOv2 {describe_dinov2(r.config.encoder)}, decoder "
            f"width {r.config.decoder_hidden_size}, {r.config.decoder_num_layers} layers)")
    return assign(model, r.state, r.source_of, source=str(r.files[0].parent), what=what,
                  ignore=r.ignore)


def rae_files(path: str | os.PathLike) -> list[Path]:
    """The files that make the RAE at `path`, in a fixed order, without reading them:
    diffusers: config.json, the safetensors; official: model.pt, stat.pt (when present), the
    DINOv2 weights file."""
    folder = _folder(path)
    layout = rae_layout(folder)
    if layout in ("diffusers", "digits"):
        return [folder / CONFIG_NAME,
                folder / (DIFFUSERS_WEIGHTS if layout == "diffusers" else DIGITS_WEIGHTS)]
    enc = folder / OFFICIAL_ENCODER
    enc_file = next((enc / n for n in ("model.safetensors", "pytorch_model.bin")
                     if (enc / n).is_file()), enc / "model.safetensors")
    stats = [folder / OFFICIAL_STATS] if (folder / OFFICIAL_STATS).is_file() else []
    return [folder / OFFICIAL_DECODER, *stats, enc_file]


def rae_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the files' SHA-256s (`rae_files` order): what `describe_rae` records."""
    digests = "".join(file_sha256(f) for f in rae_files(path))
    return hashlib.sha256(digests.encode()).hexdigest()


def describe_rae(path: str | os.PathLike) -> dict[str, Any]:
    """What to record with latents made by these weights, JSON-ready and the same on every
    call: {"kind": "rae", "path", "layout": "diffusers" | "official" | "digits", "files": {path
    within the folder: sha256},
    "sha256": the SHA-256 of the files' hashes in order, "stats_formula", "config"}."""
    folder = _folder(path)
    if rae_layout(folder) == "digits":
        _load_digits(folder)  # the weights fit the config (else ValueError)
        layout, config = "digits", _digits_config(_digits_sizes(folder))
    else:
        r = _read(path)
        layout, config = r.layout, r.config
    files = rae_files(path)
    hashes = {os.path.relpath(f, folder): file_sha256(f) for f in files}
    combined = hashlib.sha256("".join(hashes.values()).encode()).hexdigest()
    return {
        "kind": "rae",
        "path": str(Path(path).expanduser().resolve()),
        "layout": layout,
        "files": hashes,
        "sha256": combined,
        "stats_formula": config.stats_formula,
        "config": config.to_dict(),
    }
