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
# The suite's persistent compilation cache (conftest.py) stores the TPU executables but cannot
# load them without a TPU client: JAX warns and compiles afresh, which is what is measured here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Error reading persistent compilation cache entry:UserWarning")
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


def compiled(fsdp: int, num_slices: int = 1, sample_batch: int | None = None) -> dict:
    """The tiny config compiled for `num_slices` slices of v5p:2x2x1 with mesh.fsdp = fsdp
    (each test compiles its own: xdist spreads them over its workers)."""
    from vdm_jax.pipelines import compile as aot_compile

    c = tiny_config()
    c.mesh.fsdp = fsdp
    return aot_compile.compile_programs(c, TOPOLOGY, num_slices=num_slices,
                                        sample_batch=sample_batch)


def check_arguments(r: dict, chips: int = 4) -> None:
    """Arguments per chip = the state's and batch's shards under the trainer's shardings, at
    most padded to whole TPU tiles (8×128 32-bit elements); the donated state is aliased."""
    arg, closed = r["memory"]["argument_size"], r["state_and_batch_bytes_per_chip"]
    assert closed <= arg <= r["state_and_batch_tiled_bytes_per_chip"], (arg, closed)
    batch_shard = 32 * (16 * 16 * 4 * 4 + 4) // chips  # images float32 + labels int32
    assert 0.9 * (closed - batch_shard) <= r["memory"]["alias_size"] <= arg
    # The peak is libtpu's heap peak (what its RESOURCE_EXHAUSTED check compares), within the
    # parts' sum; the temporaries at the peak are what it holds beyond arguments and outputs.
    mem = r["memory"]
    assert r["peak_source"] == "libtpu heap"
    assert arg <= r["peak_bytes"] == mem["reported_peak_bytes"] <= mem["peak_bytes"]
    assert r["temp_at_peak_bytes"] == (r["peak_bytes"] - arg - mem["output_size"]
                                       + mem["alias_size"]) <= mem["temp_size"]
    assert r["fits"]


@requires_libtpu
def test_fsdp_train_step_and_sampler():
    """FSDP over the 4 chips: about a quarter of the state per chip (the few leaves that no
    dimension of which 4 divides stay whole); XLA's FLOPs per chip = 3 × the forward FLOPs of
    nn/cost.py × B / chips (train step) and 2B × forward / chips per guided sampler step,
    within 5%; the roofline bound is the step's FLOPs at v5p's bf16 peak."""
    from vdm_jax.nn.cost import model_cost

    report = compiled(fsdp=4, sample_batch=32)
    train = report["train_step"]
    assert train["mesh"] == {"data": 1, "fsdp": 4}
    check_arguments(train)
    assert train["memory"]["argument_size"] < 0.3 * train["state_bytes"]
    fwd = model_cost(tiny_config().model.spec.to_dict(), input_size=16, in_channels=4,
                     num_classes=1000)["flops"]
    assert train["analytic_flops_per_chip"] == pytest.approx(3 * fwd * 32 / 4)
    assert abs(train["xla_flops_per_chip"] / (3 * fwd * 32 / 4) - 1) <= FLOPS_TOL
    assert train["roofline_s"] == pytest.approx(3 * fwd * 32 / 4 / 459e12)
    sampler = report["sampler"]
    assert sampler["mesh"] == {"data": 4, "fsdp": 1} and sampler["fits"]
    assert sampler["guided"] and sampler["loop_trips"] == 2
    assert abs(sampler["xla_flops_per_chip"] / (fwd * 2 * 32 / 4) - 1) <= FLOPS_TOL


@requires_libtpu
def test_replicated_train_step_scanned_and_unrolled():
    """data = 4, fsdp = 1: the whole state on every chip (and a quarter of the batch), for a
    2-block scanned step and, from the same run (--compare_unrolled), its unrolled twin: the
    same state, FLOPs per step within 5%, and the comparison line. A config without
    scan_layers is refused before any compile."""
    from vdm_jax.pipelines import compile as aot_compile

    c = tiny_config()
    c.model.spec = dict(family="dit", depth=2, hidden_size=128, num_heads=2, patch_size=2)
    c.model.scan_layers = True
    c.mesh.fsdp = 1
    report = aot_compile.compile_programs(c, TOPOLOGY, sample_batch=None, compare_unrolled=True)
    scanned, unrolled = report["train_step"], report["train_step_unrolled"]
    for train in (scanned, unrolled):
        assert train["mesh"] == {"data": 4, "fsdp": 1}
        check_arguments(train)
        assert train["memory"]["argument_size"] >= train["state_bytes"]
        assert train["compile_s"] > 0
    assert scanned["state_bytes"] == unrolled["state_bytes"]
    assert abs(scanned["xla_flops_per_chip"] / unrolled["xla_flops_per_chip"] - 1) <= FLOPS_TOL
    assert "scan over layers: compiled" in aot_compile.format_report(report)
    c.model.scan_layers = False
    with pytest.raises(ValueError, match=r"needs model\.scan_layers=True"):
        aot_compile.compile_programs(c, TOPOLOGY, sample_batch=None, compare_unrolled=True)


@requires_libtpu
def test_two_slices_hybrid_mesh():
    """Two slices: 8 chips, data parallel across the slices, FSDP over the 4 chips of each: the
    shards per chip of one slice with FSDP over 4."""
    report = compiled(fsdp=4, num_slices=2)
    train = report["train_step"]
    assert report["chips"] == 8 and train["mesh"] == {"data": 2, "fsdp": 4}
    check_arguments(train, chips=8)
    assert train["memory"]["argument_size"] < 0.3 * train["state_bytes"]


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


@pytest.mark.parametrize("kappa, evaluations", [(0.0, 1), (0.5, 2)])
def test_meanflow_train_cost_is_modelled(kappa, evaluations):
    """A MeanFlow config's analytic train step per image is nn/cost.py's meanflow_train_flops
    with its guided target's evaluations (1 with κ = 0, 2 with κ > 0), not 3 × forward."""
    from vdm_jax import config as config_lib
    from vdm_jax.model import build_abstract
    from vdm_jax.nn.cost import meanflow_train_flops, model_cost
    from vdm_jax.pipelines import compile as aot_compile

    c = config_lib.load(str(ROOT / "configs/digits_meanflow.py"), [])
    c.diffusion.objective_kwargs.kappa = kappa
    data = aot_compile.data_spec_of(c)
    model, _ = build_abstract(c, data)
    costs = aot_compile.analytic_flops(c, data, model)
    net = model_cost(c.model.spec.to_dict(), input_size=data.image_shape[:2],
                     in_channels=data.image_shape[2], num_classes=model.num_classes)
    assert costs["network"] == net["flops"]
    assert costs["train"] == meanflow_train_flops(net, evaluations)
    assert costs["train"] == (4 + evaluations) * net["flops"] + 2 * net["attention_macs"]


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


def test_find_max_batch_bisects_on_libtpu_heap_peak(monkeypatch):
    """find_max_batch's search over fake compiles (no libtpu needed): the peak grows linearly
    with the batch, libtpu refuses batches past its own limit; the result is the largest
    multiple of the unit whose peak fits, refusals count as not fitting, and the number of
    compiles is about 2·log2(max / unit)."""
    from vdm_jax.parallel import aot
    from vdm_jax.pipelines import compile as aot_compile

    base, per_image, refused_above = 10 * 2**30, 0.3 * 2**30, 15.75 * 2**30
    batches = []

    def fake_compile(config, devices, chip, count_unrolled=True):
        b = config.train.global_batch_size
        batches.append(b)
        peak = base + per_image * b
        if peak > refused_above:
            return {"peak_bytes": None, "peak_source": None, "out_of_memory":
                    "RESOURCE_EXHAUSTED", "fits": False, "compile_s": 0.0}
        return {"peak_bytes": int(peak), "peak_source": "libtpu heap", "out_of_memory": None,
                "fits": peak <= 16 * 2**30, "compile_s": 0.0}

    monkeypatch.setattr(aot, "topology_devices", lambda topology, num_slices: [object()])
    monkeypatch.setattr(aot_compile, "compile_train_step", fake_compile)
    c = tiny_config()
    result = aot_compile.find_max_batch(c, "v5e:1x1", granularity=1)
    assert result["max_batch"] == 19  # 10 + 0.3·19 = 15.7 ≤ 15.75 < 10 + 0.3·20 (refused)
    assert len(batches) <= 2 * 5 + 1
    assert [t["fits"] for t in result["tries"]] == [b <= 19 for b in batches]
    # A limit below libtpu's: peaks above it do not fit though libtpu compiled them.
    batches.clear()
    result = aot_compile.find_max_batch(c, "v5e:1x1", granularity=2,
                                        hbm_bytes=13 * 2**30)
    assert result["max_batch"] == 10 and all(b % 2 == 0 for b in batches)


@pytest.mark.parametrize("host_temp", [0, 3 * 2**30])
def test_peak_is_libtpus_heap_unless_buffers_go_to_host(host_temp):
    """The peak that decides `fits`: libtpu's own heap peak (peak_memory_in_bytes), lower than
    the parts' sum for a scanned step; with buffers offloaded to host memory libtpu's figure
    adds the host's temporaries to the arguments, so the sum (an upper bound) is reported and
    the program fits because libtpu compiled it (it refuses what its HBM cannot hold)."""
    from types import SimpleNamespace

    from vdm_jax.parallel import aot
    from vdm_jax.pipelines import compile as aot_compile

    gib = 2**30
    analysis = SimpleNamespace(
        argument_size_in_bytes=10 * gib, output_size_in_bytes=10 * gib,
        alias_size_in_bytes=10 * gib, temp_size_in_bytes=7 * gib, generated_code_size_in_bytes=0,
        host_temp_size_in_bytes=host_temp,
        peak_memory_in_bytes=10 * gib + (host_temp or 5 * gib))
    compiled = SimpleNamespace(memory_analysis=lambda: analysis, cost_analysis=lambda: {})
    chip, _ = aot.parse_topology("v5e:1x1")  # 16 GiB
    r = aot_compile._figures(compiled, chip, None, 1, 0.0, 0.0)
    if host_temp:
        assert r["peak_bytes"] == 17 * gib and r["peak_source"].startswith("argument + output")
        assert r["offloaded"] and r["fits"]  # 17 GiB > 16: the bound, not the device's peak
    else:
        assert r["peak_bytes"] == 15 * gib and r["peak_source"] == "libtpu heap"
        assert r["temp_at_peak_bytes"] == 5 * gib and r["fits"]


@requires_libtpu
def test_heun_sampler_counts_two_evaluations_per_step():
    """Heun's loop trip holds its corrector (a lax.cond skips it on the last step): XLA's count
    of one trip is 2 guided evaluations of nn/cost.py's forward (within 5%), 3 trips per chunk,
    and the roofline counts the NFE, 2·3 − 1 = 5 evaluations."""
    from vdm_jax.nn.cost import model_cost
    from vdm_jax.parallel import aot
    from vdm_jax.pipelines import compile as aot_compile

    c = tiny_config()
    c.sample.sampler, c.sample.num_steps = "heun", 3
    chip, _ = aot.parse_topology(TOPOLOGY)
    r = aot_compile.compile_sampler(c, aot.topology_devices(TOPOLOGY, 1), chip, 32)
    fwd = model_cost(c.model.spec.to_dict(), input_size=16, in_channels=4,
                     num_classes=1000)["flops"]
    per_evaluation = fwd * 2 * 32 / 4  # guided: 2B images per evaluation, over 4 chips
    assert r["evaluations_per_trip"] == 2 and r["loop_trips"] == 3 and r["nfe"] == 5
    assert r["analytic_flops_per_chip"] == pytest.approx(2 * per_evaluation)
    assert abs(r["xla_flops_per_chip"] / (2 * per_evaluation) - 1) <= FLOPS_TOL
    assert r["roofline_s"] == pytest.approx(5 * per_evaluation / chip.bf16_flops)
