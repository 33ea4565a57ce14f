"""Named objectives equal their textbook losses; the weighted-ELBO view is consistent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import objectives as losses
from vdm_jax.core import schedules as sch
from vdm_jax.core import time_sampling as ts
from vdm_jax.core.parameterizations import PREDICTIONS, from_x_eps

B = 8


def _batch(schedule, t):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(keys[0], (B, 4, 4, 2), minval=-1, maxval=1)
    eps = jax.random.normal(keys[1], x.shape)
    alpha, sigma = sch.alpha_sigma(schedule, t[:, None, None, None])
    z = alpha * x + sigma * eps
    # A deliberately imperfect prediction, expressed as (x̂, ε̂) consistent with z.
    eps_hat = eps + 0.5 * jax.random.normal(keys[2], x.shape)
    x_hat = (z - sigma * eps_hat) / alpha
    return x, eps, z, x_hat, eps_hat


def _mse(a, b):
    return jnp.mean((a - b).reshape(B, -1) ** 2, axis=1)


def _textbook(name, schedule, t, x, eps, z, x_hat, eps_hat):
    """Each objective written the way its paper writes it, from (x, ε) and (x̂, ε̂) directly."""
    lam = schedule.log_snr(t)
    alpha, sigma = sch.alpha_sigma(schedule, t)
    a4, s4 = alpha[:, None, None, None], sigma[:, None, None, None]
    dlam = jax.vmap(jax.grad(schedule.log_snr))(t)
    if name in ("eps_mse", "ddpm_simple"):
        return _mse(eps, eps_hat)
    if name == "x_mse":
        return _mse(x, x_hat)
    if name == "v_mse":
        return _mse(a4 * eps - s4 * x, a4 * eps_hat - s4 * x_hat)
    if name == "elbo":
        return 0.5 * (-dlam) * _mse(eps, eps_hat)
    if name == "sigmoid":
        return 0.5 * jax.nn.sigmoid(-lam) * (-dlam) * _mse(eps, eps_hat)
    if name == "edm":  # VE: z = x + σ n, D(z) = x̂, λ(σ) = (σ² + σ_d²)/(σ σ_d)²
        sig_edm = jnp.exp(-lam / 2)
        return (sig_edm**2 + 0.25) / (sig_edm * 0.5) ** 2 * _mse(x_hat, x)
    if name == "flow_matching":  # rectified flow: u = ε − x
        return _mse(eps - x, eps_hat - x_hat)
    if name == "jit":  # JiT's code, in its own convention t' = 1 − t: v = (x − z)/max(1 − t', eps)
        t_jit = (1 - t)[:, None, None, None]
        denom = jnp.maximum(1 - t_jit, 0.05)
        return _mse((x - z) / denom, (x_hat - z) / denom)
    raise AssertionError(name)


SCHEDULE_FOR = {
    "edm": sch.edm(), "flow_matching": sch.rectified_flow(), "jit": sch.rectified_flow()
}


@pytest.mark.parametrize("name", sorted(losses.OBJECTIVES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_named_objective_equals_textbook_loss(name, prediction):
    """Whatever the network predicts, the loss equals the paper's formula in its own space."""
    schedule = SCHEDULE_FOR.get(name, sch.cosine_log_snr())
    objective = losses.get_objective(name)
    t = jnp.linspace(0.07, 0.93, B)
    x, eps, z, x_hat, eps_hat = _batch(schedule, t)
    pred = from_x_eps(schedule, x_hat, eps_hat, prediction, z, t)
    got = losses.per_example_loss(objective, schedule, pred, prediction, x, eps, z, t)
    want = _textbook(name, schedule, t, x, eps, z, x_hat, eps_hat)
    np.testing.assert_allclose(got, want, rtol=1e-4 if prediction == "score" else 1e-5)


def test_weighted_elbo_with_importance_density_targets_the_same_integral():
    """E_{t~p}[½ w (−λ') / p · f(t)] = ∫ ½ w (−λ') f dt for any density p (quadrature on a grid)."""
    schedule = sch.cosine_log_snr()
    f = lambda t: 1.0 + jnp.sin(3 * t)  # stands in for E‖ε − ε̂‖² at time t
    w = lambda lam: jax.nn.sigmoid(1.0 - lam)
    t = jnp.linspace(1e-4, 1 - 1e-4, 200_001)
    lam, dlam = sch.log_snr_and_derivative(schedule, t)
    target = jnp.trapezoid(0.5 * w(lam) * (-dlam) * f(t), t)
    for density in (ts.uniform(), ts.logit_normal(0.3, 1.2), ts.log_snr_normal(0.0, 4.0)):
        objective = losses.weighted_elbo(w, density)
        p = density.pdf(t, schedule)
        np.testing.assert_allclose(jnp.trapezoid(p, t), 1.0, atol=2e-3)  # a normalized density
        value = jnp.trapezoid(p * objective.eps_weight(lam, t, dlam, p, schedule) * f(t), t)
        np.testing.assert_allclose(value, target, rtol=1e-5)


@pytest.mark.parametrize("name", ["elbo", "sigmoid"])
def test_implied_elbo_weight_recovers_w(name):
    schedule = sch.cosine_log_snr()
    t = jnp.linspace(0.05, 0.95, 19)
    w = losses.implied_elbo_weight(losses.get_objective(name), schedule, t)
    expected = jnp.ones_like(t) if name == "elbo" else jax.nn.sigmoid(-schedule.log_snr(t))
    np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_time_densities_sample_their_pdf():
    """Histogram of samples against the pdf, for each density (EDM's through the schedule)."""
    schedule = sch.edm()
    for density in (ts.logit_normal(0.8, 0.8), ts.log_snr_normal(2.4, 2.4), ts.uniform()):
        t = ts.sample_time(density, jax.random.PRNGKey(1), 100_000, schedule, antithetic=False)
        hist, edges = np.histogram(np.asarray(t), bins=20, range=(0.0, 1.0), density=True)
        centers = jnp.asarray((edges[:-1] + edges[1:]) / 2)
        np.testing.assert_allclose(hist, density.pdf(centers, schedule), rtol=0.1, atol=0.05)


def test_antithetic_times_cover_the_unit_interval_evenly():
    t = ts.sample_time(ts.uniform(), jax.random.PRNGKey(3), 64, sch.vdm_linear())
    counts = np.histogram(np.asarray(t), bins=64, range=(0, 1))[0]
    assert np.all(counts == 1)


def test_diffusion_loss_aux_bins_add_up():
    schedule = sch.rectified_flow()
    x = jax.random.uniform(jax.random.PRNGKey(0), (32, 4, 4, 1), minval=-1, maxval=1)
    model_fn = lambda z, t: jnp.zeros_like(z)  # predicts x̂ = 0
    loss, aux = losses.diffusion_loss(losses.get_objective("flow_matching"), schedule, model_fn,
                                      x, jax.random.PRNGKey(1), "x", num_bins=8)
    assert aux["per_example"].shape == (32,)
    np.testing.assert_allclose(aux["bin_sum"].sum(), aux["per_example"].sum(), rtol=1e-5)
    assert float(aux["bin_count"].sum()) == 32
    np.testing.assert_allclose(loss, aux["per_example"].mean(), rtol=1e-6)


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown objective 'l_simple'"):
        losses.get_objective("l_simple")
