"""Encoder sharing while sampling (DDT, Wang et al. 2025): a part of the network computed on some
sampling steps and reused on the others, inside a sampler's one `lax.scan`.

    SharedEncoder         the shared part of a model function and where it is recomputed (it
                          travels in core.samplers.SamplingModel; its value rides in the carry)
    sharing_refresh       where it is recomputed: every k-th step, or an explicit step list
    sharing_schedule_dp   DDT's statistical dynamic programming for that list
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class SharedEncoder:
    """Encoder sharing (DDT, Wang et al. 2025): the part of a model function that sampling may
    compute on some steps only — DDT's condition encoder c = encode(z_t, t) — and the steps that
    recompute it.

    With a `SharedEncoder` the sampler's model function is the decoder (z, t, c) -> output, and
    the value c rides in the sampler's `lax.scan` carry. On step i every evaluation of the model
    (Heun: predictor and corrector) reads
        c_i = encode(z, t)  where refresh[i],  else the carried c_{i−1},
    and the value at the step's first evaluation (z_{t_i}, t_i) is carried on. So an all-True
    mask computes exactly what the model computes without sharing, and a mask with K True
    entries runs the encoder K times with one evaluation per step. The carry starts from zeros
    of encode's abstract output (`jax.eval_shape`); step 0 always recomputes.

    encode: (z (B, ...), t (B,)) -> c (any array, e.g. DDT's (B, T, D)).
    refresh: (N,) bool with refresh[0] True (`sharing_refresh`).
    record: keep every step's carried c: the sampler's output then holds them, (N, ...)
    (`SampleOutput.conditions`; `sharing_schedule_dp` measures a schedule from them).
    """

    encode: Callable[[Array, Array], Array]
    refresh: np.ndarray
    record: bool = False

    def __post_init__(self) -> None:
        refresh = np.asarray(self.refresh, bool)
        if refresh.ndim != 1 or not refresh.size or not refresh[0]:
            raise ValueError("refresh must be a non-empty (N,) bool mask with refresh[0] True "
                             "(the first step has nothing to reuse).")
        object.__setattr__(self, "refresh", refresh)

    def initial(self, z: Array, t: Array, num_steps: int) -> Array:
        """The carry's first c: zeros of encode(z, t)'s shape and dtype (no computation)."""
        if self.refresh.shape != (num_steps,):
            raise ValueError(f"the encoder-sharing mask covers {self.refresh.shape[0]} steps, "
                             f"the sampler runs {num_steps}.")
        struct = jax.eval_shape(self.encode, z, t)
        return jnp.zeros(struct.shape, struct.dtype)

    def read(self, fresh: Array, carried: Array, z: Array, t: Array) -> Array:
        """c at (z, t) on a step: encode(z, t) where `fresh` (refresh[i]), else `carried`."""
        return jax.lax.cond(fresh, lambda: self.encode(z, t), lambda: carried)


def sharing_refresh(
    num_steps: int, *, interval: int | None = None, steps: Sequence[int] | None = None
) -> np.ndarray:
    """(num_steps,) bool: where the shared encoder is recomputed. interval k: steps 0, k, 2k, …
    (⌈N/k⌉ of them; k = 1 recomputes every step, i.e. no sharing); steps: an explicit sorted
    list starting at 0 (the non-uniform schedule of `sharing_schedule_dp`)."""
    if (interval is None) == (steps is None):
        raise ValueError("give exactly one of interval and steps.")
    mask = np.zeros((num_steps,), bool)
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"encoder interval must be a positive int, got {interval!r}.")
        mask[::interval] = True
        return mask
    steps = list(steps)
    ints = all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in steps)
    if (not steps or not ints or steps[0] != 0 or np.any(np.diff(steps) <= 0)
            or steps[-1] >= num_steps):
        raise ValueError(f"encoder steps must be increasing ints from 0 below the {num_steps} "
                         f"sampler steps, got {steps!r}.")
    mask[steps] = True
    return mask


def sharing_schedule_dp(error: Any, budget: int) -> tuple[int, ...]:
    """DDT's statistical dynamic programming: the `budget` steps at which to recompute the
    encoder so that the summed error of reusing is least.

    error: (N, N) with error[m, j] = 1 − (mean cosine similarity of the encoder outputs at steps
    m and j), measured on a trajectory that recomputes every step (`SharedEncoder(record=True)`).
    Reusing step j's output on steps j..e−1 costs C(j, e) = Σ_{m=j}^{e−1} error[m, j]; the
    schedule 0 = j_1 < j_2 < … < j_K splits the N steps into K segments of least Σ C. Returns
    (j_1, …, j_K), for `sharing_refresh(steps=...)`. O(K N²).
    """
    err = np.asarray(error, np.float64)
    n = err.shape[0]
    if err.shape != (n, n) or n < 1:
        raise ValueError(f"error must be a square (N, N) matrix, got shape {err.shape}.")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n:
        raise ValueError(f"budget must be an int in [1, {n}], got {budget!r}.")
    # seg[j, e] = C(j, e) for j < e: cumulative sums down each column j from row j.
    lower = np.tril(err)
    cum = np.cumsum(lower, axis=0)  # cum[m, j] = Σ_{m' ≤ m} lower[m', j]
    seg = np.full((n + 1, n + 1), np.inf)
    for j in range(n):
        before = cum[j - 1, j] if j > 0 else 0.0
        seg[j, j + 1:] = cum[j:, j] - before
    best = np.full((budget + 1, n + 1), np.inf)  # best[k, e]: k segments covering steps [0, e)
    arg = np.zeros((budget + 1, n + 1), int)
    best[1, 1:] = seg[0, 1:]
    for k in range(2, budget + 1):
        for e in range(k, n + 1):
            cand = best[k - 1, k - 1:e] + seg[k - 1:e, e]  # last segment starts at j ∈ [k−1, e)
            arg[k, e] = k - 1 + int(np.argmin(cand))
            best[k, e] = cand[arg[k, e] - (k - 1)]
    starts, e = [], n
    for k in range(budget, 0, -1):
        j = arg[k, e] if k > 1 else 0
        starts.append(j)
        e = j
    return tuple(int(j) for j in reversed(starts))
