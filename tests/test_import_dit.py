"""Importing and exporting the official DiT / SiT checkpoints (vdm_jax.importers.dit).

Fixtures (tests/fixtures/dit/, written by tests/make_dit_fixture.py with torch 2.13.0 and
diffusers 0.42.1): a tiny random DiT in the official layout and its outputs from diffusers'
DiTTransformer2DModel (with DiT's timestep frequencies), cross-checked there against a torch
re-implementation of models.py's forward pass. Only the train.py `.pt` test needs torch.
"""

import argparse
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from vdm_jax.core.samplers import sample
from vdm_jax.core.schedules import rectified_flow
from vdm_jax.importers.common import WeightMismatchError, save_state_dict
from vdm_jax.importers.dit import export_dit, import_dit
from vdm_jax.nn.layers import sincos_2d
from vdm_jax.nn.registry import build_model

FIXTURES = Path(__file__).parent / "fixtures" / "dit"
WEIGHTS = FIXTURES / "official_weights.safetensors"
C = 4  # fixture channels


def relative(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def leaves_equal(a, b):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in
               zip(flat_a, flat_b, strict=True))


@nnx.jit
def forward(model, x, t, y):
    return model(x, t, y)


def randomize(model, seed, scale=0.1):
    """Adds N(0, scale²) noise to every parameter (the zero-initialized ones too), in NumPy (no
    per-shape compilation); returns the pure-dict parameters."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda a: jnp.asarray(a + scale * rng.standard_normal(a.shape), jnp.float32),
        nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return nnx.to_pure_dict(state)


@pytest.fixture(scope="module")
def dit():
    return import_dit(WEIGHTS, format="dit", num_heads=4)


@pytest.fixture(scope="module")
def official():
    return load_file(str(WEIGHTS))


# ------------------------------------------------------------------------------------------------
# Time conditioning as spec data
# ------------------------------------------------------------------------------------------------


def test_time_map_is_an_affine_change_of_t():
    """A DiT with (time_scale a, time_shift b) at t is the default DiT (1000·t) at (a·t + b)/1000,
    same weights."""
    tiny = {"family": "dit", "depth": 1, "hidden_size": 32, "num_heads": 4, "patch_size": 2}
    kw = dict(input_size=4, in_channels=3, num_classes=5)
    base = build_model(tiny, **kw, rngs=nnx.Rngs(0))
    params = randomize(base, seed=1)
    x = jax.random.normal(jax.random.key(2), (3, 4, 4, 3))
    t = jnp.array([0.0, 0.3, 1.0])
    y = jnp.array([0, 4, 5])
    for a, b in [(1000.0, -1.0), (-1.0, 1.0)]:  # imported DiT's and SiT's
        model = nnx.eval_shape(lambda a=a, b=b: build_model(
            {**tiny, "time_scale": a, "time_shift": b}, **kw, rngs=nnx.Rngs(0)))
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(model, state)
        out = forward(model, x, t, y)
        np.testing.assert_allclose(out, forward(base, x, (a * t + b) / 1000, y), atol=1e-5)
        assert relative(out, np.asarray(forward(base, x, t, y))) > 1e-3  # the map matters
    for bad, match in [({"time_scale": 0.0}, "nonzero"), ({"time_shift": float("nan")}, "finite"),
                       ({"time_scale": "1000"}, "finite")]:
        with pytest.raises(ValueError, match=match):
            build_model({**tiny, **bad}, **kw, rngs=nnx.Rngs(0))
    jit_spec = {"family": "jit", "depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2,
                "time_scale": 1.0}
    with pytest.raises(ValueError, match="Unknown keys"):
        build_model(jit_spec, **kw, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------------------------
# Parity with diffusers / the official forward pass
# ------------------------------------------------------------------------------------------------


def test_dit_matches_diffusers_at_integer_steps(dit):
    """Official step index i is our t = (i + 1)/1000; real and null labels; i = 0 and 999."""
    assert dit.spec == dict(family="dit", depth=2, hidden_size=32, num_heads=4, patch_size=2,
                            mlp_ratio=4.0, time_scale=1000.0, time_shift=-1.0)
    assert dit.build_kwargs() == dict(input_size=8, in_channels=4, num_classes=10,
                                      learn_sigma=True)
    assert (dit.prediction, dit.schedule, dit.weights) == ("eps", "ddpm_linear", "state_dict")
    assert dit.null_class_trained and dit.pos_embed_max_abs_diff < 1e-6
    ref = np.load(FIXTURES / "reference_dit.npz")
    assert {0, 999} <= set(ref["step"].tolist()) and 10 in ref["y"] and min(ref["y"]) < 10
    t = jnp.asarray((ref["step"] + 1) / 1000, jnp.float32)
    out = nchw(forward(dit.build(), nhwc(ref["x"]), t, jnp.asarray(ref["y"], jnp.int32)))
    assert out.shape == ref["out"].shape
    for i in range(len(t)):  # every sample on its own scale
        assert relative(out[i], ref["out"][i]) <= 1e-5, i


@pytest.mark.parametrize("learn_sigma", [None, True])
def test_sit_matches_reference_with_its_conventions(learn_sigma):
    """SiT at its time τ is ours at t = 1 − τ; its velocity (first C channels) is −u; SiT drops
    the variance half unless asked to keep it, which stays unchanged."""
    sit = import_dit(WEIGHTS, format="sit", num_heads=4, learn_sigma=learn_sigma)
    assert (sit.spec["time_scale"], sit.spec["time_shift"]) == (-1.0, 1.0)
    assert (sit.prediction, sit.schedule) == ("flow", "rectified_flow")
    assert sit.learn_sigma == bool(learn_sigma)
    ref = np.load(FIXTURES / "reference_sit.npz")
    assert {0.0, 1.0} <= set(ref["tau"].tolist())
    t = jnp.asarray(1 - ref["tau"], jnp.float32)
    out = nchw(forward(sit.build(), nhwc(ref["x"]), t, jnp.asarray(ref["y"], jnp.int32)))
    expected = np.concatenate([-ref["out"][:, :C], ref["out"][:, C:]], axis=1)
    expected = expected[:, : 2 * C if learn_sigma else C]
    assert out.shape == expected.shape
    for i in range(len(t)):
        assert relative(out[i], expected[i]) <= 1e-5, i


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def test_export_then_import_is_bit_exact(dit, official, tmp_path):
    sd = export_dit(dit.spec, dit.params, format="dit", input_size=dit.input_size)
    assert sd.keys() == official.keys()
    for name, a in official.items():  # the file itself comes back, pos_embed included
        assert sd[name].dtype == np.float32 and np.array_equal(sd[name], a), name
    save_state_dict(tmp_path / "dit.safetensors", sd)
    back = import_dit(tmp_path / "dit.safetensors", format="dit", num_heads=4)
    assert back.spec == dit.spec and leaves_equal(back.params, dit.params)
    for learn_sigma in (None, True):
        sit = import_dit(WEIGHTS, format="sit", num_heads=4, learn_sigma=learn_sigma)
        sd = export_dit(sit.spec, sit.params, format="sit", input_size=8)
        assert sd["final_layer.linear.weight"].shape == (2 * 2 * 2 * C, 32)  # SiT's default 2C
        back = import_dit(sd, format="sit", num_heads=4, learn_sigma=learn_sigma)
        assert leaves_equal(back.params, sit.params)
        velocity = sd["final_layer.linear.bias"].reshape(4, 2 * C)[:, :C]
        np.testing.assert_array_equal(velocity, official["final_layer.linear.bias"]
                                      .reshape(4, 2 * C)[:, :C])  # SiT's sign restored


def test_export_folds_a_time_shift_and_refuses_a_scale():
    """A model trained here embeds 1000·t; the official DiT code feeds i = 1000·t − 1. Export
    folds the shift into t_embedder.mlp.0; the imported network computes the same function."""
    spec = {"family": "dit", "depth": 1, "hidden_size": 32, "num_heads": 4, "patch_size": 2}
    model = build_model(spec, input_size=4, in_channels=3, num_classes=5, learn_sigma=True,
                        rngs=nnx.Rngs(0))
    params = randomize(model, seed=3)
    sd = export_dit(spec, params, format="dit", input_size=4)
    back = import_dit(sd, format="dit", num_heads=4)
    x = jax.random.normal(jax.random.key(4), (4, 4, 4, 3))
    t = jnp.array([0.001, 0.25, 0.5, 1.0])
    y = jnp.array([0, 2, 4, 5])
    assert relative(forward(back.build(), x, t, y), np.asarray(forward(model, x, t, y))) <= 1e-5
    flat = dict(jax.tree.leaves_with_path(params))
    for path, value in jax.tree.leaves_with_path(back.params):
        same = np.array_equal(np.asarray(value), np.asarray(flat[path]))
        assert same != (jax.tree_util.keystr(path) == "['t_embedder']['fc1']['kernel']")
    with pytest.raises(ValueError, match="time scales differ"):
        export_dit(spec, params, format="sit", input_size=4)


def test_table_without_null_row(dit, official):
    """Trained without label dropout: num_classes rows. A zero null row is appended (recorded);
    real labels are unchanged; export with null_class=False gives the table back."""
    sd = dict(official, **{"y_embedder.embedding_table.weight":
                           official["y_embedder.embedding_table.weight"][:10]})
    imp = import_dit(sd, format="dit", num_heads=4, num_classes=10)
    assert not imp.null_class_trained and imp.num_classes == 10
    table = np.asarray(imp.params["y_embedder"]["embedding_table"]["embedding"])
    np.testing.assert_array_equal(table[:10], official["y_embedder.embedding_table.weight"][:10])
    np.testing.assert_array_equal(table[10], 0)
    back = export_dit(imp.spec, imp.params, format="dit", input_size=8, null_class=False)
    np.testing.assert_array_equal(back["y_embedder.embedding_table.weight"],
                                  sd["y_embedder.embedding_table.weight"])
    with pytest.raises(WeightMismatchError, match="has 10 rows, expected 9"):
        import_dit(sd, format="dit", num_heads=4, num_classes=8)


# ------------------------------------------------------------------------------------------------
# SiT conventions end to end: a SiT whose network is a known velocity field, sampled here
# ------------------------------------------------------------------------------------------------

D, L_BIG = 16, 100.0  # width; the constant feature that makes LayerNorm (nearly) linear in x


def _official_time_embedding(tau):
    half = 128
    freqs = np.exp(-math.log(10_000) * np.arange(half) / half)
    args = tau[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)  # (N, 256)


def _silu(a):
    return a / (1 + np.exp(-a))


def gaussian_sit(seed=0):
    """An unconditional SiT (official layout, 1×1×2 images, patch 1, learn_sigma) whose network
    is v(x, τ) = k(τ)·x + β(τ) per channel (up to O(|x|²/L²) from LayerNorm), and that field in
    NumPy from models.py's formulas, in SiT's convention (τ = 1 data, v points to the data).

    Construction: blocks gated off (adaLN 0: the identity); the token is h = (x₀, −x₀, x₁, −x₁,
    L, −L, 0, …) (pos_embed cancelled by the patch bias), so LayerNorm(h)_f ≈ h_f / (L/√8); the
    final layer's adaLN gives a τ-dependent scale and shift for features 0 and 2 and its Linear
    reads them into velocity channels 0 and 1."""
    rng = np.random.default_rng(seed)
    pos = sincos_2d(D, (1, 1))[0]
    sd = {"pos_embed": pos[None, None]}
    w = np.zeros((D, 2, 1, 1))
    w[0, 0], w[1, 0], w[2, 1], w[3, 1] = 1, -1, 1, -1
    const = np.zeros(D)
    const[4], const[5] = L_BIG, -L_BIG
    sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"] = w, const - pos
    sd["t_embedder.mlp.0.weight"] = 3 * rng.standard_normal((D, 256)) / 16
    # A strong sin(τ) feature (DiT's frequency 1): over τ ∈ [0, 1] the others barely move.
    sd["t_embedder.mlp.0.weight"][:, 128] += 4 * rng.standard_normal(D)
    sd["t_embedder.mlp.0.bias"] = rng.standard_normal(D)
    sd["t_embedder.mlp.2.weight"] = rng.standard_normal((D, D)) / 4
    sd["t_embedder.mlp.2.bias"] = rng.standard_normal(D)
    sd["y_embedder.embedding_table.weight"] = rng.standard_normal((1, D))  # the null row only
    for name, shape in [("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)),
                        ("mlp.fc1", (4 * D, D)), ("mlp.fc2", (D, 4 * D))]:
        sd[f"blocks.0.{name}.weight"] = rng.standard_normal(shape)
        sd[f"blocks.0.{name}.bias"] = rng.standard_normal(shape[0])
    sd["blocks.0.adaLN_modulation.1.weight"] = np.zeros((6 * D, D))
    sd["blocks.0.adaLN_modulation.1.bias"] = np.zeros(6 * D)
    sigma0 = L_BIG / math.sqrt(D / 2)  # LayerNorm's std of h at x = 0
    mod_w, mod_b = np.zeros((2 * D, D)), np.zeros(2 * D)
    for f in (0, 2):  # rows 0..D−1 are shifts, D..2D−1 scales
        mod_w[f], mod_b[f] = rng.standard_normal(D) / (4 * sigma0), 0.3 / sigma0
        mod_w[D + f], mod_b[D + f] = 0.4 * rng.standard_normal(D), 0.0
    sd["final_layer.adaLN_modulation.1.weight"] = mod_w
    sd["final_layer.adaLN_modulation.1.bias"] = mod_b
    lin_w, lin_b = np.zeros((4, D)), np.zeros(4)
    lin_w[0, 0], lin_w[1, 2] = 0.8 * sigma0, -0.6 * sigma0  # velocity channels
    lin_w[2:] = rng.standard_normal((2, D))  # the variance half, unused by SiT
    lin_b[:2] = [0.5, -0.2]
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = lin_w, lin_b
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}

    def field(x, tau):
        """SiT's v(x, τ) for x (N, 2) and τ a float or (N,), from the official formulas."""
        tau = np.atleast_1d(np.asarray(tau, np.float64))
        c = _silu(_official_time_embedding(tau) @ sd["t_embedder.mlp.0.weight"].T
                  + sd["t_embedder.mlp.0.bias"])
        c = c @ sd["t_embedder.mlp.2.weight"].T + sd["t_embedder.mlp.2.bias"]
        c = c + sd["y_embedder.embedding_table.weight"][0]
        mod = _silu(c) @ mod_w.T + mod_b
        shift, scale = mod[:, :D], mod[:, D:]  # (1 or N, D)
        h = np.concatenate([x[:, :1], -x[:, :1], x[:, 1:], -x[:, 1:],
                            np.full_like(x[:, :1], L_BIG), np.full_like(x[:, :1], -L_BIG),
                            np.zeros((len(x), D - 6))], axis=1)
        h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-6)
        return (h * (1 + scale) + shift) @ lin_w[:2].T + lin_b[:2]

    return sd, field


def solve_sit_ode(field, x0, steps=1000, reverse_time=False, sign=1.0):
    """RK4 for dx/dτ = sign·v(x, τ') from τ = 0 (noise) to 1 (data); τ' = 1 − τ if reversed."""
    x, h = x0.astype(np.float64), 1.0 / steps

    def f(x, tau):
        return sign * field(x, 1 - tau if reverse_time else tau)

    for i in range(steps):
        tau = i * h
        k1 = f(x, tau)
        k2 = f(x + h / 2 * k1, tau + h / 2)
        k3 = f(x + h / 2 * k2, tau + h / 2)
        k4 = f(x + h * k3, tau + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_sit_conventions_sample_the_gaussian():
    """Imported through import_dit(format='sit'), vdm_jax's Heun sampler on the rectified-flow
    schedule (prediction 'flow', t from 1 to 0) solves SiT's ODE (τ from 0 to 1): sample by
    sample against an RK4 solution of the official field from the same noise, and in
    distribution against the Gaussian N(ψ, Φ²) that the (linear) field transports N(0, I) to."""
    sd, field = gaussian_sit(seed=4)
    sit = import_dit(sd, format="sit", num_heads=2)
    assert sit.build_kwargs() == dict(input_size=1, in_channels=2, num_classes=0,
                                      learn_sigma=False)
    model = sit.build()
    n = 4096
    z1 = jax.random.normal(jax.random.key(0), (n, 1, 1, 2))
    y = jnp.zeros((n,), jnp.int32)  # the null class of an unconditional model
    out = sample(lambda z, t: model(z, t, y), rectified_flow(), z1.shape, jax.random.key(1),
                 sampler="heun", num_steps=100, prediction="flow", t_max=1.0, z_init=z1)
    got = np.asarray(out.samples).reshape(n, 2)
    noise = np.asarray(z1).reshape(n, 2)
    want = solve_sit_ode(field, noise, steps=400)
    assert np.max(np.abs(got - want)) < 5e-4

    # The Gaussian N(ψ, Φ²) per channel: for a field linear in x, the mean follows the
    # trajectory from E[x₀] = 0 and the std grows as Φ = exp ∫ k(τ) dτ, k = ∂v/∂x.
    mean = solve_sit_ode(field, np.zeros((1, 2)))[0]
    tau = np.linspace(0, 1, 2001)
    k = field(np.ones((len(tau), 2)), tau) - field(np.zeros((len(tau), 2)), tau)
    std = np.exp(np.trapezoid(k, tau, axis=0))
    se_mean, se_std = std / math.sqrt(n), std / math.sqrt(2 * n)
    assert np.all(np.abs(got.mean(0) - mean) < 4 * se_mean), (got.mean(0), mean)
    assert np.all(np.abs(got.std(0) - std) < 4 * se_std), (got.std(0), std)
    # The test can fail: a reversed time or an unflipped sign lands far away.
    for wrong in (dict(reverse_time=True), dict(sign=-1.0)):
        far = solve_sit_ode(field, noise, steps=200, **wrong)
        assert np.max(np.abs(far.mean(0) - mean) / se_mean) > 20, wrong


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_input_one_clear_message(official, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-such\.pt"):
        import_dit(tmp_path / "no-such.pt", format="dit")
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)},
              str(tmp_path / "inception.safetensors"))
    with pytest.raises(WeightMismatchError, match=r"not a DiT/SiT checkpoint.*x_embedder"):
        import_dit(tmp_path / "inception.safetensors", format="dit", num_heads=4)

    broken = dict(official)
    broken["blocks.1.mlp.fc2.weight"] = broken["blocks.1.mlp.fc2.weight"].T  # misshaped
    del broken["blocks.0.attn.proj.bias"]  # missing
    broken["blocks.0.attn.q_norm.weight"] = np.ones(8, np.float32)  # unexpected
    with pytest.raises(WeightMismatchError) as e:
        import_dit(broken, format="dit", num_heads=4)
    msg = str(e.value)
    for part in ("missing tensors (1)", "blocks.0.attn.proj.bias (32,)",
                 "misshaped tensors (1)", "blocks.1.mlp.fc2.weight: got (128, 32), expected "
                 "(32, 128)", "unexpected tensors (1)", "blocks.0.attn.q_norm.weight"):
        assert part in msg, part

    shuffled = dict(official, pos_embed=official["pos_embed"][:, ::-1].copy())
    with pytest.raises(WeightMismatchError, match="pos_embed differs"):
        import_dit(shuffled, format="dit", num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        import_dit(official, format="dit")  # depth 2, width 32: no registry size
    with pytest.raises(ValueError, match="format"):
        import_dit(official, format="ddpm", num_heads=4)
    with pytest.raises(ValueError, match="weights='ema'"):
        import_dit(official, format="dit", num_heads=4, weights="model")
    narrow = dict(official)  # learn_sigma False in training: C output channels
    for leaf in ("weight", "bias"):
        a = official[f"final_layer.linear.{leaf}"]
        narrow[f"final_layer.linear.{leaf}"] = a.reshape(4, 2 * C, -1)[:, :C].reshape(
            16, *a.shape[1:])
    with pytest.raises(ValueError, match="no variance channels"):
        import_dit(narrow, format="sit", num_heads=4, learn_sigma=True)


def test_registry_size_gives_the_heads():
    """A DiT-S/2 needs no num_heads (depth 12, width 384 → 6 heads), checked on shapes only."""
    model = nnx.eval_shape(lambda: build_model("DiT-S/2", input_size=4, in_channels=4,
                                               num_classes=3, learn_sigma=True, rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                          nnx.to_pure_dict(nnx.state(model)))
    sd = export_dit({"family": "dit", "depth": 12, "hidden_size": 384, "num_heads": 6,
                     "patch_size": 2, "time_scale": 1000.0, "time_shift": -1.0},
                    params, format="dit", input_size=4)
    assert import_dit(sd, format="dit").spec["num_heads"] == 6


# ------------------------------------------------------------------------------------------------
# train.py checkpoints (torch)
# ------------------------------------------------------------------------------------------------


class Opaque:  # a class no weights-only load allows
    pass


def test_train_checkpoint(dit, tmp_path):
    torch = pytest.importorskip("torch")
    path = FIXTURES / "train_checkpoint.pt"
    ema = import_dit(path, format="dit", num_heads=4)
    assert ema.weights == "ema" and leaves_equal(ema.params, dit.params)
    assert ema.train_args["model"] == "DiT-tiny" and ema.train_args["num_classes"] == 10
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    model = import_dit(path, format="dit", num_heads=4, weights="model")
    expected = import_dit({k: v.numpy() for k, v in raw["model"].items()}, format="dit",
                          num_heads=4)
    assert model.weights == "model" and leaves_equal(model.params, expected.params)
    assert not leaves_equal(model.params, ema.params)
    with pytest.raises(ValueError, match="format='dit'"):
        import_dit(path, format="sit", num_heads=4)

    save_state_dict(tmp_path / "dit.pt", export_dit(dit.spec, dit.params, format="dit",
                                                    input_size=8))
    assert leaves_equal(import_dit(tmp_path / "dit.pt", format="dit", num_heads=4).params,
                        dit.params)

    torch.save({"ema": {}, "hook": Opaque()}, tmp_path / "opaque.pt")
    with pytest.raises(ValueError, match="weights-only load refuses"):
        import_dit(tmp_path / "opaque.pt", format="dit")

