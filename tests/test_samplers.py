"""Samplers with the exact optimal denoiser of known data as the model: moments within Monte Carlo
error, convergence order against the exact probability-flow ODE solution, DDIM ↔ DDPM and
inversion, guidance, one compilation, NFE."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import samplers as smp
from vdm_jax.core import schedules as sch
from vdm_jax.core.parameterizations import convert, from_x_eps

# Tests compile many small programs; XLA's backend optimizations cost more than they save here.
FAST = {"xla_backend_optimization_level": 0}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)


def gaussian_mixture(weights, means, covs):
    """Parameters of Σ_k w_k N(m_k, C_k), C_k = Q_k diag(e_k) Q_kᵀ, as a pytree of arrays."""
    eig, q = np.linalg.eigh(np.asarray(covs))
    return {"log_w": np.log(weights), "means": np.asarray(means), "q": q, "eig": eig}


def mixture_moments(weights, means, covs):
    mean = np.einsum("k,kd->d", weights, means)
    second = np.einsum("k,kde->de", weights, covs + np.einsum("kd,ke->kde", means, means))
    return mean, second - np.outer(mean, mean)


# A Gaussian with full covariance (as two equal components, so it shares the mixture's compiled
# sampler), and a two-component mixture with full covariances, > 7 std between the means.
MEAN = np.array([0.5, -1.0])
COV = np.array([[0.6, 0.3], [0.3, 0.8]])
GAUSSIAN = gaussian_mixture([0.5, 0.5], [MEAN, MEAN], [COV, COV])
WEIGHTS = np.array([0.3, 0.7])
MIX_MEANS = np.array([[-2.0, 1.0], [1.5, -0.5]])
MIX_COVS = np.array([[[0.2, 0.0], [0.0, 0.3]], [[0.3, 0.1], [0.1, 0.2]]])
MIXTURE = gaussian_mixture(WEIGHTS, MIX_MEANS, MIX_COVS)
MIX_MEAN, MIX_COV = mixture_moments(WEIGHTS, MIX_MEANS, MIX_COVS)

BATCH = 8192


def optimal_x_hat(schedule, data, z, t):
    """E[x | z_t] = Σ_k r_k(z) [m_k + α C_k (α² C_k + σ² I)⁻¹ (z − α m_k)] in each C_k's
    eigenbasis, with responsibilities r_k ∝ w_k N(z; α m_k, α² C_k + σ² I)."""
    alpha, sigma = sch.alpha_sigma(schedule, t[:, None, None])  # (B, 1, 1)
    resid = jnp.einsum("bkd,kde->bke", z[:, None, :] - alpha * data["means"], data["q"])
    marg_var = alpha**2 * data["eig"] + sigma**2  # (B, K, D)
    log_r = data["log_w"] - 0.5 * jnp.sum(resid**2 / marg_var + jnp.log(marg_var), axis=-1)
    gain = alpha * data["eig"] / marg_var
    post = data["means"] + jnp.einsum("bke,kde->bkd", gain * resid, data["q"])
    return jnp.sum(jax.nn.softmax(log_r, axis=-1)[..., None] * post, axis=1).astype(z.dtype)


def optimal_model(schedule, kind):
    """apply_fn(data, z, t): the optimal model in parameterization `kind`, through the core's
    conversion of (x̂, ε̂ = (z − α x̂)/σ)."""

    def apply_fn(data, z, t):
        x = optimal_x_hat(schedule, data, z, t)
        alpha, sigma = sch.alpha_sigma(schedule, t[:, None])
        return from_x_eps(schedule, x, (z - alpha * x) / sigma, kind, z, t)

    return apply_fn


def rf_flow_model(data):
    """Rectified flow's optimal velocity û = ε̂ − x̂ written directly (finite at t = 1, α = 0)."""

    def model(z, t):
        x = optimal_x_hat(sch.rectified_flow(), data, z, t)
        return (z - (1 - t[:, None]) * x) / t[:, None] - x

    return model


def assert_moments(x, mean, cov, n_se=5.0):
    """Sample mean and second moments about the true mean within n_se standard errors; the
    standard error of each entry is the sample std of its summands / √B."""
    b = len(x)
    assert np.all(np.isfinite(x))
    d = x - mean
    mean_se = d.std(0) / math.sqrt(b)
    assert np.all(np.abs(d.mean(0)) < n_se * mean_se), (d.mean(0), mean_se)
    prods = d[:, :, None] * d[:, None, :]
    cov_se = prods.std(0) / math.sqrt(b)
    assert np.all(np.abs(prods.mean(0) - cov) < n_se * cov_se), (prods.mean(0), cov, cov_se)


def assert_mixture_weights(x, n_se=5.0):
    """Fraction assigned to component 0 (by the data-space responsibilities) ≈ w_0 ± n_se·SE."""
    log_p = []
    for w, m, c in zip(WEIGHTS, MIX_MEANS, MIX_COVS, strict=True):
        d = x - m
        maha = np.einsum("bd,de,be->b", d, np.linalg.inv(c), d)
        log_p.append(np.log(w) - 0.5 * (maha + np.log(np.linalg.det(c))))
    frac = np.mean(log_p[0] > log_p[1])
    se = math.sqrt(WEIGHTS[0] * WEIGHTS[1] / len(x))
    assert abs(frac - WEIGHTS[0]) < n_se * se, (frac, WEIGHTS[0], se)


def _gaussian_and_mixture(schedule, sampler, prediction, seed, num_steps=200, **options):
    """Samples of the Gaussian and of the mixture from one compiled sampler."""
    apply_fn = optimal_model(schedule, prediction)
    run = jax.jit(lambda data, key: smp.sample(
        functools.partial(apply_fn, data), schedule, (BATCH, 2), key, sampler=sampler,
        num_steps=num_steps, prediction=prediction, **options).samples)
    key = jax.random.PRNGKey(seed)
    return [np.asarray(run(data, jax.random.fold_in(key, i)), np.float64)
            for i, data in enumerate((GAUSSIAN, MIXTURE))]


# Every sampler, each with a different parameterization (all five are covered) and spacing, on
# VDM's linear γ with λ ∈ [−12, 12] (constant λ' = −24, so Euler–Maruyama is stable at 200 steps),
# and DDPM's linear-β schedule for 'ddpm' (its 500-step uniform grid is a subsequence of the 1000
# steps; λ(0) = +∞, so the last step returns x̂). The standard error is ≈ 0.011 std at B = 8192.
# Biases below it: the prior mismatch of N(0, I) at t = 1 (α_1 ≈ 0.0025, 0.0064) shifts the mean
# by < 0.01 std; the ODE samplers, DPM-Solver++ and Euler–Maruyama at 200 steps are within MC noise
# of their 1000-step results. DDPM and DDIM are first order with a larger constant: at 200 steps
# they shrink the covariance by ≈ 3% (2.5–3.8 standard errors, measured at B = 65536), at 500 steps
# by ≈ 1%, so they run 500 steps.
VDM = sch.vdm_linear(-12.0, 12.0)
VP_CASES = [
    ("ddpm", "eps", sch.ddpm_linear(1000), {"num_steps": 500}),
    ("ddpm", "x", VDM, {"num_steps": 500, "variance": "forward", "spacing": "shifted"}),
    ("ddim", "v", VDM, {"num_steps": 500, "spacing": "quadratic"}),
    ("ddim", "score", VDM, {"num_steps": 500, "eta": 0.5}),
    ("euler", "flow", VDM, {}),
    ("heun", "eps", VDM, {"spacing": "shifted"}),
    ("euler_maruyama", "x", VDM, {}),
    ("dpm_solver_2m", "v", VDM, {}),
]
CASE_IDS = [f"{s}-{p}-{'-'.join(map(str, o.values()))}".rstrip("-") for s, p, _, o in VP_CASES]


@pytest.mark.parametrize(("sampler", "prediction", "schedule", "options"), VP_CASES, ids=CASE_IDS)
def test_moments_and_mixture_weights_vp(sampler, prediction, schedule, options):
    gauss, mix = _gaussian_and_mixture(schedule, sampler, prediction, 0, **options)
    assert_moments(gauss, MEAN, COV)
    assert_moments(mix, MIX_MEAN, MIX_COV)
    assert_mixture_weights(mix)


RF_CASES = [("ddpm", "x", 500), ("ddim", "flow", 200), ("euler", "flow", 200), ("heun", "x", 200),
            ("dpm_solver_2m", "eps", 200)]


@pytest.mark.parametrize(("sampler", "prediction", "num_steps"), RF_CASES)
def test_moments_and_mixture_weights_rectified_flow(sampler, prediction, num_steps):
    """Rectified flow from the default t_max = 1 − 1e-3 (λ(1) = −∞). (DDIM is Euler here.)"""
    schedule = sch.rectified_flow()
    assert float(smp.default_t_max(schedule)) == pytest.approx(1 - 1e-3)
    gauss, mix = _gaussian_and_mixture(schedule, sampler, prediction, 1, num_steps)
    assert_moments(gauss, MEAN, COV)
    assert_moments(mix, MIX_MEAN, MIX_COV)
    assert_mixture_weights(mix)


# ----------------------------------------------------------------------------------------------
# Convergence order against the exact probability-flow ODE solution (float64).
# ----------------------------------------------------------------------------------------------


def _exact_ode(schedule, z, t_max, t_min):
    """The PF-ODE keeps each eigen-coordinate's standardized value ξ = (z − α m)/√(α² c + σ²):
    the linear map carrying N(α m, α² C + σ² I) at t_max to its t_min counterpart."""
    a1, s1 = sch.alpha_sigma(schedule, jnp.asarray(t_max, jnp.float64))
    a0, s0 = sch.alpha_sigma(schedule, jnp.asarray(t_min, jnp.float64))
    q, eig = GAUSSIAN["q"][0], GAUSSIAN["eig"][0]
    xi = ((z - a1 * MEAN) @ q) / jnp.sqrt(a1**2 * eig + s1**2)
    return a0 * MEAN + (xi * jnp.sqrt(a0**2 * eig + s0**2)) @ q.T


def _order(schedule, model, prediction, sampler, t_max, steps=(32, 64, 128, 256)):
    """Least-squares slope of log RMS error vs log steps (sign flipped), and the errors."""
    z = jax.random.normal(jax.random.PRNGKey(0), (256, 2), jnp.float64)
    exact = _exact_ode(schedule, z, t_max, 0.0)
    fn = fast_jit(functools.partial(getattr(smp, sampler), model, schedule, prediction=prediction))
    errors = []
    for n in steps:
        out = fn(z, smp.time_grid(n, t_max=t_max, dtype=jnp.float64)).samples
        errors.append(float(jnp.sqrt(jnp.mean((out - exact) ** 2))))
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize(("sampler", "order"),
                         [("euler", 1), ("ddim", 1), ("heun", 2), ("dpm_solver_2m", 2)])
def test_convergence_order_vp(sampler, order):
    """VDM's linear γ (uniform in t = uniform in λ), λ ∈ [−10, 10], ε-model, 32–256 steps."""
    with jax.enable_x64(True):
        schedule = sch.vdm_linear(-10.0, 10.0)
        model = functools.partial(optimal_model(schedule, "eps"), GAUSSIAN)
        slope, errors = _order(schedule, model, "eps", sampler, 1.0)
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.parametrize(("sampler", "order"), [("euler", 1), ("heun", 2)])
def test_convergence_order_rectified_flow(sampler, order):
    """Rectified flow from t_max = 1 exactly (σ = 1, α = 0) with a velocity model."""
    with jax.enable_x64(True):
        slope, errors = _order(sch.rectified_flow(), rf_flow_model(GAUSSIAN), "flow", sampler, 1.0)
    assert abs(slope - order) < 0.3, (slope, errors)


# ----------------------------------------------------------------------------------------------
# DDIM: η = 1 is DDPM; η = 0 inverts.
# ----------------------------------------------------------------------------------------------


def test_ddim_eta_one_is_ddpm_on_the_same_grid():
    """Same grid (quadratic, 50 steps), same rng: the same samples, hence the same distribution;
    η = 0 is a different sampler."""
    schedule = sch.cosine_log_snr(-12.0, 12.0)
    model = functools.partial(optimal_model(schedule, "eps"), MIXTURE)

    @fast_jit
    def run(key):
        common = dict(num_steps=50, prediction="eps", spacing="quadratic")
        draw = lambda **kw: smp.sample(model, schedule, (4096, 2), key, **common, **kw).samples
        return draw(sampler="ddim", eta=1.0), draw(sampler="ddpm"), draw(sampler="ddim")

    ddim_1, ddpm, ddim_0 = run(jax.random.PRNGKey(4))
    np.testing.assert_allclose(ddim_1, ddpm, atol=2e-4)
    assert float(jnp.mean(jnp.abs(ddim_1 - ddim_0))) > 0.05


def test_ddim_inversion_reconstructs():
    """Encode x with DDIM (η = 0), decode on the same grid. The explicit encoder is first order
    (the error halves from 100 to 200 steps); with 2 fixed-point iterations per step the 200-step
    reconstruction is within 1e-3."""
    schedule = sch.vdm_linear(-13.3, 5.0)
    model = functools.partial(optimal_model(schedule, "v"), GAUSSIAN)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (4096, 2)))
    x = jnp.asarray(MEAN + noise @ np.linalg.cholesky(COV).T, jnp.float32)

    @functools.partial(fast_jit, static_argnums=(1, 2))
    def round_trip(x, n, iters):
        z = smp.ddim_invert(model, schedule, x, num_steps=n, prediction="v",
                            fixed_point_iters=iters)
        out = smp.sample(model, schedule, x.shape, jax.random.PRNGKey(0), sampler="ddim",
                         num_steps=n, prediction="v", z_init=z)
        return jnp.max(jnp.abs(out.samples - x)), z

    err_100, err_200 = float(round_trip(x, 100, 0)[0]), float(round_trip(x, 200, 0)[0])
    assert 1.7 < err_100 / err_200 < 2.3, (err_100, err_200)
    err, z = round_trip(x, 200, 2)
    assert float(err) < 1e-3, float(err)
    # The encoding is the PF-ODE's standardized noise: ≈ N(0, I) (up to the prior gap at λ = −5).
    np.testing.assert_allclose(np.cov(np.asarray(z).T), np.eye(2), atol=0.1)


# ----------------------------------------------------------------------------------------------
# Parameterizations, endpoints and grids.
# ----------------------------------------------------------------------------------------------


# 'meanflow' reads a two-time average velocity, no parameterization (tests/test_meanflow*.py).
EQUIVALENCE_CASES = [("vp", s) for s in smp.SAMPLERS if s != "meanflow"] + [("flow", "heun"),
                                                                            ("ve", "heun")]


@pytest.mark.parametrize(("family", "sampler"), EQUIVALENCE_CASES)
def test_every_parameterization_gives_the_same_samples(family, sampler):
    """Same rng, the same optimal model in five parameterizations → the same samples. ('flow':
    rectified flow; 've': EDM, whose Heun is the EDM sampler.)"""
    schedule = {"vp": sch.cosine_log_snr(), "flow": sch.rectified_flow(), "ve": sch.edm()}[family]

    @fast_jit
    def run(key):
        return {kind: smp.sample(functools.partial(optimal_model(schedule, kind), GAUSSIAN),
                                 schedule, (64, 2), key, sampler=sampler, num_steps=10,
                                 prediction=kind).samples
                for kind in ("eps", "x", "v", "score", "flow")}

    outs = run(jax.random.PRNGKey(6))
    for kind, out in outs.items():
        assert np.all(np.isfinite(out)), kind
        np.testing.assert_allclose(out, outs["x"], rtol=2e-3, atol=2e-3, err_msg=kind)


def test_final_step_to_infinite_log_snr_returns_x_hat():
    """λ(0) = +∞ (cosine schedule): the last step of DDPM, DDIM and DPM-Solver++ lands on x̂."""
    schedule = sch.cosine()
    model = functools.partial(optimal_model(schedule, "eps"), GAUSSIAN)
    z = jax.random.normal(jax.random.PRNGKey(7), (32, 2))
    ts = jnp.array([0.3, 0.0])
    expected = optimal_x_hat(schedule, GAUSSIAN, z, jnp.full((32,), 0.3))
    outs = fast_jit(lambda z, key: [getattr(smp, sampler)(model, schedule, z, ts, key).samples
                                    for sampler in ("ddpm", "ddim", "dpm_solver_2m")])
    for out in outs(z, jax.random.PRNGKey(0)):
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_time_grid():
    for spacing in set(smp.SPACINGS) - {"ddpm_respaced"}:  # fixed grid: test_samplers_learned
        ts = np.asarray(smp.time_grid(10, spacing, t_min=0.01, t_max=0.9))
        assert ts.shape == (11,) and ts[0] == np.float32(0.9) and ts[-1] == np.float32(0.01)
        assert np.all(np.diff(ts) < 0), spacing
    np.testing.assert_allclose(np.diff(np.asarray(smp.time_grid(10))), -0.1, rtol=1e-5)
    quad = -np.diff(np.asarray(smp.time_grid(10, "quadratic")))
    assert quad[-1] < 0.1 < quad[0]  # denser near the data
    shifted = -np.diff(np.asarray(smp.time_grid(10, "shifted", shift=3.0)))
    assert shifted[0] < 0.1 < shifted[-1]  # denser at high noise
    np.testing.assert_allclose(smp.time_grid(10, "shifted", shift=1.0), smp.time_grid(10),
                               atol=1e-6)
    with pytest.raises(ValueError, match="spacing"):
        smp.time_grid(10, "cubic")
    with pytest.raises(ValueError, match="num_steps"):
        smp.time_grid(0)


def test_defaults_at_the_noise_end():
    """t_max = 1 where λ(1) is finite; the prior's variance is α² + σ² at t_max (EDM 1 + σ_max²)."""
    assert float(smp.default_t_max(sch.vdm_linear())) == 1.0
    assert float(smp.default_t_max(sch.cosine())) == pytest.approx(1 - 1e-3)  # λ(1) = −∞
    z = smp.initial_noise(sch.edm(), (20000, 2), jax.random.PRNGKey(8))
    assert abs(float(jnp.std(z)) / math.sqrt(1 + 80.0**2) - 1) < 0.02  # SE of the std ≈ 0.005


def test_float64_cosine_ddim_avoids_t_one_and_stays_finite():
    """In float64 the cosine schedule's λ(1) is −∞ too, so sampling starts at t_max = 1 − 1e-3,
    not at t = 1 where α_1 was 6e-17 and x̂ = (z − σ ε̂)/α multiplied any error in ε̂ by 1e16
    (the std was 4e6 here). The denoiser is the exact one plus an error of 1e-7 std in ε̂
    (float32 round-off): the samples keep the data's moments and match the float32 run from the
    same initial noise."""
    schedule = sch.cosine()
    exact = optimal_model(schedule, "eps")
    n, rngs = BATCH // 2, jax.random.split(jax.random.PRNGKey(11))
    z_init, err = (np.asarray(jax.random.normal(r, (n, 2)), np.float64) for r in rngs)
    outs = {}
    # Fresh copies of the data's NumPy arrays: once such an array has been a constant of a
    # nested jit in the x32 mode (as in the dopri5 case above: diffrax's solve is a jit),
    # JAX 0.10.2 lowers it as float32 under enable_x64 too (a verifier error).
    gaussian = {k: np.array(v) for k, v in GAUSSIAN.items()}
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            t_max = smp.default_t_max(schedule, dtype)
            assert t_max.dtype == dtype and float(t_max) == pytest.approx(1 - 1e-3)
            # The error is an argument, not a constant XLA could fold away.
            run = fast_jit(lambda z, e: smp.sample(
                lambda z_t, t: exact(gaussian, z_t, t) + 1e-7 * e, schedule, (n, 2),
                jax.random.PRNGKey(0), sampler="ddim", num_steps=500, z_init=z).samples)
            out = run(jnp.asarray(z_init, dtype), jnp.asarray(err, dtype))
            assert out.dtype == dtype
            outs[dtype] = np.asarray(out, np.float64)
    assert_moments(outs["float64"], MEAN, COV)  # finite, mean and covariance within 5 SE
    np.testing.assert_allclose(outs["float64"], outs["float32"], rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance.
# ----------------------------------------------------------------------------------------------


def _cond_model(calls):
    def model(z, t, y):
        calls.append(z.shape[0])
        return jnp.sin(z) * (1.0 + y[:, None]) + t[:, None] * y[:, None]

    return model


def test_guidance_scales_and_interval():
    calls = []
    model = _cond_model(calls)
    b, null = 6, 10
    z = jax.random.normal(jax.random.PRNGKey(9), (b, 3))
    t = jnp.linspace(0.05, 0.95, b)
    labels = jnp.arange(b) % 3
    cond, uncond = model(z, t, labels), model(z, t, jnp.full((b,), null))
    calls.clear()
    cfg = lambda w, interval=None: smp.classifier_free_guidance(model, labels, null, w, interval)
    np.testing.assert_allclose(cfg(1.0)(z, t), cond, atol=1e-6)
    np.testing.assert_allclose(cfg(0.0)(z, t), uncond, atol=1e-6)
    np.testing.assert_allclose(cfg(3.0)(z, t), uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert calls == [2 * b] * 3  # one forward pass of the 2B batch per call
    inside = (t >= 0.3) & (t <= 0.7)
    assert 0 < int(inside.sum()) < b
    expected = jnp.where(inside[:, None], uncond + 3.0 * (cond - uncond), cond)
    np.testing.assert_allclose(cfg(3.0, (0.3, 0.7))(z, t), expected, atol=1e-5)


def test_guidance_is_the_same_in_every_parameterization():
    """Guiding ε then converting to x equals guiding the x-predictions (conversions are affine)."""
    schedule = sch.cosine_log_snr()
    model = _cond_model([])
    to_x = lambda z, t, y: convert(schedule, model(z, t, y), "eps", "x", z, t)
    z = jax.random.normal(jax.random.PRNGKey(10), (5, 2))
    t = jnp.linspace(0.1, 0.9, 5)
    labels = jnp.arange(5) % 2
    guided_eps = smp.classifier_free_guidance(model, labels, 7, 2.5)(z, t)
    guided_x = smp.classifier_free_guidance(to_x, labels, 7, 2.5)(z, t)
    np.testing.assert_allclose(convert(schedule, guided_eps, "eps", "x", z, t), guided_x,
                               rtol=1e-4, atol=1e-4)


def test_guided_sampling_with_scale_one_and_zero():
    """Class-conditional Gaussians x | y ~ N(m + y·(1, 1), C), null class 2 at m − (3, 3):
    sampling with w = 1 is the conditional model's, w = 0 (interval [0, 1]) the unconditional
    one's, same rng; with the interval [0.2, 0.8] w = 0 is something else."""
    schedule = sch.cosine_log_snr()
    apply_fn = optimal_model(schedule, "eps")

    def model(z, t, y):
        shift = jnp.where(y == 2, -3.0, y.astype(z.dtype))[:, None]
        alpha, _ = sch.alpha_sigma(schedule, t[:, None])
        return apply_fn(GAUSSIAN, z - alpha * shift, t)  # ε̂ of the shifted data

    labels = jnp.array([0, 1] * 8)
    run = lambda fn: smp.sample(fn, schedule, (16, 2), jax.random.PRNGKey(11), sampler="heun",
                                num_steps=10, prediction="eps").samples

    @fast_jit
    def guided(w, t_lo, t_hi):
        return run(smp.classifier_free_guidance(model, labels, 2, w, (t_lo, t_hi)))

    @fast_jit
    def plain():
        return (run(lambda z, t: model(z, t, labels)),
                run(lambda z, t: model(z, t, jnp.full((16,), 2))))

    cond, uncond = plain()
    np.testing.assert_allclose(guided(1.0, 0.0, 1.0), cond, atol=1e-5)
    np.testing.assert_allclose(guided(0.0, 0.0, 1.0), uncond, atol=1e-5)
    assert float(jnp.max(jnp.abs(guided(0.0, 0.2, 0.8) - uncond))) > 0.1


# ----------------------------------------------------------------------------------------------
# Compilation, loops, NFE, determinism, sharding.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", smp.SAMPLERS)
def test_one_compilation_a_loop_and_the_nfe(sampler):
    """50 steps: the model is traced once per call site (1; Heun 2), a second rng reuses the
    compiled program, the lowered program is a while loop holding the model's distinctive op
    (tanh) once per call site, and the model runs `nfe` times (counted by a host callback)."""
    traces, calls = [], []
    schedule = sch.vdm_linear()

    def model(z, *times):  # times = (t,), or (r, t) for 'meanflow'
        traces.append(1)
        jax.debug.callback(lambda: calls.append(1))
        return jnp.tanh(z) * times[-1][:, None]

    prediction = smp.AVERAGE_VELOCITY if sampler == "meanflow" else "eps"
    run = fast_jit(functools.partial(smp.sample, model, schedule, (8, 2), sampler=sampler,
                                     num_steps=50, prediction=prediction))
    a = run(jax.random.PRNGKey(0))
    sites = len(traces)
    if sampler not in smp.ADAPTIVE:  # diffrax traces the field at its initial step and stages
        assert sites == (2 if sampler == "heun" else 1)
    b = run(jax.random.PRNGKey(1))
    a2 = run(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert len(traces) == sites and run._cache_size() == 1  # no retrace, no recompilation
    if sampler in smp.ADAPTIVE:  # the measured count: the steps depend on the noise
        assert a.nfe is None is smp.nfe(sampler, 50) and int(a.evaluations) > 6
        assert len(calls) == sum(int(o.evaluations) for o in (a, b, a2))
    else:
        assert a.nfe == smp.nfe(sampler, 50) == (99 if sampler == "heun" else 50)
        assert len(calls) == 3 * a.nfe
    np.testing.assert_array_equal(a.samples, a2.samples)  # same rng, same samples
    assert not np.allclose(a.samples, b.samples)  # another rng, other samples
    text = run.lower(jax.random.PRNGKey(0)).as_text()
    assert "stablehlo.while" in text
    assert text.count("stablehlo.tanh") == sites


def test_make_sampler_takes_params_without_recompiling():
    traces = []

    def apply_fn(params, z, t):
        traces.append(1)
        return params["scale"] * z

    run = smp.make_sampler(apply_fn, sch.vdm_linear(), (8, 2), sampler="dpm_solver_2m",
                           num_steps=12)
    a = run({"scale": jnp.float32(0.3)}, jax.random.PRNGKey(0))
    b = run({"scale": jnp.float32(0.6)}, jax.random.PRNGKey(0))
    assert len(traces) == 1 and a.nfe == 12
    assert not np.allclose(a.samples, b.samples)


def test_batch_sharded_over_a_device_mesh():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (conftest asks for 8 CPU devices)")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    schedule = sch.cosine_log_snr()
    model = functools.partial(optimal_model(schedule, "eps"), GAUSSIAN)
    shape = (8 * len(devices), 2)
    kwargs = dict(sampler="ddpm", num_steps=20, prediction="eps")
    sharded = fast_jit(functools.partial(smp.sample, smp.SamplingModel(model, sharding),
                                         schedule, shape, **kwargs))
    out = sharded(jax.random.PRNGKey(0)).samples
    assert out.sharding.is_equivalent_to(sharding, 2)
    ref = fast_jit(functools.partial(smp.sample, model, schedule, shape, **kwargs))
    np.testing.assert_allclose(out, ref(jax.random.PRNGKey(0)).samples, atol=1e-5)


def test_bad_arguments_are_clear_errors():
    schedule, model, key = sch.vdm_linear(), (lambda z, t: z), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="Unknown sampler"):
        smp.sample(model, schedule, (2, 2), key, sampler="plms", num_steps=4)
    with pytest.raises(ValueError, match="Unknown sampler"):
        smp.nfe("plms", 4)
    with pytest.raises(ValueError, match="prediction"):
        smp.sample(model, schedule, (2, 2), key, sampler="ddim", num_steps=4, prediction="mu")
    with pytest.raises(ValueError, match="eta"):
        smp.ddim(model, schedule, jnp.zeros((2, 2)), smp.time_grid(4), key, eta=1.5)
    with pytest.raises(ValueError, match="variance"):
        smp.ddpm(model, schedule, jnp.zeros((2, 2)), smp.time_grid(4), key, variance="large")
    with pytest.raises(ValueError, match="takes no option"):
        smp.sample(model, schedule, (2, 2), key, sampler="heun", num_steps=4, eta=0.5)
    with pytest.raises(ValueError, match="z_init"):
        smp.sample(model, schedule, (2, 2), key, sampler="ddim", num_steps=4,
                   z_init=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="rng"):
        smp.ddpm(model, schedule, jnp.zeros((2, 2)), smp.time_grid(4))
