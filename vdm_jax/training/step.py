"""The training step: one pure function under `jax.jit`,

    (state, batch, rng[, frozen]) -> (state, metrics)

which splits the global batch into `micro_batches` (gradient accumulation with `lax.scan`, so
the global batch does not depend on memory), averages gradients, applies the optimizer, and
updates every EMA (vdm_jax.training.state). Shardings are explicit: the batch over every
device, the state as `state.state_shardings` gives, and the old state donated. `frozen` is
REPA's target encoder (vdm_jax.model.TargetEncoder): parameters that enter the loss but are
never trained, checkpointed or donated, sharded like the model's (FSDP by logical axes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vdm_jax.config import ema_name
from vdm_jax.model import DiffusionModel, TargetEncoder
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training.state import State

Array = jax.Array


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
    frozen: TargetEncoder | None = None,
) -> tuple[State, dict[str, Array]]:
    """One optimizer step on a global batch {"image": (B,H,W,C), "label": (B,)}.

    rng: this step's key (the loop passes fold_in(base, step), so a resumed run draws the same
    noise). frozen: REPA's target encoder (online features), or None. Metrics: loss, grad_norm,
    lr, per-t-bin loss sums/counts ('bin_sum', 'bin_count'), and with REPA 'repa_loss' (the
    alignment term's mean before its weight).
    """
    grad_fn = jax.value_and_grad(model.loss, has_aux=True)
    repa = model.repa is not None

    if micro_batches == 1:
        (loss, aux), grads = grad_fn(state["params"], batch, rng, num_bins, frozen)
        bin_sum, bin_count = aux["bin_sum"], aux["bin_count"]
        repa_loss = aux["repa"] if repa else None
    else:
        micro = _split_micro(batch, micro_batches)
        zeros = jax.tree.map(jnp.zeros_like, state["params"])

        def accumulate(carry, xs):
            g_acc, l_acc, s_acc, c_acc, r_acc = carry
            mb, key = xs
            (mb_loss, a), g = grad_fn(state["params"], mb, key, num_bins, frozen)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            r_acc = r_acc + a["repa"] if repa else r_acc
            return (g_acc, l_acc + mb_loss, s_acc + a["bin_sum"], c_acc + a["bin_count"],
                    r_acc), None

        keys = jax.random.split(rng, micro_batches)
        init = (zeros, jnp.zeros(()), jnp.zeros((num_bins,)), jnp.zeros((num_bins,)),
                jnp.zeros(()))
        (grads, loss, bin_sum, bin_count, repa_loss), _ = jax.lax.scan(
            accumulate, init, (micro, keys))
        grads = jax.tree.map(lambda g: g / micro_batches, grads)
        loss = loss / micro_batches
        repa_loss = repa_loss / micro_batches if repa else None

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
    if repa:
        metrics["repa_loss"] = repa_loss
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
    frozen: TargetEncoder | None = None,
):
    """`train_step` under jax.jit with explicit in/out shardings and the old state donated:
    fn(state, batch, rng), or fn(state, batch, rng, frozen) when `frozen` (REPA's target
    encoder, whose shardings come from its logical axes) is given."""
    batch_sh = mesh_lib.batch_sharding(mesh)
    repl = mesh_lib.replicated(mesh)
    fn = functools.partial(
        train_step, model, tx, lr_schedule, tuple(ema_decays), micro_batches, num_bins
    )
    in_shardings = (shardings, batch_sh, repl)
    if frozen is not None:
        in_shardings += (frozen_shardings(frozen, mesh),)
    return jax.jit(
        fn,
        in_shardings=in_shardings,
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )


def frozen_shardings(frozen: TargetEncoder, mesh: Mesh) -> TargetEncoder:
    """NamedShardings of a target encoder's parameters (FSDP over 'fsdp' by logical axes, as the
    model's), in the TargetEncoder pytree; `jax.device_put(frozen, frozen_shardings(...))`
    places it."""
    params = mesh_lib.param_shardings(frozen.specs(), frozen.params, mesh)
    return dataclasses.replace(frozen, params=params)
