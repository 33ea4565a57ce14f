"""The training step: one pure function under `jax.jit`,

    (state, batch, rng[, term_inputs]) -> (state, metrics)

which splits the global batch into `micro_batches` (gradient accumulation with `lax.scan`, so
the global batch does not depend on memory), averages gradients, applies the optimizer, and
updates every EMA (vdm_jax.training.state). Shardings are explicit: the batch over every
device, the state as `state.state_shardings` gives, and the old state donated. `term_inputs`
{term name: pytree} are the non-trained inputs of the model's loss terms
(vdm_jax.model.load_term_inputs): arrays that enter the loss but are never trained, checkpointed
or donated, sharded like the model's parameters (FSDP by the logical axes the terms give). The
step knows no term by name: the model's loss sums them, and their metrics are passed on.
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
from vdm_jax.training.state import State

Array = jax.Array
TermInputs = Mapping[str, Any]  # {loss term name: its non-trained inputs (a pytree)}


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
    term_inputs: TermInputs | None = None,
) -> tuple[State, dict[str, Array]]:
    """One optimizer step on a global batch {"image": (B,H,W,C), "label": (B,)}.

    rng: this step's key (the loop passes fold_in(base, step), so a resumed run draws the same
    noise). term_inputs: the loss terms' inputs (module docstring), or None. Metrics: loss,
    grad_norm, lr, per-t-bin loss sums/counts ('bin_sum', 'bin_count'), and each loss term's
    metrics ('<name>_loss'), averaged over the micro-batches.
    """
    grad_fn = jax.value_and_grad(model.loss, has_aux=True)

    if micro_batches == 1:
        (loss, aux), grads = grad_fn(state["params"], batch, rng, num_bins, term_inputs)
        bin_sum, bin_count, term_metrics = aux["bin_sum"], aux["bin_count"], aux["terms"]
    else:
        micro = _split_micro(batch, micro_batches)
        keys = jax.random.split(rng, micro_batches)
        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        # The terms' metrics (their names and shapes): the loss traced once, abstractly.
        first = jax.tree.map(lambda v: v[0], micro)
        loss_fn = functools.partial(model.loss, num_bins=num_bins, term_inputs=term_inputs)
        shapes = jax.eval_shape(loss_fn, state["params"], first, keys[0])[1]["terms"]

        def accumulate(carry, xs):
            g_acc, l_acc, s_acc, c_acc, m_acc = carry
            mb, key = xs
            (mb_loss, a), g = grad_fn(state["params"], mb, key, num_bins, term_inputs)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            m_acc = jax.tree.map(jnp.add, m_acc, a["terms"])
            return (g_acc, l_acc + mb_loss, s_acc + a["bin_sum"], c_acc + a["bin_count"],
                    m_acc), None

        init = (zeros, jnp.zeros(()), jnp.zeros((num_bins,)), jnp.zeros((num_bins,)),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
        (grads, loss, bin_sum, bin_count, term_metrics), _ = jax.lax.scan(
            accumulate, init, (micro, keys))
        grads = jax.tree.map(lambda g: g / micro_batches, grads)
        loss = loss / micro_batches
        term_metrics = jax.tree.map(lambda m: m / micro_batches, term_metrics)

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
        **term_metrics,
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
    term_inputs: TermInputs | None = None,
):
    """`train_step` under jax.jit with explicit in/out shardings and the old state donated:
    fn(state, batch, rng), or fn(state, batch, rng, term_inputs) when the model's loss terms
    have inputs (`term_inputs`, placed with `term_input_shardings`)."""
    batch_sh = mesh_lib.batch_sharding(mesh)
    repl = mesh_lib.replicated(mesh)
    fn = functools.partial(
        train_step, model, tx, lr_schedule, tuple(ema_decays), micro_batches, num_bins
    )
    in_shardings = (shardings, batch_sh, repl)
    if term_inputs:
        in_shardings += (term_input_shardings(model, term_inputs, mesh),)
    return jax.jit(
        fn,
        in_shardings=in_shardings,
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )


def config_train_step(
    config: Mapping[str, Any], model: DiffusionModel, tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule, shardings: Any, mesh: Mesh, term_inputs: TermInputs,
) -> Any:
    """`jit_train_step` with the step settings of `config` (optim.ema_decays,
    train.micro_batches, train.num_t_bins): the step the trainer runs and the ahead-of-time
    compiler (vdm_jax.pipelines.compile) compiles."""
    return jit_train_step(
        model, tx, lr_schedule, tuple(config["optim"]["ema_decays"]),
        config["train"]["micro_batches"], shardings, mesh, config["train"]["num_t_bins"],
        term_inputs=term_inputs,
    )


def term_input_shardings(model: DiffusionModel, term_inputs: TermInputs, mesh: Mesh
                         ) -> dict[str, Any]:
    """NamedShardings of the loss terms' inputs (FSDP over 'fsdp' by their logical axes, as the
    model's), the same pytree; `jax.device_put(term_inputs, term_input_shardings(...))` places
    them."""
    return mesh_lib.param_shardings(model.term_input_specs(term_inputs), term_inputs, mesh)
