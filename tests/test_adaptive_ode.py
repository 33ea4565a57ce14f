"""core.adaptive_ode.dopri5 (diffrax) on Gaussian data, where the probability-flow ODE has a closed
form: for x ~ N(μ, s²) per dimension and z_t = α_t x + σ_t ε, the flow carries z_{t_max} to
z_t = α_t μ + r_t (z_{t_max} − α_{t_max} μ) / r_{t_max}, r_t² = α_t² s² + σ_t², and its exact
ε-prediction is E[ε | z_t] = σ_t (z_t − α_t μ) / r_t²."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import samplers
from vdm_jax.core.adaptive_ode import dopri5
from vdm_jax.core.schedules import alpha_sigma, get_schedule, rectified_flow

MU, S = 0.5, 0.3


def exact_eps(schedule):
    def model_fn(z, t):
        alpha, sigma = alpha_sigma(schedule, t[:, None])
        return sigma * (z - alpha * MU) / (alpha**2 * S**2 + sigma**2)
    return model_fn


MUS, SS = jnp.linspace(-1.0, 1.0, 8), jnp.linspace(0.05, 1.5, 8)  # per dimension


def exact_flow(z, t):
    """Rectified flow's exact velocity u = dz_t/dt for x ~ N(MUS, SS²) per dimension:
    α' μ + (r'/r)(z − α μ) with α = 1 − t, σ = t, r r' = α α' s² + σ σ'. z (B, 8), t (B,)."""
    t = t[:, None]
    alpha, sigma = 1 - t, t
    r2 = alpha**2 * SS**2 + sigma**2
    return -MUS + (-alpha * SS**2 + sigma) / r2 * (z - alpha * MUS)


def closed_form(schedule, z, t_from, t_to):
    a0, s0 = alpha_sigma(schedule, jnp.asarray(t_from))
    a1, s1 = alpha_sigma(schedule, jnp.asarray(t_to))
    r0, r1 = jnp.sqrt(a0**2 * S**2 + s0**2), jnp.sqrt(a1**2 * S**2 + s1**2)
    return a1 * MU + r1 * (z - a0 * MU) / r0


@pytest.fixture(scope="module")
def noise():
    return jax.random.normal(jax.random.key(0), (64, 8))


def test_flow_error_follows_the_tolerance(noise):
    """Rectified flow from t = 1 to 0, against the closed form z_0 = μ + s z_1. A local-error
    controller does not bound the global error by the tolerance itself, but proportionally: the
    RMS error stays within 3 × tol × (1 + max |z_0|) at every tolerance, falls ≥ 100× from
    tol = 1e-3 to 1e-6, and the NFE grows as the tolerance tightens."""
    schedule = rectified_flow()
    ts = jnp.asarray([1.0, 0.0])
    want = MUS + SS * noise
    scale = 1 + float(jnp.max(jnp.abs(want)))
    errors, nfes = [], []
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        solved = jax.jit(lambda z, tol=tol: dopri5(exact_flow, schedule, z, ts,
                                                   prediction="flow", rtol=tol, atol=tol))(noise)
        out, nfe = solved.samples, solved.evaluations
        err = float(jnp.sqrt(jnp.mean((out - want) ** 2)))
        print(f"dopri5 rtol = atol = {tol:g}: {int(nfe)} NFE, RMS error {err:.2e} "
              f"({err / (tol * scale):.2f} × tol × (1 + max|z|)), max error "
              f"{float(jnp.max(jnp.abs(out - want))):.2e}")
        assert err <= 3 * tol * scale
        errors.append(err)
        nfes.append(int(nfe))
    assert errors[0] / errors[-1] >= 100
    assert nfes == sorted(nfes) and nfes[-1] > nfes[0]


def test_eps_model_on_vp_ends_with_the_data_jump(noise):
    """An ε model on the cosine schedule (λ(0) = ∞): solved to t = 1e-3, then x̂; from the
    default t_max = 1 − 1e-3, against the closed form and the Tweedie mean there."""
    schedule = get_schedule("cosine")
    t_max = float(samplers.default_t_max(schedule))
    out = samplers.sample(exact_eps(schedule), schedule, noise.shape, jax.random.key(1),
                          sampler="dopri5", num_steps=1, prediction="eps", z_init=noise,
                          rtol=1e-5, atol=1e-5)
    assert out.nfe is None and int(out.evaluations) > 9
    z_end = closed_form(schedule, noise, t_max, 1e-3)
    a, s = alpha_sigma(schedule, jnp.asarray(1e-3))
    x_hat = MU + a * S**2 * (z_end - a * MU) / (a**2 * S**2 + s**2)
    assert float(jnp.max(jnp.abs(out.samples - x_hat))) < 1e-4


def test_nfe_counts_every_model_call(noise):
    """The reported NFE equals the calls the solver makes (counted on the host, jitted)."""
    schedule = rectified_flow()
    calls = []

    def counted(z, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact_flow(z, t)

    nfe = jax.jit(lambda z: dopri5(counted, schedule, z, jnp.asarray([1.0, 0.0]),
                                   prediction="flow", rtol=1e-4, atol=1e-4).evaluations)(noise)
    jax.effects_barrier()
    assert len(calls) == int(nfe)


def test_refuses_encoder_sharing_and_bad_options(noise):
    from vdm_jax.core.encoder_sharing import SharedEncoder
    from vdm_jax.sampling_spec import SamplingSpec

    shared = SharedEncoder(lambda z, t: z, np.array([True, False]))
    model = samplers.SamplingModel(lambda z, t, c: exact_flow(z, t), shared=shared)
    with pytest.raises(ValueError, match="cannot share a condition encoder"):
        dopri5(model, rectified_flow(), noise, jnp.asarray([1.0, 0.0]), prediction="flow")
    with pytest.raises(ValueError, match="rtol must be a positive"):
        SamplingSpec(sampler="dopri5", options=(("rtol", 0.0),))
    spec = SamplingSpec(sampler="dopri5", options=(("rtol", 1e-3), ("atol", 1e-6)))
    assert spec.nfe is None and spec.to_dict()["nfe"] is None
