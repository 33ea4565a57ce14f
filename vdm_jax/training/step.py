"""Optimizer, train state and the training step: one pure function under `jax.jit`.

The train state is a plain pytree (what checkpoints hold):
    {"step": () int32, "params": P, "ema": {name: P}, "opt_state": optax state, "rng": (2,) uint32}
with P = {"denoiser": ..., ["schedule": ...]} float32 master parameters. The step

    (state, batch, rng) -> (state, metrics)

splits the global batch into `micro_batches` (gradient accumulation with `lax.scan`, so the global
batch does not depend on memory), averages gradients, applies optax (clip → AdamW), and updates
every EMA: ema ← d_k · ema + (1 − d_k) · params with d_k = min(d, (1 + k)/(10 + k)) at update k
(TF's ExponentialMovingAverage warm-up, so early EMAs are not dominated by the random init).
Shardings are explicit: parameters and optimizer state FSDP-sharded (training.mesh), the batch
over every device, and the old state donated.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
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
    """Linear warm-up to optim.lr over optim.warmup_steps, then 'constant' or 'cosine' decay."""
    lr, warmup = float(optim["lr"]), int(optim["warmup_steps"])
    kind = optim["schedule"]
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
    else:
        raise ValueError(f"optim.schedule={kind!r}; expected 'constant' or 'cosine'.")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: biases, norm scales and the schedule's scalars are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    optim: Mapping[str, Any], num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip_by_global_norm(optim.grad_clip) → AdamW(lr schedule, b1, b2, eps, weight_decay)."""
    schedule = learning_rate_schedule(optim, num_steps)
    parts = []
    if optim["grad_clip"] and optim["grad_clip"] > 0:
        parts.append(optax.clip_by_global_norm(float(optim["grad_clip"])))
    parts.append(
        optax.adamw(
            schedule, b1=float(optim["b1"]), b2=float(optim["b2"]), eps=float(optim["eps"]),
            weight_decay=float(optim["weight_decay"]), mask=_decay_mask,
        )
    )
    return optax.chain(*parts), schedule


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


def _split_micro(batch: Mapping[str, Array], n: int) -> dict[str, Array]:
    """(B, ...) -> (n, B/n, ...) with micro-batch j holding rows j, n + j, 2n + j, …: each device's
    contiguous block of the batch contributes equally to every micro-batch, so no data moves."""
    return {k: jnp.swapaxes(v.reshape(v.shape[0] // n, n, *v.shape[1:]), 0, 1)
            for k, v in batch.items()}


def train_step(
    model: DiffusionModel,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    ema_decays: Sequence[float],
    micro_batches: int,
    num_bins: int,
    state: State,
    batch: Mapping[str, Array],
    rng: Array,
) -> tuple[State, dict[str, Array]]:
    """One optimizer step on a global batch {"image": (B,H,W,C), "label": (B,)}.

    rng: this step's key (the loop passes fold_in(base, step), so a resumed run draws the same
    noise). Metrics: loss, grad_norm, lr, and per-t-bin loss sums/counts ('bin_sum', 'bin_count').
    """
    grad_fn = jax.value_and_grad(model.loss, has_aux=True)

    if micro_batches == 1:
        (loss, aux), grads = grad_fn(state["params"], batch, rng, num_bins)
        bin_sum, bin_count = aux["bin_sum"], aux["bin_count"]
    else:
        micro = _split_micro(batch, micro_batches)
        zeros = jax.tree.map(jnp.zeros_like, state["params"])

        def accumulate(carry, xs):
            g_acc, l_acc, s_acc, c_acc = carry
            mb, key = xs
            (mb_loss, a), g = grad_fn(state["params"], mb, key, num_bins)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            return (g_acc, l_acc + mb_loss, s_acc + a["bin_sum"], c_acc + a["bin_count"]), None

        keys = jax.random.split(rng, micro_batches)
        init = (zeros, jnp.zeros(()), jnp.zeros((num_bins,)), jnp.zeros((num_bins,)))
        (grads, loss, bin_sum, bin_count), _ = jax.lax.scan(accumulate, init, (micro, keys))
        grads = jax.tree.map(lambda g: g / micro_batches, grads)
        loss = loss / micro_batches

    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    step = state["step"] + 1
    ema = {}
    for d in ema_decays:
        decay = jnp.minimum(d, (1.0 + state["step"]) / (10.0 + state["step"]))
        old = state["ema"][ema_name(d)]
        ema[ema_name(d)] = jax.tree.map(lambda e, p, k=decay: k * e + (1 - k) * p, old, params)
    new_state = {"step": step, "params": params, "ema": ema, "opt_state": opt_state,
                 "rng": state["rng"]}
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(state["step"]),
        "bin_sum": bin_sum,
        "bin_count": bin_count,
    }
    return new_state, metrics


def jit_train_step(
    model: DiffusionModel,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    ema_decays: Sequence[float],
    micro_batches: int,
    shardings: State,
    mesh: Mesh,
    num_bins: int = 10,
):
    """`train_step` under jax.jit with explicit in/out shardings and the old state donated."""
    batch_sh = mesh_lib.batch_sharding(mesh)
    repl = mesh_lib.replicated(mesh)
    fn = functools.partial(
        train_step, model, tx, lr_schedule, tuple(ema_decays), micro_batches, num_bins
    )
    return jax.jit(
        fn,
        in_shardings=(shardings, batch_sh, repl),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )


def step_rng(base: Array, step: int | Array) -> Array:
    """The key of step `step`: fold_in(base, step), base being state['rng'] (raw uint32 data)."""
    return jax.random.fold_in(jax.random.wrap_key_data(base), step)


def create_state(
    build_fn, tx: optax.GradientTransformation, ema_decays: Sequence[float], seed: int,
    mesh: Mesh,
) -> tuple[DiffusionModel, State, State]:
    """Initialize a sharded train state without materializing it on one device.

    build_fn() -> (DiffusionModel, params) is traced once abstractly (for the model and shapes)
    and once under jit with the FSDP out_shardings. Returns (model, state, shardings).
    """
    holder: dict[str, DiffusionModel] = {}

    def params_only():
        model, params = build_fn()
        holder["model"] = model
        return params

    abstract = jax.eval_shape(params_only)
    model = holder["model"]
    shardings = state_shardings(model, abstract, tx, ema_decays, mesh)

    def init():
        return init_state(params_only(), tx, ema_decays, jax.random.key(seed))

    state = jax.jit(init, out_shardings=shardings)()
    return model, state, shardings

