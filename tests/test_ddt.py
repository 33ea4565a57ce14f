"""DDT (vdm_jax.nn.ddt): the XL/2 parameter count of the reference, the encoder/decoder split,
and encoder sharing at sampling (vdm_jax.core.encoder_sharing.SharedEncoder through
SamplingSpec)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.core import samplers
from vdm_jax.core.encoder_sharing import sharing_schedule_dp
from vdm_jax.generation.generate import encoder_sharing_schedule, make_generate_fn
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.ddt import DDT
from vdm_jax.nn.registry import build_model
from vdm_jax.sampling_spec import SamplingSpec

TINY = dict(family="ddt", encoder_depth=3, decoder_depth=2, hidden_size=32, num_heads=2,
            patch_size=2)
DATA = dm.DataSpec((8, 8, 1), 10, 17)


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_ddt_xl2_parameter_count():
    """674,646,352: the reference class (MCG-NJU/DDT src/models/denoiser/decoupled_improved_dit.py
    at 1d1b4d2, built with configs/repa_improved_ddt_xlen22de6_256.yaml's arguments and counted
    with torch 2.13 on the meta device); the README's table rounds it to "675M"."""
    kw = dict(input_size=32, in_channels=4, num_classes=1000)
    model = nnx.eval_shape(lambda: build_model("DDT-XL/2", rngs=nnx.Rngs(0), **kw))
    assert n_params(model) == 674_646_352
    assert model_cost("DDT-XL/2", **kw)["params"] == 674_646_352
    assert round(n_params(model) / 1e6) == 675
    assert (len(model.encoder_blocks), len(model.decoder_blocks)) == (22, 6)


@pytest.mark.parametrize("kw", [dict(input_size=8, in_channels=1, num_classes=10),
                                dict(input_size=(8, 12), in_channels=3, num_classes=0,
                                     learn_sigma=True)])
def test_cost_matches_instantiated_tiny_ddt(kw):
    model = nnx.eval_shape(lambda: build_model(TINY, rngs=nnx.Rngs(0), **kw))
    assert model_cost(TINY, **kw)["params"] == n_params(model)


@pytest.fixture(scope="module")
def tiny():
    """A tiny DDT (flow prediction on rectified flow) with perturbed weights (AdaLN-Zero and the
    zero final layer would make it output 0)."""
    c = config_lib.default_config()
    c.model.spec = TINY
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    model, params = dm.build(c, DATA, 0)
    rng = np.random.default_rng(1)  # numpy: no compilation per leaf shape
    params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(
        np.float32), params)
    return model, params


def test_encoder_decoder_split(tiny):
    model, params = tiny
    net = nnx.merge(model.denoiser_def, params["denoiser"])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 8, 8, 1)), jnp.float32)
    t, y = jnp.asarray([0.1, 0.5, 0.9]), jnp.asarray([0, 3, 10], jnp.int32)
    cond, hidden = net.encode(x, t, y, return_hidden=2)
    assert cond.shape == hidden.shape == (3, 16, 32)
    out, hidden_full = net(x, t, y, return_hidden=2)
    np.testing.assert_allclose(out, net.decode(x, cond), rtol=1e-6)
    np.testing.assert_allclose(hidden, hidden_full, rtol=1e-6)
    np.testing.assert_allclose(net(x, t, y), out, rtol=1e-6)
    # The decoder is conditioned per token: changing one token's condition changes the output.
    bumped = net.decode(x, cond.at[:, 5].add(1.0))
    assert float(jnp.abs(bumped - out).max()) > 1e-4
    with pytest.raises(ValueError, match="return_hidden=4"):
        net.encode(x, t, y, return_hidden=4)
    # At initialization (zero final layer) a DDT outputs exactly 0, like DiT.
    fresh = nnx.merge(model.denoiser_def, dm.build(
        {"model": {**config_lib.default_config().model.to_dict(), "spec": TINY},
         "diffusion": config_lib.default_config().diffusion.to_dict()}, DATA, 0)[1]["denoiser"])
    assert float(jnp.abs(fresh(x, t, y)).max()) == 0.0


SAMPLERS = ["euler", "heun", "euler_maruyama", "dpm_solver_2m", "ddim"]


def _as_users_compile_it(fn, *args):
    """fn(*args) compiled with XLA's default backend optimizations (the suite turns them off,
    tests/conftest.py): bit-for-bit equality of two programs is a property of what users run."""
    return fn.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 3,
                                                 "xla_cpu_use_fusion_emitters": True})(*args)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_interval_1_equals_no_sharing_bit_for_bit(tiny, sampler):
    model, params = tiny
    labels = np.arange(4, dtype=np.int32)
    spec = SamplingSpec(sampler=sampler, num_steps=5, guidance_scale=2.0,
                        guidance_interval=(0.0, 0.7))
    args = (params, labels, jax.random.key(0))
    plain = _as_users_compile_it(make_generate_fn(model, 4, spec), *args)
    shared = _as_users_compile_it(
        make_generate_fn(model, 4, spec.replace(options={"encoder_interval": 1})), *args)
    np.testing.assert_array_equal(np.asarray(shared), np.asarray(plain))
    reuse = make_generate_fn(model, 4, spec.replace(options={"encoder_interval": 2}))(
        params, labels, jax.random.key(0))
    assert float(jnp.abs(reuse - plain).max()) > 1e-4  # sharing does change the samples


@pytest.mark.parametrize("options, expected", [
    ({"encoder_interval": 1}, 7), ({"encoder_interval": 2}, 4), ({"encoder_interval": 3}, 3),
    ({"encoder_interval": 7}, 1), ({"encoder_steps": [0, 2, 5]}, 3),
])
def test_encoder_runs_once_per_recompute_step(tiny, monkeypatch, options, expected):
    """⌈N/k⌉ encoder passes over N = 7 steps (counted by a debug callback inside the encoder,
    which runs only when lax.cond takes the recompute branch), in one jitted scan."""
    model, params = tiny
    calls = []
    encode = DDT.encode

    def counted(self, *args, **kwargs):
        out = encode(self, *args, **kwargs)
        jax.debug.callback(lambda: calls.append(1))
        return out

    monkeypatch.setattr(DDT, "encode", counted)
    spec = SamplingSpec(sampler="euler", num_steps=7, guidance_scale=2.0, options=tuple(
        options.items()))
    fn = make_generate_fn(model, 4, spec)
    jax.block_until_ready(fn(params, np.arange(4, dtype=np.int32), jax.random.key(0)))
    jax.effects_barrier()
    assert len(calls) == expected
    if "encoder_interval" in options:
        assert expected == math.ceil(7 / options["encoder_interval"])
    jaxpr = str(jax.make_jaxpr(fn)(params, np.arange(4, dtype=np.int32), jax.random.key(0)))
    assert jaxpr.count(" scan[") == 1 and " cond[" in jaxpr  # one scan; lax.cond inside it


def test_shared_euler_matches_a_python_loop(tiny):
    """Unguided Euler with encoder_steps (0, 3): the sampler's scan equals a plain loop that
    recomputes the condition at steps 0 and 3 and reuses it in between."""
    model, params = tiny
    net = nnx.merge(model.denoiser_def, params["denoiser"])
    labels = jnp.arange(4, dtype=jnp.int32)
    spec = SamplingSpec(sampler="euler", num_steps=6, options=(("encoder_steps", (0, 3)),
                                                                ("t_max", 1.0)))
    got = make_generate_fn(model, 4, spec)(params, labels, jax.random.key(0))
    ts = samplers.time_grid(6, t_max=1.0)
    z = samplers.initial_noise(model.schedule(params), (4, 8, 8, 1),
                               jax.random.split(jax.random.key(0))[0], ts[0])
    for i in range(6):
        t = jnp.full((4,), ts[i])
        if i in (0, 3):
            cond = net.encode(z, t, labels)
        z = z + (ts[i + 1] - ts[i]) * net.decode(z, cond)
    np.testing.assert_allclose(got, z, rtol=1e-5, atol=1e-5)


def test_sharing_schedule_dp_is_the_least_error_schedule():
    rng = np.random.default_rng(0)
    n, k = 7, 3
    err = rng.uniform(0, 1, (n, n))
    np.fill_diagonal(err, 0.0)

    def cost(starts):
        ends = (*starts[1:], n)
        return sum(err[m, j] for j, e in zip(starts, ends, strict=True) for m in range(j, e))

    best = min(((0, *rest) for rest in itertools.combinations(range(1, n), k - 1)), key=cost)
    got = sharing_schedule_dp(err, k)
    assert got == best
    assert sharing_schedule_dp(err, 1) == (0,)
    assert sharing_schedule_dp(err, n) == tuple(range(n))


def test_encoder_sharing_schedule_of_a_model(tiny):
    model, params = tiny
    spec = SamplingSpec(sampler="euler", num_steps=8, guidance_scale=2.0)
    steps = encoder_sharing_schedule(model, params, spec, 3, batch_size=2)
    assert len(steps) == 3 and steps[0] == 0 and list(steps) == sorted(set(steps))
    spec.replace(options={"encoder_steps": list(steps)})  # a valid spec


def test_bad_sharing_options(tiny):
    with pytest.raises(ValueError, match="encoder_interval must be a positive int"):
        SamplingSpec(options=(("encoder_interval", 0),))
    with pytest.raises(ValueError, match="encoder steps must be increasing ints from 0"):
        SamplingSpec(num_steps=5, options=(("encoder_steps", (1, 3)),))
    with pytest.raises(ValueError, match="encoder steps must be increasing ints from 0"):
        SamplingSpec(num_steps=5, options=(("encoder_steps", (0, 5)),))
    with pytest.raises(ValueError, match="not both"):
        SamplingSpec(options=(("encoder_interval", 2), ("encoder_steps", (0,))))
    c = config_lib.default_config()  # a DiT has no encoder to share
    dit, _ = dm.build(c, DATA, 0)
    with pytest.raises(ValueError, match="only DDT models"):
        make_generate_fn(dit, 4, SamplingSpec(options=(("encoder_interval", 2),)))
