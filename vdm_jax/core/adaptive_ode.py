"""An adaptive solver of the probability-flow ODE: Dormand–Prince 5(4) ('dopri5') through diffrax.

The ODE is that of `samplers.euler` / `samplers.heun`,
    dz/dt = û(z_t, t) = α'_t x̂ + σ'_t ε̂        (the model's flow velocity, `sampling_loop.velocity`)
solved from t_max = ts[0] to t_min = ts[-1] (the grid's interior is not used: the solver picks
its own steps) with diffrax.Dopri5 and a PID step-size controller: a step is accepted when the
RMS over every element of the batch of err_i / (atol + rtol · max(|z_i|, |z̃_i|)) is ≤ 1 (the
norm torchdiffeq's dopri5 uses, so a batch is solved as one ODE, as SiT's `sample_ode` does).
The first step size is chosen by Hairer's rule (diffrax's, as torchdiffeq's).

Defaults rtol = 1e-3, atol = 1e-6: SiT's `sample_ode` (its ODE figure, FID 2.15, uses them).
Where λ(t_min) = +∞ and the model is not a 'flow' model (ε, x, v or score cannot be converted at
λ = ∞), the ODE is solved to t = T_MIN_IF_SINGULAR and the last move is the jump to
x̂(z, T_MIN_IF_SINGULAR) (DDPM's last step; SiT's ODE likewise stops at its eps for such models).

NFE: Dopri5 has 7 stages, the last reused as the next step's first (FSAL), so each attempted
step (accepted or rejected) costs 6 evaluations, plus 1 at the start: NFE = 6 · steps + 1
(+ 1 for the x̂ jump), the count `dopri5` returns as SampleOutput.evaluations (equal to a
counter of the model's calls in tests/test_adaptive_ode.py). Jittable (diffrax solves inside
lax.while_loop).

Layering: diffrax is a JAX numerics library (equinox pytrees, no I/O, no networks), so the
pure-math core may import it (pyproject's import-linter contract says so).
"""

from __future__ import annotations

from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from vdm_jax.core import sampling_loop as loop
from vdm_jax.core.schedules import Schedule

Array = jax.Array

RTOL, ATOL = 1e-3, 1e-6  # SiT's sample_ode defaults (train_utils.parse_ode_args)
T_MIN_IF_SINGULAR = 1e-3
MAX_STEPS = 4096
STAGES_PER_STEP, INITIAL_EVALUATIONS = 6, 1
OPTIONS = ("rtol", "atol")


def dopri5(
    model: loop.ModelFn | loop.SamplingModel, schedule: Schedule, z: Array, ts: Array,
    rng: Array | None = None, *, prediction: str = "eps", rtol: float = RTOL, atol: float = ATOL,
) -> loop.SampleOutput:
    """The probability-flow ODE from z = z_{ts[0]} (B, ...) to ts[-1] by adaptive Dormand–Prince
    5(4) to tolerances (rtol, atol) (module docstring): SampleOutput(samples=z_{t_min},
    nfe=None, evaluations=the NFE, an int32 scalar array: the steps depend on the values)."""
    model = loop.as_sampling_model(model)
    if model.shared is not None:
        raise ValueError("sampler 'dopri5' chooses its own steps: it cannot share a condition "
                         "encoder across a fixed step schedule (drop encoder_interval / "
                         "encoder_steps)")
    t_max, t_min = ts[0], ts[-1]
    jump = jnp.logical_and(prediction != "flow", ~jnp.isfinite(schedule.log_snr(t_min)))
    t_end = jnp.where(jump, jnp.maximum(t_min, T_MIN_IF_SINGULAR), t_min)

    def evaluate(y: Array, t: Array) -> Array:
        return model.fn(y, loop.times(y, t)).astype(y.dtype)

    def velocity(t: Array, y: Array) -> Array:
        t = t.astype(y.dtype)
        u = loop.velocity(schedule, prediction, evaluate(y, t), y, t)
        return loop.constrain(u, model.sharding)

    # The arrays the model closes over (weights, labels) enter diffrax's solve as arguments,
    # not as constants of its inner jit.
    converted, consts = jax.closure_convert(velocity, t_max, z)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: converted(t, y, *args)), diffrax.Dopri5(),
        t0=t_max, t1=t_end, dt0=None, y0=z, args=tuple(consts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=MAX_STEPS,
    )
    z_end = solution.ys[-1]
    nfe = STAGES_PER_STEP * solution.stats["num_steps"] + INITIAL_EVALUATIONS

    def to_data(z_end: Array) -> Array:
        x_hat, _ = loop.x_eps(schedule, prediction, evaluate(z_end, t_end), z_end, t_end)
        return x_hat

    out = jax.lax.cond(jump, to_data, lambda z_end: z_end, z_end)
    evaluations = (nfe + jump.astype(nfe.dtype)).astype(jnp.int32)
    return loop.SampleOutput(samples=out, nfe=None, evaluations=evaluations)


def check_option(key: str, value: Any) -> Any:
    """A validated, JSON-plain value of the sampler option `key` of 'dopri5'."""
    if key in OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"dopri5 {key} must be a positive number, got {value!r}")
        return float(value)
    raise ValueError(f"unknown sampler option {key!r}")
