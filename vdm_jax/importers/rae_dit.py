"""Released RAE stage-2 checkpoints (DiT^DH) ↔ vdm_jax's DiTDH (vdm_jax.nn.dit_dh), both ways.

RAE (github.com/bytetriper/RAE, src/stage2/models/DDT.py `DiTwDDTHead`) state-dict names ↔ NNX
paths (PyTorch Linear.weight (O, I) ↔ Flax kernel (I, O)); the official `blocks` list holds the
backbone's `depth` blocks, then the head's:

    x_embedder.proj.weight (D_h, C, p, p)  ↔ x_embedder.kernel (p·p·C, D_h)   (conv = Linear on
    s_embedder.proj.weight (D, C, p, p)    ↔ s_embedder.kernel (p·p·C, D)      (p q c) patches)
    s_projector                            ↔ s_projector (absent when D = D_h)
    t_embedder.W (256,)                    ↔ t_embedder.W (the fixed Fourier draw)
    t_embedder.mlp.0 / mlp.2               ↔ t_embedder.fc1 / fc2
    y_embedder.embedding_table.weight      ↔ y_embedder.embedding_table.embedding
    blocks.i, i < depth                    ↔ blocks.i
    blocks.(depth + j)                     ↔ head_blocks.j
      norm1 / norm2 .weight                ↔ norm1 / norm2 .scale (RMSNorm)
      attn.qkv / attn.proj / mlp.w12 / mlp.w3  ↔  the same paths
      adaLN_modulation.1                   ↔ adaLN_modulation.linear
    final_layer.norm_final.weight          ↔ final_layer.norm_final.scale
    final_layer.adaLN_modulation.1 / linear ↔ final_layer.adaLN_modulation.linear / linear
    pos_embed (1, T, D)                    ↔ nothing: sincos_2d, checked on import, written on
                                             export (a frozen parameter there)
    enc_feat_rope / dec_feat_rope .freqs_cos / .freqs_sin (T, D/N)  ↔  nothing: rope_2d's
                                             tables (same layout); they give the head counts,
                                             which the weights do not otherwise hold

Conventions: none to convert. RAE's Linear path (stage2/transport/path.py ICPlan) is
x_t = (1 − t)·x + t·ε, so its t = 0 is the data and t = 1 the noise, as ours (unlike SiT, whose
t = 1 is data), and its network predicts dx_t/dt = ε − x, our flow velocity u
(model.prediction 'flow', schedule rectified_flow). Its samplers walk t from 1 down (their
grid is 1 − linspace(0, 1 − 1/1000, N), then time-shifted, vdm_jax.core.time_sampling
.time_shift). So the weights are copied as they are, the time embedder reads t unchanged, and
the output is u unchanged. The head boundary (depth) is read off the widths when D ≠ D_h (every
released model); pass head_depth= when they are equal.

Files: `stage2_model.pt` holds the EMA weights, either as a plain state dict or as train.py's
{"model", "ema", "optimizer", ...}; the "ema" key is taken when present (as RAE's
instantiate_from_config does), "model" with weights='model'. Torch pickles need torch;
`.safetensors` do not.
"""

from __future__ import annotations

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
)
from vdm_jax.importers.dit import POS_EMBED_ATOL, _flatten, _load
from vdm_jax.nn.blocks import unstack_layers
from vdm_jax.nn.dit_dh import DiTDH
from vdm_jax.nn.layers import rope_2d, sincos_2d
from vdm_jax.nn.registry import build_model, resolve_spec

__all__ = ["ImportedDiTDH", "export_rae_dit", "import_rae_dit"]

PREDICTION, SCHEDULE = "flow", "rectified_flow"  # RAE's velocity and path, in our terms
_ANCHORS = ("x_embedder.proj.weight", "s_embedder.proj.weight", "pos_embed", "t_embedder.W",
            "enc_feat_rope.freqs_cos", "dec_feat_rope.freqs_cos",
            "y_embedder.embedding_table.weight", "final_layer.linear.weight")
_LEAVES = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


@dataclasses.dataclass(frozen=True)
class ImportedDiTDH:
    """A stage-2 checkpoint in vdm_jax's terms: spec (family 'dit_dh'), input_size (square
    side), in_channels, num_classes (real classes; label num_classes is the null class), params
    (nnx.to_pure_dict of the model, float32), weights ('ema', 'model' or 'state_dict'),
    prediction 'flow', schedule 'rectified_flow', pos_embed_max_abs_diff."""

    spec: dict[str, Any]
    input_size: int
    in_channels: int
    num_classes: int
    params: dict[str, Any]
    weights: str
    pos_embed_max_abs_diff: float
    prediction: str = PREDICTION
    schedule: str = SCHEDULE

    def build(self, dtype: Any = jnp.float32) -> DiTDH:
        """The network with the imported parameters (compute in `dtype`)."""
        model = nnx.eval_shape(lambda: build_model(
            self.spec, input_size=self.input_size, in_channels=self.in_channels,
            num_classes=self.num_classes, dtype=dtype, rngs=nnx.Rngs(0)))
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, self.params)
        nnx.update(model, state)
        return model


def _official_name(path: tuple[str, ...], depth: int) -> str:
    """NNX path → official state-dict name (module docstring table)."""
    *module, leaf = path
    if module[0] == "head_blocks":
        module = ["blocks", str(depth + int(module[1])), *module[2:]]
    if module in (["x_embedder"], ["s_embedder"]):
        module = [module[0], "proj"]
    name = ".".join(module)
    name = name.replace("t_embedder.fc1", "t_embedder.mlp.0")
    name = name.replace("t_embedder.fc2", "t_embedder.mlp.2")
    name = name.replace("adaLN_modulation.linear", "adaLN_modulation.1")
    return f"{name}.{_LEAVES.get(leaf, leaf)}"  # bias and W keep their names


def _layouts(path: tuple[str, ...], flax_shape: tuple[int, ...], patch: int):
    """(official shape, official → Flax, Flax → official) for the variable at `path`."""
    if path[-1] == "kernel" and path[0] in ("x_embedder", "s_embedder"):
        c, d = flax_shape[0] // (patch * patch), flax_shape[1]
        return ((d, c, patch, patch),
                lambda a: a.transpose(2, 3, 1, 0).reshape(flax_shape),
                lambda k: k.reshape(patch, patch, c, d).transpose(3, 2, 0, 1))
    if path[-1] == "kernel":
        return flax_shape[::-1], linear_kernel, linear_kernel
    return flax_shape, identity, identity


def import_rae_dit(
    source: str | os.PathLike | Mapping[str, Any], *, weights: str = "ema",
    head_depth: int | None = None, num_classes: int | None = None,
) -> ImportedDiTDH:
    """A stage-2 checkpoint (path or mapping; module docstring) → ImportedDiTDH.

    Raises FileNotFoundError, ValueError (unreadable or inconsistent file, bad argument) and
    WeightMismatchError (every missing, misshaped and unexpected tensor in one message)."""
    state, kind, _, where = _load(source, weights)
    check_anchors(state, _ANCHORS, f"weights from {where} are not an RAE stage-2 DiTwDDTHead "
                  "checkpoint", error=WeightMismatchError)
    dh, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    d = state["s_embedder.proj.weight"].shape[0]
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    widths = [state[f"blocks.{i}.norm1.weight"].shape[0] for i in range(n_blocks)
              if f"blocks.{i}.norm1.weight" in state]
    if head_depth is None:
        if d == dh:
            raise ValueError(f"{where}: the backbone and the head are both {d} wide, so the "
                             "weights do not say where the head starts; pass head_depth=.")
        head_depth = sum(w == dh for w in widths)
    depth = n_blocks - head_depth
    heads = d // state["enc_feat_rope.freqs_cos"].shape[1]
    head_heads = dh // state["dec_feat_rope.freqs_cos"].shape[1]
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    num_classes = rows - 1 if num_classes is None else num_classes
    if rows != num_classes + 1:
        raise WeightMismatchError(f"weights from {where}: the label table has {rows} rows, "
                                  f"expected {num_classes} classes + the null class.")
    if grid * grid != tokens or depth < 1:
        raise WeightMismatchError(f"weights from {where}: pos_embed {state['pos_embed'].shape} "
                                  f"and {n_blocks} blocks ({head_depth} in the head) are not a "
                                  "square DiT^DH.")
    spec = resolve_spec(dict(
        family="dit_dh", depth=depth, hidden_size=d, num_heads=heads, patch_size=patch,
        mlp_ratio=4.0, head_depth=head_depth, head_hidden_size=dh, head_num_heads=head_heads))
    state = dict(state)
    pos_diff = float(np.max(np.abs(state.pop("pos_embed")[0].astype(np.float64)
                                   - sincos_2d(d, (grid, grid)))))
    rope_diff = max(
        float(np.max(np.abs(state.pop(f"{which}.{part}").astype(np.float64) - table)))
        for which, width, n in (("enc_feat_rope", d, heads), ("dec_feat_rope", dh, head_heads))
        for part, table in zip(("freqs_cos", "freqs_sin"), rope_2d((grid, grid), width // n),
                               strict=True))
    if not (pos_diff <= POS_EMBED_ATOL and rope_diff <= POS_EMBED_ATOL):
        raise WeightMismatchError(
            f"weights from {where}: pos_embed or the RoPE tables differ from a {grid}×{grid} "
            f"grid's by up to {max(pos_diff, rope_diff):.3g} (> {POS_EMBED_ATOL}).")
    mlp_hidden = state["blocks.0.mlp.w3.weight"].shape[1]
    if mlp_hidden != int(int(d * 4.0) * 2 / 3):
        raise WeightMismatchError(f"weights from {where}: SwiGLU width {mlp_hidden} is not "
                                  f"int(2/3 · 4 · {d}) (mlp_ratio 4, every released model).")
    model = nnx.eval_shape(lambda: build_model(
        spec, input_size=grid * patch, in_channels=in_channels, num_classes=num_classes,
        rngs=nnx.Rngs(0)))

    def source_of(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> Tensor:
        shape, to_flax, _ = _layouts(path, flax_shape, patch)
        return Tensor(_official_name(path, depth), shape, to_flax)

    what = (f"RAE's DiTwDDTHead (backbone {depth}×{d}, head {head_depth}×{dh}, patch {patch}, "
            f"{in_channels} channels, {num_classes} classes)")
    assign(model, state, source_of, source=where, what=what)
    return ImportedDiTDH(
        spec=spec, input_size=grid * patch, in_channels=in_channels, num_classes=num_classes,
        params=nnx.to_pure_dict(nnx.state(model)), weights=kind,
        pos_embed_max_abs_diff=pos_diff)


def export_rae_dit(
    spec: str | Mapping[str, Any], params: Mapping[str, Any], *, input_size: int,
) -> dict[str, np.ndarray]:
    """vdm_jax DiTDH parameters → RAE's state dict (NumPy float32 by official name, pos_embed
    and the RoPE buffers included), loadable with load_state_dict(strict=True).
    `import_rae_dit(export_rae_dit(spec, params, ...))` returns `params` bit for bit."""
    spec = resolve_spec(spec)
    if spec["family"] != "dit_dh":
        raise ValueError(f"only DiT^DH models export to RAE's layout, got a {spec['family']!r} "
                         "spec.")
    # A scanned network's stacked blocks are unstacked to the official per-block layout.
    flat = {path: np.asarray(v) for path, v in _flatten(unstack_layers(params)).items()}
    p = spec["patch_size"]
    try:
        in_channels = flat[("x_embedder", "kernel")].shape[0] // (p * p)
        num_classes = flat[("y_embedder", "embedding_table", "embedding")].shape[0] - 1
    except KeyError as e:
        raise ValueError(f"params are not a vdm_jax DiTDH's (no {'/'.join(e.args[0])}).") from None
    model = nnx.eval_shape(lambda: build_model(
        spec, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
        rngs=nnx.Rngs(0)))
    expected = dict(flat_variables(model))
    wrong = sorted([f"missing {'/'.join(k)}" for k in expected if k not in flat]
                   + [f"unexpected {'/'.join(k)}" for k in flat if k not in expected]
                   + [f"{'/'.join(k)}: got {flat[k].shape}, expected {s}"
                      for k, s in expected.items() if k in flat and flat[k].shape != s])
    if wrong:
        raise WeightMismatchError("params do not match the spec's DiTDH:\n  " + "\n  ".join(wrong))
    out = {_official_name(path, spec["depth"]): _layouts(path, shape, p)[2](flat[path])
           for path, shape in expected.items()}
    grid = (input_size // p, input_size // p)
    out["pos_embed"] = sincos_2d(spec["hidden_size"], grid)[None]
    for which, width, n in (("enc_feat_rope", spec["hidden_size"], spec["num_heads"]),
                            ("dec_feat_rope", spec["head_hidden_size"], spec["head_num_heads"])):
        out[f"{which}.freqs_cos"], out[f"{which}.freqs_sin"] = rope_2d(grid, width // n)
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in out.items()}
