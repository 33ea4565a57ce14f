"""Benchmarks: smoke tests of benchmarks/{train_step,sampling,scaling,vs_pytorch,trainer_speed}.py
on a tiny config (they run and write JSON with the expected keys; no timing is checked), the FSDP
memory property: per-device parameter + optimizer bytes at N devices ≤ 1.1 × bytes(1) / N for
N = 2, 4, 8, and (with a Python that has torch) that the PyTorch DiT of benchmarks/torch_dit.py
computes vdm_jax's DiT. Runs on the 8 virtual CPU devices of tests/conftest.py; the worker
processes of vs_pytorch and trainer_speed get the trainer's own host defaults."""

import argparse
import importlib
import json
import math
import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAGS

from benchmarks import cli_args
from vdm_jax import model as dm
from vdm_jax.nn.cost import model_cost
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import state as st

ROOT = Path(__file__).resolve().parent.parent
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


def test_train_step_benchmark_rows_per_scan_and_remat(tmp_path):
    """--scan_layers/--remat lists: one row per combination from the same run, in order; with
    --rounds 2 each is timed twice, and the scanned and unrolled steps train alike."""
    result = _load("train_step").main(
        [*TINY_ARGS, "--batch", "4", "--steps", "1", "--warmup", "0", "--peak_size", "0",
         "--devices", "1", "--scan_layers", "false,true", "--remat", "full", "--rounds", "2",
         "--out", str(tmp_path / "t.json")])
    rows = result["results"]
    assert [(r["scan_layers"], r["remat"]) for r in rows] == [(False, "full"), (True, "full")]
    for r in rows:
        assert r["step_time"]["count"] == 2 and len(r["round_median_ms"]) == 2
    # The same initial state, data and keys: after 2 steps the losses agree.
    assert rows[1]["final_loss"] == pytest.approx(rows[0]["final_loss"], rel=1e-5)
    with pytest.raises(SystemExit):
        _load("train_step").main([*TINY_ARGS, "--remat", "sometimes"])


def test_sampling_benchmark(tmp_path):
    out = tmp_path / "sampling.json"
    result = _load("sampling").main(
        [*TINY_ARGS, "--batch", "2", "--samplers", "ddim,heun,dpm_solver_2m,dopri5",
         "--num_steps", "2", "--guidance", "1,3", "--steps", "1", "--warmup", "0",
         "--peak_runs", "1", "--out", str(out)])
    rows = _check_json(out, result)
    got = {(r["sampler"], r["guidance_scale"]): r for r in rows}
    assert len(got) == 8
    for (sampler, w), r in got.items():
        # dopri5 measures its count per run: 2 + 6 per attempted step
        nfe = {"heun": 3, "dopri5": r["nfe"]}.get(sampler, 2)
        assert r["nfe"] == nfe == r["nfe_per_run"][0] and r["guided"] == (w != 1)
        assert sampler != "dopri5" or (nfe >= 8 and (nfe - 2) % 6 == 0)
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


# ---------------------------------------------------------------------- vs PyTorch, trainer speed
# The PyTorch side needs a Python with torch (never a vdm_jax dependency; CI has none): set
# VDM_TORCH_PYTHON to one (e.g. /work/refenv/bin/python) to run those cases, else they skip.
TORCH_PYTHON = os.environ.get("VDM_TORCH_PYTHON")
needs_torch = pytest.mark.skipif(not TORCH_PYTHON, reason="VDM_TORCH_PYTHON (a Python with "
                                 "torch) is not set")
VS_ARGS = ["--model", TINY, "--input_size", "8", "--num_classes", "10", "--batch", "4",
           "--sample_batch", "4", "--num_steps", "2", "--guidance", "3", "--rounds", "2",
           "--steps", "2", "--warmup", "1", "--threads", "1"]


def _check_vs_rows(result, sides, rounds=2):
    rows = result["results"]
    assert [(r["task"], r["guidance"]) for r in rows] == [("train", 1.0), ("sample DDIM", 3.0)]
    for r, raw in zip(rows, result["raw"], strict=True):
        assert len(raw["rounds"]) == rounds
        for side in sides:
            times = r[f"{side}_all_s"]
            assert len(times) == rounds * (2 if r["task"] == "train" else 1) and min(times) > 0
            # the per-process times are kept to 4 significant digits, the median exactly
            assert r[f"{side}_s"] == pytest.approx(float(np.median(times)), rel=1e-3)
            for rnd in raw["rounds"]:
                assert rnd[side]["load_before"] is not None
        # alternating order: round 0 runs the sides as given, round 1 reversed
        assert [list(rnd) for rnd in raw["rounds"]] == [sides, sides[::-1]][:rounds]
    env = result["environment"]
    assert env["threads"] == 1 and env["command"].startswith("python -m benchmarks.vs_pytorch")
    return rows


@pytest.fixture
def trainer_env(monkeypatch):
    """Worker processes with the trainer's own host defaults (not this session's 8 devices),
    compiling as cheaply as the rest of the suite (timings here are not figures)."""
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_FLAGS)


def test_vs_pytorch_jax_side(tmp_path, trainer_env):
    out = tmp_path / "vs.json"
    result = _load("vs_pytorch").main([*VS_ARGS, "--sides", "jax", "--rounds", "1",
                                       "--out", str(out)])
    rows = _check_vs_rows(result, ["jax"], rounds=1)
    assert json.loads(out.read_text())["results"][0]["jax_s"] == rows[0]["jax_s"]
    assert all(r.get("ratio") is None for r in rows)
    jax_version = f"jax {jax.__version__}"
    assert jax_version in result["environment"]["versions"]


@needs_torch
def test_vs_pytorch_both_sides(tmp_path, trainer_env):
    result = _load("vs_pytorch").main([*VS_ARGS, "--torch_python", TORCH_PYTHON])
    rows = _check_vs_rows(result, ["jax", "torch"])
    for r in rows:
        assert r["ratio"] == pytest.approx(r["torch_s"] / r["jax_s"])
        assert len(r["round_ratios"]) == 2
    assert any(v.startswith("torch ") for v in result["environment"]["versions"])


@needs_torch
def test_torch_dit_is_vdm_jax_dit(tmp_path):
    """benchmarks/torch_dit.py computes vdm_jax's DiT function: random weights (every tensor
    non-zero) saved from the PyTorch model load through vdm_jax.importers.dit, and both give the
    same ε̂ on the same inputs (t: the PyTorch model's integer step s is t = (s + 1)/1000)."""
    script = f"""
import numpy as np, torch
from benchmarks import torch_dit
torch.manual_seed(0)
m = torch_dit.DiT(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2,
                  num_heads=2, num_classes=10, learn_sigma=True)
with torch.no_grad():
    for p in m.parameters():
        if p.requires_grad:
            p.normal_(0, 0.1)
x = torch.randn(3, 4, 8, 8); s = torch.tensor([0, 500, 999]); y = torch.tensor([1, 10, 3])
out = m(x, s, y).detach().numpy()
np.savez("{tmp_path}/t.npz", out=out, x=x.numpy(), s=s.numpy(), y=y.numpy(),
         **{{"sd/" + k: v.numpy() for k, v in m.state_dict().items()}})
"""
    subprocess.run([TORCH_PYTHON, "-c", script], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    from flax import nnx

    from vdm_jax.importers.dit import import_dit

    f = np.load(tmp_path / "t.npz")
    imported = import_dit({k[3:]: f[k] for k in f.files if k.startswith("sd/")}, format="dit",
                          num_heads=2)
    net = imported.build()
    nnx.update(net, imported.params)
    out = net(f["x"].transpose(0, 2, 3, 1), (f["s"] + 1) / 1000.0, f["y"].astype(np.int32))
    ref = f["out"].transpose(0, 2, 3, 1)  # (B, H, W, 2C)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5 * np.abs(ref).max())


def test_trainer_speed(tmp_path, trainer_env):
    """benchmarks/trainer_speed.py runs launch/train.py on synthetic data and the train-step
    benchmark in alternating processes and compares their step times (not timed here)."""
    out = tmp_path / "speed.json"
    spec = TINY.replace('"', "'")
    result = _load("trainer_speed").main([
        "--override", f"model.spec={spec}", "--override", "data.image_size=8",
        "--override", "data.synthetic_classes=10", "--model", TINY, "--input_size", "8",
        "--num_classes", "10", "--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "1",
        "--out", str(out)])
    (r,) = result["results"]
    assert len(r["trainer_all_s"]) == 2 and len(r["benchmark_all_s"]) == 2
    assert min(r["trainer_all_s"] + r["benchmark_all_s"]) > 0
    assert r["ratio"] == pytest.approx(r["trainer_s"] / r["benchmark_s"])
    assert r["within_5pct"] == (abs(r["ratio"] - 1) <= 0.05)
    assert json.loads(out.read_text())["results"][0]["ratio"] == pytest.approx(r["ratio"])
    raw = result["raw"]
    assert "launch/train.py" in raw[0]["trainer"]["command"]
    assert "benchmarks.train_step" in raw[0]["benchmark"]["command"]
