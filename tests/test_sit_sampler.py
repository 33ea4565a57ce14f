"""SiT's samplers against the official willisma/SiT `transport` code, on the tiny imported SiT of
tests/fixtures/dit/ (core.sit_sde, core.adaptive_ode).

Fixture: tests/fixtures/sit_sampler/reference.npz, written by tests/make_sit_sampler_fixture.py
(torch 2.13.0, torchdiffeq 0.2.5, willisma/SiT 947f95b): SiT's Euler–Maruyama SDE for several
diffusion forms and last steps from the same initial and step noise (a fixed noise sequence fed
to SiT's torch.randn), and its dopri5 ODE. Conventions: SiT's τ = 1 − t; its velocity is −u
(the importer's sign flip); arrays are NCHW there, NHWC here.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.core import samplers
from vdm_jax.core.adaptive_ode import dopri5
from vdm_jax.core.schedules import rectified_flow
from vdm_jax.core.sit_sde import sit_sde
from vdm_jax.importers.dit import import_dit

FIXTURES = Path(__file__).parent / "fixtures"
REF = np.load(FIXTURES / "sit_sampler" / "reference.npz")
B, N, NULL = 4, 10, 10


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def relative(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def guided():
    """The imported SiT (our t and sign) guided as SiT's forward_with_cfg: scale 1.5, 3 channels."""
    model = import_dit(FIXTURES / "dit" / "official_weights.safetensors", format="sit",
                       num_heads=4).build()
    labels = jnp.asarray(REF["y"], jnp.int32)
    return samplers.classifier_free_guidance(lambda z, t, y: model(z, t, y), labels, NULL, 1.5,
                                             channels=3)


@pytest.mark.parametrize("form,last", [("sigma", "mean"), ("linear", "mean"),
                                       ("constant", "mean"), ("decreasing", "mean"),
                                       ("sigma", "tweedie"), ("sigma", "euler")])
def test_sde_matches_sits_transport_from_the_same_noise(guided, form, last):
    """SiT's grid (N − 1 steps from t = 1 to 0.04, then the last step to 0) and step noise."""
    ts = samplers.time_grid(N, t_max=1.0, t_min=0.0, last_step_size=0.04)
    noise = jnp.stack([nhwc(xi[:B]) for xi in REF["sde_noise"]])  # (N − 1, B, H, W, C)
    run = jax.jit(lambda z, noise: sit_sde(guided, rectified_flow(), z, ts, prediction="flow",
                                           diffusion_form=form, last_step=last,
                                           noise=noise).samples)
    want = REF[f"sde_{form}_{last}"]
    err = relative(np.asarray(run(nhwc(REF["z"]), noise)).transpose(0, 3, 1, 2), want)
    print(f"SiT SDE {form}/{last}: max relative difference {err:.2e}")
    assert err <= 5e-6
    # It can fail: the same noise in another order lands elsewhere.
    shuffled = np.asarray(run(nhwc(REF["z"]), noise[::-1])).transpose(0, 3, 1, 2)
    assert relative(shuffled, want) > 1e-2


def test_sde_grid_is_sits():
    ts = np.asarray(samplers.time_grid(250, t_max=1.0, last_step_size=0.04))
    tau = np.linspace(0, 0.96, 250)  # SiT's sde grid (torch.linspace(t0, t1, num_steps))
    np.testing.assert_allclose(ts[:-1], 1 - tau, atol=1e-6)
    assert ts[-1] == 0.0 and len(ts) == 251


def test_ode_dopri5_against_sits_torchdiffeq(guided):
    """SiT's ODE (torchdiffeq dopri5, rtol 1e-3, atol 1e-6, on forward_with_cfg's 2B batch) step
    for step: the same NFE, and the same final point to within the float32 spread of that
    adaptive solve. The spread is the reference's own: torchdiffeq on the same network rounded
    otherwise (`ode_rounded`) lands ~1.7e-4 away, since step sizes follow error estimates that
    are differences of stages. And a tight diffrax solution equals the tight float64 one."""
    ts = jnp.asarray([1.0, 0.0])
    z = nhwc(REF["z"])

    def solve(rtol, atol):
        out = jax.jit(lambda z: dopri5(guided, rectified_flow(), z, ts, prediction="flow",
                                       rtol=rtol, atol=atol))(z)
        return np.asarray(out.samples).transpose(0, 3, 1, 2), int(out.evaluations)

    ours, nfe = solve(1e-3, 1e-6)
    theirs, their_nfe = REF["ode_default"], int(REF["ode_nfe"])
    spread = relative(REF["ode_rounded"], theirs)
    tight, tight_nfe = solve(1e-6, 1e-7)
    print(f"dopri5 at SiT's tolerances: ours {nfe} NFE, SiT's torchdiffeq {their_nfe}; ours vs "
          f"SiT's {relative(ours, theirs):.2e} (SiT's own float32 spread {spread:.2e}); both vs "
          f"the tight solution {relative(ours, REF['ode_tight']):.2e}, "
          f"{relative(theirs, REF['ode_tight']):.2e}; ours at rtol 1e-6: {tight_nfe} NFE, "
          f"{relative(tight, REF['ode_tight']):.2e}")
    assert nfe == their_nfe == int(REF["ode_rounded_nfe"])
    assert 1e-6 < spread < 1e-3
    assert relative(ours, theirs) <= 2 * spread
    assert relative(tight, REF["ode_tight"]) <= 2e-5 and tight_nfe > nfe
