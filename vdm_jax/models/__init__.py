"""Model zoo: DiT and JiT denoisers, the VDM learned noise schedule, and their analytic cost.

    model = build_model("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000,
                        learn_sigma=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = model(x, t, y)   # x (B,H,W,C) NHWC, t (B,) float in [0, 1], y (B,) int32 → (B,H,W,C_out)

Label dropout for classifier-free guidance is the pure function `label_dropout(rng, y, p,
num_classes)`, applied by the trainer before the forward pass; the models hold no rng.

Sharding: every parameter carries logical axis names — 'embed' (width D), 'mlp' (MLP hidden),
'heads' (attention projections), 'patch' (flattened patch input), 'vocab' (label table rows),
'cond' (adaLN output 6D / 2D), None for small axes. `logical_axes(model)` returns them as a
State of PartitionSpecs (same as `nnx.get_partition_spec(nnx.state(model))`); map them to mesh
axes with `nnx.logical_axis_rules` / `flax.linen.logical_to_mesh_sharding`. Built without an
active mesh, parameters are created unsharded; built under `jax.set_mesh(mesh)` together with
`nnx.logical_axis_rules(rules)`, Flax shards each parameter as it is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.models.configs import MODEL_CONFIGS, grid_size, resolve_spec
from vdm_jax.models.cost import model_cost
from vdm_jax.models.dit import DEFAULT_LABEL_DROPOUT, DiT, label_dropout
from vdm_jax.models.jit import JiT
from vdm_jax.models.learned_schedule import LearnedGamma, learned_schedule

__all__ = [
    "DEFAULT_LABEL_DROPOUT",
    "MODEL_CONFIGS",
    "DiT",
    "JiT",
    "LearnedGamma",
    "build_model",
    "label_dropout",
    "learned_schedule",
    "logical_axes",
    "model_cost",
    "resolve_spec",
]


def build_model(
    name_or_spec: str | Mapping[str, Any],
    *,
    input_size: tuple[int, int] | int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool = False,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
) -> DiT | JiT:
    """Build a registry model ("DiT-XL/2", "JiT-B/16", ...) or a custom spec dict, e.g.
    {"family": "dit", "depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}.

    input_size: (H, W) or an int for square inputs, each divisible by the patch size.
    num_classes: number of real classes (0 = unconditional); the label table has one more row,
    the null class. dtype: compute dtype (parameters are always float32).
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
    cls = DiT if family == "dit" else JiT
    kwargs = dict(
        input_size=input_size, in_channels=in_channels, num_classes=num_classes,
        learn_sigma=learn_sigma, dtype=dtype, rngs=rngs, **spec,
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
