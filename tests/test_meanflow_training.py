"""MeanFlow in the stack: the model's loss is core.meanflow's objective of its two-time DiT, the
sharded train step equals the one-device step, the 'meanflow' sampler through generation equals
core.meanflow's sampler and the 1-/2-NFE formulas, configs that mix MeanFlow with another
network, schedule, prediction or sampler are refused, and a tiny trained run reports bits/dim as
n/a, 1- and 2-NFE digits metrics, and samples through launch/sample.py."""

import functools
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.core import meanflow as mf
from vdm_jax.core import samplers
from vdm_jax.core import schedules as sch
from vdm_jax.data import dataset_info
from vdm_jax.generation.generate import make_generate_fn
from vdm_jax.nn.layers import label_dropout
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.pipelines import train as pipeline
from vdm_jax.sampling_spec import SamplingSpec
from vdm_jax.training import state as st
from vdm_jax.training.step import jit_train_step

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = dict(family="dit", depth=1, hidden_size=32, num_heads=2, patch_size=2)
# Guidance with both the conditional and the null pass, on part of the t range.
GUIDED = dict(omega=1.5, kappa=0.3, guidance_interval=(0.1, 0.9))
B = 16


def tiny_config(**overrides):
    """configs/digits_meanflow.py with a one-block DiT and a short run."""
    c = config_lib.load(REPO / "configs" / "digits_meanflow.py")
    c.unlock()
    c.model.spec = {**TINY_SPEC, "second_time": True}
    c.diffusion.objective_kwargs = GUIDED
    c.optim.ema_decays = (0.9,)
    c.optim.warmup_steps = 0
    c.train.num_steps = 4
    c.train.global_batch_size = B
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.sample.every = 0
    c.sample.num_images = 8
    c.eval.at_end = False
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def digits_batch(seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(-1, 1, (B, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 10, (B,)).astype(np.int32)}


@jax.jit
def perturbed(params, key):
    """Every weight moved by N(0, 0.05²): the zero-initialized AdaLN, final and h = t − r layers
    become nonzero, so outputs and the second time matter."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape)
                                        for p, k in zip(leaves, keys, strict=True)])


@functools.cache
def tiny_model():
    cfg = tiny_config()
    model, params = dm.build(cfg, dataset_info(cfg.data), 0)
    return model, perturbed(params, jax.random.key(1))


def _flat(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# ----------------------------------------------------------------------------------------------
# The loss and the sharded train step.
# ----------------------------------------------------------------------------------------------


def test_loss_is_core_meanflow_of_the_two_time_network():
    """DiffusionModel.loss = label dropout, then core.meanflow.meanflow_loss of u(z, r, t | y) =
    the DiT called with r, with the config's settings; aux holds only per-example and per-bin
    values; the h = t − r embedding receives a gradient."""
    model, params = tiny_model()
    batch = jax.tree.map(jnp.asarray, digits_batch(0))
    key = jax.random.key(3)
    loss, aux = jax.jit(model.loss)(params, batch, key)

    @jax.jit
    def reference(params):
        rng_drop, rng_loss = jax.random.split(key)
        y = label_dropout(rng_drop, batch["label"], 0.1, 10)
        net = nnx.merge(model.denoiser_def, params["denoiser"])
        u_fn = lambda z, r, t, y: net(z, t, y, r=r)
        return mf.meanflow_loss(u_fn, batch["image"], y, rng_loss, null_label=10, omega=1.5,
                                kappa=0.3, interval=(0.1, 0.9))

    want, want_aux = reference(params)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for k in ("per_example", "r", "t", "sq_error", "weight"):
        np.testing.assert_allclose(aux[k], want_aux[k], rtol=1e-6, err_msg=k)
    # The per-t bins hold ‖Δ‖² per dimension (the p = 1 loss is ≈ 1 in every bin).
    bins = np.minimum((np.asarray(aux["t"]) * 10).astype(int), 9)
    per_dim = np.asarray(want_aux["sq_error"]) / 64
    np.testing.assert_allclose(aux["bin_sum"], np.bincount(bins, per_dim, 10), rtol=1e-5)
    np.testing.assert_array_equal(aux["bin_count"], np.bincount(bins, minlength=10))
    assert aux.pop("terms") == {}  # MeanFlow is the objective: no loss term adds to it
    assert {k: v.shape for k, v in aux.items()} == {
        **{k: (B,) for k in ("per_example", "r", "t", "sq_error", "weight")},
        "bin_sum": (10,), "bin_count": (10,)}
    assert int(np.sum(np.asarray(aux["r"]) < np.asarray(aux["t"]))) > 0
    grads = jax.jit(jax.grad(lambda p: model.loss(p, batch, key)[0]))(params)
    assert np.abs(np.asarray(grads["denoiser"]["h_embedder"]["fc2"]["kernel"])).max() > 0
    with pytest.raises(ValueError, match="bits/dim does not apply"):
        model.elbo_bpd(params, batch["image"], batch["label"], key)


@functools.cache
def _train_three_steps(shape):
    cfg = tiny_config()
    info = dataset_info(cfg.data)
    tx, lr = st.make_optimizer(cfg.optim, 10)
    devices = jax.devices()[:1] if shape == (1, 1) else jax.devices()
    mesh = mesh_lib.make_mesh(*shape, devices)
    model, state, sh = st.create_state(lambda: dm.build(cfg, info, 0), tx, (0.9,), 0, mesh)
    step = jit_train_step(model, tx, lr, (0.9,), 2, sh, mesh)
    norms = []
    for i in range(3):
        b = jax.device_put(digits_batch(10 + i), mesh_lib.batch_sharding(mesh))
        state, m = step(state, b, st.step_rng(state["rng"], i))
        norms.append(float(m["grad_norm"]))
    return norms, jax.device_get(state["params"]), jax.device_get(state["ema"]), state["params"]


@pytest.mark.parametrize("shape", [(2, 4)])
def test_sharded_meanflow_steps_match_one_device(shape):
    """Three guided MeanFlow steps (2 micro-batches each) on an 8-device mesh, data-parallel and
    FSDP at once (the generic train step's other mesh shapes: tests/test_training.py), end with
    the one-device run's gradient norms, parameters and EMA (rtol 1e-5)."""
    ref_norms, ref_params, ref_ema, _ = _train_three_steps((1, 1))
    norms, params, ema, live = _train_three_steps(shape)
    if shape[1] > 1:  # FSDP actually shards the large kernels
        assert live["denoiser"]["blocks"][0]["mlp"]["fc1"]["kernel"].sharding.spec[0] == "fsdp"
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
    for got, want in ((params, ref_params), (ema, ref_ema)):
        for a, b in zip(_flat(got), _flat(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 2])
def test_meanflow_sampler_through_generation_equals_core_sampler(num_steps):
    """make_generate_fn(model, B, SamplingSpec('meanflow', N)), sharded over 8 devices or not,
    equals core.meanflow.sample of the network with the same labels and rng, and the closed
    forms z_0 = z_1 − u(z_1, 0, 1) (N = 1) and two half steps through t = ½ (N = 2)."""
    model, params = tiny_model()
    labels = jnp.arange(B, dtype=jnp.int32) % 10
    key = jax.random.key(5)
    spec = SamplingSpec(sampler="meanflow", num_steps=num_steps)
    assert spec.nfe == num_steps
    sharding = mesh_lib.batch_sharding(mesh_lib.make_mesh(-1, 1))
    sharded = make_generate_fn(model, B, spec, sharding=sharding)(params, labels, key)
    plain = make_generate_fn(model, B, spec)(params, labels, key)
    assert sharded.sharding.is_equivalent_to(sharding, 4)

    @jax.jit
    def reference(params):
        net = nnx.merge(model.denoiser_def, params["denoiser"])
        u = lambda z, r, t: net(z, jnp.full((B,), t), labels, r=jnp.full((B,), r))
        core = mf.sample(lambda z, r, t: net(z, t, labels, r=r), (B, 8, 8, 1), key,
                         num_steps=num_steps).samples
        z = jax.random.normal(jax.random.split(key)[0], (B, 8, 8, 1))
        grid = [1.0, 0.0] if num_steps == 1 else [1.0, 0.5, 0.0]
        for t, r in itertools.pairwise(grid):
            z = z - (t - r) * u(z, r, t)
        return core, z

    core, closed_form = reference(params)
    np.testing.assert_allclose(plain, core, atol=1e-5)
    np.testing.assert_allclose(sharded, core, atol=1e-5)
    np.testing.assert_allclose(plain, closed_form, atol=1e-5)
    z1 = jax.random.normal(jax.random.split(key)[0], (B, 8, 8, 1))
    assert np.abs(np.asarray(plain) - np.asarray(z1)).mean() > 1e-2  # the network moved z


def test_meanflow_sampling_refusals():
    """Classifier-free guidance, other samplers for a MeanFlow model and the 'meanflow' sampler
    for other models are refused with one line naming the fix."""
    model, _ = tiny_model()
    with pytest.raises(ValueError, match=r"no classifier-free guidance.*omega, kappa"):
        SamplingSpec(sampler="meanflow", guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"samples with sampler 'meanflow'.*not 'euler'"):
        make_generate_fn(model, B, SamplingSpec(sampler="euler", num_steps=4))
    dit_cfg = config_lib.load(REPO / "configs" / "digits_dit.py")
    dit_cfg.model.spec = TINY_SPEC
    dit, _ = dm.build(dit_cfg, dataset_info(dit_cfg.data), 0)
    with pytest.raises(ValueError, match=r"needs a MeanFlow model.*predicts 'v'"):
        make_generate_fn(dit, B, SamplingSpec(sampler="meanflow", num_steps=1))
    with pytest.raises(ValueError, match="samples with sampler 'meanflow' and only it"):
        samplers.sample(lambda z, t: z, sch.rectified_flow(), (2, 3), jax.random.key(0),
                        sampler="meanflow", num_steps=1, prediction="flow")


# ----------------------------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    ({"model.prediction": "flow"}, r"model\.prediction='flow'.*'average_velocity'"),
    ({"sample.sampler": "euler"}, r"sample\.sampler='euler'.*sampler 'meanflow'"),
    ({"model.spec": TINY_SPEC}, "second_time=True"),
    ({"model.spec": {"name": "JiT-B/16"}}, "second_time=True"),
    ({"diffusion.schedule": "cosine"}, "schedule='rectified_flow'"),
    ({"diffusion.shift": 2.0}, "schedule='rectified_flow' with shift 1"),
    ({"diffusion.label_dropout": 0.0}, r"label_dropout > 0"),
    ({"diffusion.objective_kwargs": {"kappa": 1.0}}, r"kappa=1\.0 must be in \[0, 1\)"),
    ({"diffusion.objective_kwargs": {"w": 2.0}}, r"takes no key\(s\) \['w'\]"),
    ({"diffusion.objective_kwargs": {"guidance_interval": (0.8, 0.2)}}, "t_lo < t_hi"),
    ({"diffusion.objective_kwargs": {"c": 0.0}}, "c=0.0 must be positive"),
    ({"eval.num_steps": (1, 1)}, r"eval\.num_steps=\(1, 1\)"),
])
def test_meanflow_config_refusals(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_lib.validate(tiny_config(**overrides))


def test_meanflow_pieces_in_other_configs_are_refused():
    config_lib.validate(tiny_config())
    for key, value, match in (
        ("model.prediction", "average_velocity", r"prediction 'average_velocity' goes with"),
        ("sample.sampler", "meanflow", r"sample\.sampler='meanflow' with diffusion\.objective"),
    ):
        c = config_lib.load(REPO / "configs" / "digits_dit.py")
        c.sample.guidance_scale = 1.0
        section, name = key.split(".")
        c[section][name] = value
        with pytest.raises(ValueError, match=match):
            config_lib.validate(c)


# ----------------------------------------------------------------------------------------------
# A trained run: end-of-run figures and launch/sample.py.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("meanflow") / "run"
    cfg = tiny_config(**{"train.num_steps": 2, "train.async_checkpoints": False,
                         "eval.at_end": True, "eval.num_samples": B, "eval.num_steps": (1, 2)})
    return workdir, pipeline.run(cfg, workdir)


def test_end_of_run_reports_one_and_two_step_metrics_and_no_bpd(trained_run):
    workdir, summary = trained_run
    res = summary["results"]
    assert res["bpd"] is None and res["baselines_bpd"] is None
    assert res["unavailable"]["bpd"] == dm.BPD_NOT_APPLICABLE
    assert [b["sampling"]["num_steps"] for b in res["samples"]] == [1, 2]
    assert [Path(b["samples_npz"]).name for b in res["samples"]] == ["final_1steps.npz",
                                                                      "final_2steps.npz"]
    for b in res["samples"]:
        d = b["digits"]
        assert np.isfinite(d["digits_fid"]) and 0.0 <= d["class_accuracy"] <= 1.0
        with np.load(b["samples_npz"]) as npz:
            assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (B, 8, 8, 1)
        # Its settings beside it, for evaluate.py (issue 28: final.npz had none).
        settings = json.loads(Path(b["samples_npz"]).with_suffix(".json").read_text())
        assert {k: settings[k] for k in ("sampler", "num_steps", "guidance_scale")} == {
            k: b["sampling"][k] for k in ("sampler", "num_steps", "guidance_scale")}
        assert settings["checkpoint_step"] == 2 and settings["num_samples"] == B
    assert json.loads((workdir / "eval_results.json").read_text())["samples"][1]["digits"] == \
        res["samples"][1]["digits"]
    text = pipeline.format_results(res)
    assert "n/a: bits/dim does not apply" in text
    assert "digits-FID (samples vs test, 1 step)" in text
    assert "digits-FID (samples vs test, 2 steps)" in text
    assert "meanflow, 1 / 2 steps, guidance 1" in text


def _launch_sample(workdir, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "launch" / "sample.py"),
                           f"--workdir={workdir}", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_launch_sample_meanflow_one_step(trained_run, tmp_path):
    workdir, _ = trained_run
    out = tmp_path / "mf1.npz"
    proc = _launch_sample(workdir, "--sampler=meanflow", "--steps=1", "--num_samples=12",
                          "--batch_size=8", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as npz:
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (12, 8, 8, 1)
        np.testing.assert_array_equal(npz["arr_1"], np.arange(12) % 10)
        assert len(np.unique(npz["arr_0"])) > 2  # not a constant image
    settings = json.loads(out.with_suffix(".json").read_text())
    assert (settings["sampler"], settings["num_steps"], settings["nfe"]) == ("meanflow", 1, 1)
    assert settings["nfe_batch_multiplier"] == 1
    bad = _launch_sample(workdir, "--sampler=meanflow", "--steps=1", "--guidance_scale=2",
                         "--num_samples=8", "--batch_size=8", f"--out={tmp_path / 'bad.npz'}")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: sampler 'meanflow' takes no "
                                                           "classifier-free guidance")
    assert not (tmp_path / "bad.npz").exists()
