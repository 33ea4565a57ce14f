"""Ahead-of-time TPU compiles (vdm_jax.pipelines.compile, launch/compile.py) of a tiny DiT for a
4-chip topology, checked against closed forms; the hybrid mesh over two slices; libtpu's host
settings (vdm_jax.parallel.host.tpu_settings). Needs libtpu (the test extra installs it on Linux
x86-64); skipped with the reason elsewhere."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vdm_jax.parallel import host

ROOT = Path(__file__).resolve().parents[1]
requires_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (the test extra installs it on Linux x86-64 only): "
           "no TPU topology to compile for")
TOPOLOGY = "v5p:2x2x1"  # 4 chips, one device each (megacore)
FLOPS_TOL = 0.05


def tiny_config():
    """A 1-block DiT (width 128, 64 tokens) on synthetic 16×16×4 data, batch 32."""
    from vdm_jax import config as config_lib

    c = config_lib.load(str(ROOT / "configs/synthetic_dit.py"), [])
    c.data.image_size = 16
    c.model.spec = dict(family="dit", depth=1, hidden_size=128, num_heads=2, patch_size=2)
    c.train.global_batch_size = 32
    c.sample.num_steps = 2
    c.sample.guidance_scale = 2.0  # guided: each evaluation runs 2B images
    return c


@pytest.fixture(scope="module")
def reports():
    """Reports of the tiny config compiled for v5p:2x2x1: FSDP over the 4 chips (train step and
    sampler), replicated state (data = 4), and FSDP inside each of two slices."""
    from vdm_jax.pipelines import compile as aot_compile

    c = tiny_config()
    fsdp = copy.deepcopy(c)
    fsdp.mesh.fsdp = 4
    out = {"fsdp": aot_compile.compile_programs(fsdp, TOPOLOGY, sample_batch=32)}
    out["replicated"] = aot_compile.compile_programs(c, TOPOLOGY, sample_batch=None)
    out["two_slices"] = aot_compile.compile_programs(fsdp, TOPOLOGY, num_slices=2,
                                                     sample_batch=None)
    return out


@requires_libtpu
def test_train_step_memory_matches_the_shardings(reports):
    """Arguments per chip = the state's and batch's shards under the trainer's shardings, at
    most padded to whole TPU tiles (8×128 32-bit elements); FSDP over 4 chips holds about a
    quarter of the replicated state, and every step fits."""
    fsdp, repl = reports["fsdp"]["train_step"], reports["replicated"]["train_step"]
    for r in (fsdp, repl):
        arg, closed = r["memory"]["argument_size"], r["state_and_batch_bytes_per_chip"]
        assert closed <= arg <= r["state_and_batch_tiled_bytes_per_chip"], (arg, closed)
        assert r["fits"]
    # Replicated: the whole state (plus a quarter of the batch) on every chip.
    assert repl["state_bytes"] <= repl["memory"]["argument_size"] <= 1.1 * repl["state_bytes"] + (
        32 * 16 * 16 * 4 * 4)
    # FSDP: the state ÷ 4, but for the few leaves no dimension of which 4 divides.
    assert fsdp["memory"]["argument_size"] < 0.35 * repl["memory"]["argument_size"]
    assert fsdp["mesh"] == {"data": 1, "fsdp": 4} and repl["mesh"] == {"data": 4, "fsdp": 1}


@requires_libtpu
def test_donated_state_is_aliased(reports):
    """The old state is donated: its buffers are reused for the new state (alias ≈ the state's
    shard, at least its parameters, moments and EMA)."""
    r = reports["fsdp"]["train_step"]
    state_shard = r["state_and_batch_bytes_per_chip"] - 32 * (16 * 16 * 4 * 4 + 4) // 4
    assert 0.9 * state_shard <= r["memory"]["alias_size"] <= 1.1 * r["memory"]["argument_size"]


@requires_libtpu
def test_flops_match_the_analytic_cost(reports):
    """XLA's FLOPs per chip = 3 × the forward FLOPs of nn/cost.py × B / chips (train) and
    2B × forward / chips per guided sampler step, within 5%."""
    from vdm_jax.nn.cost import model_cost

    fwd = model_cost(tiny_config().model.spec.to_dict(), input_size=16, in_channels=4,
                     num_classes=1000)["flops"]
    train = reports["fsdp"]["train_step"]
    assert train["analytic_flops_per_chip"] == pytest.approx(3 * fwd * 32 / 4)
    assert abs(train["xla_flops_per_chip"] / (3 * fwd * 32 / 4) - 1) <= FLOPS_TOL
    sampler = reports["fsdp"]["sampler"]
    assert sampler["guided"] and sampler["loop_trips"] == 2
    assert abs(sampler["xla_flops_per_chip"] / (fwd * 2 * 32 / 4) - 1) <= FLOPS_TOL
    assert train["roofline_s"] == pytest.approx(3 * fwd * 32 / 4 / 459e12)


@requires_libtpu
def test_two_slices_hybrid_mesh(reports):
    """Two slices: 8 chips, data parallel across the slices, FSDP inside each: the same shards
    per chip as one slice with FSDP over 4."""
    two, one = reports["two_slices"]["train_step"], reports["fsdp"]["train_step"]
    assert reports["two_slices"]["chips"] == 8
    assert two["mesh"] == {"data": 2, "fsdp": 4}
    assert two["memory"]["argument_size"] == pytest.approx(one["memory"]["argument_size"],
                                                           rel=0.02)


@requires_libtpu
def test_hybrid_mesh_keeps_fsdp_inside_a_slice():
    from vdm_jax.parallel import aot
    from vdm_jax.parallel import mesh as mesh_lib

    devices = aot.topology_devices(TOPOLOGY, num_slices=2)
    assert sorted({d.slice_index for d in devices}) == [0, 1]
    mesh = mesh_lib.make_mesh(-1, 4, devices)
    for row in mesh.devices:  # one data index: the 4 FSDP devices
        assert len({d.slice_index for d in row}) == 1
    assert {d.slice_index for d in mesh.devices[:, 0]} == {0, 1}
    with pytest.raises(ValueError, match="FSDP stays inside a slice"):
        mesh_lib.make_mesh(1, 8, devices)


@requires_libtpu
def test_bad_input_is_one_line():
    from vdm_jax.pipelines import compile as aot_compile

    c = tiny_config()
    with pytest.raises(ValueError, match="unknown TPU topology 'v9x:2x2'"):
        aot_compile.compile_programs(c, "v9x:2x2")
    with pytest.raises(ValueError, match="v5p slices have 3 axes"):
        aot_compile.compile_programs(c, "v5p:2x2")
    bad = copy.deepcopy(c)
    bad.train.global_batch_size = 30
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        aot_compile.compile_programs(bad, TOPOLOGY)
    bad = copy.deepcopy(c)
    bad.mesh.fsdp = 3
    with pytest.raises(ValueError, match=r"mesh\.data=-1, mesh\.fsdp=3"):
        aot_compile.compile_programs(bad, TOPOLOGY)
    result = subprocess.run(
        [sys.executable, "launch/compile.py", "--config=configs/synthetic_dit.py",
         "--topology=v5q:2x2x1"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: unknown TPU topology 'v5q:2x2x1'")


def test_missing_libtpu_names_the_pip_command(monkeypatch):
    import jax

    from vdm_jax.parallel import aot

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=rf'pip install "jax\[tpu\]=={jax.__version__}"'):
        aot.topology_devices(TOPOLOGY)


def test_tpu_settings_leave_tpu_hosts_and_user_values_alone(monkeypatch):
    monkeypatch.setattr(host, "_installed", lambda name: True)
    monkeypatch.setattr(host, "has_tpu_chips", lambda: False)
    env = host.tpu_settings({})
    assert env["JAX_PLATFORMS"].split(",")[-1] == "cpu" and "tpu" not in env["JAX_PLATFORMS"]
    assert env["ALLOW_MULTIPLE_LIBTPU_LOAD"] == "1"
    assert "JAX_PLATFORMS" not in host.tpu_settings({"JAX_PLATFORMS": ""})
    monkeypatch.setattr(host, "has_tpu_chips", lambda: True)
    assert host.tpu_settings({}) == {}
    monkeypatch.setattr(host, "has_tpu_chips", lambda: False)
    monkeypatch.setattr(host, "_installed", lambda name: False)
    assert host.tpu_settings({}) == {}


@requires_libtpu
def test_libtpu_processes_run_side_by_side_silently(tmp_path):
    """With libtpu installed, two processes that load it (each listing a TPU topology) and one
    ordinary JAX process, all at once, with the host settings and no others: all succeed and
    print nothing on stderr (no TPU_WORKER_HOSTNAMES errors, no lockfile failure)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in host.LIBTPU_QUIET_ENV and k != "JAX_PLATFORMS"}
    clean["PYTHONPATH"] = str(ROOT)
    setup = "from vdm_jax.parallel import host; host.configure(); import jax; "
    aot_code = setup + ("from vdm_jax.parallel import aot; import time; "
                        "d = aot.topology_devices('v5e:2x2'); time.sleep(3); print(len(d))")
    plain = setup + "import time; x = jax.numpy.ones(3).sum(); time.sleep(3); print(int(x))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=clean, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for code in (aot_code, aot_code, plain)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [o[0].strip() for o in outs] == ["4", "4", "3"]
    assert [o[1] for o in outs] == ["", "", ""]
