"""REPA (vdm_jax.nn.repa, vdm_jax.model.terms.repa): the alignment loss against its closed form,
where its gradient goes, the sharded train step with the frozen encoder as the term's input,
what sampling and exports see, and bad input on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags
from flax import nnx

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.core import objectives
from vdm_jax.generation.generate import make_generate_fn
from vdm_jax.importers.dit import export_dit
from vdm_jax.io import write_npz
from vdm_jax.nn.encoders.digits import DigitsCNN, to_arrays
from vdm_jax.nn.layers import label_dropout
from vdm_jax.nn.repa import alignment_loss
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.sampling_spec import SamplingSpec
from vdm_jax.training import state as st
from vdm_jax.training.step import jit_train_step, term_input_shardings

REPO = Path(__file__).resolve().parents[1]
TINY_DINOV2 = REPO / "tests" / "fixtures" / "dinov2" / "hf_dinov2"  # D = 16, 2 blocks, random
DATA = dm.DataSpec((8, 8, 1), 10, 17)  # the digits
DEPTH, ALIGN = 4, 2  # blocks of the tiny DiT; REPA aligns the hidden state after block 2


def repa_config(family: str = "dit", **repa) -> config_lib.ConfigDict:
    c = config_lib.default_config()
    c.data.name = "digits"
    if family == "dit":
        c.model.spec = dict(family="dit", depth=DEPTH, hidden_size=32, num_heads=2, patch_size=2)
    else:
        c.model.spec = dict(family="ddt", encoder_depth=DEPTH, decoder_depth=2, hidden_size=32,
                            num_heads=2, patch_size=2)
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.optim.ema_decays = (0.9,)
    c.repa.enabled = True
    c.repa.depth = ALIGN
    c.repa.weight = 0.5
    c.repa.projector_dim = 48
    c.repa.features = "stored"
    c.repa.encoder_dim = 64
    for key, value in repa.items():
        c.repa[key] = value
    return c


def perturbed(params, scale=0.05, seed=1):
    """params + noise: AdaLN-Zero leaves every block the identity at init, so that no gradient
    would reach the attention and MLP weights; with noise every weight matters."""
    rng = np.random.default_rng(seed)  # numpy: no compilation per leaf shape
    return jax.tree.map(lambda x: np.asarray(x) + scale * rng.normal(size=x.shape).astype(
        np.float32), params)


def batch_of(n=8, d_enc=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 10, (n,)).astype(np.int32),
            "repa_features": rng.normal(size=(n, 16, d_enc)).astype(np.float32)}


def np_projector(p, h):
    silu = lambda v: v / (1 + np.exp(-v))
    h = np.asarray(h, np.float64)
    for name, act in (("fc1", silu), ("fc2", silu), ("fc3", lambda v: v)):
        h = act(h @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"]))
    return h


def closed_form(projected, target):
    """(1/T) Σ_n (1 − ⟨a_n, b_n⟩ / (‖a_n‖ ‖b_n‖)) per example, float64."""
    a, b = np.asarray(projected, np.float64), np.asarray(target, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return (1 - cos).mean(-1)


def test_alignment_loss_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5, 7)), rng.normal(size=(3, 5, 7))
    got = np.asarray(alignment_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    np.testing.assert_allclose(got, closed_form(a, b), rtol=0, atol=1e-6)
    # Identities: aligned (any positive scale) → 0, opposite → 2, orthogonal → 1.
    x = jnp.asarray(a, jnp.float32)
    np.testing.assert_allclose(alignment_loss(x, 3.0 * x), 0.0, atol=1e-6)
    np.testing.assert_allclose(alignment_loss(x, -x), 2.0, atol=1e-6)
    e1, e2 = jnp.eye(4)[None, :1], jnp.eye(4)[None, 1:2]
    np.testing.assert_allclose(alignment_loss(e1, e2), 1.0, atol=1e-7)


def test_model_loss_adds_the_closed_form():
    """loss = mean_b[objective_b + λ · closed form_b], with h_i from the denoiser's forward pass
    after block `depth`, h_φ evaluated independently in float64 numpy."""
    c = repa_config()
    model, params = dm.build(c, DATA, 0)
    params = perturbed(params)
    batch, rng = batch_of(), jax.random.key(3)
    loss, aux = jax.jit(model.loss)(params, batch, rng)

    @jax.jit
    def pieces(params, batch, rng):  # the same draws as the loss: label dropout, then t, ε, z
        rng_drop, rng_loss = jax.random.split(rng)
        y = label_dropout(rng_drop, batch["label"], model.label_dropout, model.num_classes)
        schedule = model.schedule(params)
        t, eps, z = objectives.noisy_inputs(model.objective, schedule, batch["image"], rng_loss)
        out, hidden = model.network(params, z, t, y, return_hidden=ALIGN)
        base = objectives.per_example_loss(model.objective, schedule, out, model.prediction,
                                           batch["image"], eps, z, t)
        return hidden, base, out, model.network(params, z, t, y)

    hidden, base, out, out_plain = pieces(params, batch, rng)
    assert hidden.shape == (8, 16, 32)
    np.testing.assert_allclose(out, out_plain, rtol=1e-6)  # return_hidden: the same pass
    expected = closed_form(np_projector(params["repa"], hidden), batch["repa_features"])  # (B,)
    np.testing.assert_allclose(float(aux["terms"]["repa_loss"]), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(np.mean(base + 0.5 * expected)), rtol=1e-5)


def _grads_of_repa_term(c):
    model, params = dm.build(c, DATA, 0)
    params = perturbed(params)
    batch = batch_of()
    term = lambda p: model.loss(p, batch, jax.random.key(0))[1]["terms"]["repa_loss"]
    return jax.jit(jax.grad(term))(params)


def _nonzero(tree) -> bool:
    return any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(tree))


def _all_zero(tree) -> bool:
    return all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(tree))


def test_repa_gradient_reaches_projector_and_blocks_up_to_depth_only():
    g = _grads_of_repa_term(repa_config())
    den = g["denoiser"]
    assert all(_nonzero(leaf) for leaf in jax.tree.leaves(g["repa"]))  # every projector weight
    for i in range(DEPTH):
        block = den["blocks"][i]
        if i < ALIGN:  # every weight of the blocks up to the aligned depth
            assert all(_nonzero(leaf) for leaf in jax.tree.leaves(block)), i
        else:
            assert _all_zero(block), i
    assert _all_zero(den["final_layer"])
    for name in ("x_embedder", "t_embedder", "y_embedder"):
        assert _nonzero(den[name]), name


def test_repa_gradient_on_ddt_stays_in_the_encoder():
    g = _grads_of_repa_term(repa_config("ddt"))["denoiser"]
    for i in range(DEPTH):
        assert (_nonzero if i < ALIGN else _all_zero)(g["encoder_blocks"][i]), i
    for name in ("decoder_blocks", "final_layer", "x_embedder"):
        assert _all_zero(g[name]), name
    for name in ("s_embedder", "t_embedder", "y_embedder"):
        assert _nonzero(g[name]), name


@pytest.mark.parametrize("shape", [(2, 4)])
def test_sharded_repa_step_matches_one_device(shape):
    """Online features: the frozen DINOv2 (FSDP-sharded by its logical axes on (2, 4)) runs inside
    the train step on the clean images; 2 steps with 2 micro-batches on an 8-device mesh equal
    the 1-device steps (losses, REPA losses, parameters) to 1e-5."""
    c = repa_config(features="online", encoder="dinov2", encoder_path=str(TINY_DINOV2),
                    encoder_size="", encoder_dim=16)
    inputs = dm.load_term_inputs(c)  # {"repa": the frozen DINOv2}
    tx, lr = st.make_optimizer(c.optim, 10)
    batches = [{k: v for k, v in batch_of(16, seed=i).items() if k != "repa_features"}
               for i in range(2)]

    def run(mesh):
        model, state, sh = st.create_state(lambda: dm.build(c, DATA, 0), tx, (0.9,), 0, mesh)
        step = jit_train_step(model, tx, lr, (0.9,), 2, sh, mesh, term_inputs=inputs)
        placed = jax.device_put(inputs, term_input_shardings(model, inputs, mesh))
        out = []
        for i, b in enumerate(batches):
            b = jax.device_put(b, mesh_lib.batch_sharding(mesh))
            state, m = step(state, b, st.step_rng(state["rng"], i), placed)
            out.append((float(m["loss"]), float(m["repa_loss"])))
        return out, placed["repa"], state

    ref, _, ref_state = run(mesh_lib.make_mesh(1, 1, jax.devices()[:1]))
    got, enc, state = run(mesh_lib.make_mesh(*shape))
    if shape[1] > 1:  # the encoder's 'embed' axis really is split over 'fsdp'
        kernel = enc.params["blocks"][0]["attn"]["query"]["kernel"]
        assert "fsdp" in str(kernel.sharding.spec)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert all(0 < r < 2 for _, r in got)
    for a, b in zip(jax.tree.leaves(jax.device_get(state["params"])),
                    jax.tree.leaves(jax.device_get(ref_state["params"])), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_samplers_and_exports_never_see_the_projector():
    c = repa_config()
    model, params = dm.build(c, DATA, 0)
    params = perturbed(params)
    plain = {"denoiser": params["denoiser"]}
    spec = SamplingSpec(sampler="euler", num_steps=3, guidance_scale=1.5)
    labels = np.arange(4, dtype=np.int32)
    with_repa = make_generate_fn(model, 4, spec)(params, labels, jax.random.key(0))
    without = make_generate_fn(model, 4, spec)(plain, labels, jax.random.key(0))
    np.testing.assert_array_equal(with_repa, without)
    exported = export_dit(c.model.spec.to_dict(), params["denoiser"], format="dit", input_size=8)
    c_off = repa_config(enabled=False)
    _, params_off = dm.build(c_off, DATA, 0)
    assert set(export_dit(c_off.model.spec.to_dict(), params_off["denoiser"], format="dit",
                          input_size=8)) == set(exported)


def test_digits_encoder_targets_use_the_cnn_token_grid(tmp_path):
    cnn = DigitsCNN(rngs=nnx.Rngs(0))
    write_npz(tmp_path / "cnn.npz", to_arrays(cnn))
    c = repa_config(features="online", encoder="digits", encoder_path=str(tmp_path / "cnn.npz"),
                    encoder_dim=0)
    encoder = dm.load_target_encoder_for(c)
    x = jnp.asarray(batch_of()["image"])
    tokens = encoder.tokens(x, (4, 4))
    np.testing.assert_allclose(tokens, cnn.feature_map(x).reshape(8, 16, 64), rtol=1e-6)
    with pytest.raises(ValueError, match="4×4 grid"):
        encoder.tokens(x, (2, 2))


# ------------------------------------------------------------------------- command line


def _train(tmp_path, *overrides):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(1), "PYTHONPATH": str(REPO)}
    workdir = tmp_path / "run"
    if not any(o.startswith("--config.repa.depth=") for o in overrides):
        overrides = ("--config.repa.depth=2", *overrides)  # of the digits DiT's 4 blocks
    args = [sys.executable, "launch/train.py", "--config=configs/digits_dit.py",
            f"--workdir={workdir}", "--config.repa.enabled=true", *overrides]
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    return proc, workdir


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (("--config.repa.encoder_path=/nonexistent/dinov2-base",),
     "error: no DINOv2 weights at /nonexistent/dinov2-base: download"),
    ((f"--config.repa.encoder_path={TINY_DINOV2}", "--config.repa.encoder_size=vitb14"),
     "but ViT-B/14 (D=768, 12 blocks) without registers was requested"),
    ((f"--config.repa.encoder_path={TINY_DINOV2}", "--config.repa.depth=5"),
     "error: repa.depth=5 is beyond the model: the model has 4 blocks"),
    (("--config.repa.encoder=digits",), "error: repa.encoder_path is required"),
])
def test_bad_repa_input_exits_2_and_writes_nothing(tmp_path, overrides, message):
    proc, workdir = _train(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()
