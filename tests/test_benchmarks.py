"""Benchmarks: smoke tests of benchmarks/{train_step,sampling,scaling}.py on a tiny config (they
run and write JSON with the expected keys; no timing is checked), and the FSDP memory property:
per-device parameter + optimizer bytes at N devices ≤ 1.1 × bytes(1) / N for N = 2, 4, 8.
Runs on the 8 virtual CPU devices of tests/conftest.py."""

import argparse
import importlib
import json
import math

import jax
import pytest

from benchmarks import cli_args
from vdm_jax import model as dm
from vdm_jax.nn.cost import model_cost
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import state as st

TINY = '{"family": "dit", "depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2}'
TINY_ARGS = ["--model", TINY, "--input_size", "8", "--in_channels", "4", "--num_classes", "10",
             "--peak_size", "128", "--host_malloc", "default"]


def _load(name):
    return importlib.import_module(f"benchmarks.{name}")


def _check_json(out, result):
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=float))
    env = result["environment"]
    for key in ("date", "backend", "device_kind", "jax_version", "command", "load_avg_1_5_15"):
        assert key in env
    return result["results"]


@pytest.mark.parametrize("devices", [1, 2])
def test_train_step_benchmark(tmp_path, devices):
    out = tmp_path / "train_step.json"
    result = _load("train_step").main(
        [*TINY_ARGS, "--batch", "4", "--dtype", "float32", "--steps", "2", "--warmup", "1",
         "--peak_runs", "2", "--devices", str(devices), "--out", str(out)])
    rows = _check_json(out, result)
    assert [(r["batch"], r["dtype"], r["devices"]) for r in rows] == [(4, "float32", devices)]
    flops = model_cost(json.loads(TINY), input_size=8, in_channels=4, num_classes=10)["flops"]
    for r in rows:
        assert r["step_time"]["count"] == 2 and r["step_ms"] > 0 and r["images_per_s"] > 0
        assert r["compile_s"] > 0 and r["final_loss"] == r["final_loss"]  # not NaN
        assert r["train_flops_per_step"] == pytest.approx(3 * flops * r["batch"])
        assert r["matmul_peak"]["size"] == 128 and r["matmul_peak"]["time"]["count"] == 2
        # The peak is one 128×128 matmul on each device at once.
        assert r["matmul_peak"]["devices"] == devices
        assert r["matmul_peak"]["flops"] == 2 * 128**3 * devices
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"])
        mem = r["memory"]
        assert mem is None or mem["peak_bytes"] >= mem["argument_size"] > 0


def test_sampling_benchmark(tmp_path):
    out = tmp_path / "sampling.json"
    result = _load("sampling").main(
        [*TINY_ARGS, "--batch", "2", "--samplers", "ddim,heun,dpm_solver_2m", "--num_steps", "2",
         "--guidance", "1,3", "--steps", "1", "--warmup", "0", "--peak_runs", "1",
         "--out", str(out)])
    rows = _check_json(out, result)
    got = {(r["sampler"], r["guidance_scale"]): r for r in rows}
    assert len(got) == 6
    for (sampler, w), r in got.items():
        nfe = 3 if sampler == "heun" else 2
        assert r["nfe"] == nfe and r["guided"] == (w != 1)
        assert r["forward_passes_per_image"] == nfe * (2 if w != 1 else 1)
        assert r["images_per_s"] > 0 and r["compile_s"] > 0 and r["mfu"] > 0


def test_scaling_benchmark(tmp_path):
    out = tmp_path / "scaling.json"
    result = _load("scaling").main(
        [*TINY_ARGS, "--batch", "8", "--devices", "2", "--steps", "1", "--warmup", "0",
         "--out", str(out)])
    (r,) = _check_json(out, result)
    assert r["devices"] == 2 and r["step_ms"] > 0 and r["images_per_s"] > 0
    assert 0 < r["param_opt_bytes"] < r["param_opt_bytes_total"] and r["ema_bytes"] > 0
    assert r["param_opt_bytes_compiled"] == r["param_opt_bytes"]
    # Without a 1-device row the ratio is against the unsharded total.
    assert r["param_opt_ratio"] == r["param_opt_bytes"] * 2 / r["param_opt_bytes_total"]
    assert "fsdp_ok" in r and "step_memory" in r


def test_fsdp_memory_per_device_shrinks_as_one_over_n():
    """Parameters + AdamW state, measured on the real sharded train state (addressable shards)
    and by compiled memory analysis, at N = 1, 2, 4, 8 devices: bytes(N) ≤ 1.1 × bytes(1) / N."""
    scaling = _load("scaling")
    args = scaling.argparse.Namespace(
        model={"family": "dit", "depth": 2, "hidden_size": 128, "num_heads": 4,
               "patch_size": 2},
        input_size=8, in_channels=4, num_classes=10, learn_sigma=False)
    measured = {}
    for n in (1, 2, 4, 8):
        s = scaling.fsdp_state(args, n, "float32", 8)
        measured[n] = scaling.state_memory(s)
        if n > 1:  # the big kernels really are split over the fsdp axis
            kernel = s["state"]["params"]["denoiser"]["blocks"][0]["mlp"]["fc1"]["kernel"]
            assert kernel.sharding.spec[0] == "fsdp"
            assert kernel.addressable_shards[0].data.shape == (128 // n, 512)
    one = measured[1]
    assert one["param_opt_bytes"] == one["param_opt_bytes_total"]  # N = 1 holds everything
    assert one["param_opt_bytes_compiled"] == one["param_opt_bytes"]
    for n in (2, 4, 8):
        for key in ("param_opt_bytes", "param_opt_bytes_compiled"):
            assert measured[n][key] <= 1.1 * one[key] / n, (n, key, measured[n][key], one[key])
        assert measured[n]["ema_bytes"] <= 1.1 * one["ema_bytes"] / n


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-XL/2"])
def test_fsdp_memory_registry_models(name):
    """The same bound for the registry sizes, from the state's shardings (shard shapes of the
    abstract state, nothing allocated): parameters + AdamW state per device at N = 2, 4, 8."""
    args = argparse.Namespace(model=name, input_size=32, in_channels=4, num_classes=1000,
                              learn_sigma=True)
    cfg = cli_args.make_config(args, "float32", 8)
    info = cli_args.data_spec(args)
    tx, _ = st.make_optimizer(cfg.optim, 10)
    holder = {}

    def params_only():
        holder["model"], params = dm.build(cfg, info, 0)
        return params

    abstract = jax.eval_shape(params_only)
    opt = jax.eval_shape(tx.init, abstract)

    def per_device(n):
        mesh = mesh_lib.make_mesh(1, n, jax.devices()[:n])
        sh = st.state_shardings(holder["model"], abstract, tx, (0.9999,), mesh)
        total = 0
        for tree, shardings in ((abstract, sh["params"]), (opt, sh["opt_state"])):
            for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
                total += math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
        return total

    one = per_device(1)
    for n in (2, 4, 8):
        assert per_device(n) <= 1.1 * one / n, (name, n, per_device(n), one)
