"""DiT^DH (vdm_jax.nn.dit_dh) against RAE's official DiTwDDTHead, and its importer / exporter.

Fixture: tests/fixtures/dit_dh (tests/make_dit_dh_fixture.py; torch only there)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from vdm_jax.core import samplers, schedules
from vdm_jax.generation.generate import autoguidance
from vdm_jax.importers.common import WeightMismatchError
from vdm_jax.importers.rae_dit import export_rae_dit, import_rae_dit
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.registry import build_model, resolve_spec

FIXTURE = Path(__file__).parent / "fixtures" / "dit_dh"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def official():
    return {n: load_file(FIXTURE / f"{n}.safetensors") for n in ("main", "guide")}


def _nhwc(a):
    return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def _n_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model)))


def test_parameter_counts_equal_the_official_modules(ref):
    """cost.py's params_with_pos_embed is the official module's parameters() count (W and the
    sin-cos table are frozen parameters there); `params` is what our state holds."""
    for name, key in (("DiTDH-XL/1", "params_XL"), ("DiTDH-S/1", "params_S")):
        cost = model_cost(name, input_size=16, in_channels=768, num_classes=1000)
        assert cost["params_with_pos_embed"] == int(ref[key])
        model = nnx.eval_shape(lambda n=name: build_model(
            n, input_size=16, in_channels=768, num_classes=1000, rngs=nnx.Rngs(0)))
        assert _n_params(model) == cost["params"]


@pytest.mark.parametrize("which", ["main", "guide"])
def test_imported_network_matches_official(ref, official, which):
    imported = import_rae_dit(official[which])
    model = imported.build()
    cost = model_cost(imported.spec, input_size=4, in_channels=6, num_classes=5)
    assert cost["params_with_pos_embed"] == int(ref[f"params_{which}"])
    out = model(_nhwc(ref["x"]), jnp.asarray(ref["t"]), jnp.asarray(ref["y"], jnp.int32))
    want = np.transpose(ref["out" if which == "main" else "out_guide"], (0, 2, 3, 1))
    rel = np.max(np.abs(np.asarray(out) - want)) / np.max(np.abs(want))
    assert rel <= 1e-5, rel


def test_export_import_round_trip_is_bit_exact(official):
    sd = official["main"]
    imported = import_rae_dit(sd)
    exported = export_rae_dit(imported.spec, imported.params, input_size=imported.input_size)
    assert set(exported) == set(sd)
    for name, a in sd.items():
        if name == "pos_embed" or "feat_rope" in name:
            np.testing.assert_allclose(exported[name], a, atol=1e-6)  # recomputed tables
        else:
            assert np.array_equal(exported[name], a), name
    again = import_rae_dit(exported)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 again.params, imported.params)


def test_training_checkpoint_takes_the_ema_key(official):
    tables = ("pos_embed", "feat_rope")
    other = {k: v if any(t in k for t in tables) else v * 0.5 for k, v in official["main"].items()}
    ckpt = {"ema": official["main"], "model": other}
    imported = import_rae_dit(ckpt)
    assert imported.weights == "ema"
    ref = import_rae_dit(official["main"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 imported.params, ref.params)
    raw = import_rae_dit(ckpt, weights="model")
    assert raw.weights == "model"
    np.testing.assert_array_equal(raw.params["s_embedder"]["bias"],
                                  ref.params["s_embedder"]["bias"] * 0.5)


def test_a_wrong_file_is_refused(official):
    broken = dict(official["main"])
    del broken["blocks.0.attn.qkv.weight"]
    with pytest.raises(WeightMismatchError, match=r"blocks\.0\.attn\.qkv\.weight"):
        import_rae_dit(broken)
    with pytest.raises(WeightMismatchError, match="not an RAE stage-2"):
        import_rae_dit({"x_embedder.proj.weight": np.zeros((4, 4, 2, 2), np.float32)})


def _official_grid_sample(model_fn, ref, z):
    """Euler on RAE's grid: φ_α of the uniform grid on [0.001, 1] with N points (N − 1 steps)."""
    schedule = schedules.get_schedule("rectified_flow")
    steps = int(ref["steps"]) - 1
    ts = samplers.time_grid(steps, t_min=0.001, t_max=1.0, time_shift=float(ref["shift"]))
    np.testing.assert_allclose(np.asarray(ts), ref["grid"], rtol=1e-6, atol=1e-7)
    out = samplers.sample(model_fn, schedule, z.shape, jax.random.key(0), sampler="euler",
                          num_steps=steps, prediction="flow", t_min=0.001, t_max=1.0,
                          time_shift=float(ref["shift"]), z_init=z)
    return np.asarray(out.samples)


def test_euler_sampling_matches_the_official_sampler(ref, official):
    model = import_rae_dit(official["main"]).build()
    ys = jnp.asarray(ref["ys"], jnp.int32)
    got = _official_grid_sample(lambda z, t: model(z, t, ys), ref, _nhwc(ref["z"]))
    want = np.transpose(ref["samples"], (0, 2, 3, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def test_autoguided_sampling_matches_the_official_sampler(ref, official):
    main = import_rae_dit(official["main"]).build()
    guide = import_rae_dit(official["guide"]).build()
    ys = jnp.asarray(ref["ys"], jnp.int32)
    model_fn = autoguidance(main, guide, ys, float(ref["scale"]))
    got = _official_grid_sample(model_fn, ref, _nhwc(ref["z"]))
    want = np.transpose(ref["samples_ag"], (0, 2, 3, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))
    plain = np.transpose(ref["samples"], (0, 2, 3, 1))
    assert np.max(np.abs(want - plain)) > 100 * np.max(np.abs(got - want))  # guidance mattered


def test_registry_sizes_and_spec_checks():
    for size, (depth, width, heads) in {"S": (12, 384, 6), "B": (12, 768, 12),
                                         "L": (24, 1024, 16), "XL": (28, 1152, 16)}.items():
        spec = resolve_spec(f"DiTDH-{size}/1")
        assert (spec["depth"], spec["hidden_size"], spec["num_heads"]) == (depth, width, heads)
        head = (spec["head_depth"], spec["head_hidden_size"], spec["head_num_heads"])
        assert head == (2, 2048, 16)
    bad = dict(resolve_spec("DiTDH-S/1"), head_num_heads=3)  # 2048 / 3 is no head dim
    with pytest.raises(ValueError, match="head_num_heads"):
        resolve_spec(bad)


def test_return_hidden_is_the_backbone_state(official):
    model = import_rae_dit(official["main"]).build()
    x = jnp.ones((2, 4, 4, 6))
    t, y = jnp.asarray([0.2, 0.8]), jnp.asarray([1, 5], jnp.int32)
    out, hidden = model(x, t, y, return_hidden=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(x, t, y)))
    assert hidden.shape == (2, 16, 32)  # (B, T, D) of the backbone, not the head's width
