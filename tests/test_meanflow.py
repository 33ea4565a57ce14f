"""MeanFlow: the jvp total derivative against float64 finite differences, the identity on the exact
average velocity of Gaussian data, the reduction to flow matching at r = t, the (r, t) sampler,
guidance folded into the target, 1- and few-step sampling, and the two-time DiT."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize
from flax import nnx

from vdm_jax.core import meanflow as mf
from vdm_jax.core import objectives
from vdm_jax.core import schedules as sch
from vdm_jax.core.diffusion import q_sample
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.registry import build_model

FAST = {"xla_backend_optimization_level": 0}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)

# Gaussian data x ~ N(MU, diag(S²)) in D = 3 dimensions.
MU = np.array([0.5, -1.0, 2.0])
S = np.array([0.3, 1.5, 0.8])


# ----------------------------------------------------------------------------------------------
# Exact fields of the rectified-flow path for Gaussian data (per dimension, elementwise):
#   z_t ~ N(m_t, σ_t²),  m_t = (1 − t) μ,  σ_t² = (1 − t)² s² + t²,
#   v(z, t) = E[ε − x | z_t = z] = −μ + (t − (1 − t) s²) / σ_t² · (z − m_t),
# and the ODE dz/dt = v keeps z on its quantile: z_τ = m_τ + (σ_τ / σ_t)(z_t − m_t), so
#   u(z, r, t) = (z_t − z_r) / (t − r) = −μ + (1 − σ_r / σ_t) / (t − r) · (z − m_t).
# test_exact_average_velocity_integrates_the_ode checks the flow map by integrating v numerically.
# ----------------------------------------------------------------------------------------------


def _const(a, dtype):
    """A constant from a Python list: a numpy array would be cached by JAX as a device buffer of
    the first precision it was used in, and the float64 tests would leak it into float32 ones."""
    return jnp.array(np.asarray(a).tolist(), dtype)


def _col(a, z):
    return jnp.asarray(a, z.dtype)[:, None]


def sigma_t(t, s=S):
    return jnp.sqrt((1 - t) ** 2 * _const(s, t.dtype) ** 2 + t**2)


def v_exact(z, t):
    t = _col(t, z)
    mu, s = _const(MU, z.dtype), _const(S, z.dtype)
    return -mu + (t - (1 - t) * s**2) / sigma_t(t) ** 2 * (z - (1 - t) * mu)


def u_exact(z, r, t, s=S):
    r, t = _col(r, z), _col(t, z)
    mu = _const(MU, z.dtype)
    return -mu + (1 - sigma_t(r, s) / sigma_t(t, s)) / (t - r) * (z - (1 - t) * mu)


def random_rtz(seed, n, dtype=jnp.float32, min_gap=0.02):
    """Random (z, r, t) with t ∈ (0.05, 1), r ∈ (0, t − min_gap), z from the marginal at t."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    t = jax.random.uniform(k1, (n,), dtype, 0.05, 1.0)
    r = jax.random.uniform(k2, (n,), dtype) * (t - min_gap)
    z = (1 - t[:, None]) * _const(MU, dtype) + sigma_t(t[:, None]) * jax.random.normal(
        k3, (n, 3), dtype)
    return z, r, t


# ----------------------------------------------------------------------------------------------
# The identity and its jvp.
# ----------------------------------------------------------------------------------------------


def mlp_params(key, d_in, hidden, d_out, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (d_in + 2, hidden), dtype) / math.sqrt(d_in + 2),
        "b1": jax.random.normal(k2, (hidden,), dtype) * 0.1,
        "w2": jax.random.normal(k3, (hidden, d_out), dtype) / math.sqrt(hidden),
    }


def mlp_u(params, z, r, t):
    """A small smooth network u(z, r, t): (B, D), (B,), (B,) -> (B, D)."""
    h = jnp.tanh(jnp.concatenate([z, r[:, None], t[:, None]], axis=-1) @ params["w1"]
                 + params["b1"])
    return h @ params["w2"]


def test_jvp_total_derivative_matches_float64_finite_differences():
    """du/dt = v ∂_z u + ∂_t u from one jvp equals the central difference
    [u(z + h v, r, t + h) − u(z − h v, r, t − h)] / 2h in float64 to 1e-6 (achieved ~1e-10);
    the tangents that the paper's Table 1b rejects give different numbers."""
    h = 1e-5

    @fast_jit
    def run():
        params = mlp_params(jax.random.key(0), 3, 32, 3, jnp.float64)
        z, r, t = random_rtz(1, 16, jnp.float64)
        v = jax.random.normal(jax.random.key(2), z.shape, jnp.float64)
        u_fn = functools.partial(mlp_u, params)
        u, u_tgt, dudt = mf.average_velocity_target(u_fn, z, r, t, v)
        fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
        # r moves too (tangent (v, 1, 1)), or t is held (tangent (v, 0, 0)).
        fd_r = (u_fn(z + h * v, r + h, t + h) - u_fn(z - h * v, r - h, t - h)) / (2 * h)
        fd_z = (u_fn(z + h * v, r, t) - u_fn(z - h * v, r, t)) / (2 * h)
        return dict(u=u, u_direct=u_fn(z, r, t), u_tgt=u_tgt, u_tgt_fd=v - (t - r)[:, None] * fd,
                    dudt=dudt, fd=fd, fd_r=fd_r, fd_z=fd_z)

    with jax.enable_x64(True):
        out = jax.tree.map(np.asarray, run())
    assert out["dudt"].dtype == np.float64
    err = np.max(np.abs(out["dudt"] - out["fd"]))
    assert err <= 1e-6, err
    np.testing.assert_allclose(out["u"], out["u_direct"], rtol=1e-14)
    np.testing.assert_allclose(out["u_tgt"], out["u_tgt_fd"], atol=1e-6)
    assert np.max(np.abs(out["dudt"] - out["fd_r"])) > 1e-3
    assert np.max(np.abs(out["dudt"] - out["fd_z"])) > 1e-3


def test_exact_average_velocity_integrates_the_ode():
    """The closed-form u equals (z_t − z_r)/(t − r) with z_r from RK4 on dz/dτ = v(z, τ)."""
    @fast_jit
    def run():
        z, r, t = random_rtz(3, 64, jnp.float64)
        n = 400
        dt = (r - t)[:, None] / n  # negative: integrate from t down to r

        def rk4(i, zc):
            tau = t + i * (r - t) / n
            k1 = v_exact(zc, tau)
            k2 = v_exact(zc + dt / 2 * k1, tau + (r - t) / (2 * n))
            k3 = v_exact(zc + dt / 2 * k2, tau + (r - t) / (2 * n))
            k4 = v_exact(zc + dt * k3, tau + (r - t) / n)
            return zc + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

        z_r = jax.lax.fori_loop(0, n, rk4, z)
        return u_exact(z, r, t), (z - z_r) / (t - r)[:, None]

    with jax.enable_x64(True):
        closed_form, numeric = run()
        assert closed_form.dtype == jnp.float64
        np.testing.assert_allclose(closed_form, numeric, rtol=0, atol=1e-9)


def test_identity_residual_vanishes_for_the_exact_average_velocity():
    """u − u_tgt = 0 (≤ 1e-5, float32) for the exact u with the marginal v as tangent, at random
    (z, r, t); a u with the wrong data scale, or with a wrong average but the right r = t limit,
    leaves a residual above 1e-2."""

    def wrong_scale(z, r, t):
        return u_exact(z, r, t, s=1.1 * S)

    def wrong_average(z, r, t):
        return u_exact(z, r, t) + 0.1 * (t - r)[:, None] * z

    @fast_jit
    def residuals():
        z, r, t = random_rtz(4, 256)
        v = v_exact(z, t)
        out = []
        for u_fn in (u_exact, wrong_scale, wrong_average):
            u, u_tgt, _ = mf.average_velocity_target(u_fn, z, r, t, v)
            out.append(jnp.max(jnp.abs(u - u_tgt)))
        return out

    exact, scale, average = map(float, residuals())
    assert exact <= 1e-5, exact
    assert scale > 1e-2 and average > 1e-2, (scale, average)


# ----------------------------------------------------------------------------------------------
# The loss.
# ----------------------------------------------------------------------------------------------


def test_r_equal_t_is_flow_matching():
    """At r = t: u_tgt = ε − x exactly; with p = 0 (w ≡ 1) the per-example loss and its parameter
    gradient are D × those of objectives.flow_matching on the same (x, ε, t) (its ‖·‖² is a
    mean over dimensions, MeanFlow's a sum); with the paper's p = 1, loss = L / (L + c)."""
    b, d = 32, 3
    rf = sch.rectified_flow()

    @fast_jit
    def run():
        kx, ke, kt, kp = jax.random.split(jax.random.key(5), 4)
        x = _const(MU, jnp.float32) + _const(S, jnp.float32) * jax.random.normal(kx, (b, d))
        eps = jax.random.normal(ke, (b, d))
        t = jax.nn.sigmoid(-0.4 + jax.random.normal(kt, (b,)))
        params = mlp_params(kp, d, 16, d, jnp.float32)
        z = mf.interpolate(x, eps, t)

        def mf_loss(params, p):
            return mf.per_example_loss(functools.partial(mlp_u, params), z, t, t, eps - x, p=p)

        def fm_loss(params):
            pred = mlp_u(params, z, t, t)
            return objectives.per_example_loss(objectives.flow_matching(), rf, pred, "flow", x,
                                               eps, z, t)

        loss0, aux = mf_loss(params, 0.0)
        return dict(
            z=z, z_q=q_sample(rf, x, t, eps), v=eps - x, u_tgt=aux["u_tgt"], w=aux["weight"],
            loss0=loss0, loss1=mf_loss(params, 1.0)[0], fm=fm_loss(params),
            g_mf=jax.grad(lambda p: mf_loss(p, 0.0)[0].mean())(params),
            g_fm=jax.grad(lambda p: fm_loss(p).mean())(params),
        )

    out = jax.tree.map(np.asarray, run())
    np.testing.assert_allclose(out["z"], out["z_q"], atol=1e-5)
    np.testing.assert_array_equal(out["u_tgt"], out["v"])
    np.testing.assert_allclose(out["w"], 1.0)
    np.testing.assert_allclose(out["loss0"], d * out["fm"], rtol=1e-5)
    for k in out["g_mf"]:
        np.testing.assert_allclose(out["g_mf"][k], d * out["g_fm"][k], rtol=1e-4, atol=1e-6)
    fm_sum = d * out["fm"]
    np.testing.assert_allclose(out["loss1"], fm_sum / (fm_sum + mf.NORM_C), rtol=1e-5)


def test_adaptive_weight_is_a_constant_in_the_gradient():
    """d/du [sg(w) ‖u − u_tgt‖²] = 2 w (u − u_tgt), w = 1/(‖Δ‖² + c)^p: the weight is not
    differentiated (otherwise p = 1 would give a gradient smaller by the factor c/(‖Δ‖² + c))."""
    kz, ku = jax.random.split(jax.random.key(6))
    z = jax.random.normal(kz, (4, 5))
    tgt = jax.random.normal(ku, (4, 5))
    r = t = jnp.full((4,), 0.5)

    def loss(offset):
        return mf.per_example_loss(lambda z, r, t: z + offset, z, r, t, tgt, p=1.0,
                                   c=0.1)[0].sum()

    grad = fast_jit(jax.grad(loss))(jnp.zeros_like(z))
    delta = z - tgt
    w = 1.0 / (jnp.sum(delta**2, axis=1, keepdims=True) + 0.1)
    np.testing.assert_allclose(grad, 2 * w * delta, rtol=1e-5)


def test_two_times_sampler():
    """r ≤ t; exactly the first ⌊0.75 B⌋ rows have r = t; logit r and logit t are the min and max
    of two N(−0.4, 1) draws: means −0.4 ∓ 1/√π within 5 Monte Carlo standard errors."""
    b = 100_000
    r, t = fast_jit(mf.sample_two_times, static_argnums=1)(jax.random.key(7), b)
    assert r.shape == t.shape == (b,) and bool(jnp.all(r <= t))
    equal = np.asarray(r == t)
    n_eq = int(0.75 * b)
    assert equal[:n_eq].all() and not equal[n_eq:].any()
    logit = lambda a: np.log(a) - np.log1p(-a)
    se = math.sqrt(1 - 1 / math.pi) / math.sqrt(b)  # std of the max (and min) of two N(0, 1)
    assert abs(logit(np.asarray(t)).mean() - (-0.4 + 1 / math.sqrt(math.pi))) < 5 * se
    r_off = logit(np.asarray(r[n_eq:]))
    assert abs(r_off.mean() - (-0.4 - 1 / math.sqrt(math.pi))) < 5 * se * math.sqrt(b / (b - n_eq))
    with pytest.raises(ValueError, match="equal_fraction"):
        mf.sample_two_times(jax.random.key(0), 4, equal_fraction=1.5)


# ----------------------------------------------------------------------------------------------
# Guidance.
# ----------------------------------------------------------------------------------------------


def test_guided_field_has_the_effective_scale():
    """A network that has learned the guided target at r = t satisfies u_c = ṽ(u_c) with
    ṽ = ω v + κ u_c + (1 − ω − κ) u_∅; its fixed point is ω′ v + (1 − ω′) u_∅, ω′ = ω/(1 − κ)
    (the paper's XL/2 setting: ω = 0.2, ω′ = 2.5, κ = 0.92)."""
    kv, ku = jax.random.split(jax.random.key(8))
    v = jax.random.normal(kv, (4, 3))
    u_uncond = jax.random.normal(ku, (4, 3))
    omega = 0.2
    kappa = mf.kappa_for_effective_scale(omega, 2.5)
    assert kappa == pytest.approx(0.92)
    u_cond = fast_jit(lambda: jax.lax.fori_loop(
        0, 600, lambda _, u: mf.guided_velocity(v, u, u_uncond, omega=omega, kappa=kappa),
        jnp.zeros_like(v)))()
    np.testing.assert_allclose(u_cond, 2.5 * v + (1 - 2.5) * u_uncond, atol=1e-5)
    # κ = 0 is the Sec. 4.2 form ω v + (1 − ω) u_∅.
    np.testing.assert_allclose(mf.guided_velocity(v, 7 * v, u_uncond, omega=3.0),
                               3.0 * v - 2.0 * u_uncond, rtol=1e-6)
    with pytest.raises(ValueError, match="kappa"):
        mf.kappa_for_effective_scale(3.0, 2.0)


def label_u(z, r, t, y):
    """A toy conditional network: a different field for every label, the null one included."""
    return jnp.sin(z * (1.0 + y[:, None])) + (t - r)[:, None] + 0.1 * t[:, None]


def test_guided_target_rows():
    """Rows in the guidance interval with a real label get ω v + κ u(·|y) + (1 − ω − κ) u(·|∅);
    rows outside the interval or with the null label get v; κ = 0 costs a B-row pass, κ > 0 one
    pass of 2B rows."""
    null = 10
    kz, kv = jax.random.split(jax.random.key(9))
    z = jax.random.normal(kz, (6, 3))
    v = jax.random.normal(kv, (6, 3))
    t = jnp.array([0.1, 0.5, 0.7, 0.9, 0.5, 0.2])
    y = jnp.array([1, 2, 3, 4, null, 0])
    sizes = []

    def u_fn(z, r, t, y):
        sizes.append(z.shape[0])
        return label_u(z, r, t, y)

    omega, kappa, interval = 0.5, 0.3, (0.15, 0.8)
    out = fast_jit(functools.partial(mf.guided_target, u_fn, null_label=null, omega=omega,
                                     kappa=kappa, interval=interval))(z, t, y, v)
    want = fast_jit(lambda: omega * v + kappa * label_u(z, t, t, y) + (1 - omega - kappa)
                    * label_u(z, t, t, jnp.full_like(y, null)))()
    active = np.array([False, True, True, False, False, True])
    np.testing.assert_allclose(out[active], want[active], rtol=1e-6)
    np.testing.assert_array_equal(out[~active], v[~active])
    jax.eval_shape(functools.partial(mf.guided_target, u_fn, null_label=null, omega=2.0),
                   z, t, y, v)
    assert sizes == [12, 6]


def test_meanflow_loss_folds_guidance_into_the_target():
    """meanflow_loss on a batch equals per_example_loss on the same draws with v replaced by the
    guided ṽ, both as target and as jvp tangent; at r = t rows, u_tgt = ṽ."""
    null, b = 10, 16
    kx, ky, kr = jax.random.split(jax.random.key(10), 3)
    x = jax.random.normal(kx, (b, 3))
    y = jax.random.randint(ky, (b,), 0, null + 1)
    opts = dict(null_label=null, omega=0.6, kappa=0.3, interval=(0.0, 0.9))
    loss, aux = fast_jit(functools.partial(mf.meanflow_loss, label_u, **opts))(x, y, kr)

    @fast_jit
    def reference():
        rng_t, rng_eps = jax.random.split(kr)
        r, t = mf.sample_two_times(rng_t, b)
        eps = jax.random.normal(rng_eps, x.shape)
        z = mf.interpolate(x, eps, t)
        v_tilde = mf.guided_target(label_u, z, t, y, eps - x, **opts)
        loss, aux = mf.per_example_loss(lambda z, r, t: label_u(z, r, t, y), z, r, t, v_tilde)
        return r, t, eps - x, v_tilde, loss, aux

    r, t, v, v_tilde, want, want_aux = reference()
    assert not np.allclose(v_tilde, v)
    np.testing.assert_allclose(aux["per_example"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["dudt"], want_aux["dudt"], rtol=1e-5, atol=1e-6)
    eq = np.asarray(r == t)
    assert eq.sum() == int(0.75 * b)
    np.testing.assert_allclose(aux["u_tgt"][eq], v_tilde[eq], rtol=1e-6)
    assert float(aux["bin_count"].sum()) == b


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------


def test_one_step_sample_of_the_exact_average_velocity_is_the_data_distribution():
    """z_0 = z_1 − u(z_1, 0, 1) with the exact u maps N(0, I) onto N(MU, diag(S²)): mean within
    5 standard errors (S/√n), variances within 5·S²·√(2/n), covariances within 5·S_i S_j/√n.
    With the exact u every grid gives the same z_0: 2 and 4 uniform steps and a non-uniform grid
    agree with 1 step to float32 precision."""
    n = 20_000
    one = fast_jit(functools.partial(mf.sample, u_exact, (n, 3), num_steps=1))
    out = one(jax.random.key(11))
    assert out.nfe == 1
    x = np.asarray(out.samples, np.float64)
    assert np.all(np.abs(x.mean(0) - MU) < 5 * S / math.sqrt(n))
    cov = np.cov(x, rowvar=False)
    tol = 5 * np.outer(S, S) / math.sqrt(n)
    tol[np.diag_indices(3)] = 5 * S**2 * math.sqrt(2 / n)
    assert np.all(np.abs(cov - np.diag(S**2)) < tol), cov
    for kw in (dict(num_steps=2), dict(num_steps=4), dict(ts=jnp.array([1.0, 0.8, 0.3, 0.0]))):
        few = fast_jit(functools.partial(mf.sample, u_exact, (n, 3), **kw))(jax.random.key(11))
        assert few.nfe == (len(kw["ts"]) - 1 if "ts" in kw else kw["num_steps"])
        np.testing.assert_allclose(few.samples, out.samples, atol=2e-5)


def test_sampler_grid_steps_and_one_compilation():
    """Each step is z_r = z_t − (t − r) u(z_t, r, t) with (t, r) consecutive grid times; the
    sampler compiles once for new params and rngs."""
    calls, traces = [], []

    def u_fn(z, r, t):
        calls.append(1)
        return z * t[:, None] + r[:, None]

    z0 = jnp.ones((2, 3))
    ts = jnp.array([1.0, 0.5, 0.0])
    out = mf.sample_loop(u_fn, z0, ts)
    z_half = z0 - 0.5 * (z0 * 1.0 + 0.5)
    np.testing.assert_allclose(out, z_half - 0.5 * (z_half * 0.5 + 0.0), rtol=1e-6)
    assert len(calls) == 1  # one traced step inside lax.scan

    def apply_fn(params, z, r, t):
        traces.append(1)
        return params["scale"] * z

    run = mf.make_sampler(apply_fn, (4, 3), num_steps=2)
    a = run({"scale": jnp.float32(0.3)}, jax.random.key(0))
    b = run({"scale": jnp.float32(0.6)}, jax.random.key(0))
    assert len(traces) == 1 and a.nfe == 2
    assert not np.allclose(a.samples, b.samples)


def test_sampler_batch_sharded_over_a_device_mesh():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (conftest asks for 8 CPU devices)")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    shape = (8 * len(devices), 3)
    sharded = fast_jit(functools.partial(mf.sample, u_exact, shape, num_steps=2,
                                         sharding=sharding))
    out = sharded(jax.random.key(0)).samples
    assert out.sharding.is_equivalent_to(sharding, 2)
    ref = fast_jit(functools.partial(mf.sample, u_exact, shape, num_steps=2))
    np.testing.assert_allclose(out, ref(jax.random.key(0)).samples, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The two-time DiT.
# ----------------------------------------------------------------------------------------------

TINY = {"family": "dit", "depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}
HW = (8, 12)


def tiny_dit(second_time, seed=0, num_classes=10):
    spec = {**TINY, "second_time": True} if second_time else TINY
    return build_model(spec, input_size=HW, in_channels=3, num_classes=num_classes,
                       rngs=nnx.Rngs(seed))


def dit_inputs(seed=0, batch=4):
    kx, kt, kr, ky = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (batch, *HW, 3))
    t = jax.random.uniform(kt, (batch,), minval=0.3, maxval=1.0)
    r = t * jax.random.uniform(kr, (batch,))
    y = jax.random.randint(ky, (batch,), 0, 11)
    return x, t, r, y


@functools.partial(fast_jit, static_argnums=0)
def outputs(graphdef, state, x, t, y, r):
    """Outputs at (x, t, y) with the second time r, r = t (None) and r / 2."""
    model = nnx.merge(graphdef, state)
    if getattr(model, "h_embedder", None) is None:
        return model(x, t, y)
    return model(x, t, y, r=r), model(x, t, y), model(x, t, y, r=0.5 * r)


def test_two_time_dit_starts_as_the_one_time_dit():
    """Same seed → same shared weights; with those (randomized, so outputs are nonzero) the
    two-time DiT's output equals the one-time DiT's exactly for any r, because the h = t − r
    embedding's output Linear starts at zero; perturbing it makes r matter."""
    one, two = tiny_dit(False), tiny_dit(True)
    shared = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(two))}
    for k, v in nnx.to_flat_state(nnx.state(one)):
        np.testing.assert_array_equal(np.asarray(v[...]), shared[k], err_msg=str(k))
    assert not np.any(shared[("h_embedder", "fc2", "kernel")])
    randomize(one)
    nnx.update(two, nnx.state(one))
    x, t, r, y = dit_inputs()
    ref = np.asarray(outputs(*nnx.split(one), x, t, y, r))
    assert np.abs(ref).mean() > 0
    with_r, r_is_t, half_r = map(np.asarray, outputs(*nnx.split(two), x, t, y, r))
    np.testing.assert_array_equal(with_r, ref)
    np.testing.assert_array_equal(r_is_t, ref)
    randomize(two.h_embedder.fc2, seed=2)
    with_r, r_is_t, half_r = map(np.asarray, outputs(*nnx.split(two), x, t, y, r))
    assert np.abs(with_r - ref).max() > 1e-4
    assert np.abs(half_r - with_r).max() > 1e-5
    with pytest.raises(ValueError, match="second_time"):
        one(x, t, y, r=r)
    with pytest.raises(ValueError, match="shape"):
        two(x, t, y, r=r[:2])


def test_spec_validation():
    with pytest.raises(ValueError, match="second_time"):
        build_model({**TINY, "second_time": 1}, input_size=8, in_channels=3, num_classes=0,
                    rngs=nnx.Rngs(0))
    jit_spec = {"family": "jit", "depth": 3, "hidden_size": 64, "num_heads": 4, "patch_size": 4,
                "second_time": True}
    with pytest.raises(ValueError, match="Unknown keys"):
        build_model(jit_spec, input_size=8, in_channels=3, num_classes=0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "spec, kw",
    [
        ({**TINY, "second_time": True}, dict(input_size=HW, in_channels=3, num_classes=10)),
        ({"family": "dit", "depth": 3, "hidden_size": 96, "num_heads": 4, "patch_size": 4,
          "mlp_ratio": 2.0, "second_time": True},
         dict(input_size=16, in_channels=4, num_classes=0, learn_sigma=True)),
    ],
)
def test_two_time_param_count_and_macs(spec, kw):
    """cost.py's count equals the instantiated two-time model's; the second time adds one
    timestep MLP: 256·D + D + D² + D parameters and 256·D + D² MACs."""
    model = nnx.eval_shape(lambda: build_model(spec, rngs=nnx.Rngs(0), **kw))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    cost = model_cost(spec, **kw)
    assert cost["params"] == n
    one = model_cost({**spec, "second_time": False}, **kw)
    d = spec["hidden_size"]
    assert cost["params"] - one["params"] == 256 * d + d + d * d + d
    assert cost["macs"] - one["macs"] == 256 * d + d * d


def test_meanflow_loss_through_the_two_time_dit():
    """Under jit, with guidance (a 2B-row pass): the jvp through a two-time DiT agrees with
    reverse-mode AD (w · du/dt = vjp(w) · (v, 0, 1), relative 1e-4), and every parameter group gets
    a finite, nonzero gradient of the MeanFlow loss."""
    model = tiny_dit(True)
    randomize(model)
    graphdef, params = nnx.split(model)
    x, t, r, y = dit_inputs(3)

    def u_fn(params, z, r, t, y):
        return nnx.merge(graphdef, params)(z, t, y, r=r)

    @fast_jit
    def run(params, key):
        f = functools.partial(u_fn, params, y=y)
        kv, kw, kl = jax.random.split(key, 3)
        v = jax.random.normal(kv, x.shape)
        w = jax.random.normal(kw, x.shape)
        _, _, dudt = mf.average_velocity_target(f, x, r, t, v)
        _, pullback = jax.vjp(f, x, r, t)
        wz, _, wt = pullback(w)
        reverse = jnp.sum(wz * v) + jnp.sum(wt)

        def loss(params):
            return mf.meanflow_loss(functools.partial(u_fn, params), x, y, kl, null_label=10,
                                    omega=1.0, kappa=0.5)[0]

        value, grads = jax.value_and_grad(loss)(params)
        return jnp.sum(w * dudt), reverse, value, grads

    forward_mode, reverse, value, grads = run(params, jax.random.key(4))
    np.testing.assert_allclose(forward_mode, reverse, rtol=1e-4)
    assert abs(float(forward_mode)) > 1e-3
    assert bool(jnp.isfinite(value))
    flat = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(grads)}
    assert all(np.all(np.isfinite(g)) for g in flat.values())
    for group in ("h_embedder", "t_embedder", "blocks", "final_layer", "y_embedder"):
        assert any(np.abs(g).max() > 0 for k, g in flat.items() if k.startswith(group)), group
