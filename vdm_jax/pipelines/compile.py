"""Compile, for a TPU topology and on any host, what `launch/train.py` and `launch/sample.py` run.

    report = compile_programs(config, "v5p:2x2x1", num_slices=1, sample_batch=256)
    print(format_report(report))

From shapes alone (nothing is initialized or allocated): the config's model is traced with
`jax.eval_shape` (vdm_jax.training.state.abstract_state), its train state gets the trainer's
FSDP shardings on the config's mesh over the topology's compile-only devices
(vdm_jax.parallel.aot.topology_devices; a hybrid mesh over several slices), and the trainer's
own jitted step (vdm_jax.training.step.config_train_step, which the loop runs: micro-batches,
EMAs, the loss terms' inputs such as REPA's frozen encoder) is lowered on ShapeDtypeStructs of
the state, a global batch and the step's key, then compiled by libtpu. The sampler is
`launch/sample.py`'s program (generation.generate.make_generate_fn with the config's
SamplingSpec) on the sampler's mesh (data parallel over every chip, parameters replicated), for
one chunk of `sample_batch` images.

Figures per chip (XLA's memory and cost analyses of the TPU executable):
    argument / output / alias / temp bytes, and the peak: libtpu's own heap peak
    (`peak_memory_in_bytes`, what libtpu checks when it refuses a program with
    RESOURCE_EXHAUSTED), else argument + output − alias + temp; temporaries at the peak =
    peak − argument − output + alias. Against the chip's HBM (vdm_jax.parallel.aot.CHIPS): fits
    when peak ≤ HBM. (libtpu's temp_size can exceed what its heap holds at once: for a scanned
    DiT-XL/2 step 18.07 GiB against 14.60 GiB, and libtpu compiled that step for one v5e at a
    batch whose sum-based peak was 17.6 GiB, its own 15.70 GiB under the 15.75 GiB it allows.
    A program that offloads to host memory (remat 'offload_dots') reports the sum, an upper
    bound, since libtpu's peak figure for it is arguments + host temporaries, not a device
    peak; it fits when libtpu compiles it: libtpu refuses any program whose device heap
    exceeds the HBM it allows);
    XLA FLOPs: one run of the program, a loop's body counted once (XLA's convention), so a
    train step with k micro-batches reports one micro-batch's gradient and a sampler one step;
    analytic FLOPs of the same unit (nn/cost.py, FLOPs = 2·MACs):
        train:   (3 · F_net + 3 · F_proj + F_enc) · B / (k · n)
                 F_net the network's forward FLOPs per image, F_proj REPA's projector per
                 image (3 Linears per token), F_enc REPA's frozen DINOv2 (forward only) when the
                 features are computed online; B the global batch, n the chips;
                 MeanFlow: ((4 + g) · F_net + A) · B / (k · n), the guided target's g network
                 evaluations, the jvp's primal and tangent, the backward
                 (nn/cost.py meanflow_train_flops; A the attention products' FLOPs);
        sample:  F_net · B_s · (2 if guided else 1) · e / n per loop trip (one sampling
                 step), e = ⌈NFE / steps⌉ its network evaluations (2 for Heun, whose
                 corrector sits behind a lax.cond); the roofline counts NFE evaluations;
    ratio XLA / analytic (the networks' matmuls dominate: within 5% for DiT / SiT);
    roofline: k · analytic train FLOPs per chip ÷ the chip's bf16 peak, no faster step exists;
    compile seconds (lower + compile; the host's load average beside them: a busy host
    inflates them).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from vdm_jax import config as config_lib
from vdm_jax.data import imagenet
from vdm_jax.data.pipeline import dataset_info
from vdm_jax.generation.generate import make_generate_fn
from vdm_jax.model import (
    DataSpec,
    abstract_term_inputs,
    build,
    build_abstract,
    repa_encoder_dim,
    with_compute_dtype,
)
from vdm_jax.nn.cost import dinov2_cost, meanflow_train_flops, model_cost
from vdm_jax.nn.encoders.dinov2 import SIZES as DINOV2_SIZES
from vdm_jax.nn.registry import grid_size, resolve_spec
from vdm_jax.parallel import aot
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import state as state_lib
from vdm_jax.training.step import config_train_step, term_input_shardings

__all__ = ["compile_programs", "compile_train_step", "data_spec_of", "find_max_batch",
           "format_report"]

# The SD-VAE (stabilityai/sd-vae-ft-ema) of the ImageNet latent configs: 8× downsampling,
# 4 latent channels (its config.json's block_out_channels has 4 levels; latent_channels 4).
SD_VAE_FACTOR, SD_VAE_CHANNELS = 8, 4
FLOPS_TOLERANCE = 0.05  # XLA vs analytic


def data_spec_of(config: Mapping[str, Any]) -> DataSpec:
    """The DataSpec a run of `config` trains on, without its data where it can be known: ImageNet
    (pixels, or SD-VAE latents, data.kind='latents'), else the dataset's own info."""
    d = config["data"]
    if d["name"] == "imagenet2012":
        size = int(d["image_size"] or 256)
        pixels = (size, size, 3)
        if d["kind"] == "latents":
            if size % SD_VAE_FACTOR:
                raise ValueError(f"data.image_size={size} is not divisible by the SD-VAE's "
                                 f"downsampling factor {SD_VAE_FACTOR}")
            s = size // SD_VAE_FACTOR
            return DataSpec((s, s, SD_VAE_CHANNELS), imagenet.NUM_CLASSES, imagenet.NUM_LEVELS,
                            pixel_shape=pixels)
        return DataSpec(pixels, imagenet.NUM_CLASSES, imagenet.NUM_LEVELS)
    return DataSpec.from_info(dataset_info(d))


def _checked(config: ConfigDict) -> None:
    """config.validate, less the checks of files that compiling does not read (a latent
    directory, its autoencoder, REPA's encoder weights)."""
    c = copy.deepcopy(config)
    unread = "(not read to compile)"
    if c.data.kind == "latents":
        c.data.latent_dir = c.data.latent_dir or unread
        c.autoencoder.weights = c.autoencoder.weights or unread
    if c.get("repa") is not None and c.repa.enabled:
        c.repa.encoder_path = c.repa.encoder_path or unread
    config_lib.validate(c)


def _sds(shape: tuple[int, ...], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_batch(config: Mapping[str, Any], data: DataSpec, model: Any, batch: int,
                   sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The trainer's global batch as ShapeDtypeStructs: "image" (B, H, W, C) float32 (latents
    for latent data), "label" (B,) int32, and for REPA the clean pixels "pixels" (B, S, S, 3)
    uint8 (online features on latents) or "repa_features" (B, T, D_enc) float16 (stored)."""
    out = {"image": _sds((batch, *data.image_shape), jnp.float32, sharding),
           "label": _sds((batch,), jnp.int32, sharding)}
    repa = _repa_term(model)
    if repa is not None and repa.features == "online" and repa.image_key == "pixels":
        out["pixels"] = _sds((batch, *data.pixel_shape), jnp.uint8, sharding)
    if repa is not None and repa.features == "stored":
        tokens = repa.grid[0] * repa.grid[1]
        out["repa_features"] = _sds((batch, tokens, repa.encoder_dim), jnp.float16, sharding)
    return out


def abstract_inputs(config: Mapping[str, Any], model: Any, mesh: Any) -> dict[str, Any]:
    """The loss terms' non-trained inputs (REPA's frozen encoder with online features) with
    shape-only leaves, sharded as the trainer shards them ({} when no term needs any)."""
    inputs = abstract_term_inputs(config)
    if not inputs:
        return {}
    shardings = term_input_shardings(model, inputs, mesh)
    return jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), inputs, shardings)


def _repa_term(model: Any) -> Any | None:
    """The model's REPA loss term (vdm_jax.model.terms.repa.Repa), or None."""
    return next((t for t in model.terms if t.name == "repa"), None)


def analytic_flops(config: Mapping[str, Any], data: DataSpec, model: Any) -> dict[str, Any]:
    """Forward FLOPs per image of the network, REPA's projector and frozen encoder, and one
    train step's FLOPs per image (nn/cost.py; module docstring)."""
    spec = config["model"]["spec"]
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    h, w, c = data.image_shape
    net = model_cost(spec, input_size=(h, w), in_channels=c, num_classes=model.num_classes,
                     learn_sigma=model.learn_sigma)
    out: dict[str, Any] = {"network": net["flops"], "params": net["params"], "projector": 0.0,
                           "encoder": 0.0}
    rcfg = config.get("repa")
    repa = _repa_term(model)
    if repa is not None:
        d = resolve_spec(spec)["hidden_size"]
        p, e = int(rcfg["projector_dim"]), repa_encoder_dim(rcfg)
        tokens = repa.grid[0] * repa.grid[1]
        out["projector"] = 2.0 * tokens * (d * p + p * p + p * e)
        if repa.features == "online" and rcfg["encoder"] == "dinov2":
            size = rcfg["encoder_size"] or "vitb14"
            hidden, layers, _, _ = DINOV2_SIZES[size]
            gh, gw = grid_size((h, w), resolve_spec(spec)["patch_size"])
            out["encoder"] = dinov2_cost(hidden, layers, image_size=14 * gh)["flops"]
            del gw
    if model.is_meanflow:
        out["train"] = meanflow_train_flops(net, model.objective.target_evaluations)
    else:
        out["train"] = 3 * out["network"] + 3 * out["projector"] + out["encoder"]
    return out


def _lower_compile(fn: Any, args: tuple) -> tuple[Any, float, float]:
    """(compiled, lower seconds, compile seconds); compiled is XLA's message instead when the
    program cannot fit the chip's HBM (libtpu refuses to compile it: RESOURCE_EXHAUSTED)."""
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        compiled = " ".join(str(e).split())
    return compiled, t1 - t0, time.perf_counter() - t1


def _figures(compiled: Any, chip: aot.Chip, analytic: float | None, trips: int | None,
             lower_s: float, compile_s: float) -> dict[str, Any]:
    refused = compiled if isinstance(compiled, str) else None
    mem = {} if refused else aot.memory_stats(compiled) or {}
    flops = None if refused else aot.xla_flops(compiled)
    # libtpu's heap peak where it reports one; the sum of the parts is an upper bound. With
    # buffers offloaded to host memory libtpu's figure is no device peak (it adds the host's
    # temporaries to the arguments): the bound is reported, and the program fits because
    # libtpu compiled it (it refuses any whose device heap exceeds the HBM it allows).
    offloaded = bool(mem.get("host_temp_size"))
    heap = mem.get("reported_peak_bytes") if not offloaded else None
    peak = heap or mem.get("peak_bytes")
    temp_at_peak = (None if peak is None else peak - mem["argument_size"]
                    - mem["output_size"] + mem["alias_size"])
    out = {
        "memory": mem, "hbm_bytes": chip.hbm_bytes, "out_of_memory": refused,
        "peak_bytes": peak, "temp_at_peak_bytes": temp_at_peak,
        "peak_source": None if peak is None else
        "libtpu heap" if heap else "argument + output − alias + temp (an upper bound)",
        "offloaded": offloaded,
        "fits": (False if refused else True if offloaded else None if peak is None
                 else peak <= chip.hbm_bytes),
        "xla_flops_per_chip": flops, "analytic_flops_per_chip": analytic, "loop_trips": trips,
        "flops_ratio": (flops / analytic) if flops and analytic else None,
        "lower_s": lower_s, "compile_s": compile_s,
    }
    out["flops_agree"] = (None if out["flops_ratio"] is None
                          else abs(out["flops_ratio"] - 1.0) <= FLOPS_TOLERANCE)
    return out


def _count_unrolled(out: dict[str, Any], flops: float | None, analytic: float | None) -> None:
    """Replace a scanned program's compiled FLOPs in `out` (`_figures`: one layer counted) by
    `flops`, the unrolled program's lowered count per chip, and compare that with `analytic`."""
    out.update(xla_flops_compiled_per_chip=out["xla_flops_per_chip"], xla_flops_per_chip=flops,
               xla_flops_source="lowered, blocks unrolled",
               flops_ratio=(flops / analytic) if flops and analytic else None)
    out["flops_agree"] = (None if out["flops_ratio"] is None
                          else abs(out["flops_ratio"] - 1.0) <= FLOPS_TOLERANCE)


def _train_program(config: ConfigDict, mesh: Any) -> tuple[Any, tuple, Any, Any, DataSpec]:
    """The trainer's jitted step of `config` on `mesh` and its shape-only arguments (state,
    global batch, key, the loss terms' inputs): (fn, args, model, state, data)."""
    data = data_spec_of(config)
    tx, lr_schedule = state_lib.make_optimizer(config.optim, config.train.num_steps)
    decays = tuple(config.optim.ema_decays)
    model, state, shardings = state_lib.abstract_state(
        lambda: build(config, data, config.seed), tx, decays, config.seed, mesh)
    term_inputs = abstract_inputs(config, model, mesh)
    fn = config_train_step(config, model, tx, lr_schedule, shardings, mesh, term_inputs)
    batch = int(config.train.global_batch_size)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args: tuple = (state, abstract_batch(config, data, model, batch,
                                         mesh_lib.batch_sharding(mesh)),
                   _sds(key.shape, key.dtype, mesh_lib.replicated(mesh)))
    if term_inputs:
        args += (term_inputs,)
    return fn, args, model, state, data


def _unrolled(config: ConfigDict) -> ConfigDict:
    """A copy of `config` with the blocks unrolled (model.scan_layers = False): the scanned
    program's twin, for XLA's FLOP count of every layer and --compare_unrolled."""
    unrolled = ConfigDict(config.to_dict())
    unrolled.model.scan_layers = False
    return unrolled


def unrolled_flops_per_chip(config: ConfigDict, mesh: Any) -> float | None:
    """XLA's FLOPs per chip of one micro-batch trip of the step with the blocks unrolled, from
    the lowered (not compiled) global program's cost analysis, divided by the chips of `mesh`.
    XLA counts a loop's body once, so a scanned step's compiled figure holds one layer of the
    scan: this is the comparable count
    (remat's recomputation included, as lowered)."""
    # libtpu's compile-only client gives no cost analysis of a lowered program, the CPU client
    # does: the same global program lowered on one CPU device, divided over the chips.
    cpu = mesh_lib.make_mesh(1, 1, jax.devices("cpu")[:1])
    fn, args, *_ = _train_program(_unrolled(config), cpu)
    flops = aot.xla_flops(fn.lower(*args))
    return None if flops is None else flops / mesh.size


def compile_train_step(config: ConfigDict, devices: list[Any], chip: aot.Chip,
                       save: str | None = None, count_unrolled: bool = True) -> dict[str, Any]:
    """Compile the trainer's step of `config` for `devices` (module docstring): figures.
    count_unrolled=False keeps a scanned step's compiled FLOPs (one layer counted) instead of
    lowering the unrolled program too (find_max_batch needs the memory only)."""
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    config_lib.check_batch(config, mesh.size, mesh.shape["data"])
    fn, args, model, state, data = _train_program(config, mesh)
    batch = int(config.train.global_batch_size)
    compiled, lower_s, compile_s = _lower_compile(fn, args)
    costs = analytic_flops(config, data, model)
    micro = int(config.train.micro_batches)
    analytic = costs["train"] * batch / micro / mesh.size
    out = _figures(compiled, chip, analytic, micro, lower_s, compile_s)
    if count_unrolled and config.model.get("scan_layers") and not isinstance(compiled, str):
        # The compiled scan counts one layer: compare the unrolled step's lowered count.
        _count_unrolled(out, unrolled_flops_per_chip(config, mesh), analytic)
    params_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state["params"]))
    state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))
    # The closed form of the arguments per chip: every leaf's shard under its sharding.
    leaves = jax.tree.leaves((args[0], args[1]))
    shard_bytes = sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                      for a in leaves)
    tiled = sum(aot.tiled_bytes(a.sharding.shard_shape(a.shape), a.dtype.itemsize)
                for a in leaves)
    out.update(
        program="train_step", mesh=dict(mesh.shape), global_batch=batch, micro_batches=micro,
        params=costs["params"], params_bytes=int(params_bytes), state_bytes=int(state_bytes),
        state_and_batch_bytes_per_chip=int(shard_bytes),
        state_and_batch_tiled_bytes_per_chip=int(tiled),
        forward_flops_per_image=costs["network"], repa_projector_flops_per_image=costs[
            "projector"], repa_encoder_flops_per_image=costs["encoder"],
        train_flops_per_image=costs["train"], step_flops_per_chip=analytic * micro,
        roofline_s=aot.roofline_seconds(analytic * micro, chip),
        scan_layers=config.model.get("scan_layers"), remat=config.model.get("remat"),
    )
    if save and not isinstance(compiled, str):
        _save(compiled, save)
    return out


def _sampler_program(config: ConfigDict, mesh: Any, batch: int) -> tuple[Any, tuple, Any, Any]:
    """`launch/sample.py`'s jitted program of `config.sample` on `mesh` for one chunk of `batch`
    and its shape-only arguments: (fn, args, model, spec)."""
    data = data_spec_of(config)
    model, abstract = build_abstract(config, data)
    shardings = mesh_lib.param_shardings(model.param_specs, abstract, mesh)
    params = jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), abstract, shardings)
    # The network in the sampling precision (config.sample.dtype, else model.dtype).
    spec = config_lib.sampling_spec(config).resolve_dtype(config.model.dtype)
    model = with_compute_dtype(model, config, data, spec.dtype)
    sharding = mesh_lib.batch_sharding(mesh) if batch % mesh.size == 0 else None
    fn = make_generate_fn(model, batch, spec, sharding=sharding)
    key = jax.eval_shape(lambda: jax.random.key(0))
    repl = mesh_lib.replicated(mesh)
    args = (params, _sds((batch,), jnp.int32, sharding or repl), _sds(key.shape, key.dtype, repl))
    return fn, args, model, spec


def compile_sampler(config: ConfigDict, devices: list[Any], chip: aot.Chip, batch: int
                    ) -> dict[str, Any]:
    """Compile `launch/sample.py`'s program of `config.sample` for one chunk of `batch`."""
    mesh = mesh_lib.make_mesh(-1, 1, devices)  # the sampler's mesh (checkpoints.restore)
    fn, args, model, spec = _sampler_program(config, mesh, batch)
    compiled, lower_s, compile_s = _lower_compile(fn, args)
    costs = analytic_flops(config, data_spec_of(config), model)
    guided = spec.guided(model.num_classes)
    per_evaluation = costs["network"] * batch * (2 if guided else 1) / mesh.size
    # One loop trip is one step: Heun's holds its corrector too (behind a lax.cond that skips
    # it on the last step, whose branches XLA's count includes): ⌈NFE / steps⌉ evaluations.
    per_trip = 1 if spec.nfe is None else -(-spec.nfe // spec.num_steps)
    analytic = per_evaluation * per_trip
    trips = None if spec.nfe is None else spec.num_steps
    out = _figures(compiled, chip, analytic, trips, lower_s, compile_s)
    if config.model.get("scan_layers") and not isinstance(compiled, str):
        # As for the train step: the compiled scan counts one layer; count the unrolled program.
        cpu = mesh_lib.make_mesh(1, 1, jax.devices("cpu")[:1])
        u_fn, u_args, *_ = _sampler_program(_unrolled(config), cpu, batch)
        flops = aot.xla_flops(u_fn.lower(*u_args))
        _count_unrolled(out, None if flops is None else flops / mesh.size, analytic)
    out.update(program="sampler", mesh=dict(mesh.shape), batch=batch, sampling=spec.to_dict(),
               guided=guided,
               # An adaptive solver's NFE is known only after sampling: no roofline.
               evaluations_per_trip=per_trip, nfe=spec.nfe,
               roofline_s=None if spec.nfe is None else aot.roofline_seconds(
                   per_evaluation * spec.nfe, chip))
    return out


def _save(compiled: Any, path: str) -> None:
    """The serialized executable (jax.experimental.serialize_executable), loadable on a host
    of that topology with deserialize_and_load."""
    from jax.experimental.serialize_executable import serialize

    payload, _, _ = serialize(compiled)
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    Path(path).expanduser().write_bytes(payload)


def compile_programs(config: ConfigDict, topology: str, *, num_slices: int = 1,
                     sample_batch: int | None = 256, save: str | None = None,
                     compare_unrolled: bool = False) -> dict[str, Any]:
    """The train step (and, unless sample_batch is None, the sampler) of `config` compiled for
    `num_slices` slices of `topology`: {"topology", "chip", "train_step", "sampler", "host"};
    with compare_unrolled (a config with model.scan_layers), also "train_step_unrolled": the
    same step with the blocks unrolled, compiled in the same run (compile time and memory side
    by side, under the same host load)."""
    chip, _ = aot.parse_topology(topology)
    _checked(config)
    if compare_unrolled and not config.model.get("scan_layers", False):
        raise ValueError("--compare_unrolled compares a scanned step with its unrolled twin: "
                         "the config needs model.scan_layers=True")
    devices = aot.topology_devices(topology, num_slices)
    report: dict[str, Any] = {
        "topology": topology, "num_slices": num_slices, "chips": len(devices),
        "device_kind": devices[0].device_kind,
        "chip": {"name": chip.name, "hbm_bytes": chip.hbm_bytes,
                 "bf16_flops": chip.bf16_flops},
        "model": config_lib.flat(config.model.to_dict()),
        "host": {"load_avg_before": os.getloadavg(), "cpus": os.cpu_count(),
                 "jax": jax.__version__, "libtpu": _libtpu_version()},
    }
    report["train_step"] = compile_train_step(config, devices, chip, save)
    if compare_unrolled:
        report["train_step_unrolled"] = compile_train_step(_unrolled(config), devices, chip)
    if sample_batch:
        report["sampler"] = compile_sampler(config, devices, chip, int(sample_batch))
    report["host"]["load_avg_after"] = os.getloadavg()
    return report


def _libtpu_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return None


def find_max_batch(config: ConfigDict, topology: str, *, hbm_bytes: int | None = None,
                   num_slices: int = 1, hi: int = 4096, granularity: int = 8,
                   on_try: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """The largest global batch, a multiple of `granularity` × chips × micro-batches, whose
    train step fits `hbm_bytes` per chip (default: the chip's HBM), by doubling then bisection
    over compiles of the step (about 2·log2(max / unit) of them): {"max_batch", "hbm_bytes",
    "tries": [{batch, peak_bytes, fits, compile_s}, ...]}; 0 when the smallest does not fit."""
    chip, _ = aot.parse_topology(topology)
    _checked(config)
    devices = aot.topology_devices(topology, num_slices)
    limit = hbm_bytes or chip.hbm_bytes
    unit = granularity * len(devices) * int(config.train.micro_batches)
    tries: list[dict[str, Any]] = []

    def fits(k: int) -> bool:
        c = copy.deepcopy(config)
        c.train.global_batch_size = k * unit
        r = compile_train_step(c, devices, chip, count_unrolled=False)
        peak = r["peak_bytes"]
        # The chip's own HBM: libtpu's verdict (`fits`); a lower --hbm_gib: the peak against it
        # (for an offloading program the upper bound, as no device peak is reported).
        ok = (bool(r["fits"]) if hbm_bytes is None else
              r["out_of_memory"] is None and peak is not None and peak <= limit)
        tries.append({"batch": k * unit, "peak_bytes": peak, "peak_source": r["peak_source"],
                      "fits": ok,
                      "out_of_memory": r["out_of_memory"], "compile_s": r["compile_s"]})
        if on_try is not None:
            on_try(k * unit, tries[-1])
        return ok

    lo, top = 0, max(1, hi // unit)  # lo fits (0 trivially), top + 1 assumed not to
    k = 1
    while k <= top and fits(k):  # doubling, then bisection between the last fit and miss
        lo, k = k, k * 2
    high = min(k, top + 1)
    while high - lo > 1:
        mid = (lo + high) // 2
        if fits(mid):
            lo = mid
        else:
            high = mid
    return {"max_batch": lo * unit, "hbm_bytes": limit, "tries": tries}


def _gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _flops(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e12:.3f} TFLOP"


def _compile_s(r: Mapping[str, Any]) -> float:
    return r["lower_s"] + r["compile_s"]


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text, per chip (module docstring)."""
    chip = report["chip"]
    lines = [f"topology {report['topology']} × {report['num_slices']} slice(s): "
             f"{report['chips']} chips ({report['device_kind']}), {_gib(chip['hbm_bytes'])} HBM "
             f"and {chip['bf16_flops'] / 1e12:.0f} TFLOP/s bf16 per chip"]
    for name in ("train_step", "train_step_unrolled", "sampler"):
        r = report.get(name)
        if r is None:
            continue
        m = r["memory"]
        if r["out_of_memory"]:
            lines += [f"{name}: mesh {r['mesh']}: DOES NOT FIT: {r['out_of_memory']}"]
            continue
        what = (f"global batch {r['global_batch']}, {r['micro_batches']} micro-batch(es)"
                if name.startswith("train_step") else
                f"batch {r['batch']}, {r['sampling']['sampler']} × {r['sampling']['num_steps']} "
                f"steps{', guided (2B per evaluation)' if r['guided'] else ''}")
        lines += [
            f"{name}: mesh {r['mesh']}, {what}",
            f"  per chip: arguments {_gib(m.get('argument_size'))}"
            + ("" if "state_and_batch_bytes_per_chip" not in r else
               f" (the state's and batch's shards: {_gib(r['state_and_batch_bytes_per_chip'])}, "
               f"{_gib(r['state_and_batch_tiled_bytes_per_chip'])} in whole TPU tiles)")
            + f", temporaries {_gib(r['temp_at_peak_bytes'])} at the peak (temp_size "
            f"{_gib(m.get('temp_size'))}), outputs {_gib(m.get('output_size'))}, aliased "
            f"{_gib(m.get('alias_size'))}, peak {_gib(r['peak_bytes'])} ({r['peak_source']}) of "
            f"{_gib(r['hbm_bytes'])}: {'fits' if r['fits'] else 'DOES NOT FIT'}",
            "  FLOPs per chip (one loop trip"
            + (f" = {r['evaluations_per_trip']} network evaluations"
               if r.get("evaluations_per_trip", 1) > 1 else "")
            + f"; {r['loop_trips']} per "
            f"{'step' if name.startswith('train_step') else 'chunk'}): XLA "
            f"{_flops(r['xla_flops_per_chip'])}, analytic {_flops(r['analytic_flops_per_chip'])}"
            + ("" if r["flops_ratio"] is None else
               f", ratio {r['flops_ratio']:.3f}"
               + ("" if r["flops_agree"] else f" (beyond {FLOPS_TOLERANCE:.0%})"))
            + (f" [XLA: {r['xla_flops_source']}; the compiled scan counts one layer, "
               f"{_flops(r['xla_flops_compiled_per_chip'])}]" if r.get("xla_flops_source")
               else ""),
            "  roofline bound at bf16 peak: "
            + ("n/a" if r["roofline_s"] is None else f"{1e3 * r['roofline_s']:.1f} ms")
            + f" per {'step' if name.startswith('train_step') else 'chunk'}; compiled in "
            f"{_compile_s(r):.1f} s (lower {r['lower_s']:.1f} s)",
        ]
    if "train_step_unrolled" in report:
        scanned, unrolled = report["train_step"], report["train_step_unrolled"]
        lines.append(f"scan over layers: compiled {_compile_s(unrolled) / _compile_s(scanned):.2f}"
                     f"× faster than unrolled ({_compile_s(scanned):.1f} s against "
                     f"{_compile_s(unrolled):.1f} s); temporaries at the peak "
                     f"{_gib(scanned['temp_at_peak_bytes'])} against "
                     f"{_gib(unrolled['temp_at_peak_bytes'])}, peak "
                     f"{_gib(scanned['peak_bytes'])} against {_gib(unrolled['peak_bytes'])}")
    host = report["host"]
    lines.append(f"host load average {host['load_avg_before'][0]:.1f} → "
                 f"{host['load_avg_after'][0]:.1f} on {host['cpus']} CPUs (compile times grow "
                 f"with it); jax {host['jax']}, libtpu {host['libtpu']}")
    return "\n".join(lines)
