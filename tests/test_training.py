"""Training: sharding equivalence, exact resume after SIGKILL, topology change, config checks."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.checkpoints import manager as ckpt_lib
from vdm_jax.data import dataset_info
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import loop as trainer
from vdm_jax.training import state as st
from vdm_jax.training import step as step_lib
from vdm_jax.training.step import jit_train_step

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = {
    "model.spec.depth": 1, "model.spec.hidden_size": 32, "model.spec.num_heads": 2,
    "train.global_batch_size": 16, "train.log_every": 1, "train.checkpoint_every": 2,
    "sample.num_images": 8, "sample.num_steps": 2, "sample.every": 0,
    "optim.warmup_steps": 0, "eval.at_end": False,
}


def tiny_config(**overrides):
    c = config_lib.default_config()
    c.data.name = "digits"
    c.model.spec = dict(family="dit", depth=1, hidden_size=32, num_heads=2, patch_size=2)
    c.optim.lr = 1e-3
    c.optim.ema_decays = (0.9,)
    c.train.num_steps = 4
    c.train.global_batch_size = 16
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.sample.num_images = 8
    c.sample.num_steps = 2
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def _flat(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("shape", [(8, 1), (2, 4), (1, 8)])
def test_sharded_steps_match_one_device(shape):
    """N steps on an 8-device mesh equal the same steps on one device (losses and parameters)."""
    cfg = tiny_config()
    info = dataset_info(cfg.data)
    tx, lr = st.make_optimizer(cfg.optim, 10)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
                "label": rng.integers(0, 10, (16,)).astype(np.int32)} for _ in range(3)]

    def run(mesh):
        model, state, sh = st.create_state(lambda: dm.build(cfg, info, 0), tx, (0.9,), 0, mesh)
        step = jit_train_step(model, tx, lr, (0.9,), 2, sh, mesh)
        losses = []
        for i, b in enumerate(batches):
            b = jax.device_put(b, mesh_lib.batch_sharding(mesh))
            state, m = step(state, b, st.step_rng(state["rng"], i))
            losses.append(float(m["loss"]))
        return losses, state

    ref_losses, ref_state = run(mesh_lib.make_mesh(1, 1, jax.devices()[:1]))
    losses, state = run(mesh_lib.make_mesh(*shape))
    if shape[1] > 1:  # FSDP actually shards the large kernels
        kernel = state["params"]["denoiser"]["blocks"][0]["mlp"]["fc1"]["kernel"]
        assert kernel.sharding.spec[0] == "fsdp"
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(_flat(state["params"]), _flat(ref_state["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))
    for a, b in zip(_flat(state["ema"]), _flat(ref_state["ema"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


def test_gradient_accumulation_equals_the_full_batch():
    """micro_batches = 4 averages the gradients of four quarter-batches: the same update as one
    full-batch step up to float rounding when the loss has no per-example randomness coupling."""
    cfg = tiny_config(**{"diffusion.label_dropout": 0.0})
    info = dataset_info(cfg.data)
    tx, lr = st.make_optimizer(cfg.optim, 10)
    mesh = mesh_lib.make_mesh(-1, 1)
    model, state0, sh = st.create_state(lambda: dm.build(cfg, info, 0), tx, (0.9,), 0, mesh)
    rng = np.random.default_rng(1)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, (16,)).astype(np.int32)}
    key = jax.random.key(3)
    # Reference: the mean of the four micro-batch gradients, computed directly.
    micro = step_lib._split_micro(batch, 4)
    keys = jax.random.split(key, 4)

    @jax.jit  # one program (eager, every op of four gradients would compile on its own)
    def reference_update(params):
        grads = [jax.grad(lambda p, i=i: model.loss(p, {k: v[i] for k, v in micro.items()},
                                                     keys[i])[0])(params) for i in range(4)]
        mean_grad = jax.tree.map(lambda *g: sum(g) / 4, *grads)
        updates, _ = tx.update(mean_grad, tx.init(params), params)
        return jax.tree.map(lambda p, u: p + u, params, updates)

    expected = reference_update(state0["params"])
    step = jit_train_step(model, tx, lr, (0.9,), 4, sh, mesh)
    state, _ = step(state0, jax.device_put(batch, mesh_lib.batch_sharding(mesh)), key)
    for a, b in zip(_flat(state["params"]), _flat(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _cli(workdir, steps, extra=()):
    args = [sys.executable, str(REPO / "launch" / "train.py"),
            f"--config={REPO / 'configs' / 'digits_dit.py'}", f"--workdir={workdir}",
            f"--config.train.num_steps={steps}"]
    args += [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()]
    return args + list(extra)


def _final_params(workdir):
    ck = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints")
    step = ck.steps()[0]
    cfg = ck.saved_config(step)
    ck.close()
    return step, cfg


def _restore_raw(workdir, config_like):
    """Raw parameters of the newest checkpoint, on one device."""
    from ml_collections import ConfigDict

    cfg = ConfigDict(config_like)
    info = dataset_info(cfg.data)
    _, params = dm.build(cfg, info, 0)
    ck = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints")
    params, step = ck.restore_params(params, ema=None, ema_names=[])
    ck.close()
    return step, jax.device_get(params)


@pytest.mark.slow
def test_checkpoint_restores_on_other_device_counts(tmp_path):
    """Saved on 8 devices, restored on 1 and then on 2, and training continues."""
    cfg = tiny_config(**{"train.num_steps": 2, "train.async_checkpoints": False})
    out8 = trainer.train(cfg, tmp_path)
    saved = jax.device_get(out8["state"]["params"])
    assert out8["mesh"].size == 8
    for n, steps in ((1, 3), (2, 4)):
        cfg.train.num_steps = steps
        devices = jax.devices()[:n]
        setup = trainer.set_up(cfg, tmp_path, devices)
        assert int(setup.state["step"]) == steps - 1
        leaf = jax.tree.leaves(setup.state["params"])[0]
        assert set(leaf.sharding.device_set) <= set(devices)
        if n == 1:
            for a, b in zip(_flat(setup.state["params"]), _flat(saved), strict=True):
                np.testing.assert_array_equal(a, b)
        out = trainer.train(cfg, tmp_path, devices)
        assert (out["start_step"], out["step"]) == (steps - 1, steps)
        assert np.isfinite(out["metrics"]["loss"])


def test_on_cpu_a_step_is_dispatched_only_after_the_previous_one_is_checked(tmp_path,
                                                                         monkeypatch):
    """XLA:CPU keeps one train step in flight (a step queued behind a running one doubled the host
    memory; the loop's docstring): step k's metrics are read before step k + 1 is dispatched."""
    events = []
    real_step_function, real_host_metrics = trainer.step_function, trainer._host_metrics

    class RecordingStep:
        def __init__(self, jitted):
            self.jitted = jitted

        def lower(self, *args):
            compiled = self.jitted.lower(*args).compile()

            def dispatch(*a):
                events.append("dispatch")
                return compiled(*a)

            return SimpleNamespace(compile=lambda: dispatch)

    def check(*args):
        events.append("check")
        return real_host_metrics(*args)

    monkeypatch.setattr(trainer, "step_function",
                        lambda c, e: RecordingStep(real_step_function(c, e)))
    monkeypatch.setattr(trainer, "_host_metrics", check)
    cfg = tiny_config(**{"train.num_steps": 3, "train.checkpoint_every": 100,
                         "train.async_checkpoints": False})
    out = trainer.train(cfg, tmp_path, jax.devices()[:1])
    assert out["step"] == 3
    assert events == ["dispatch", "check"] * 3


def test_workdir_of_another_config_is_refused(tmp_path):
    cfg = tiny_config(**{"train.num_steps": 2, "train.async_checkpoints": False})
    trainer.train(cfg, tmp_path)
    other = tiny_config(**{"train.num_steps": 2})
    other.model.spec.hidden_size = 64
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"(?s)hidden_size.*new --workdir"):
        trainer.set_up(other, tmp_path)


def test_config_validation_names_the_field():
    cfg = tiny_config()
    cfg.diffusion.objective = "l_simple"
    with pytest.raises(ValueError, match=r"diffusion\.objective='l_simple'"):
        config_lib.validate(cfg)
    cfg = tiny_config(**{"train.global_batch_size": 12})
    with pytest.raises(ValueError, match=r"global_batch_size=12.*8 devices"):
        config_lib.check_batch(cfg, 8, 8)
    with pytest.raises(ValueError, match=r"mesh\.data=3"):
        mesh_lib.make_mesh(3, 1)


def test_learned_variance_term_is_finite_and_non_negative():
    cfg = tiny_config(**{"model.learn_sigma": True, "diffusion.schedule": "ddpm_linear",
                         "diffusion.objective": "ddpm_simple", "diffusion.timesteps": 1000})
    info = dataset_info(cfg.data)
    model, params = dm.build(cfg, info, 0)
    rng = np.random.default_rng(2)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (8, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, (8,)), jnp.int32)}
    loss, aux = model.loss(params, batch, jax.random.key(0))
    assert np.isfinite(float(loss)) and float(aux["terms"]["vlb_loss"]) >= 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_the_single_process_run(tmp_path):
    """2 local processes × 4 virtual devices (jax.distributed on 127.0.0.1), each reading its own
    half of the data, end where one process with 8 devices feeding the same global batches does."""
    steps, port = 3, _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(4),
           "PYTHONUNBUFFERED": "1"}
    extra = [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             "--config.distributed.num_processes=2", "--config.train.checkpoint_every=3",
             "--config.train.async_checkpoints=False"]
    commands = [_cli(tmp_path, steps, [*extra, f"--config.distributed.process_id={i}"])
                for i in range(2)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in commands]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)

    # Reference: one process, 8 devices, global batch = [host 0's local batch, host 1's].
    _, saved = _final_params(tmp_path)
    from ml_collections import ConfigDict

    cfg = ConfigDict(saved)
    info = dataset_info(cfg.data)
    tx, lr = st.make_optimizer(cfg.optim, cfg.train.num_steps)
    mesh = mesh_lib.make_mesh(-1, 1)
    model, state, sh = st.create_state(
        lambda: dm.build(cfg, info, cfg.seed), tx, tuple(cfg.optim.ema_decays), cfg.seed, mesh)
    step_fn = jit_train_step(model, tx, lr, tuple(cfg.optim.ema_decays), 1, sh, mesh)
    from vdm_jax.data import train_iterator

    hosts = [train_iterator(cfg.data, global_batch_size=cfg.train.global_batch_size,
                            seed=cfg.seed, process_index=i, process_count=2) for i in range(2)]
    for i in range(steps):
        local = [next(h) for h in hosts]
        batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
        batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
        state, _ = step_fn(state, batch, st.step_rng(state["rng"], i))
    step, params = _restore_raw(tmp_path, saved)
    assert step == steps
    for a, b in zip(_flat(params), _flat(state["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))
