"""The time shift t' = α t / (1 + (α − 1) t) (diffusion.time_shift; RAE's α = sqrt(D / 4096)):
the sampling grid and the training draws against the closed form, the config key."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtri
from scipy.stats import norm

from vdm_jax.config import schema
from vdm_jax.core import samplers, schedules
from vdm_jax.core import time_sampling as ts
from vdm_jax.model import DataSpec, build


def _phi(t, a):
    return a * t / (1 + (a - 1) * t)


def test_grid_is_the_shifted_uniform_grid():
    a = 6.93
    grid = np.asarray(samplers.time_grid(10, t_min=0.001, t_max=1.0, time_shift=a), np.float64)
    u = 1.0 - np.arange(11) / 10
    np.testing.assert_allclose(grid, _phi(0.001 + 0.999 * u, a), rtol=1e-6)
    assert grid[0] == 1.0


def test_shifted_density_draws_and_pdf():
    a = 2.5
    base = ts.logit_normal(0.0, 1.0)
    density = ts.shifted(base, a)
    schedule = schedules.get_schedule("rectified_flow")
    rng = jax.random.key(3)
    t = np.asarray(ts.sample_time(density, rng, 4096, schedule), np.float64)
    u = np.asarray(ts.uniform_samples(rng, 4096), np.float64)
    closed = _phi(1 / (1 + np.exp(-np.asarray(ndtri(jnp.asarray(u)), np.float64))), a)
    np.testing.assert_allclose(t, closed, rtol=1e-5, atol=1e-6)
    # p'(t') is the derivative of the CDF P(φ(T) ≤ t') = Φ(logit φ⁻¹(t')).
    def cdf(x):
        inv = x / (a - (a - 1) * x)
        return norm.cdf(np.log(inv / (1 - inv)))

    grid, h = np.linspace(0.05, 0.95, 19), 1e-5
    numeric = (cdf(grid + h) - cdf(grid - h)) / (2 * h)
    pdf = np.asarray(density.pdf(jnp.asarray(grid), schedule), np.float64)
    np.testing.assert_allclose(pdf, numeric, rtol=1e-3)
    assert np.mean(t) > np.mean(_phi(0.5, 1.0))  # α > 1 moves mass toward the noise


def _config(**diffusion):
    c = schema.default_config()
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.model.prediction = "flow"
    for k, v in diffusion.items():
        c.diffusion[k] = v
    return c


def test_dimension_shift_reaches_the_model_training_and_sampling():
    data = DataSpec(image_shape=(8, 8, 16), num_classes=0, num_levels=256)
    config = _config(time_shift="dimension")
    schema.validate(config)
    model, _ = build(config, data, 0)
    alpha = math.sqrt(8 * 8 * 16 / 4096)
    assert model.time_shift == pytest.approx(alpha)
    rng = jax.random.key(1)
    schedule = schedules.get_schedule("rectified_flow")
    got = ts.sample_time(model.objective.density, rng, 256, schedule)
    plain = ts.sample_time(ts.logit_normal(0.0, 1.0), rng, 256, schedule)
    np.testing.assert_allclose(np.asarray(got), _phi(np.asarray(plain), alpha), rtol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(time_shift="wide"), "time_shift"),
    (dict(time_shift=-2.0), "time_shift"),
    (dict(time_shift=2.0, schedule="cosine_log_snr"), "rectified_flow"),
    (dict(time_shift=2.0, shift=3.0), "diffusion.shift"),
])
def test_bad_time_shift_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        schema.validate(_config(**changes))
