"""DiT's sampler: the respaced 1000-step linear-β DDPM with IDDPM's learned variance, guidance of
the first k channels, clip_denoised. References are written out here in float64 numpy from
IDDPM's formulas (β, ᾱ of the respaced process), not taken from the library under test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import samplers as smp
from vdm_jax.core import schedules as sch

T, N = 1000, 250  # DiT: create_diffusion("250") on the 1000-step linear schedule
FAST = {"xla_backend_optimization_level": 0}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)


def dit_kept_steps(num_train, num_steps):
    """space_timesteps(T, "N") for one section: k_i = round(i (T − 1)/(N − 1))."""
    return np.round(np.arange(num_steps) * (num_train - 1) / (num_steps - 1)).astype(int)


def iddpm_respaced(kept):
    """IDDPM's float64 tables of the respaced process (SpacedDiffusion + GaussianDiffusion)."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar_full = np.cumprod(1.0 - betas)
    abar = abar_full[kept]
    abar_prev = np.append(1.0, abar[:-1])
    beta = 1.0 - abar / abar_prev
    post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "abar": abar, "beta": beta,
        "log_var_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "coef_x": beta * np.sqrt(abar_prev) / (1.0 - abar),
        "coef_z": (1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar),
    }


def iddpm_step(tab, j, z, eps, v):
    """Mean and log-variance of p(x_{j−1} | x_j) with LEARNED_RANGE, eps prediction, no clip."""
    x_hat = np.sqrt(1.0 / tab["abar"][j]) * z - np.sqrt(1.0 / tab["abar"][j] - 1.0) * eps
    mean = tab["coef_x"][j] * x_hat + tab["coef_z"][j] * z
    frac = (v + 1.0) / 2.0
    return mean, frac * np.log(tab["beta"][j]) + (1.0 - frac) * tab["log_var_clipped"][j]


def test_respaced_grid_is_dits_250_of_1000():
    kept = dit_kept_steps(T, N)
    frac = np.arange(N) * (T - 1) / (N - 1) % 1.0
    assert np.all(np.abs(frac - 0.5) > 1e-3)  # no ties: the rounding convention cannot matter
    np.testing.assert_array_equal(smp.ddpm_respaced_indices(T, N), kept)
    ts = np.asarray(smp.time_grid(N, "ddpm_respaced", num_train_steps=T))
    np.testing.assert_array_equal(ts, np.append((kept[::-1] + 1) / T, 0.0).astype(np.float32))
    # DiT's index k is our level k + 1: α²((k + 1)/T) of ddpm_linear is its ᾱ_k.
    alpha, _ = sch.alpha_sigma(sch.ddpm_linear(T), jnp.asarray(ts[:-1]))
    np.testing.assert_allclose(np.asarray(alpha) ** 2, iddpm_respaced(kept)["abar"][::-1],
                               rtol=1e-5)
    np.testing.assert_array_equal(smp.ddpm_respaced_indices(T, 1), [0])
    np.testing.assert_array_equal(smp.ddpm_respaced_indices(T, T), np.arange(T))


@pytest.mark.parametrize(("dtype", "atol_mean", "atol_log_var"),
                         [("float64", 1e-9, 1e-9), ("float32", 1e-5, 3e-5)])
def test_learned_step_mean_and_log_variance_match_iddpm(dtype, atol_mean, atol_log_var):
    """Every one of the 250 respaced steps, random z, ε̂ and v ∈ [−1, 1]; on the last step the
    clipped β̃ is that of the step before (IDDPM's posterior_log_variance_clipped). float64 (x64)
    is exact; in float32, λ ≈ −10 near t = 1 carries a rounding error ≈ 5e-7, which the
    λ-difference of a 4-level step turns into ≈ 1.5e-5 in log β (ddpm_linear's docstring)."""
    rng = np.random.default_rng(0)
    z, eps = rng.standard_normal((2, N, 4, 3))
    v = rng.uniform(-1, 1, (N, 4, 3))
    tab = iddpm_respaced(dit_kept_steps(T, N))
    want = [iddpm_step(tab, N - 1 - m, z[m], eps[m], v[m]) for m in range(N)]
    with jax.enable_x64(dtype == "float64"):
        schedule = sch.ddpm_linear(T)
        ts = smp.time_grid(N, "ddpm_respaced", num_train_steps=T, dtype=jnp.dtype(dtype))

        def ours(t, s, t_clip, s_clip, z, eps, v):
            alpha, sigma = sch.alpha_sigma(schedule, t)
            return smp.ddpm_mean_log_variance(schedule, z, (z - sigma * eps) / alpha, t, s,
                                              variance="learned", var_output=v,
                                              clip_step=(t_clip, s_clip))

        # Sampling step m goes ts[m] → ts[m + 1]: IDDPM's respaced index j = N − 1 − m.
        t, s = ts[:-1], ts[1:]
        t_clip, s_clip = t.at[-1].set(ts[-3]), s.at[-1].set(ts[-2])
        cast = lambda a: jnp.asarray(a, dtype)
        mean, log_var = fast_jit(jax.vmap(ours))(t, s, t_clip, s_clip, cast(z), cast(eps),
                                                 cast(v))
        assert mean.dtype == log_var.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(mean, np.stack([w[0] for w in want]), rtol=0, atol=atol_mean)
    np.testing.assert_allclose(log_var, np.stack([w[1] for w in want]), rtol=0,
                               atol=atol_log_var)


ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # DiT's ᾱ_k, k = 0..T−1


def _toy_dit(z, k):
    """A deterministic stand-in for DiT(x, k) → (ε̂, v), numpy or jnp (the same formula): the
    optimal ε̂ for data N(0, ½² I) plus a bounded nonlinearity, and a v ∈ (−1, 1)."""
    xp = jnp if isinstance(z, jax.Array) else np
    abar = xp.asarray(ABAR, z.dtype)[k] if xp is jnp else ABAR[k]
    eps = (xp.sqrt(1 - abar) * z / (0.25 * abar + 1 - abar) + 0.1 * xp.sqrt(abar) * xp.tanh(z))
    v = xp.tanh(0.7 * z[..., ::-1] + (k - 500.0) / 400.0)
    return eps, v


def test_full_learned_sampling_matches_the_iddpm_loop():
    """250 steps of `ddpm` (variance='learned', float32) against IDDPM's p_sample_loop in
    float64 with the same noise ξ (regenerated from the keys `ddpm` splits off its rng) and a
    model that reads DiT's integer timestep k = t·T − 1 (so the grid ↔ index map is checked)."""
    schedule = sch.ddpm_linear(T)
    ts = smp.time_grid(N, "ddpm_respaced", num_train_steps=T)
    shape = (4, 2, 2, 3)
    z0 = np.random.default_rng(1).standard_normal(shape)
    key = jax.random.PRNGKey(2)

    def model_fn(z, t):
        k = jnp.round(t * T - 1.0).astype(jnp.int32)[:, None, None, None]
        return jnp.concatenate(_toy_dit(z, k), axis=-1)

    @fast_jit
    def run(z):
        xi = jax.vmap(lambda k: jax.random.normal(k, shape))(jax.random.split(key, N))
        return smp.ddpm(model_fn, schedule, z, ts, key, variance="learned").samples, xi

    ours, xi = run(jnp.asarray(z0, jnp.float32))
    tab, kept = iddpm_respaced(dit_kept_steps(T, N)), dit_kept_steps(T, N)
    x, xi = z0, np.asarray(xi, np.float64)
    for m in range(N):
        j = N - 1 - m
        eps, v = _toy_dit(x, kept[j])
        mean, log_var = iddpm_step(tab, j, x, eps, v)
        x = mean + (j != 0) * np.exp(0.5 * log_var) * xi[m]
    assert 0.1 < np.std(x) < 2.0
    np.testing.assert_allclose(ours, x, rtol=0, atol=1e-5)  # measured 1.7e-6


def test_learned_at_the_ends_is_the_fixed_variance():
    """v ≡ −1 is β̃ ('posterior'), v ≡ +1 is β ('forward'): the same samples with the same rng
    (bit for bit: f log β + (1 − f) log β̃ is exactly one of the two at f ∈ {0, 1})."""
    schedule = sch.ddpm_linear(T)

    def eps_model(z, t):
        return jnp.tanh(z) * (0.5 + t[:, None])

    def learned(v):
        return lambda z, t: jnp.concatenate([eps_model(z, t), jnp.full_like(z, v)], axis=-1)

    common = dict(sampler="ddpm", num_steps=50, spacing="ddpm_respaced", num_train_steps=T)

    @fast_jit
    def run(key):
        draw = lambda fn, var: smp.sample(fn, schedule, (64, 3), key, variance=var,
                                          **common).samples
        return [(draw(learned(v), "learned"), draw(eps_model, fixed))
                for v, fixed in ((-1.0, "posterior"), (1.0, "forward"))]

    (lo, posterior), (hi, forward) = run(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(lo, posterior)
    np.testing.assert_array_equal(hi, forward)
    assert float(jnp.max(jnp.abs(posterior - forward))) > 1e-3


def test_guidance_of_the_first_channels_is_dits_forward_with_cfg():
    """DiT's rule on NHWC arrays: the 2B pass; ε of channels [0, 3) = uncond + s (cond − uncond);
    everything else (the 4th ε channel and the variance half) from the conditional half."""
    rng = np.random.default_rng(4)
    b, null, scale = 3, 1000, 4.0
    w = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
    emb = jnp.asarray(rng.standard_normal((1001, 8)), jnp.float32)

    def model(z, t, y):  # (2B, H, W, 4) → (2B, H, W, 8)
        return jnp.tanh(z @ w + emb[y][:, None, None, :] + t[:, None, None, None])

    z = jnp.asarray(rng.standard_normal((b, 5, 5, 4)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 1, b), jnp.float32)
    labels = jnp.asarray([3, 17, 999])
    got = smp.classifier_free_guidance(model, labels, null, scale, channels=3)(z, t)

    # forward_with_cfg, written out on the 2B batch (y = labels then null), channels last.
    out = np.asarray(model(jnp.concatenate([z, z]), jnp.concatenate([t, t]),
                           jnp.concatenate([labels, jnp.full_like(labels, null)])))
    eps, rest = out[..., :3], out[..., 3:]
    cond_eps, uncond_eps = np.split(eps, 2, axis=0)
    half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
    dit = np.concatenate([np.concatenate([half_eps, half_eps]), rest], axis=-1)
    np.testing.assert_allclose(got, dit[:b], rtol=1e-6, atol=1e-6)
    all_channels = smp.classifier_free_guidance(model, labels, null, scale)(z, t)
    assert float(jnp.max(jnp.abs(all_channels[..., 3:] - got[..., 3:]))) > 0.1
    with pytest.raises(ValueError, match="channels"):
        smp.classifier_free_guidance(model, labels, null, scale, channels=0)


def test_clip_denoised():
    """A step to t = 0 (λ = ∞) returns x̂: clipped to [−1, 1] with the option, not without. DDIM
    with clipping uses ε̂ = (z − α_t x̂)/σ_t of the clipped x̂."""
    schedule = sch.ddpm_linear(T)
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(5), (256, 2))
    model = lambda z, t: -0.5 * z  # ε̂; x̂ = (z − σ ε̂)/α spans far beyond [−1, 1] at t = 0.6
    t, s = 0.6, 0.3
    alpha_t, sigma_t = sch.alpha_sigma(schedule, jnp.float32(t))
    x_hat = (z + sigma_t * 0.5 * z) / alpha_t
    assert float(jnp.max(jnp.abs(x_hat))) > 2.0
    key = jax.random.PRNGKey(0)

    @fast_jit
    def run(z):
        to_zero, step = jnp.array([t, 0.0]), jnp.array([t, s])
        return (smp.ddpm(model, schedule, z, to_zero, key, clip_denoised=True).samples,
                smp.ddpm(model, schedule, z, to_zero, key).samples,
                smp.ddim(model, schedule, z, step, clip_denoised=True).samples)

    ddpm_clipped, ddpm_plain, ddim_clipped = run(z)
    np.testing.assert_allclose(ddpm_clipped, jnp.clip(x_hat, -1, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ddpm_plain, x_hat, rtol=1e-5, atol=1e-5)
    clipped = jnp.clip(x_hat, -1, 1)
    alpha_s, sigma_s = sch.alpha_sigma(schedule, jnp.float32(s))
    want = alpha_s * clipped + sigma_s * (z - alpha_t * clipped) / sigma_t
    np.testing.assert_allclose(ddim_clipped, want, rtol=1e-5, atol=1e-5)


def test_bad_learned_and_respacing_arguments():
    schedule, key = sch.ddpm_linear(T), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="full output"):
        smp.ddpm(lambda z, t: z, schedule, jnp.zeros((2, 3)), smp.time_grid(4), key,
                 variance="learned")
    with pytest.raises(ValueError, match="num_train_steps"):
        smp.time_grid(250, "ddpm_respaced")
    with pytest.raises(ValueError, match="respace"):
        smp.time_grid(1001, "ddpm_respaced", num_train_steps=T)
    with pytest.raises(ValueError, match="var_output"):
        smp.ddpm_mean_log_variance(schedule, jnp.zeros(2), jnp.zeros(2), 0.5, 0.4,
                                   variance="learned")
