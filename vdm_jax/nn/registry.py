"""Model size registry and validation of custom specs.

A spec is a plain dict. Common keys: family ('dit' | 'jit' | 'ddt' | 'dit_dh'), depth,
hidden_size, num_heads, patch_size, mlp_ratio; a DDT has encoder_depth and decoder_depth instead
of depth; a DiT^DH adds its head's head_depth, head_hidden_size and head_num_heads.
DiT adds time_scale and time_shift (optional, default 1000 and 0): the timestep embedder sees
time_scale·t + time_shift, which is how imported checkpoints keep their own time convention
(vdm_jax.importers.dit); and second_time (bool, default False): MeanFlow's
two-time model u(z, r, t). JiT adds bottleneck_dim (width of the p×p patch projection),
in_context_len (number of class tokens) and in_context_start (index of the first block that sees
them). Registry sizes follow DiT (Peebles & Xie 2023, Table 1), JiT (Li & He 2025,
github.com/LTH14/JiT model_jit.py) and DDT (Wang et al. 2025, github.com/MCG-NJU/DDT
configs/repa_improved_ddt_xlen22de6_256.yaml: 22 encoder + 6 decoder blocks of width 1152 with
16 heads; other splits are custom specs) and DiT^DH (RAE, github.com/bytetriper/RAE
configs/stage2: DiT's S/B/L/XL backbones, patch 1, with a head of 2 blocks of width 2048 and
16 heads).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.nn.ddt import DDT
from vdm_jax.nn.dit import DiT
from vdm_jax.nn.dit_dh import DiTDH
from vdm_jax.nn.jit import JiT
from vdm_jax.nn.layers import grid_size

_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# (depth, hidden, heads, bottleneck_dim, in_context_start); in_context_len is 32 for all.
_JIT_SIZES = {"B": (12, 768, 12, 128, 4), "L": (24, 1024, 16, 128, 8), "H": (32, 1280, 16, 256, 10)}

MODEL_CONFIGS: dict[str, dict[str, Any]] = {}
for _size, (_depth, _hidden, _heads) in _DIT_SIZES.items():
    for _p in (2, 4, 8):
        MODEL_CONFIGS[f"DiT-{_size}/{_p}"] = dict(
            family="dit", depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_p,
            mlp_ratio=4.0,
        )
for _size, (_depth, _hidden, _heads, _bneck, _start) in _JIT_SIZES.items():
    for _p in (16, 32):
        MODEL_CONFIGS[f"JiT-{_size}/{_p}"] = dict(
            family="jit", depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_p,
            mlp_ratio=4.0, bottleneck_dim=_bneck, in_context_len=32, in_context_start=_start,
        )

# (encoder_depth, decoder_depth, hidden, heads)
_DDT_SIZES = {"XL": (22, 6, 1152, 16)}
for _size, (_enc, _dec, _hidden, _heads) in _DDT_SIZES.items():
    MODEL_CONFIGS[f"DDT-{_size}/2"] = dict(
        family="ddt", encoder_depth=_enc, decoder_depth=_dec, hidden_size=_hidden,
        num_heads=_heads, patch_size=2, mlp_ratio=4.0,
    )

# The DiT^DH head of the released configs: (head_depth, head_hidden_size, head_num_heads).
_DIT_DH_HEAD = (2, 2048, 16)
for _size, (_depth, _hidden, _heads) in _DIT_SIZES.items():
    MODEL_CONFIGS[f"DiTDH-{_size}/1"] = dict(
        family="dit_dh", depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=1,
        mlp_ratio=4.0, head_depth=_DIT_DH_HEAD[0], head_hidden_size=_DIT_DH_HEAD[1],
        head_num_heads=_DIT_DH_HEAD[2],
    )

_COMMON_KEYS = ("family", "hidden_size", "num_heads", "patch_size", "mlp_ratio")
_FAMILY_KEYS = {
    "dit": ("depth", "time_scale", "time_shift", "second_time"),
    "jit": ("depth", "bottleneck_dim", "in_context_len", "in_context_start"),
    "ddt": ("encoder_depth", "decoder_depth"),
    "dit_dh": ("depth", "head_depth", "head_hidden_size", "head_num_heads"),
}
_REQUIRED = {
    "dit": ("depth", "hidden_size", "num_heads", "patch_size"),
    "jit": ("depth", "hidden_size", "num_heads", "patch_size"),
    "ddt": ("encoder_depth", "decoder_depth", "hidden_size", "num_heads", "patch_size"),
    "dit_dh": ("depth", "hidden_size", "num_heads", "patch_size", "head_depth",
               "head_hidden_size", "head_num_heads"),
}
FAMILIES = tuple(_FAMILY_KEYS)


def resolve_spec(name_or_spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """A registry name, a dict {'name': <registry name>, **overrides}, or a custom spec dict →
    a complete, validated spec dict (a copy)."""
    if isinstance(name_or_spec, Mapping) and "name" in name_or_spec:
        overrides = {k: v for k, v in name_or_spec.items() if k != "name"}
        return resolve_spec({**resolve_spec(name_or_spec["name"]), **overrides})
    if isinstance(name_or_spec, str):
        if name_or_spec not in MODEL_CONFIGS:
            raise ValueError(
                f"Unknown model name {name_or_spec!r}. Valid names: {', '.join(MODEL_CONFIGS)}; "
                "or pass a spec dict such as {'family': 'dit', 'depth': 2, 'hidden_size': 64, "
                "'num_heads': 4, 'patch_size': 2}."
            )
        return dict(MODEL_CONFIGS[name_or_spec])
    if not isinstance(name_or_spec, Mapping):
        raise ValueError(
            f"Model must be a registry name or a spec dict, got {type(name_or_spec).__name__}."
        )
    spec = dict(name_or_spec)
    family = spec.get("family")
    if family not in FAMILIES:
        raise ValueError(f"Spec 'family' must be one of {FAMILIES}, got {family!r}.")
    missing = [k for k in _REQUIRED[family] if k not in spec]
    if missing:
        raise ValueError(f"Model spec is missing {missing}; got keys {sorted(spec)}.")
    spec.setdefault("mlp_ratio", 4.0)
    allowed = _COMMON_KEYS + _FAMILY_KEYS[family]
    if family == "jit":
        spec.setdefault("bottleneck_dim", 128)
        spec.setdefault("in_context_len", 32)
        # depth // 3 reproduces the published starts (4/12, 8/24, 10/32).
        spec.setdefault("in_context_start", spec["depth"] // 3)
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown keys {unknown} in a {family!r} spec; allowed: {allowed}.")
    _validate(spec)
    return spec


def num_blocks(spec: Mapping[str, Any]) -> int:
    """The blocks REPA may align (a DDT: its encoder's), of a resolved spec."""
    return spec["encoder_depth"] if spec["family"] == "ddt" else spec["depth"]


def _validate(spec: dict[str, Any]) -> None:
    for key in _REQUIRED[spec["family"]] + (
        ("bottleneck_dim",) if spec["family"] == "jit" else ()
    ):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise ValueError(f"Spec {key!r} must be a positive int, got {spec[key]!r}.")
    d, heads = spec["hidden_size"], spec["num_heads"]
    if d % heads:
        raise ValueError(f"hidden_size {d} is not divisible by num_heads {heads}.")
    if d % 4:
        # The 2D sin-cos embedding gives D/4 frequencies to each of the two axes.
        raise ValueError(f"hidden_size {d} must be a multiple of 4 (2D sin-cos embedding).")
    if spec["mlp_ratio"] <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {spec['mlp_ratio']}.")
    if not isinstance(spec.get("second_time", False), bool):
        raise ValueError(f"second_time must be True or False, got {spec['second_time']!r}.")
    for key in ("time_scale", "time_shift"):
        value = spec.get(key, 0.0)
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (real and math.isfinite(value)):
            raise ValueError(f"Spec {key!r} must be a finite number, got {value!r}.")
    if spec.get("time_scale", 1.0) == 0:
        raise ValueError("Spec 'time_scale' must be nonzero (0 would hide t from the network).")
    if spec["family"] == "dit_dh":
        dh, hh = spec["head_hidden_size"], spec["head_num_heads"]
        if dh % hh or (dh // hh) % 4:
            raise ValueError(f"DiT^DH head_hidden_size {dh} must be divisible by head_num_heads "
                             f"{hh} into a head dim that is a multiple of 4 (2D RoPE).")
    if spec["family"] in ("jit", "ddt", "dit_dh") and (d // heads) % 4:
        # 2D RoPE rotates pairs, half of the head dimension per image axis.
        raise ValueError(f"{spec['family'].upper()} head dim {d // heads} must be a multiple of 4 "
                         "(2D RoPE).")
    if spec["family"] == "jit":
        n_ctx, start = spec["in_context_len"], spec["in_context_start"]
        if not isinstance(n_ctx, int) or n_ctx < 0:
            raise ValueError(f"in_context_len must be an int >= 0, got {n_ctx!r}.")
        if n_ctx > 0 and not (isinstance(start, int) and 0 <= start < spec["depth"]):
            raise ValueError(
                f"in_context_start must be an int in [0, depth={spec['depth']}), got {start!r}."
            )


def build_model(
    name_or_spec: str | Mapping[str, Any],
    *,
    input_size: tuple[int, int] | int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool = False,
    dtype: Any = jnp.float32,
    scan_layers: bool = False,
    remat: str = "none",
    rngs: nnx.Rngs,
) -> DiT | JiT | DDT | DiTDH:
    """Build a registry model ("DiT-XL/2", "JiT-B/16", "DDT-XL/2", ...) or a custom spec dict, e.g.
    {"family": "dit", "depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}.

    input_size: (H, W) or an int for square inputs, each divisible by the patch size.
    num_classes: number of real classes (0 = unconditional); the label table has one more row,
    the null class. dtype: compute dtype (parameters are always float32). scan_layers: blocks
    stacked on a layer axis and run by one scan; remat: the blocks' rematerialization policy
    (vdm_jax.nn.blocks.REMAT_POLICIES); neither changes the function computed.
    Use under `nnx.eval_shape(lambda: build_model(...))` to get shapes without allocating.
    """
    spec = resolve_spec(name_or_spec)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(
            f"num_classes must be an int >= 0 (0 = unconditional), got {num_classes!r}."
        )
    grid_size(input_size, spec["patch_size"])  # divisibility check with a clear message
    family = spec.pop("family")
    cls = {"dit": DiT, "jit": JiT, "ddt": DDT, "dit_dh": DiTDH}[family]
    kwargs = dict(
        input_size=input_size, in_channels=in_channels, num_classes=num_classes,
        learn_sigma=learn_sigma, dtype=dtype, scan_layers=scan_layers, remat=remat, rngs=rngs,
        **spec,
    )
    if jax.sharding.get_abstract_mesh().empty:
        # No mesh to shard onto: create plain arrays but keep the logical-axis metadata.
        with nnx.use_eager_sharding(False):
            return cls(**kwargs)
    return cls(**kwargs)


def logical_axes(model: nnx.Module) -> nnx.State:
    """Logical axis names of every variable, as a State of PartitionSpecs, e.g.
    P('embed', 'mlp') for an MLP kernel. Equal to nnx.get_partition_spec(nnx.state(model))."""
    return nnx.get_partition_spec(nnx.state(model))


def logical_specs(module: nnx.Module) -> dict:
    """Logical PartitionSpecs of a module's variables as a pure dict (the pytree structure of
    `nnx.to_pure_dict(nnx.state(module))`), for vdm_jax.parallel.mesh.param_shardings."""
    return nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(module)))
