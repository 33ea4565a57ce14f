"""The samplers' time grids: t_0 = t_max > t_1 > … > t_N = t_min (`time_grid`), DDPM's
respacing (`ddpm_respaced_indices`), the default t_max and the initial noise at it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.core.schedules import Schedule, alpha_sigma
from vdm_jax.core.time_sampling import time_shift as warp_time

Array = jax.Array
SPACINGS = ("uniform", "quadratic", "shifted", "ddpm_respaced")
T_MAX_IF_SINGULAR = 1.0 - 1e-3  # default t_max where λ(1) is not finite


def time_grid(
    num_steps: int,
    spacing: str = "uniform",
    *,
    t_min: float | Array = 0.0,
    t_max: float | Array = 1.0,
    shift: float = 3.0,
    num_train_steps: int | None = None,
    last_step_size: float = 0.0,
    dtype: Any = None,
    time_shift: float = 1.0,
) -> Array:
    """(num_steps + 1,) times decreasing from t_max to t_min: t_i = t_min + (t_max − t_min) r(u_i),
    u_i = 1 − i/N, with r(u) =
        'uniform'    u
        'quadratic'  u²                          (DDIM's; more steps near the data)
        'shifted'    shift u / (1 + (shift − 1) u)   (SD3's time shift; more steps at high noise
                                                      for shift > 1)
    or 'ddpm_respaced': the N levels that guided-diffusion / DiT keep of a T = num_train_steps
    DDPM (`ddpm_respaced_indices`, 0-based k_0 < … < k_{N−1} = T − 1), read as t = (k + 1)/T,
    then 0: (k_{N−1} + 1)/T = 1, …, (k_0 + 1)/T, 0. DiT's index k is our level k + 1 (its
    ᾱ_k = Π_{j≤k} (1 − β_j) is our α²((k + 1)/T)), so with `ddpm_linear(T)` this grid is the
    respaced process exactly; t_min and t_max are not used.
    time_shift = α ≠ 1 then warps every point, t_i ← α t_i / (1 + (α − 1) t_i) (the model's
    time shift, core.time_sampling.time_shift; RAE's grid is φ_α of the uniform grid on
    [0.001, 1]).
    last_step_size = h > 0 (SiT's, REPA's and DDT's grids, h = 0.04 there): the first N − 1
    steps run this spacing from t_max to t_min + h, the last one from t_min + h to t_min.
    """
    if last_step_size > 0 and num_steps > 1 and spacing != "ddpm_respaced":
        head = time_grid(num_steps - 1, spacing, t_min=jnp.asarray(t_min) + last_step_size,
                         t_max=t_max, shift=shift, dtype=dtype, time_shift=time_shift)
        return jnp.append(head, jnp.asarray(t_min, head.dtype))
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown spacing {spacing!r}; expected one of {SPACINGS}.")
    if spacing == "shifted" and shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}.")
    dtype = dtype or jnp.result_type(float)
    if spacing == "ddpm_respaced":
        if num_train_steps is None:
            raise ValueError("spacing 'ddpm_respaced' needs num_train_steps (the T of the "
                             "DDPM schedule, e.g. 1000 for DiT).")
        kept = ddpm_respaced_indices(num_train_steps, num_steps)
        # linspace: the same float values as `ddpm_linear`'s knots, so λ is read exactly there.
        levels = np.linspace(0.0, 1.0, num_train_steps + 1)[kept[::-1] + 1]
        return jnp.asarray(np.append(levels, 0.0), dtype)
    u = 1.0 - jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    if spacing == "quadratic":
        r = u**2
    elif spacing == "shifted":
        r = shift * u / (1 + (shift - 1) * u)
    else:
        r = u
    t_min, t_max = jnp.asarray(t_min, dtype), jnp.asarray(t_max, dtype)
    ts = t_min + (t_max - t_min) * r
    ts = ts.at[0].set(t_max).at[-1].set(t_min)  # exact endpoints
    return ts if time_shift == 1.0 else warp_time(ts, time_shift)


def ddpm_respaced_indices(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The 0-based DDPM steps k_0 < … < k_{N−1} kept by guided-diffusion's (and DiT's)
    `space_timesteps(T, "N")`: k_i = round(i (T − 1)/(N − 1)), rounded half to even, so k_0 = 0
    and k_{N−1} = T − 1 (k = [0] for N = 1). (N,) int64.

    As there, i (T − 1)/(N − 1) is the float64 running sum of i strides, not the exact product:
    where the product is a half-integer the sum's rounding error decides the step (for T = 1000,
    283 of the N ≤ 1000 differ from exact rounding, N = 250 does not).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"Cannot respace {num_train_steps} DDPM steps to {num_steps}: need "
                         f"1 <= num_steps <= num_train_steps.")
    if num_steps == 1:
        return np.zeros((1,), np.int64)
    stride = (num_train_steps - 1) / (num_steps - 1)
    # add.accumulate is a left-to-right running sum, the reference's `cur_idx += stride`.
    positions = np.add.accumulate(np.append(0.0, np.full(num_steps - 1, stride)))
    return np.round(positions).astype(np.int64)  # np.round: half to even, as Python's round


def default_t_max(schedule: Schedule, dtype: Any = None) -> Array:
    """1 where λ(1) is finite, else `T_MAX_IF_SINGULAR` (a traced scalar: works for learned λ)."""
    one = jnp.ones((), dtype or jnp.result_type(float))
    return jnp.where(jnp.isfinite(schedule.log_snr(one)), one, T_MAX_IF_SINGULAR).astype(one.dtype)


def initial_noise(
    schedule: Schedule, shape: tuple[int, ...], rng: Array, t_max: float | Array = 1.0,
    dtype: Any = None,
) -> Array:
    """z_{t_max} ~ N(0, (α² + σ²) I): the marginal at t_max for zero-mean, unit-variance data."""
    dtype = dtype or jnp.result_type(float)
    alpha, sigma = alpha_sigma(schedule, jnp.asarray(t_max, dtype))
    return jnp.sqrt(alpha**2 + sigma**2) * jax.random.normal(rng, shape, dtype)
