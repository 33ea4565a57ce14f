"""Released DiT and SiT checkpoints ↔ vdm_jax's DiT (vdm_jax.nn.dit), both ways.

DiT (Peebles & Xie 2023, facebookresearch/DiT models.py) and SiT (Ma et al. 2024, willisma/SiT
models.py) define the same network, which vdm_jax's DiT computes too (patch embedding, timestep
and label embedders, AdaLN-Zero blocks, final layer). Their state-dict names ↔ NNX paths
(PyTorch Linear.weight (O, I) ↔ Flax kernel (I, O)):

    x_embedder.proj.weight (D, C, p, p)   ↔ x_embedder.kernel (p·p·C, D)  (a p×p stride-p conv =
                                            a Linear on patches flattened in (p q c) order)
    x_embedder.proj.bias                  ↔ x_embedder.bias
    t_embedder.mlp.0 / mlp.2              ↔ t_embedder.fc1 / fc2
    y_embedder.embedding_table.weight     ↔ y_embedder.embedding_table.embedding
    blocks.N.attn.qkv / attn.proj / mlp.fc1 / mlp.fc2  ↔  the same paths
    blocks.N.adaLN_modulation.1           ↔ blocks.N.adaLN_modulation.linear
    final_layer.adaLN_modulation.1        ↔ final_layer.adaLN_modulation.linear
    final_layer.linear                    ↔ final_layer.linear
    pos_embed (1, T, D)                   ↔ nothing: a frozen sin-cos buffer in the official code,
                                            a constant (sincos_2d) here; checked on import
                                            (train.py's EMA also averages it, so its copy may
                                            drift by rounding: tolerance POS_EMBED_ATOL), written
                                            on export.

Conventions, converted once at the boundary (spec data and weights; nothing at run time):

  'dit'  The official network embeds its 0-based step index: DDPM noise level i ∈ {1..1000} is
         our t = i/1000 and the official index is i − 1 = 1000·t − 1, so the spec gets
         (time_scale, time_shift) = (1000, −1). Outputs unchanged: ε in channels 0..C−1 and,
         with learn_sigma, DiT's variance interpolant in C..2C−1. Schedule: DDPM's linear β.
  'sit'  SiT's time τ = 1 − t (τ = 1 is data) is embedded unscaled: (time_scale, time_shift) =
         (−1, 1). SiT interpolates x_τ = τ·x + (1 − τ)·ε and predicts v = dx_τ/dτ = x − ε;
         vdm_jax's rectified flow has z_t = (1 − t)·x + t·ε and u = dz_t/dt = ε − x = −v. The
         rows of the final Linear (weight and bias) that produce the C velocity channels are
         negated (`flip_velocity`), so the imported network outputs u exactly (negation is
         exact in floating point). SiT's forward discards the other C channels
         (`x, _ = x.chunk(2, dim=1)`), so a SiT import drops them (learn_sigma False,
         prediction 'flow') unless learn_sigma=True is asked for.

Label table: the official table has num_classes + 1 rows (the last is the null class of
classifier-free guidance) when trained with label dropout (class_dropout_prob > 0, the default
and every released model), num_classes rows without. vdm_jax always has num_classes + 1; a table
without the null row gets a row of zeros appended and `null_class_trained` is False: the network
never saw that row, so guidance with it is meaningless (its output for label num_classes is the
network with no label embedding at all).

Files: released EMA weights are plain state dicts (DiT-XL-2-256x256.pt; SiT's sample.py loads
SiT-XL-2-256x256.pt the same way); train.py saves {"model", "ema", "opt", "args"} with args an
argparse.Namespace, loaded here weights-only with exactly that class allowed
(vdm_jax.importers.common.read_checkpoint). The EMA weights are imported unless
weights='model'. Torch pickles need torch; `.safetensors` do not.

Export (`export_dit`) writes the official layout back (NumPy arrays; `common.save_state_dict`
writes them to `.safetensors`, or with torch to `.pt`), so a model trained here runs in the
official PyTorch code. A model whose spec time map differs from the format's by a shift (or a
sign) of the embedded argument is exported as the same function (up to float32 rounding of one
kernel): cos/sin of ω(±s + m) is a rotation of the (cos ωs, sin ωs) pair, folded into
t_embedder.mlp.0 (e.g. a vdm_jax-trained DiT, which embeds 1000·t, exported for the official
code, which embeds 1000·t − 1). Different scales cannot be folded and are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdm_jax.importers.common import (
    Tensor,
    WeightMismatchError,
    assign,
    check_anchors,
    flat_variables,
    identity,
    linear_kernel,
    read_checkpoint,
    strip_prefix,
)
from vdm_jax.nn.blocks import stack_layers, unstack_layers
from vdm_jax.nn.dit import DiT
from vdm_jax.nn.layers import FREQ_DIM, sincos_2d
from vdm_jax.nn.registry import MODEL_CONFIGS, build_model, resolve_spec

__all__ = [
    "CONVENTIONS",
    "FORMATS",
    "POS_EMBED_ATOL",
    "Convention",
    "ImportedDiT",
    "export_dit",
    "flip_velocity",
    "import_dit",
]

POS_EMBED_ATOL = 1e-3  # the table is in [−1, 1]; a wrong grid or layout is off by O(1)
_ANCHORS = (
    "x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight",
    "final_layer.linear.weight", "blocks.0.mlp.fc1.weight",
)


@dataclasses.dataclass(frozen=True)
class Convention:
    """How a checkpoint format's network maps onto vdm_jax's: the time map the embedder needs
    (it embeds time_scale·t + time_shift), whether the C first output channels are negated, what
    they then predict (parameterizations.PREDICTIONS), the schedule it was trained on
    (core.schedules.SCHEDULES) and the precision its released sampling code computes in (DiT's
    and SiT's sample.py / sample_ddp.py: float32, TF32 matmuls on Ampere), an imported run's
    default SamplingSpec.dtype."""

    time_scale: float
    time_shift: float
    negate_velocity: bool
    prediction: str
    schedule: str
    sample_dtype: str = "float32"


CONVENTIONS: dict[str, Convention] = {
    # DDPM noise level i ∈ {1..1000} is t = i/1000; DiT's network embeds its 0-based index i − 1.
    "dit": Convention(1000.0, -1.0, False, "eps", "ddpm_linear"),
    # SiT embeds its own time τ = 1 − t unscaled; its velocity x − ε is −u.
    "sit": Convention(-1.0, 1.0, True, "flow", "rectified_flow"),
}
FORMATS = tuple(CONVENTIONS)


@dataclasses.dataclass(frozen=True)
class ImportedDiT:
    """A checkpoint in vdm_jax's terms.

    spec: registry spec (family 'dit', depth, hidden_size, num_heads, patch_size, mlp_ratio,
    time_scale, time_shift); input_size: the square latent side H = W; in_channels, num_classes
    (real classes; label num_classes is the null class), learn_sigma: the other build_model
    arguments; params: nnx.to_pure_dict(nnx.state(model)) of that model, float32.
    format, prediction, schedule: see CONVENTIONS. null_class_trained: False when the file's
    label table had no null row (module docstring). weights: 'ema' or 'model' (train.py files)
    or 'state_dict' (a plain state dict). train_args: vars() of train.py's args, else None.
    pos_embed_max_abs_diff: |file's pos_embed − sincos_2d| (max).
    """

    spec: dict[str, Any]
    input_size: int
    in_channels: int
    num_classes: int
    learn_sigma: bool
    params: dict[str, Any]
    format: str
    prediction: str
    schedule: str
    null_class_trained: bool
    weights: str
    train_args: dict[str, Any] | None
    pos_embed_max_abs_diff: float

    def build_kwargs(self) -> dict[str, Any]:
        """build_model(self.spec, **self.build_kwargs(), rngs=...) builds this network."""
        return dict(input_size=self.input_size, in_channels=self.in_channels,
                    num_classes=self.num_classes, learn_sigma=self.learn_sigma)

    def build(self, dtype: Any = jnp.float32, scan_layers: bool = False) -> DiT:
        """The network with the imported parameters (compute in `dtype`, parameters float32);
        with scan_layers its blocks stacked on a layer axis (vdm_jax.nn.blocks)."""
        model = nnx.eval_shape(lambda: build_model(
            self.spec, **self.build_kwargs(), dtype=dtype, scan_layers=scan_layers,
            rngs=nnx.Rngs(0),
        ))
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, stack_layers(self.params) if scan_layers else self.params)
        nnx.update(model, state)
        return model


# ------------------------------------------------------------------------------------------------
# Names, layouts and the output sign
# ------------------------------------------------------------------------------------------------


_RENAMES = (  # NNX module path fragments → official ones
    ("t_embedder.fc1", "t_embedder.mlp.0"),
    ("t_embedder.fc2", "t_embedder.mlp.2"),
    ("adaLN_modulation.linear", "adaLN_modulation.1"),
)
_LEAVES = {"kernel": "weight", "embedding": "weight", "bias": "bias"}


def _official_name(path: tuple[str, ...]) -> str:
    """NNX path → official state-dict name (module docstring table)."""
    *module, leaf = path
    name = "x_embedder.proj" if module == ["x_embedder"] else ".".join(module)
    for ours, theirs in _RENAMES:
        name = name.replace(ours, theirs)
    return f"{name}.{_LEAVES[leaf]}"


def _layouts(path: tuple[str, ...], flax_shape: tuple[int, ...], patch: int):
    """(official shape, official → Flax, Flax → official) for the variable at `path`."""
    if path == ("x_embedder", "kernel"):  # (p·p·C, D) ↔ conv (D, C, p, p)
        c, d = flax_shape[0] // (patch * patch), flax_shape[1]
        return (
            (d, c, patch, patch),
            lambda a: a.transpose(2, 3, 1, 0).reshape(flax_shape),
            lambda k: k.reshape(patch, patch, c, d).transpose(3, 2, 0, 1),
        )
    if path[-1] == "kernel":
        return flax_shape[::-1], linear_kernel, linear_kernel
    return flax_shape, identity, identity


def flip_velocity(a: np.ndarray, in_channels: int, out_channels: int) -> np.ndarray:
    """Negates the velocity rows of the final Linear's weight (p·p·C_out, D) or bias
    (p·p·C_out,): rows r with (r mod C_out) < C, C_out = C or 2C (the (p q c) output layout).
    SiT's v = −u, so this maps SiT's final layer to vdm_jax's and back (an involution)."""
    velocity = (np.arange(a.shape[0]) % out_channels) < in_channels
    return np.where(velocity.reshape((-1,) + (1,) * (a.ndim - 1)), -a, a)


def _split_output_rows(a: np.ndarray, in_channels: int, keep: slice) -> np.ndarray:
    """The rows of output channels `keep` (of 2C) of the final Linear's weight or bias."""
    grouped = a.reshape(-1, 2 * in_channels, *a.shape[1:])  # (p·p, 2C, ...)
    return grouped[:, keep].reshape(-1, *a.shape[1:])


# ------------------------------------------------------------------------------------------------
# Import
# ------------------------------------------------------------------------------------------------


def _load(
    source: str | os.PathLike | Mapping[str, Any], weights: str
) -> tuple[dict[str, np.ndarray], str, dict[str, Any] | None, str]:
    """(state dict, 'ema' | 'model' | 'state_dict', train args or None, name for messages)."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}.")
    if isinstance(source, Mapping):
        obj, where = source, "the given state dict"
    else:
        obj, where = read_checkpoint(source, safe_globals=[argparse.Namespace]), str(source)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} holds a {type(obj).__name__}, not a DiT/SiT state dict.")
    args = obj.get("args")
    train_args = vars(args) if isinstance(args, argparse.Namespace) else None
    if isinstance(obj.get("ema"), Mapping) or isinstance(obj.get("model"), Mapping):
        if not isinstance(obj.get(weights), Mapping):
            raise ValueError(
                f"{where} is a training checkpoint without {weights!r} weights (it has "
                f"{[k for k in ('ema', 'model') if isinstance(obj.get(k), Mapping)]}); pass "
                "weights= one of those."
            )
        obj, kind = obj[weights], weights
    elif weights == "model":
        raise ValueError(
            f"{where} is a plain state dict (released files hold the EMA weights), not train.py's "
            "{'model', 'ema', ...}: there are no separate 'model' weights; use weights='ema'."
        )
    else:
        kind = "state_dict"
    state = {k: np.asarray(v) for k, v in obj.items() if hasattr(v, "shape")}
    state = strip_prefix(state, "module.")  # saved from a DDP wrapper
    return state, kind, train_args, where


def _num_heads(
    depth: int, hidden: int, patch: int, num_heads: int | None,
    train_args: dict[str, Any] | None, fmt: str, where: str,
) -> int:
    """Heads are not in the weights: the argument, else train.py's args.model, else the registry
    size with this depth and width."""
    if num_heads is not None:
        return num_heads
    name = str((train_args or {}).get("model", ""))
    registry = re.sub(r"^[DS]iT-", "DiT-", name)
    if registry in MODEL_CONFIGS and MODEL_CONFIGS[registry]["family"] == "dit":
        cfg = MODEL_CONFIGS[registry]
        if (cfg["depth"], cfg["hidden_size"], cfg["patch_size"]) != (depth, hidden, patch):
            raise ValueError(
                f"{where}: args.model is {name!r} but the weights have depth {depth}, width "
                f"{hidden}, patch {patch}; the file is inconsistent."
            )
        return cfg["num_heads"]
    for cfg in MODEL_CONFIGS.values():
        if cfg["family"] == "dit" and (cfg["depth"], cfg["hidden_size"]) == (depth, hidden):
            return cfg["num_heads"]
    raise ValueError(
        f"{where}: depth {depth} and width {hidden} are not a {fmt.upper()} registry size, and "
        "the number of attention heads is not stored in the weights; pass num_heads=."
    )


def _check_format(fmt: str, train_args: dict[str, Any] | None, where: str) -> None:
    if fmt not in CONVENTIONS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")
    if not train_args:
        return
    name = str(train_args.get("model", ""))
    if name[:4] in ("DiT-", "SiT-") and name[:3].lower() != fmt:
        raise ValueError(f"{where} was trained as {name!r} (args.model); import it with "
                         f"format={name[:3].lower()!r}, not {fmt!r}.")
    if fmt == "sit":
        path, pred = train_args.get("path_type", "Linear"), train_args.get("prediction", "velocity")
        if (path, pred) != ("Linear", "velocity"):
            raise ValueError(
                f"{where} is a SiT trained with path_type={path!r}, prediction={pred!r}; only "
                "the Linear path with velocity prediction (SiT's default, rectified flow) maps "
                "onto vdm_jax's conventions here."
            )


def import_dit(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    format: str,
    weights: str = "ema",
    num_heads: int | None = None,
    num_classes: int | None = None,
    learn_sigma: bool | None = None,
) -> ImportedDiT:
    """A DiT or SiT checkpoint → ImportedDiT (spec, build arguments, NNX parameters).

    source: a path (`.pt` / `.pth` / `.bin` / `.ckpt` need torch, `.safetensors` does not) or
    an already-read mapping, holding a state dict or train.py's {"model", "ema", "opt", "args"}.
    format: 'dit' or 'sit' (module docstring; the weights alone cannot tell).
    weights: 'ema' (default; released files are EMA weights) or 'model' (train.py files only).
    num_heads: needed only when neither args.model nor the registry (depth, width) gives it.
    num_classes: real classes; default args.num_classes, else table rows − 1 (a null row, as
    with every released model). A table of exactly num_classes rows gets a zero null row.
    learn_sigma: None = as the file for 'dit', False for 'sit' (SiT never uses the variance
    half); True keeps SiT's variance half as output channels C..2C−1 (unchanged).

    Raises FileNotFoundError (no file), ValueError (unreadable or inconsistent file, bad
    argument) and WeightMismatchError (one message listing every missing, misshaped and
    unexpected tensor).
    """
    state, kind, train_args, where = _load(source, weights)
    _check_format(format, train_args, where)
    conv = CONVENTIONS[format]
    check_anchors(state, _ANCHORS, f"weights from {where} are not a DiT/SiT checkpoint "
                  "(facebookresearch/DiT or willisma/SiT models.py names)",
                  error=WeightMismatchError)
    if state["x_embedder.proj.weight"].ndim != 4 or state["pos_embed"].ndim != 3:
        raise WeightMismatchError(
            f"weights from {where}: x_embedder.proj.weight {state['x_embedder.proj.weight'].shape}"
            f" and pos_embed {state['pos_embed'].shape} should be (D, C, p, p) and (1, T, D)."
        )

    # Structure from shapes.
    hidden, in_channels, patch, patch_w = state["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    rows = state["final_layer.linear.weight"].shape[0]
    out_channels = rows // (patch * patch)
    mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    problems = []
    if patch != patch_w:
        problems.append(f"x_embedder.proj.weight has a non-square patch {patch}×{patch_w}")
    if grid * grid != tokens or state["pos_embed"].shape[::2] != (1, hidden):
        problems.append(f"pos_embed {state['pos_embed'].shape} is not (1, g², {hidden})")
    if rows != patch * patch * out_channels or out_channels not in (in_channels, 2 * in_channels):
        problems.append(f"final_layer.linear.weight has {rows} rows, expected "
                        f"{patch}²·{in_channels} or {patch}²·{2 * in_channels}")
    if problems:
        raise WeightMismatchError(f"weights from {where} are not a consistent DiT: "
                                  + "; ".join(problems) + ".")
    file_learn_sigma = out_channels == 2 * in_channels
    if learn_sigma is None:
        learn_sigma = file_learn_sigma and format == "dit"
    if learn_sigma and not file_learn_sigma:
        raise ValueError(f"{where} has no variance channels (learn_sigma was False in training).")
    heads = _num_heads(depth, hidden, patch, num_heads, train_args, format, where)

    # Labels: the null row.
    table_rows = state["y_embedder.embedding_table.weight"].shape[0]
    if num_classes is None and train_args and isinstance(train_args.get("num_classes"), int):
        num_classes = train_args["num_classes"]
    if num_classes is None:
        num_classes = table_rows - 1
    if table_rows not in (num_classes, num_classes + 1):
        raise WeightMismatchError(
            f"weights from {where}: y_embedder.embedding_table.weight has {table_rows} rows, "
            f"expected {num_classes + 1} ({num_classes} classes + the null class) or "
            f"{num_classes} (trained without label dropout)."
        )
    null_class_trained = table_rows == num_classes + 1
    state = dict(state)
    if not null_class_trained:
        table = state["y_embedder.embedding_table.weight"]
        state["y_embedder.embedding_table.weight"] = np.concatenate(
            [table, np.zeros_like(table[:1])]
        )

    # pos_embed: a constant here; check that it is the one we compute.
    expected = sincos_2d(hidden, (grid, grid))
    pos_diff = float(np.max(np.abs(state.pop("pos_embed")[0].astype(np.float64) - expected)))
    if not pos_diff <= POS_EMBED_ATOL:
        raise WeightMismatchError(
            f"weights from {where}: pos_embed differs from the 2D sin-cos table of a "
            f"{grid}×{grid} grid by up to {pos_diff:.3g} (> {POS_EMBED_ATOL}); this is not "
            "DiT's fixed position embedding."
        )

    # Output channels: SiT's sign, and the variance half SiT never uses.
    for leaf in ("weight", "bias"):
        name = f"final_layer.linear.{leaf}"
        if name not in state or state[name].shape[0] != rows:
            continue  # assign reports it
        a = state[name]
        if file_learn_sigma and not learn_sigma:
            a = _split_output_rows(a, in_channels, slice(0, in_channels))
        kept = 2 * in_channels if learn_sigma else in_channels
        state[name] = flip_velocity(a, in_channels, kept) if conv.negate_velocity else a

    spec = dict(
        family="dit", depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch,
        mlp_ratio=mlp_hidden / hidden, time_scale=conv.time_scale, time_shift=conv.time_shift,
    )
    model = nnx.eval_shape(lambda: build_model(
        spec, input_size=grid * patch, in_channels=in_channels, num_classes=num_classes,
        learn_sigma=learn_sigma, rngs=nnx.Rngs(0),
    ))

    def source_of(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> Tensor:
        shape, to_flax, _ = _layouts(path, flax_shape, patch)
        return Tensor(_official_name(path), shape, to_flax)

    what = (f"the official {format.upper()} (depth {depth}, width {hidden}, patch {patch}, "
            f"{in_channels} channels, {num_classes} classes, learn_sigma {learn_sigma})")
    assign(model, state, source_of, source=where, what=what)
    return ImportedDiT(
        spec=spec, input_size=grid * patch, in_channels=in_channels, num_classes=num_classes,
        learn_sigma=learn_sigma, params=nnx.to_pure_dict(nnx.state(model)), format=format,
        prediction=conv.prediction, schedule=conv.schedule, null_class_trained=null_class_trained,
        weights=kind, train_args=train_args, pos_embed_max_abs_diff=pos_diff,
    )


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _fold_time_map(kernel: np.ndarray, k: float, m: float) -> np.ndarray:
    """fc1 kernel (256, D) of a network embedding k·s + m (k = ±1) → the kernel of the same
    network embedding s: per frequency ω, (cos ω(ks + m), sin ω(ks + m)) is the rotation by ωm
    of (cos ωs, k·sin ωs), so K_cos' = cos(ωm) K_cos + sin(ωm) K_sin and
    K_sin' = k(cos(ωm) K_sin − sin(ωm) K_cos). Computed in float64."""
    half = FREQ_DIM // 2
    # The frequencies exactly as the network computes them (float32).
    freqs = np.exp(-math.log(10_000.0) * np.arange(half, dtype=np.float32) / np.float32(half))
    cos, sin = (f(freqs.astype(np.float64) * m)[:, None] for f in (np.cos, np.sin))
    k_cos, k_sin = kernel[:half].astype(np.float64), kernel[half:].astype(np.float64)
    return np.concatenate([cos * k_cos + sin * k_sin, k * (cos * k_sin - sin * k_cos)])


def _flatten(tree: Mapping[Any, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def export_dit(
    spec: str | Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    format: str,
    input_size: int,
    null_class: bool = True,
) -> dict[str, np.ndarray]:
    """vdm_jax DiT parameters → the official state dict of `format` ('dit' | 'sit'), NumPy
    float32 arrays by official name, `pos_embed` included (save with common.save_state_dict).

    spec: the model's registry name or spec; params: nnx.to_pure_dict(nnx.state(model)) (or
    ImportedDiT.params), its blocks per block or stacked (model.scan_layers); input_size: the
    square side H = W the model runs at (the official code supports square inputs only).
    null_class: False drops the label table's last row (a model to load with
    class_dropout_prob=0, e.g. one imported with null_class_trained False).
    The network must predict what the format's code expects (CONVENTIONS: ε for 'dit', u for
    'sit'); that is not in the weights and is the caller's to ensure. 'sit' always writes 2C
    output channels (SiT's code builds learn_sigma=True by default); a model without a variance
    half gets zero rows there, which SiT's forward discards.

    The spec's time map (time_scale·t + time_shift) is folded into the weights when it differs
    from the format's by a shift or a sign (module docstring); ValueError otherwise.
    `import_dit(export_dit(spec, params, ...), format=...)` returns `params` bit for bit when
    nothing had to be folded.
    """
    if format not in CONVENTIONS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    conv = CONVENTIONS[format]
    spec = resolve_spec(spec)
    if spec["family"] != "dit":
        raise ValueError(f"only DiT models export to the {format.upper()} layout, got a "
                         f"{spec['family']!r} spec.")
    if not isinstance(input_size, int):
        raise ValueError(f"input_size must be an int (the official code supports square inputs "
                         f"only), got {input_size!r}.")
    # A scanned model's stacked blocks in the official per-block layout.
    flat = {path: np.asarray(v) for path, v in _flatten(unstack_layers(params)).items()}
    p, d = spec["patch_size"], spec["hidden_size"]
    try:
        in_channels = flat[("x_embedder", "kernel")].shape[0] // (p * p)
        out_channels = flat[("final_layer", "linear", "kernel")].shape[1] // (p * p)
        num_classes = flat[("y_embedder", "embedding_table", "embedding")].shape[0] - 1
    except KeyError as e:
        raise ValueError(f"params are not a vdm_jax DiT's (no {'/'.join(e.args[0])}).") from None
    model = nnx.eval_shape(lambda: build_model(
        spec, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
        learn_sigma=out_channels == 2 * in_channels, rngs=nnx.Rngs(0),
    ))
    expected = dict(flat_variables(model))
    wrong = sorted(
        [f"missing {'/'.join(k)} {s}" for k, s in expected.items() if k not in flat]
        + [f"unexpected {'/'.join(k)}" for k in flat if k not in expected]
        + [f"{'/'.join(k)}: got {flat[k].shape}, expected {s}"
           for k, s in expected.items() if k in flat and flat[k].shape != s]
    )
    if wrong:
        raise WeightMismatchError("params do not match the spec's DiT:\n  " + "\n  ".join(wrong))

    # The time map: the format's network embeds s = a_f·t + b_f; ours a·t + b = k·s + m.
    k = spec.get("time_scale", 1000.0) / conv.time_scale
    m = spec.get("time_shift", 0.0) - k * conv.time_shift
    fc1 = ("t_embedder", "fc1", "kernel")
    if abs(abs(k) - 1) > 1e-9:
        raise ValueError(
            f"the model embeds {spec.get('time_scale', 1000.0):g}·t + "
            f"{spec.get('time_shift', 0.0):g}, the {format.upper()} code "
            f"{conv.time_scale:g}·t + {conv.time_shift:g}: the time scales differ by a factor "
            f"{k:g}, which no change of weights can express. Export it in the format it was "
            "trained for."
        )
    if (k, m) != (1.0, 0.0):
        flat[fc1] = _fold_time_map(flat[fc1], round(k), m).astype(np.float32)

    out: dict[str, np.ndarray] = {}
    for path, flax_shape in expected.items():
        _, _, to_official = _layouts(path, flax_shape, p)
        out[_official_name(path)] = to_official(flat[path])
    for leaf in ("weight", "bias"):
        name = f"final_layer.linear.{leaf}"
        a = out[name]
        a = flip_velocity(a, in_channels, out_channels) if conv.negate_velocity else a
        if format == "sit" and out_channels == in_channels:
            a = np.stack([a.reshape(p * p, in_channels, *a.shape[1:]),
                          np.zeros((p * p, in_channels, *a.shape[1:]), a.dtype)], axis=1)
            a = a.reshape(-1, *a.shape[3:])
        out[name] = a
    if not null_class:
        out["y_embedder.embedding_table.weight"] = out["y_embedder.embedding_table.weight"][:-1]
    grid = input_size // p
    out["pos_embed"] = sincos_2d(d, (grid, grid))[None]
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in out.items()}
