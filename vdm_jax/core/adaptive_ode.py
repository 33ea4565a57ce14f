"""An adaptive solver of the probability-flow ODE: Dormand–Prince 5(4) ('dopri5') through diffrax,
stepping as torchdiffeq's dopri5 does (SiT's ODE sampler), so that SiT's ODE figure is sampled
step for step as SiT did.

The ODE is that of `samplers.euler` / `samplers.heun`,
    dz/dt = û(z_t, t) = α'_t x̂ + σ'_t ε̂        (the model's flow velocity, `sampling_loop.velocity`)
from t_max = ts[0] to t_end = ts[-1] (the grid's interior is not used), solved forward in
s = t_max − t (SiT's τ = 1 − t when t_max = 1) with diffrax.Dopri5 and its PID controller as an
I-controller: a step of size h is accepted when
    r = RMS_i [ err_i / (atol + rtol · max(|z_i|, |z̃_i|)) ] ≤ 1
over every element of the state, and the next size is h · clip(0.9 · r^(−1/5), 0.2 (1 if
accepted), 10): torchdiffeq's rule. The first h is Hairer's: with sc = atol + rtol |z|,
d0 = ‖z/sc‖, d1 = ‖f0/sc‖, h0 = 0.01 d0/d1, d2 = ‖(f(s0 + h0, z + h0 f0) − f0)/sc‖ / h0,
h = min(100 h0, (0.01 / max(d1, d2))^(1/5)); computed here, because diffeqsolve(dt0=None) does
not apply it in diffrax 0.7.
A flow model's last step may pass t_end (its velocity is the network's output at any t) and the
solution there is read from the step's quartic (Shampine) interpolant, as torchdiffeq does;
other predictions convert through the schedule, which ends at t_min, so their last step is
clipped to t_end (diffrax's rule).

A guided model solves the whole 2B batch of its guided pass (`guidance.classifier_free_guidance`'s
`both_halves`, DiT's and SiT's forward_with_cfg), as SiT's ODE does: the error norm covers the
null half too, whose unguided channels differ. Its first B rows are the samples.

Defaults rtol = 1e-3, atol = 1e-6: SiT's `sample_ode` (its ODE figure, FID 2.15, uses them).
Where λ(t_min) = +∞ and the model is not a 'flow' model (ε, x, v or score cannot be converted at
λ = ∞), the ODE is solved to t = T_MIN_IF_SINGULAR and the last move is the jump to
x̂(z, T_MIN_IF_SINGULAR) (DDPM's last step; SiT's ODE likewise stops at its eps for such models).

NFE: 2 evaluations for the first step size (f0, reused as the first stage, and one probe), then
Dopri5's 7 stages per attempted step with the last reused as the next step's first (FSAL): 6 per
step, accepted or rejected: NFE = 6 · steps + 2 (+ 1 for the x̂ jump), torchdiffeq's count, the
one `dopri5` returns as SampleOutput.evaluations (equal to a counter of the model's calls in
tests/test_adaptive_ode.py). Jittable (diffrax solves inside lax.while_loop).

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
STAGES_PER_STEP, INITIAL_EVALUATIONS = 6, 2
ERROR_ORDER = 5  # of Dopri5's embedded 4th-order error estimate: step factors (1/error)^(1/5)
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

    halves = getattr(model.fn, "both_halves", None)  # a guided model: its 2B batch
    b = z.shape[0]

    def evaluate(y: Array, t: Array) -> Array:
        if halves is None:
            return model.fn(y, loop.times(y, t)).astype(y.dtype)
        return halves(y[:b], loop.times(y[:b], t)).astype(y.dtype)

    def drift(s: Array, y: Array) -> Array:
        """dz/ds = −û(z, t_max − s): the ODE in s = t_max − t, solved forward (as SiT's τ)."""
        t = (t_max - s).astype(y.dtype)
        u = loop.velocity(schedule, prediction, evaluate(y, t), y, t)
        return loop.constrain(-u, model.sharding)

    span = (t_max - t_end).astype(z.dtype)
    # A flow model's velocity is the network's output at any time, so its last step may pass
    # the end (to at most twice the span) and be read back by interpolation; other predictions
    # convert through the schedule, which ends at t_min, so there the last step is clipped.
    overshoot = prediction == "flow"
    y0 = z if halves is None else jnp.concatenate([z, z])
    s0 = jnp.zeros_like(span)
    f0 = drift(s0, y0)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    # The first step by Hairer's rule, from f0 (reused below as Dopri5's first stage).
    # diffeqsolve(dt0=None) would not apply it: diffrax 0.7 selects it only for a bare
    # ODETerm, and diffeqsolve wraps the term, so its first step is always 0.01.
    scale = atol + rtol * jnp.abs(y0)
    d0, d1 = controller.norm(y0 / scale), controller.norm(f0 / scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).astype(span.dtype)
    d2 = controller.norm((drift(s0 + h0, y0 + h0 * f0) - f0) / scale) / h0
    h1 = jnp.where(jnp.maximum(d1, d2) <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.maximum(d1, d2)) ** (1 / ERROR_ORDER))
    dt0 = jnp.minimum(100 * h0, h1).astype(span.dtype)
    # The arrays the model closes over (weights, labels) enter diffrax's solve as arguments,
    # not as constants of its inner jit.
    converted, consts = jax.closure_convert(drift, span, y0)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda s, y, args: converted(s, y, *args)), diffrax.Dopri5(),
        t0=s0, t1=2 * span if overshoot else span, dt0=dt0, y0=y0, args=tuple(consts),
        # (not the first step, f0): Dopri5's FSAL state, so f0 is not evaluated again
        solver_state=(jnp.asarray(False), f0),
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(ts=span[None]),
        event=diffrax.Event(lambda s, y, args, **kw: s >= span) if overshoot else None,
        max_steps=MAX_STEPS,
    )
    z_end = solution.ys[0][:b]
    nfe = STAGES_PER_STEP * solution.stats["num_steps"] + INITIAL_EVALUATIONS

    def to_data(z_end: Array) -> Array:
        out = model.fn(z_end, loop.times(z_end, t_end)).astype(z_end.dtype)
        x_hat, _ = loop.x_eps(schedule, prediction, out, z_end, t_end)
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
