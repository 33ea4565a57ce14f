"""What a sampler samples with and its loop: `SamplingModel` (the model function, the batch's
sharding, DDT's shared encoder), `SampleOutput`, the model's output read through the
parameterizations (x̂, ε̂ and û = α'_t x̂ + σ'_t ε̂ at one time) and `scan_steps`, the one
`lax.scan` over a fixed time grid that every fixed-grid sampler runs (core.samplers, core.sit_sde;
core.adaptive_ode reads the model the same way). Below the samplers: those import this module,
never the reverse.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm_jax.core.encoder_sharing import SharedEncoder
from vdm_jax.core.parameterizations import from_x_eps, to_x_eps
from vdm_jax.core.schedules import Schedule

__all__ = ["ModelFn", "SampleOutput", "SamplingModel", "as_sampling_model", "constrain",
           "need_rng", "scan_steps", "step_noise", "times", "velocity", "x_eps"]

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["samples", "conditions", "evaluations"], meta_fields=["nfe"])
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Samples z_{t_min}: (B, ...), the number of model evaluations (a static int; None for an
    adaptive solver, whose measured count is `evaluations`, an int32 scalar array) and, with a
    recording `SharedEncoder`, every step's shared condition (N, ...) (else None)."""

    samples: Array
    nfe: int | None
    conditions: Array | None = None
    evaluations: Array | None = None

    @property
    def evaluation_count(self) -> Array:
        """The model evaluations as an int32 scalar array: measured (adaptive) or the static nfe."""
        return jnp.asarray(self.nfe if self.evaluations is None else self.evaluations, jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class SamplingModel:
    """What a sampler samples with: the model function and how to run it.

    fn: (z (B, ...), t (B,)) -> output; for 'meanflow' (z, r, t) -> u; with `shared`, the
        decoder (z, t, c) -> output of a model whose condition c is shared across steps.
    sharding: the batch's sharding, kept on z through the loop (None: unconstrained).
    shared: DDT's encoder sharing (`core.encoder_sharing.SharedEncoder`), or None.
    Every sampler also takes a plain model function, read as SamplingModel(fn).
    """

    fn: Callable[..., Array]
    sharding: jax.sharding.Sharding | None = None
    shared: SharedEncoder | None = None


def as_sampling_model(model: ModelFn | SamplingModel) -> SamplingModel:
    """`model` itself, or a plain model function wrapped as SamplingModel(model)."""
    return model if isinstance(model, SamplingModel) else SamplingModel(model)



def times(z: Array, t: Array) -> Array:
    """A scalar time t as the model's (B,) time vector."""
    return jnp.full((z.shape[0],), t, z.dtype)


def x_eps(schedule: Schedule, prediction: str, out: Array, z: Array, t: Array):
    """(x̂, ε̂) at (z_t, t) from the model's output `out` there; t a scalar."""
    return to_x_eps(schedule, out, prediction, z, times(z, t))


def velocity(schedule: Schedule, prediction: str, out: Array, z: Array, t: Array):
    """û = α' x̂ + σ' ε̂ at (z_t, t) from the model's output `out` there. A 'flow' model's output
    is û itself (no conversion)."""
    if prediction == "flow":
        return out
    x_hat, eps_hat = x_eps(schedule, prediction, out, z, t)
    return from_x_eps(schedule, x_hat, eps_hat, "flow", z, times(z, t))


def constrain(z: Array, sharding: jax.sharding.Sharding | None) -> Array:
    return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)


def scan_steps(step, carry, ts: Array, rng: Array | None, model: SamplingModel, *,
          nfe: int | None = None, first: bool = True) -> SampleOutput:
    """Run step(carry, t, s, key, i, last, out, f) over the N steps of ts in one `lax.scan`:
    SampleOutput(samples=the final carry[0], nfe=nfe or N).

    out is the model's output at the step's start (z_t = carry[0], t), f(z', t') (t' a scalar)
    evaluates the model anywhere else within the step. first=False (a model function of other
    arguments, 'meanflow'): out is None and f is model.fn itself. With `model.shared` the
    condition c rides in the carry (see `SharedEncoder`).
    """
    n = ts.shape[0] - 1
    idx = jnp.arange(n)
    keys = jax.random.split(rng, n) if rng is not None else idx
    shared = model.shared
    if shared is not None:
        if not first:
            raise ValueError("encoder sharing needs a model function of (z, t).")
        carry = (*carry, shared.initial(carry[0], times(carry[0], ts[0]), n))
        refresh = jnp.asarray(shared.refresh)

    def plain(z: Array, t: Array) -> Array:
        return model.fn(z, times(z, t)).astype(z.dtype)

    def body(carry, xs):
        t, s, key, i = xs
        key = key if rng is not None else None
        z = carry[0]
        if not first:
            out, f, record = None, model.fn, None
        elif shared is None:
            out, f, record = plain(z, t), plain, None
        else:
            *carry, c_in = carry
            fresh = refresh[i]

            def f(z_: Array, t_: Array) -> Array:
                c = shared.read(fresh, c_in, z_, times(z_, t_))
                return model.fn(z_, times(z_, t_), c).astype(z_.dtype)

            c = shared.read(fresh, c_in, z, times(z, t))  # carried on to the next step
            out, record = model.fn(z, times(z, t), c).astype(z.dtype), c
        carry = step(tuple(carry), t, s, key, i, i == n - 1, out, f)
        if shared is not None:
            carry = (*carry, c)
        z = constrain(carry[0], model.sharding)
        return (z, *carry[1:]), (record if shared is not None and shared.record else None)

    carry, conditions = jax.lax.scan(body, carry, (ts[:-1], ts[1:], keys, idx))
    return SampleOutput(samples=carry[0], nfe=n if nfe is None else nfe, conditions=conditions)



def need_rng(rng: Array | None, name: str) -> Array:
    if rng is None:
        raise ValueError(f"Sampler {name!r} is stochastic and needs an rng.")
    return rng


def step_noise(key: Array, z: Array, scale: Array, last: Array) -> Array:
    """scale · ξ, ξ ~ N(0, I), and 0 on the final step."""
    return jnp.where(last, 0.0, scale) * jax.random.normal(key, z.shape, z.dtype)

