"""Encoder sharing while sampling (DDT, Wang et al. 2025): a part of the network computed on some
sampling steps and reused on the others, inside a sampler's one `lax.scan`.

    ConditionCache        the value carried through the scan (core.samplers' `cache=` argument)
    sharing_refresh       where it is recomputed: every k-th step, or an explicit step list
    sharing_schedule_dp   DDT's statistical dynamic programming for that list
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class ConditionCache:
    """Encoder sharing (DDT, Wang et al. 2025): a part of the network — DDT's condition encoder —
    computed on the sampling steps i where refresh[i] and reused on the others, inside the
    sampler's one `lax.scan` (the reused value is carried from step to step).

    The network function asks for the part with `cache(compute)`, compute() → the value (any
    array). On step i every request returns lax.cond(refresh[i], compute, reuse the carried
    value): a recompute step recomputes at each of its model evaluations (Heun: predictor and
    corrector), a reuse step reuses at each; the value of the step's first request is carried
    on. So an all-True mask computes exactly what the model computes without a cache, and a
    mask with K True entries runs the encoder K times with one evaluation per step. Outside a
    sampler's scan, `cache(compute)` is compute(). refresh: (N,) bool with refresh[0] True
    (`sharing_refresh`). record=True keeps every step's carried value: after sampling, `history`
    holds them (N, ...) (`sharing_schedule_dp` measures a schedule from them).

    The value's shape and dtype come from an abstract trace of one step (no computation), and
    the carry starts from zeros of them; step 0 always recomputes. The samplers here make every
    step's first model call at the step's top level (a first call inside a nested branch would
    carry a value out of its trace).
    """

    def __init__(self, refresh: Any, *, record: bool = False):
        refresh = np.asarray(refresh, bool)
        if refresh.ndim != 1 or not refresh.size or not refresh[0]:
            raise ValueError("refresh must be a non-empty (N,) bool mask with refresh[0] True "
                             "(the first step has nothing to reuse).")
        self.refresh = refresh
        self.record = record
        self.history: Array | None = None
        self.value: Array | None = None
        self._mode: str | None = None
        self._carried: Array | None = None
        self._fresh: Array | None = None
        self._first = False
        self._struct: jax.ShapeDtypeStruct | None = None

    def __call__(self, compute: Callable[[], Array]) -> Array:
        if self._mode is None:
            return compute()
        if self._mode == "discover":
            value = compute()
            self._struct = jax.ShapeDtypeStruct(value.shape, value.dtype)
            return value
        carried = self._carried
        value = jax.lax.cond(self._fresh, compute, lambda: carried)
        if self._first:  # the step's first request: what the next step may reuse
            self._first, self.value = False, value
        return value

    def initial(self, one_step: Callable[[], Any], num_steps: int) -> Array:
        """Zeros of the value's shape and dtype, from an abstract trace of `one_step`."""
        if self.refresh.shape != (num_steps,):
            raise ValueError(f"the encoder-sharing mask covers {self.refresh.shape[0]} steps, "
                             f"the sampler runs {num_steps}.")
        self._mode, self._struct = "discover", None
        try:
            jax.eval_shape(one_step)
        finally:
            self._mode = None
        if self._struct is None:
            raise ValueError("encoder sharing was requested, but the model function never asks "
                             "the ConditionCache for a value (only DDT models share an encoder).")
        return jnp.zeros(self._struct.shape, self._struct.dtype)

    @contextlib.contextmanager
    def stepping(self, value: Array, fresh: Array):
        """Within one scan step: `value` carried in, `fresh` = refresh[i]; afterwards
        `self.value` is the value to carry out."""
        self._mode, self._carried, self.value = "step", value, value
        self._fresh, self._first = fresh, True
        try:
            yield self
        finally:
            self._mode, self._carried, self._fresh, self._first = None, None, None, False


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
    m and j), measured on a trajectory that recomputes every step (`ConditionCache(record=True)`).
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
