"""The train state, the optimizer and the EMAs, and creating them sharded.

The train state is a plain pytree (what checkpoints hold):
    {"step": () int32, "params": P, "ema": {name: P}, "opt_state": optax state, "rng": (2,) uint32}
with P = {"denoiser": ..., ["schedule": ...]} float32 master parameters. The optimizer is
clip_by_global_norm(optim.grad_clip) → AdamW; the chain keeps the clip stage (at an infinite
threshold) when grad_clip = 0, so the optimizer state has the same structure either way and a run
may change grad_clip when it resumes. Every EMA follows
ema ← d_k · ema + (1 − d_k) · params with d_k = min(d, (1 + k)/(10 + k)) at update k (TF's
ExponentialMovingAverage warm-up, so early EMAs are not dominated by the random init).
Shardings are explicit: parameters and optimizer state FSDP-sharded (vdm_jax.parallel.mesh).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vdm_jax.config import ema_name
from vdm_jax.model import DiffusionModel
from vdm_jax.parallel import mesh as mesh_lib

Array = jax.Array
State = dict[str, Any]


def learning_rate_schedule(optim: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    """Linear warm-up to optim.lr over optim.warmup_steps, then 'constant', 'cosine' decay, or
    'linear' (RAE): optim.lr until step optim.decay_start_steps, linearly to optim.final_lr at
    optim.decay_end_steps, optim.final_lr after."""
    lr, warmup = float(optim["lr"]), int(optim["warmup_steps"])
    kind = optim["schedule"]
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
    elif kind == "linear":
        start = int(optim["decay_start_steps"]) - warmup  # counted after the warm-up
        end = int(optim["decay_end_steps"]) - warmup
        after = optax.join_schedules([
            optax.constant_schedule(lr),
            optax.linear_schedule(lr, float(optim["final_lr"]), end - start)], [start])
    else:
        raise ValueError(f"optim.schedule={kind!r}; expected 'constant', 'cosine' or 'linear'.")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: biases, norm scales and the schedule's scalars are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    optim: Mapping[str, Any], num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip_by_global_norm(optim.grad_clip, or ∞ when 0) → AdamW(lr schedule, b1, b2, eps,
    weight_decay); see the module docstring."""
    schedule = learning_rate_schedule(optim, num_steps)
    clip = float(optim["grad_clip"]) if optim["grad_clip"] else math.inf  # inf: the identity
    tx = optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(
            schedule, b1=float(optim["b1"]), b2=float(optim["b2"]), eps=float(optim["eps"]),
            weight_decay=float(optim["weight_decay"]), mask=_decay_mask,
        ),
    )
    return tx, schedule


def state_shardings(
    model: DiffusionModel, abstract_params: Any, tx: optax.GradientTransformation,
    ema_decays: Sequence[float], mesh: Mesh,
) -> State:
    """NamedShardings of every leaf of the train state on `mesh` (see the module docstring)."""
    params = mesh_lib.param_shardings(model.param_specs, abstract_params, mesh)
    return {
        "step": mesh_lib.replicated(mesh),
        "params": params,
        "ema": {ema_name(d): params for d in ema_decays},
        "opt_state": mesh_lib.optimizer_shardings(tx, abstract_params, params, mesh),
        "rng": mesh_lib.replicated(mesh),
    }


def init_state(
    params: Any, tx: optax.GradientTransformation, ema_decays: Sequence[float], rng: Array
) -> State:
    """A fresh train state: step 0, EMAs equal to the parameters."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema": {ema_name(d): jax.tree.map(jnp.copy, params) for d in ema_decays},
        "opt_state": tx.init(params),
        "rng": jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    }


def step_rng(base: Array, step: int | Array) -> Array:
    """The key of step `step`: fold_in(base, step), base being state['rng'] (raw uint32 data)."""
    return jax.random.fold_in(jax.random.wrap_key_data(base), step)


def _traced(
    build_fn: Callable[[], tuple[DiffusionModel, Any]], tx: optax.GradientTransformation,
    ema_decays: Sequence[float], mesh: Mesh,
) -> tuple[DiffusionModel, Callable[[], Any], Any, State]:
    """build_fn traced abstractly: (model, params_only, abstract params, state shardings)."""
    holder: dict[str, DiffusionModel] = {}

    def params_only():
        model, params = build_fn()
        holder["model"] = model
        return params

    abstract = jax.eval_shape(params_only)
    model = holder["model"]
    return model, params_only, abstract, state_shardings(model, abstract, tx, ema_decays, mesh)


def abstract_state(
    build_fn: Callable[[], tuple[DiffusionModel, Any]], tx: optax.GradientTransformation,
    ema_decays: Sequence[float], seed: int, mesh: Mesh,
) -> tuple[DiffusionModel, State, State]:
    """The train state from shapes alone (nothing is initialized or allocated): (model,
    ShapeDtypeStructs of `create_state`'s state, each with its NamedSharding on `mesh`,
    shardings) — what `jax.jit(...).lower` takes to compile ahead of time."""
    model, _, abstract, shardings = _traced(build_fn, tx, ema_decays, mesh)
    shapes = jax.eval_shape(lambda p: init_state(p, tx, ema_decays, jax.random.key(seed)),
                            abstract)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         shapes, shardings)
    return model, state, shardings


def create_state(
    build_fn: Callable[[], tuple[DiffusionModel, Any]], tx: optax.GradientTransformation,
    ema_decays: Sequence[float], seed: int, mesh: Mesh,
) -> tuple[DiffusionModel, State, State]:
    """Initialize a sharded train state without materializing it on one device.

    build_fn() -> (DiffusionModel, params) is traced once abstractly (for the model and shapes)
    and once under jit with the FSDP out_shardings. Returns (model, state, shardings).
    """
    model, params_only, _, shardings = _traced(build_fn, tx, ema_decays, mesh)

    def init():
        return init_state(params_only(), tx, ema_decays, jax.random.key(seed))

    state = jax.jit(init, out_shardings=shardings)()
    return model, state, shardings
