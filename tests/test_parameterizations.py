"""Every parameterization conversion round-trips; v, score and flow match their definitions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import parameterizations as par
from vdm_jax.core import schedules as sch

SCHEDULES = {"vp": sch.cosine_log_snr(), "flow": sch.rectified_flow(), "ve": sch.edm(),
             "ddpm": sch.ddpm_linear()}


def _setup(schedule):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(k1, (6, 4, 4, 3), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x.shape)
    t = jnp.linspace(0.1, 0.9, 6)
    alpha, sigma = sch.alpha_sigma(schedule, t[:, None, None, None])
    return x, eps, alpha * x + sigma * eps, t


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("src,dst", list(itertools.permutations(par.PREDICTIONS, 2)))
def test_conversions_round_trip(name, src, dst):
    # float64: near t = 1 some conversions divide by α ≈ 0.02, which would only test float32
    # rounding; the algebra is what is under test.
    schedule = SCHEDULES[name]
    with jax.enable_x64(True):
        x, eps, z, t = (a.astype(jnp.float64) for a in _setup(schedule))
        pred = par.from_x_eps(schedule, x, eps, src, z, t)
        back = par.convert(schedule, par.convert(schedule, pred, src, dst, z, t), dst, src, z, t)
        x_hat, eps_hat = par.to_x_eps(schedule, pred, src, z, t)
    np.testing.assert_allclose(back, pred, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_hat, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eps_hat, eps, rtol=1e-5, atol=1e-5)


def test_targets_match_their_definitions():
    x, eps, z, t = _setup(SCHEDULES["vp"])
    alpha, sigma = sch.alpha_sigma(SCHEDULES["vp"], t[:, None, None, None])
    np.testing.assert_allclose(par.from_x_eps(SCHEDULES["vp"], x, eps, "v", z, t),
                               alpha * eps - sigma * x, rtol=1e-6)
    np.testing.assert_allclose(par.from_x_eps(SCHEDULES["vp"], x, eps, "score", z, t),
                               -eps / sigma, rtol=1e-6)
    # Rectified flow: u = dz/dt = ε − x, and it is the finite-difference time derivative of z_t.
    rf = SCHEDULES["flow"]
    x, eps, z, t = _setup(rf)
    np.testing.assert_allclose(par.from_x_eps(rf, x, eps, "flow", z, t), eps - x,
                               rtol=1e-5, atol=1e-5)
    vp = SCHEDULES["vp"]
    x, eps, z, t = _setup(vp)
    h = 1e-3
    zf = lambda tt: (lambda a, s: a * x + s * eps)(*sch.alpha_sigma(vp, tt[:, None, None, None]))
    np.testing.assert_allclose(par.from_x_eps(vp, x, eps, "flow", z, t),
                               (zf(t + h) - zf(t - h)) / (2 * h), rtol=2e-2, atol=2e-3)


def test_posterior_mean_parameterization_round_trips():
    schedule = SCHEDULES["vp"]
    x, _, z, t = _setup(schedule)
    s = t - 0.05
    mu = par.mu_from_x(schedule, s, t, z, x)
    np.testing.assert_allclose(par.x_from_mu(schedule, s, t, z, mu), x, rtol=1e-5, atol=1e-5)


def test_unknown_prediction_type_is_a_clear_error():
    x, _, z, t = _setup(SCHEDULES["vp"])
    with pytest.raises(ValueError, match="Unknown prediction type 'epsilon'"):
        par.to_x_eps(SCHEDULES["vp"], x, "epsilon", z, t)
