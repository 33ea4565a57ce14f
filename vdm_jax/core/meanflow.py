"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, arXiv 2505.13447): one- and few-step generation
by learning the average velocity of the rectified-flow ODE.

Path and time. The paper and its official JAX code use our direction (t = 0 data, t = 1 noise),
so nothing is converted at this boundary:
    z_t = (1 − t) x + t ε,      v_t = dz_t/dt = ε − x             (conditional velocity)
and the marginal velocity v(z, t) = E[ε − x | z_t = z] drives the probability-flow ODE dz/dt = v.

Average velocity over [r, t], r ≤ t (Sec. 4.1):
    u(z_t, r, t) = 1/(t − r) ∫_r^t v(z_τ, τ) dτ,   so   z_r = z_t − (t − r) u(z_t, r, t),
with u(z, t, t) = v(z, t). Differentiating (t − r) u = ∫_r^t v dτ in t along the trajectory, r
fixed, gives the MeanFlow identity (Eq. 6) and the total derivative (Eq. 8)
    u(z_t, r, t) = v(z_t, t) − (t − r) du/dt,      du/dt = v ∂_z u + ∂_t u,
one forward-mode product: jax.jvp(u, (z, r, t), (v, 0, 1)), evaluated together with u itself.

Training (Eqs. 9–10): regress u_θ(z_t, r, t) on the stop-gradient target
    u_tgt = v_t − (t − r)(v_t ∂_z u_θ + ∂_t u_θ),      Δ = u_θ − u_tgt,
with the conditional v_t = ε − x in place of the marginal v (as flow matching does). At r = t the
target is v_t and the loss is flow matching. (The official code clips t − r to [0, 1] here, a no-op
for 0 ≤ r ≤ t ≤ 1, so it is left out.) Adaptive weighting (Sec. 4.3, after ECT):
    per-example loss  sg(w) ‖Δ‖²,   w = 1 / (‖Δ‖² + c)^p,   ‖Δ‖² summed over all dimensions,
p = 1 (Table 1e and Table 4: the paper's choice), c = 1e-3 (the paper's example value in Sec. 4.3;
its official ImageNet config uses 0.01). p = 0 is the plain squared error, p = ½ pseudo-Huber.

(r, t) sampler (Tables 1a, 1d and 4): two i.i.d. logit-normal times, logit ~ N(−0.4, 1), sorted
so r ≤ t; then the first ⌊0.75 B⌋ rows of the batch get r = t ("ratio of r ≠ t: 25%").

Guidance folded into the target (Sec. 4.2; with the mixing scale κ, Eq. 21 and Table 4):
    ṽ_t = ω v_t + κ u_θ(z_t, t, t | c) + (1 − ω − κ) u_θ(z_t, t, t | ∅)
replaces v_t in the target and as the jvp tangent. The network then learns the guided field with
the effective scale ω′ = ω / (1 − κ); κ = 0 is Sec. 4.2's ṽ_t = ω v_t + (1 − ω) u_θ(z_t, t, t | ∅).
Outside the guidance interval [t_lo, t_hi], and on rows whose label was dropped to the null class,
ṽ_t = v_t. The guided model samples with one evaluation a step: no CFG at sampling time.

Sampling (Sec. 4.1, Alg. 2): z_r = z_t − (t − r) u_θ(z_t, r, t) on a decreasing grid
1 = t_0 > t_1 > … > t_N = 0, z_1 ~ N(0, I); N = 1 is the paper's 1-NFE z_0 = z_1 − u_θ(z_1, 0, 1),
N = 2 its 2-NFE (here on the uniform grid 1, ½, 0; the official code takes the grid as an input and
defaults to [1, 0]). The step is core.samplers' 'meanflow' sampler, so `core.samplers.sample`
(what generation uses) and `sample` here draw the same samples from the same rng; the loop is one
`lax.scan`, and a sharding for the batch keeps z sharded through it. With the exact u any grid
gives the same samples.

In a training config (vdm_jax.config): diffusion.objective = 'meanflow' with
diffusion.objective_kwargs = `MeanFlowObjective`'s fields (p, c, time_mean, time_std,
equal_fraction, omega, kappa, guidance_interval), a DiT with spec second_time, the schedule
'rectified_flow' and model.prediction = 'average_velocity' (core.samplers.AVERAGE_VELOCITY).

Network functions: u_fn(z, r, t) -> (B, ...) with z (B, ...), r and t (B,); for the loss with
guidance a conditional u_fn(z, r, t, y), y (B,) int labels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.core import samplers
from vdm_jax.core.diffusion import expand_to
from vdm_jax.core.objectives import t_bin_statistics
from vdm_jax.core.samplers import SampleOutput
from vdm_jax.core.time_grid import time_grid

Array = jax.Array
UFn = Callable[[Array, Array, Array], Array]  # u(z, r, t)
CondUFn = Callable[[Array, Array, Array, Array], Array]  # u(z, r, t, y)

# The paper's defaults (see the module docstring for where each comes from).
TIME_MEAN = -0.4  # logit(t) ~ N(TIME_MEAN, TIME_STD²), Table 1d / Table 4
TIME_STD = 1.0
EQUAL_FRACTION = 0.75  # fraction of rows with r = t (Table 4: 25% have r ≠ t)
NORM_P = 1.0  # adaptive weight power p, Table 1e / Table 4
NORM_C = 1e-3  # adaptive weight constant c, Sec. 4.3
OBJECTIVE = "meanflow"  # the name of the objective in a training config (diffusion.objective)


# ----------------------------------------------------------------------------------------------
# Times and the path.
# ----------------------------------------------------------------------------------------------


def sample_two_times(
    rng: Array, batch_size: int, *, mean: float = TIME_MEAN, std: float = TIME_STD,
    equal_fraction: float = EQUAL_FRACTION, dtype: Any = None,
) -> tuple[Array, Array]:
    """(r, t), each (B,), r ≤ t: the order statistics of two i.i.d. times with
    logit ~ N(mean, std²); the first ⌊equal_fraction · B⌋ rows have r = t (official code's
    layout, so a caller can tell the flow-matching rows by index)."""
    if not 0.0 <= equal_fraction <= 1.0:
        raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction}.")
    if std <= 0:
        raise ValueError(f"std of the logit-normal time density must be positive, got {std}.")
    dtype = dtype or jnp.result_type(float)
    a, b = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (2, batch_size), dtype))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    equal = jnp.arange(batch_size) < int(batch_size * equal_fraction)
    return jnp.where(equal, t, r), t


def interpolate(x: Array, eps: Array, t: Array) -> Array:
    """z_t = (1 − t) x + t ε.  x, eps (B, ...); t (B,) -> (B, ...)."""
    t = expand_to(t, x)
    return (1 - t) * x + t * eps


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


# ----------------------------------------------------------------------------------------------
# The MeanFlow target and loss.
# ----------------------------------------------------------------------------------------------


def average_velocity_target(
    u_fn: UFn, z: Array, r: Array, t: Array, v: Array
) -> tuple[Array, Array, Array]:
    """(u, u_tgt, du/dt) at (z_t, r, t) with velocity v (the tangent of z):

        u = u_fn(z, r, t),  du/dt = v ∂_z u + ∂_t u  (jvp with tangents (v, 0, 1) on (z, r, t)),
        u_tgt = sg(v − (t − r) du/dt)                     (Eqs. 6, 8, 10)

    z, v (B, ...); r, t (B,). Outputs (B, ...), u in u_fn's dtype, the others float32 or wider.
    """
    tangents = (v.astype(z.dtype), jnp.zeros_like(r), jnp.ones_like(t))
    u, dudt = jax.jvp(u_fn, (z, r, t), tangents)
    u_tgt = v - expand_to(t - r, v) * dudt.astype(v.dtype)
    return u, jax.lax.stop_gradient(u_tgt), jax.lax.stop_gradient(dudt)


def adaptive_weight(sq_error: Array, *, p: float = NORM_P, c: float = NORM_C) -> Array:
    """w = sg(1 / (‖Δ‖² + c)^p) for per-example squared errors ‖Δ‖² (B,) -> (B,)."""
    return jax.lax.stop_gradient(1.0 / (sq_error + c) ** p)


def per_example_loss(
    u_fn: UFn, z: Array, r: Array, t: Array, v: Array, *, p: float = NORM_P, c: float = NORM_C
) -> tuple[Array, dict[str, Array]]:
    """MeanFlow loss sg(w) ‖u − u_tgt‖² per example (B,) on given draws, and
    aux = {'u', 'u_tgt', 'dudt' (B, ...); 'sq_error' ‖Δ‖², 'weight' w (B,)}.

    v is the velocity of the target and tangent: ε − x, or the guided ṽ (`guided_target`).
    Gradients flow only through u (u_tgt and w are stop-gradient).
    """
    u, u_tgt, dudt = average_velocity_target(u_fn, z, r, t, v)
    sq_error = _sum_except_batch((u.astype(u_tgt.dtype) - u_tgt) ** 2)
    weight = adaptive_weight(sq_error, p=p, c=c)
    aux = {"u": u, "u_tgt": u_tgt, "dudt": dudt, "sq_error": sq_error, "weight": weight}
    return weight * sq_error, aux


# ----------------------------------------------------------------------------------------------
# Guidance folded into the target.
# ----------------------------------------------------------------------------------------------


def guided_velocity(
    v: Array, u_cond: Array, u_uncond: Array, *, omega: float | Array, kappa: float | Array = 0.0
) -> Array:
    """ṽ = ω v + κ u(z, t, t | c) + (1 − ω − κ) u(z, t, t | ∅)  (Eq. 21; κ = 0: Sec. 4.2).

    omega, kappa: scalars or per-example (B,). All arrays (B, ...).
    """
    omega, kappa = expand_to(omega, v), expand_to(kappa, v)
    return omega * v + kappa * u_cond + (1 - omega - kappa) * u_uncond


def kappa_for_effective_scale(omega: float, effective_scale: float) -> float:
    """κ = 1 − ω / ω′: the mixing scale that gives the effective guidance scale ω′ (Table 4)."""
    if effective_scale <= 0:
        raise ValueError(f"effective guidance scale must be positive, got {effective_scale}.")
    kappa = 1.0 - omega / effective_scale
    if not 0.0 <= kappa < 1.0:
        raise ValueError(
            f"omega={omega} and effective scale {effective_scale} give kappa={kappa}; "
            "kappa must be in [0, 1), so choose 0 < omega <= effective scale."
        )
    return kappa


def guided_target(
    u_fn: CondUFn, z: Array, t: Array, y: Array, v: Array, *, null_label: int,
    omega: float, kappa: float = 0.0, interval: tuple[float, float] = (0.0, 1.0),
) -> Array:
    """The guided velocity ṽ (B, ...) for rows (z_t, t, y), stop-gradient.

    u(z_t, t, t | ∅) and, for κ > 0, u(z_t, t, t | y) are one forward pass (of size B or 2B).
    Rows with t outside `interval` or with y = null_label (label dropped) get ṽ = v.
    """
    b = z.shape[0]
    null = jnp.full_like(y, null_label)
    if kappa == 0.0:
        u_uncond = u_fn(z, t, t, null)
        u_cond = jnp.zeros_like(u_uncond)
    else:
        both = u_fn(jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([t, t]),
                    jnp.concatenate([y, null]))
        u_cond, u_uncond = both[:b], both[b:]
    active = (t >= interval[0]) & (t <= interval[1]) & (y != null_label)
    omega_t = jnp.where(active, omega, 1.0).astype(v.dtype)
    kappa_t = jnp.where(active, kappa, 0.0).astype(v.dtype)
    v_tilde = guided_velocity(v, u_cond.astype(v.dtype), u_uncond.astype(v.dtype),
                              omega=omega_t, kappa=kappa_t)
    return jax.lax.stop_gradient(v_tilde)


def meanflow_loss(
    u_fn: CondUFn, x: Array, y: Array, rng: Array, *, null_label: int,
    time_mean: float = TIME_MEAN, time_std: float = TIME_STD,
    equal_fraction: float = EQUAL_FRACTION, p: float = NORM_P, c: float = NORM_C,
    omega: float = 1.0, kappa: float = 0.0, interval: tuple[float, float] = (0.0, 1.0),
    num_bins: int = 10,
) -> tuple[Array, dict[str, Array]]:
    """One Monte Carlo estimate of the MeanFlow objective for a batch x (B, ...), labels y (B,)
    (already label-dropped by the caller; null_label rows train on the unguided v).

    Draws (r, t) (`sample_two_times`) and ε ~ N(0, I) from the two keys of
    jax.random.split(rng) in that order, forms z_t and v = ε − x, folds guidance
    into v when (ω, κ) ≠ (1, 0) (`guided_target`; static Python floats), and returns
    (mean loss, aux): aux = `per_example_loss`'s aux plus 'per_example', 'r', 't' and per-t-bin
    sums/counts of the per-example loss.
    """
    omega, kappa = float(omega), float(kappa)
    rng_t, rng_eps = jax.random.split(rng)
    r, t = sample_two_times(rng_t, x.shape[0], mean=time_mean, std=time_std,
                            equal_fraction=equal_fraction, dtype=x.dtype)
    eps = jax.random.normal(rng_eps, x.shape, x.dtype)
    z = interpolate(x, eps, t)
    v = eps - x
    if (omega, kappa) != (1.0, 0.0):
        v = guided_target(u_fn, z, t, y, v, null_label=null_label, omega=omega, kappa=kappa,
                          interval=interval)
    losses, aux = per_example_loss(lambda z, r, t: u_fn(z, r, t, y), z, r, t, v, p=p, c=c)
    aux = {**aux, "per_example": losses, "r": r, "t": t,
           **t_bin_statistics(losses, t, num_bins)}
    return losses.mean(), aux


# ----------------------------------------------------------------------------------------------
# The objective as a training config names it.
# ----------------------------------------------------------------------------------------------


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"meanflow {key} must be a finite number, got {value!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class MeanFlowObjective:
    """The MeanFlow objective's settings (a config's diffusion.objective_kwargs), checked when
    made (ValueError naming the key); defaults are the paper's (module docstring):

        p, c                adaptive weight w = 1 / (‖Δ‖² + c)^p;  p ≥ 0, c > 0
        time_mean/_std      logit(r), logit(t) ~ N(time_mean, time_std²) before sorting
        equal_fraction      fraction of rows with r = t, in [0, 1]
        omega, kappa        guidance folded into the target: ω > 0, κ ∈ [0, 1); (1, 0) = none,
                            effective scale ω′ = ω / (1 − κ)
        guidance_interval   (t_lo, t_hi), 0 ≤ t_lo < t_hi ≤ 1: rows with t outside get ṽ = v
    """

    p: float = NORM_P
    c: float = NORM_C
    time_mean: float = TIME_MEAN
    time_std: float = TIME_STD
    equal_fraction: float = EQUAL_FRACTION
    omega: float = 1.0
    kappa: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "guidance_interval":
                object.__setattr__(self, f.name, _finite(getattr(self, f.name), f.name))
        checks = (
            (self.p >= 0, f"p={self.p} must be >= 0 (0: plain squared error, 1: the paper's)"),
            (self.c > 0, f"c={self.c} must be positive"),
            (self.time_std > 0, f"time_std={self.time_std} must be positive"),
            (0 <= self.equal_fraction <= 1,
             f"equal_fraction={self.equal_fraction} must be in [0, 1]"),
            (self.omega > 0, f"omega={self.omega} must be positive (1 with kappa 0: no guidance)"),
            (0 <= self.kappa < 1, f"kappa={self.kappa} must be in [0, 1)"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"meanflow {message}.")
        interval = self.guidance_interval
        if not isinstance(interval, tuple | list) or len(interval) != 2:
            raise ValueError(f"meanflow guidance_interval must be (t_lo, t_hi), got {interval!r}.")
        lo, hi = (_finite(v, "guidance_interval bound") for v in interval)
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"meanflow guidance_interval must satisfy 0 <= t_lo < t_hi <= 1, "
                             f"got ({lo}, {hi}).")
        object.__setattr__(self, "guidance_interval", (lo, hi))

    @property
    def guided(self) -> bool:
        """Whether the target folds in guidance (and so needs the null class trained)."""
        return (self.omega, self.kappa) != (1.0, 0.0)

    @property
    def target_evaluations(self) -> int:
        """Network evaluations per image for the guided target ṽ (`guided_target`): 0 unguided,
        1 with κ = 0 (the null pass), 2 with κ > 0 (the conditional and null passes)."""
        return 0 if not self.guided else 1 if self.kappa == 0.0 else 2

    def loss(
        self, u_fn: CondUFn, x: Array, y: Array, rng: Array, *, null_label: int,
        num_bins: int = 10,
    ) -> tuple[Array, dict[str, Array]]:
        """`meanflow_loss` with these settings."""
        return meanflow_loss(
            u_fn, x, y, rng, null_label=null_label, time_mean=self.time_mean,
            time_std=self.time_std, equal_fraction=self.equal_fraction, p=self.p, c=self.c,
            omega=self.omega, kappa=self.kappa, interval=self.guidance_interval,
            num_bins=num_bins,
        )


def objective(**kwargs: Any) -> MeanFlowObjective:
    """The `MeanFlowObjective` of a config's diffusion.objective_kwargs; unknown keys are
    refused, naming the valid ones."""
    valid = [f.name for f in dataclasses.fields(MeanFlowObjective)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"objective {OBJECTIVE!r} takes no key(s) {unknown}; its keys are "
                         f"{valid}.")
    return MeanFlowObjective(**kwargs)


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------


def sample_loop(
    u_fn: UFn, z: Array, ts: Array, *, sharding: jax.sharding.Sharding | None = None
) -> Array:
    """z_{t_N} from z_{t_0} (B, ...) along ts (N + 1,): z_r = z_t − (t − r) u(z_t, r, t) for
    consecutive (t, r) = (t_i, t_{i+1}), in one `lax.scan` (core.samplers.meanflow). N
    evaluations of u_fn."""
    if sharding is not None:
        z = jax.lax.with_sharding_constraint(z, sharding)
    return samplers.meanflow(samplers.SamplingModel(u_fn, sharding), None, z, ts).samples


def sample(
    u_fn: UFn, shape: tuple[int, ...], rng: Array, *, num_steps: int = 1,
    ts: Array | None = None, z_init: Array | None = None,
    sharding: jax.sharding.Sharding | None = None, dtype: Any = None,
) -> SampleOutput:
    """Samples of `shape` (B, ...): z_1 ~ N(0, I) (or z_init) mapped to z_0 by `sample_loop`.

    ts: a decreasing grid (N + 1,) from 1 to 0; default the uniform grid with num_steps steps
    (num_steps = 1: the 1-NFE sampler, 2: 2-NFE through t = ½). z_1 is drawn from the first key
    of jax.random.split(rng), as `core.samplers.sample` draws it. Jittable with everything but
    rng static, e.g. jax.jit(functools.partial(sample, u_fn, shape, num_steps=2)).
    """
    dtype = dtype or (z_init.dtype if z_init is not None else jnp.result_type(float))
    ts = time_grid(num_steps, dtype=dtype) if ts is None else jnp.asarray(ts, dtype)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {ts.shape}.")
    if z_init is None:
        z = jax.random.normal(jax.random.split(rng)[0], tuple(shape), dtype)
    elif tuple(z_init.shape) != tuple(shape):
        raise ValueError(f"z_init has shape {z_init.shape}, expected {tuple(shape)}.")
    else:
        z = z_init.astype(dtype)
    return SampleOutput(samples=sample_loop(u_fn, z, ts, sharding=sharding),
                        nfe=ts.shape[0] - 1)


def make_sampler(
    apply_fn: Callable[[Any, Array, Array, Array], Array], shape: tuple[int, ...], *,
    num_steps: int = 1, ts: Array | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Callable[[Any, Array], SampleOutput]:
    """A jitted fn(params, rng) -> SampleOutput with u_fn = (z, r, t) ↦ apply_fn(params, z, r, t).

    params is any pytree (weights, class labels); new params or rng do not recompile.
    """

    @jax.jit
    def run(params: Any, rng: Array) -> SampleOutput:
        return sample(lambda z, r, t: apply_fn(params, z, r, t), shape, rng,
                      num_steps=num_steps, ts=ts, sharding=sharding)

    return run
