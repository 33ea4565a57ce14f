"""Schedules: monotone λ, configured endpoints, VP identity, DDPM grid exactness, inverse."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import schedules as sch

T_INTERIOR = jnp.linspace(1e-3, 1 - 1e-3, 2001)

ALL = {
    "ddpm_linear": sch.ddpm_linear(),
    "cosine": sch.cosine(),
    "cosine_log_snr": sch.cosine_log_snr(-15.0, 12.0),
    "vdm_linear": sch.vdm_linear(),
    "edm": sch.edm(),
    "rectified_flow": sch.rectified_flow(),
    "shifted_rf": sch.shifted(sch.rectified_flow(), 256 / 64),
    "shifted_cosine": sch.shifted(sch.cosine_log_snr(), 2.0),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_log_snr_strictly_decreasing_with_negative_derivative(name):
    schedule = ALL[name]
    lam, dlam = sch.log_snr_and_derivative(schedule, T_INTERIOR)
    assert np.all(np.isfinite(lam)) and np.all(np.diff(np.asarray(lam)) < 0)
    assert np.all(np.asarray(dlam) < 0)
    # Autodiff derivative against central finite differences, in float64, away from the ends.
    if name != "ddpm_linear":  # piecewise linear in log ᾱ: differences straddle the kinks
        with jax.enable_x64(True):
            t = jnp.linspace(0.05, 0.95, 91, dtype=jnp.float64)
            h = 1e-5
            fd = (schedule.log_snr(t + h) - schedule.log_snr(t - h)) / (2 * h)
        np.testing.assert_allclose(sch.log_snr_and_derivative(schedule, t.astype(jnp.float32))[1],
                                   fd, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL))
def test_family_identity(name):
    schedule = ALL[name]
    alpha, sigma = sch.alpha_sigma(schedule, T_INTERIOR)
    np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), schedule.log_snr(T_INTERIOR),
                               rtol=1e-4, atol=1e-4)
    if schedule.family == "vp":
        np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    elif schedule.family == "flow":
        np.testing.assert_allclose(alpha + sigma, 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(alpha, 1.0)


def test_endpoints_as_configured():
    np.testing.assert_allclose(sch.vdm_linear(-13.3, 5.0).log_snr(jnp.array([0.0, 1.0])),
                               [13.3, -5.0], rtol=1e-6)
    np.testing.assert_allclose(sch.cosine_log_snr(-15.0, 12.0).log_snr(jnp.array([0.0, 1.0])),
                               [12.0, -15.0], rtol=1e-4)
    sigma = jnp.exp(-sch.edm(0.002, 80.0).log_snr(jnp.array([0.0, 1.0])) / 2)
    np.testing.assert_allclose(sigma, [0.002, 80.0], rtol=1e-4)
    rf = sch.rectified_flow()
    np.testing.assert_allclose(sch.alpha_sigma(rf, jnp.array([0.25]))[0], [0.75], rtol=1e-6)
    assert sch.ddpm_linear().log_snr(jnp.zeros(())) == jnp.inf  # z_0 = x: SNR = ∞
    assert sch.cosine().log_snr(jnp.zeros(())) == jnp.inf


def test_ddpm_reproduces_alpha_bar_at_grid_points():
    T = 1000
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    alpha_bar = np.cumprod(1 - betas)
    t = jnp.arange(1, T + 1) / T
    alpha, _ = sch.alpha_sigma(sch.ddpm_linear(T), t)
    np.testing.assert_allclose(np.asarray(alpha, np.float64) ** 2, alpha_bar, atol=1e-6, rtol=0)


def test_cosine_matches_nichol_dhariwal_formula():
    s = 0.008
    t = np.linspace(0.01, 0.99, 50)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f(t) / f(0)
    alpha, _ = sch.alpha_sigma(sch.cosine(s), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(np.asarray(alpha) ** 2, alpha_bar, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cosine_endpoints_are_exact_in_every_dtype(dtype):
    """λ(1) = −∞ and α_1 = 0 exactly, in float32 and float64 (cos of the rounded π/2 is 6e-17 in
    float64: λ(1) was −74.7); elsewhere λ is Nichol & Dhariwal's formula to round-off."""
    s = 0.008
    with jax.enable_x64(dtype == "float64"):
        schedule = sch.cosine(s)
        # A scalar, a vector and a jitted call (XLA's scalar and vector cos differ at π/2).
        for ends in (jnp.zeros((), dtype), jnp.ones((), dtype), jnp.array([0.0, 1.0], dtype)):
            for fn in (schedule.log_snr, jax.jit(schedule.log_snr)):
                lam = fn(ends)
                assert lam.dtype == dtype
                np.testing.assert_array_equal(lam, jnp.where(ends == 0, jnp.inf, -jnp.inf))
            alpha, sigma = sch.alpha_sigma(schedule, ends)
            np.testing.assert_array_equal(alpha, 1.0 - ends)  # α_0 = 1, α_1 = 0
            np.testing.assert_array_equal(sigma, ends)
        t = np.linspace(0.001, 0.999, 999)
        got = np.asarray(schedule.log_snr(jnp.asarray(t, dtype)), np.float64)
    # log(ᾱ/(1 − ᾱ)) with ᾱ = cos²(b)/cos²(a), in float64 with cancellation-free 1 − ᾱ.
    a, b = np.pi / 2 * s / (1 + s), np.pi / 2 * (t + s) / (1 + s)
    want = 2 * np.log(np.cos(b)) - np.log(np.sin(b - a) * np.sin(b + a))
    tol = 1e-10 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_shift_is_sd3_time_shift_for_rectified_flow():
    shift = 3.0
    t = jnp.linspace(0.05, 0.95, 19)
    t_shifted = shift * t / (1 + (shift - 1) * t)
    np.testing.assert_allclose(sch.shifted(sch.rectified_flow(), shift).log_snr(t),
                               sch.rectified_flow().log_snr(t_shifted), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sch.shifted(sch.vdm_linear(), 256 / 64).log_snr(t),
                               sch.vdm_linear().log_snr(t) + 2 * math.log(64 / 256), rtol=1e-6)


@pytest.mark.parametrize("name", ["cosine_log_snr", "edm", "rectified_flow", "ddpm_linear"])
def test_t_from_log_snr_inverts(name):
    schedule = ALL[name]
    t = jnp.linspace(0.02, 0.98, 25)
    np.testing.assert_allclose(sch.t_from_log_snr(schedule, schedule.log_snr(t)), t, atol=1e-5)


def test_bad_names_and_ranges_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown schedule 'cosin'"):
        sch.get_schedule("cosin")
    with pytest.raises(ValueError, match="log_snr_min < log_snr_max"):
        sch.cosine_log_snr(5.0, -5.0)
    with pytest.raises(ValueError, match="Bad arguments"):
        sch.get_schedule("vdm_linear", gamma_minn=1.0)
    with pytest.raises(ValueError, match="family"):
        sch.Schedule(lambda t: t, "vpp")


def test_schedules_are_jittable_and_vmappable():
    schedule = sch.cosine_log_snr()
    f = jax.jit(jax.vmap(lambda t: sch.log_snr_and_derivative(schedule, t)))
    lam, _ = f(T_INTERIOR)
    np.testing.assert_allclose(lam, schedule.log_snr(T_INTERIOR), rtol=1e-6, atol=1e-4)
