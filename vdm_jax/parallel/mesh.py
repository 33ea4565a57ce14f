"""The device mesh and the FSDP sharding of parameters, optimizer state and batches.

Mesh axes ('data', 'fsdp'): a batch is split over both (every device holds B / N examples);
parameters are split over 'fsdp' along the dimension whose logical axis name the rules map to it
(ZeRO-3 / FSDP: XLA all-gathers a weight just before use and reduce-scatters its gradient), and
replicated over 'data'. With fsdp = 1 this is plain data parallelism; with data = 1 pure FSDP.
Devices of several TPU slices (multi-slice, joined by the data-center network, DCN) get a hybrid
mesh: 'data' spans the slices, 'fsdp' stays inside one, so only the gradient all-reduce crosses
DCN (`hybrid_mesh`).

Logical axis names come from the models (`vdm_jax.nn.logical_axes`): 'embed' (width D), 'mlp',
'heads', 'patch', 'vocab', 'cond', and 'layers' (the leading axis of stacked blocks with
model.scan_layers, never sharded: every chip runs every layer). `FSDP_RULES` shards 'embed',
the axis every large kernel has; a dimension the fsdp size does not divide stays replicated
rather than failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every device
FSDP_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("patch", None),
    ("vocab", None),
    ("cond", None),
    ("layers", None),  # the stacked blocks' layer axis (model.scan_layers): each chip scans all
)


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolve (data, fsdp) against the device count; −1 takes the remaining devices.

    Raises ValueError naming the sizes when they do not multiply to the device count.
    """
    sizes = [data, fsdp]
    if any(not isinstance(s, int) or (s < 1 and s != -1) for s in sizes):
        raise ValueError(f"mesh sizes must be positive ints or -1, got data={data}, fsdp={fsdp}.")
    if sizes.count(-1) > 1:
        raise ValueError("At most one of mesh.data and mesh.fsdp may be -1.")
    if -1 in sizes:
        known = max(1, np.prod([s for s in sizes if s != -1]))
        if num_devices % known:
            raise ValueError(
                f"mesh.data={data}, mesh.fsdp={fsdp}: {known} does not divide the "
                f"{num_devices} devices. Use sizes whose product divides {num_devices}."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if sizes[0] * sizes[1] != num_devices:
        raise ValueError(
            f"mesh.data={data} × mesh.fsdp={fsdp} = {sizes[0] * sizes[1]} devices, but "
            f"{num_devices} are available. Make the product equal {num_devices}, or set one to -1."
        )
    return sizes[0], sizes[1]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes).

    Devices of several TPU slices (distinct `slice_index`, joined by the data-center network):
    a hybrid mesh (`hybrid_mesh`), data parallel across the slices and FSDP inside each.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    slices = num_slices(devices)
    if slices > 1:
        return hybrid_mesh(shape, slices, devices)
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def num_slices(devices: Sequence[Any]) -> int:
    """The number of TPU slices `devices` span (1 without `slice_index`: one slice, GPU, CPU)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def hybrid_mesh(shape: tuple[int, int], slices: int, devices: Sequence[Any]) -> Mesh:
    """The ('data', 'fsdp') mesh of `shape` over `slices` equal slices: 'data' = slices × d
    (d-way data parallelism inside each slice, over ICI, times the slices, over DCN) and 'fsdp'
    inside one slice, so FSDP's all-gathers and reduce-scatters never cross the slower
    data-center network; only the gradient all-reduce over 'data' does.

    ValueError when the mesh does not fit: 'data' not a multiple of the slices, or 'fsdp' larger
    than a slice."""
    from jax.experimental import mesh_utils

    data, fsdp = shape
    per_slice = len(devices) // slices
    if data % slices or len(devices) % slices:
        raise ValueError(
            f"mesh data={data} × fsdp={fsdp} over {slices} slices of {per_slice} devices: "
            f"FSDP stays inside a slice, so mesh.data must be a multiple of the {slices} "
            f"slices and mesh.fsdp at most {per_slice} (a divisor of it); e.g. mesh.data=-1 "
            f"with mesh.fsdp={fsdp if per_slice % fsdp == 0 else per_slice}")
    grid = mesh_utils.create_hybrid_device_mesh(
        (data // slices, fsdp), (slices, 1), devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _mesh_spec(
    logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, rules: dict[str, str | None]
) -> PartitionSpec:
    """Map one logical spec to mesh axes; an axis the mesh size does not divide is replicated."""
    out = []
    names = tuple(logical) + (None,) * (len(shape) - len(logical))
    for dim, name in zip(shape, names, strict=True):
        axis = rules.get(name) if name is not None else None
        out.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
    # An axis of the mesh may appear once per spec: keep its first use.
    seen: set[str] = set()
    for i, axis in enumerate(out):
        if axis in seen:
            out[i] = None
        elif axis is not None:
            seen.add(axis)
    return PartitionSpec(*out)


def param_shardings(
    logical_specs: Any,
    abstract_params: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]] = FSDP_RULES,
) -> Any:
    """NamedShardings of parameters from their logical PartitionSpecs (a pytree matching
    `abstract_params`, whose leaves only need `.shape`)."""
    rule_map = dict(rules)
    return jax.tree.map(
        lambda spec, p: NamedSharding(mesh, _mesh_spec(spec, tuple(p.shape), mesh, rule_map)),
        logical_specs,
        abstract_params,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def optimizer_shardings(
    tx: optax.GradientTransformation, params: Any, params_sharding: Any, mesh: Mesh
) -> Any:
    """Shardings of tx.init(params): parameter-shaped leaves (Adam's μ, ν) follow their parameter,
    the rest (step counts) are replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_utils.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract,
        params_sharding,
        transform_non_params=lambda _: replicated(mesh),
    )


def to_host(x: Any) -> Any:
    """A (possibly multi-host, batch-sharded) array as one numpy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)
