"""The training config's schema: every key with its default, the validation of every value, and
the pieces of a config other layers read (EMA names, the sampling spec). See vdm_jax.config for
the sections."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from vdm_jax.core import meanflow, objectives, samplers, schedules, time_sampling
from vdm_jax.data import DATASETS, latents
from vdm_jax.model import DTYPES as MODEL_DTYPES
from vdm_jax.model import REPA_FEATURES, build_objective, repa_encoder_dim, schedule_kwargs
from vdm_jax.nn.blocks import REMAT_POLICIES
from vdm_jax.nn.encoders.dinov2 import SIZES as DINOV2_SIZES
from vdm_jax.nn.registry import num_blocks, resolve_spec
from vdm_jax.nn.repa import ENCODERS as REPA_ENCODERS
from vdm_jax.sampling_spec import SamplingSpec

DTYPES = tuple(MODEL_DTYPES)
PREDICTIONS = ("eps", "x", "v", "flow", samplers.AVERAGE_VELOCITY)
OBJECTIVE_NAMES = (*sorted(objectives.OBJECTIVES), meanflow.OBJECTIVE)


def ema_name(decay: float) -> str:
    """Key of an EMA in state["ema"], e.g. 0.9999 -> 'ema_0p9999' (path-safe for checkpoints)."""
    return "ema_" + repr(float(decay)).replace(".", "p")


def default_config() -> ConfigDict:
    """Every key a training config may set, with defaults. Not locked (configs add overrides)."""
    c = ConfigDict()
    c.seed = 0
    c.data = ConfigDict(dict(
        name="digits",
        data_dir=config_dict.placeholder(str),
        manual_dir=config_dict.placeholder(str),
        image_folder=config_dict.placeholder(str),
        image_size=config_dict.placeholder(int),
        random_flip=False,
        worker_count=0,
        kind="images",
        latent_dir=config_dict.placeholder(str),
        latent_posterior="sample",
        latent_scaling="autoencoder",
        synthetic_channels=3,  # data.name='synthetic' only (vdm_jax.data)
        synthetic_classes=10,
    ))
    c.autoencoder = ConfigDict(dict(weights=config_dict.placeholder(str),
                                    kind=config_dict.placeholder(str)))
    c.model = ConfigDict(dict(
        spec=dict(family="dit", depth=2, hidden_size=64, num_heads=4, patch_size=2),
        prediction="eps",
        learn_sigma=False,
        dtype="float32",
        scan_layers=False,  # blocks stacked on a layer axis, run by one scan (vdm_jax.nn.blocks)
        remat="none",  # the blocks' jax.checkpoint policy: vdm_jax.nn.blocks.REMAT_POLICIES
    ))
    c.diffusion = ConfigDict(dict(
        schedule="cosine_log_snr",
        schedule_kwargs={},
        shift=1.0,
        # 'dimension' or a number: a union, so the field takes either (core.time_sampling).
        time_shift=config_dict.FieldReference(1.0, field_type=object),
        learned_schedule=False,
        learned_schedule_features=1024,
        objective="eps_mse",
        objective_kwargs={},
        timesteps=0,
        label_dropout=0.1,
        class_conditional=True,
        vlb_weight=1.0,
    ))
    c.repa = ConfigDict(dict(
        enabled=False,
        encoder="dinov2",
        encoder_path=config_dict.placeholder(str),
        encoder_size="vitb14",
        encoder_dim=0,
        depth=8,
        weight=0.5,
        projector_dim=2048,
        features="online",
    ))
    c.optim = ConfigDict(dict(
        lr=1e-4, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, grad_clip=1.0, ema_decays=(0.9999,),
        # schedule 'linear' (RAE): lr until decay_start_steps, linear to final_lr at
        # decay_end_steps, final_lr after.
        decay_start_steps=0, decay_end_steps=0, final_lr=0.0,
    ))
    c.train = ConfigDict(dict(
        num_steps=1000,
        global_batch_size=256,
        micro_batches=1,
        log_every=50,
        checkpoint_every=1000,
        keep_checkpoints=3,
        keep_period=config_dict.placeholder(int),
        async_checkpoints=True,
        num_t_bins=10,
    ))
    c.sample = ConfigDict(dict(
        every=0,
        num_images=64,
        sampler="dpm_solver_2m",
        num_steps=25,
        guidance_scale=1.0,
        guidance_interval=config_dict.placeholder(tuple),
        guidance_channels=config_dict.placeholder(int),
        # 'cfg' or 'auto' (AutoGuidance by the run guide_workdir, at guide_step or its newest
        # checkpoint, EMA guide_ema); launch/sample.py only: training-time grids are unguided.
        guidance="cfg",
        guide_workdir=config_dict.placeholder(str),
        guide_step=config_dict.placeholder(int),
        guide_ema="",
        ema="",
        options={},
        dtype="",  # sampling compute dtype: '' = model.dtype; imports set their source's
    ))
    c.eval = ConfigDict(dict(at_end=False, batch_size=256, bpd_passes=1, num_samples=0,
                             num_steps=()))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1))
    c.distributed = ConfigDict(dict(
        coordinator_address=config_dict.placeholder(str),
        num_processes=config_dict.placeholder(int),
        process_id=config_dict.placeholder(int),
    ))
    return c


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _int(value: Any, minimum: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (minimum is None or value >= minimum))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: Mapping[str, Any]) -> None:
    """Check every value a type system cannot (names, ranges, divisibility, consistency) before
    anything is created. Raises ValueError naming the key and what it accepts."""
    unknown = sorted(set(config) - set(default_config()))
    _require(not unknown, f"unknown config sections {unknown}; valid: "
                          f"{sorted(default_config())}")
    d, m, diff, o, t, s, e = (config[k] for k in ("data", "model", "diffusion", "optim", "train",
                                                  "sample", "eval"))
    _require(_int(config["seed"]), f"seed={config['seed']!r} must be an int")
    # data
    _require(d["name"] in DATASETS, f"data.name={d['name']!r}; expected one of {DATASETS}")
    _require(d["image_size"] is None or _int(d["image_size"], 1),
             f"data.image_size={d['image_size']!r} must be a positive int (or unset)")
    _require(_int(d["worker_count"], 0), f"data.worker_count={d['worker_count']!r} must be >= 0")
    _require(d["latent_posterior"] in latents.POSTERIORS,
             f"data.latent_posterior={d['latent_posterior']!r}; expected one of "
             f"{latents.POSTERIORS}")
    _require(d["latent_scaling"] in latents.SCALINGS,
             f"data.latent_scaling={d['latent_scaling']!r}; expected one of {latents.SCALINGS}")
    _require(d["kind"] in ("images", "latents"),
             f"data.kind={d['kind']!r}; expected 'images' or 'latents'")
    _require(d["kind"] == "images" or d["latent_dir"],
             "this config trains on latents (data.kind='latents') but data.latent_dir is not set: "
             "encode the images first with launch/encode_latents.py --config=<this config> "
             "--out=DIR --config.autoencoder.weights=PATH, then pass "
             "--config.data.latent_dir=DIR")
    _require(d["kind"] == "latents" or not d["latent_dir"],
             "data.latent_dir is set but data.kind='images': set --config.data.kind=latents to "
             "train on the latents")
    _require(config["autoencoder"].get("kind") in (None, "sd_vae", "rae"),
             f"autoencoder.kind={config['autoencoder'].get('kind')!r}; expected 'sd_vae' or "
             "'rae' (or unset: read from the weights)")
    _require(not d["latent_dir"] or config["autoencoder"]["weights"],
             "data.latent_dir is set but autoencoder.weights is not: the autoencoder that made "
             "the latents decodes the samples; give --config.autoencoder.weights=PATH (the "
             "folder or file launch/encode_latents.py used)")
    for key in ("synthetic_channels", "synthetic_classes"):
        _require(_int(d[key], 1), f"data.{key}={d[key]!r} must be a positive int")
    # model
    spec = m["spec"].to_dict() if hasattr(m["spec"], "to_dict") else m["spec"]
    try:
        resolve_spec(spec)
    except ValueError as err:
        raise ValueError(f"model.spec: {err}") from None
    _require(m["prediction"] in PREDICTIONS,
             f"model.prediction={m['prediction']!r}; expected one of {PREDICTIONS}")
    _require(m["dtype"] in DTYPES, f"model.dtype={m['dtype']!r}; expected one of {DTYPES}")
    # .get: configs stored by runs that predate the keys resume with the defaults
    scan, remat = m.get("scan_layers", False), m.get("remat", "none")
    _require(isinstance(scan, bool), f"model.scan_layers={scan!r} must be True or False")
    _require(remat in REMAT_POLICIES, f"model.remat={remat!r}; expected one of {REMAT_POLICIES}")
    _require(not m["learn_sigma"] or m["prediction"] == "eps",
             "model.learn_sigma needs model.prediction='eps' (the DiT/IDDPM recipe)")
    # diffusion
    _require(_int(diff["timesteps"], 0),
             f"diffusion.timesteps={diff['timesteps']!r} must be an int >= 0 (0: continuous)")
    for key in ("schedule_kwargs", "objective_kwargs"):
        _require("num_steps" not in (diff[key] or {}),
                 f"diffusion.{key} sets num_steps; set diffusion.timesteps instead (one key for "
                 "the T of a discrete-time recipe)")
    if diff["learned_schedule"]:
        _require(diff["objective"] == "elbo", "diffusion.learned_schedule trains γ(t) with the "
                 "ELBO's gradient: set diffusion.objective='elbo'")
    else:
        _require(diff["schedule"] in schedules.SCHEDULES,
                 f"diffusion.schedule={diff['schedule']!r}; expected one of "
                 f"{sorted(schedules.SCHEDULES)}")
        try:
            schedules.get_schedule(diff["schedule"], shift=float(diff["shift"]),
                                   **schedule_kwargs(diff))
        except (ValueError, TypeError) as err:
            raise ValueError(f"diffusion.schedule / schedule_kwargs: {err}") from None
    _require(diff["objective"] in OBJECTIVE_NAMES,
             f"diffusion.objective={diff['objective']!r}; expected one of {OBJECTIVE_NAMES}")
    try:
        build_objective(diff)
    except ValueError as err:
        raise ValueError(f"diffusion.objective / objective_kwargs: {err}") from None
    _check_meanflow(config, resolve_spec(spec))
    _require(not m["learn_sigma"] or diff["timesteps"] > 0,
             "model.learn_sigma trains IDDPM's variance on a discrete grid: set "
             "diffusion.timesteps (DiT: 1000)")
    _require(_number(diff["label_dropout"]) and 0.0 <= diff["label_dropout"] <= 1.0,
             f"diffusion.label_dropout={diff['label_dropout']} must be in [0, 1]")
    _require(_number(diff["shift"]) and diff["shift"] > 0,
             f"diffusion.shift={diff['shift']} must be positive")
    _check_time_shift(diff)
    _validate_repa(config, resolve_spec(spec))
    # optim
    _require(_number(o["lr"]) and o["lr"] > 0, f"optim.lr={o['lr']} must be positive")
    _require(_int(o["warmup_steps"], 0), f"optim.warmup_steps={o['warmup_steps']!r} must be >= 0")
    _require(o["schedule"] in ("constant", "cosine", "linear"),
             f"optim.schedule={o['schedule']!r}; expected 'constant', 'cosine' or 'linear'")
    if o["schedule"] == "linear":
        start, end = o.get("decay_start_steps", 0), o.get("decay_end_steps", 0)
        _require(_int(start, 0) and _int(end, 0) and o["warmup_steps"] <= start < end,
                 f"optim.schedule='linear' needs warmup_steps <= decay_start_steps < "
                 f"decay_end_steps, got {o['warmup_steps']}, {start}, {end}")
        _require(_number(o.get("final_lr", 0.0)) and o.get("final_lr", 0.0) >= 0,
                 f"optim.final_lr={o.get('final_lr')} must be >= 0")
    for key in ("b1", "b2"):
        _require(_number(o[key]) and 0.0 <= o[key] < 1.0, f"optim.{key}={o[key]} must be in [0, 1)")
    _require(_number(o["eps"]) and o["eps"] > 0, f"optim.eps={o['eps']} must be positive")
    for key in ("weight_decay", "grad_clip"):
        _require(_number(o[key]) and o[key] >= 0, f"optim.{key}={o[key]} must be >= 0")
    decays = o["ema_decays"]
    _require(isinstance(decays, tuple | list) and len(decays) > 0
             and all(_number(x) and 0.0 <= x < 1.0 for x in decays)
             and len({ema_name(x) for x in decays}) == len(decays),
             f"optim.ema_decays={decays!r} must be one or more distinct numbers in [0, 1), "
             "e.g. --config.optim.ema_decays='(0.9999,)'")
    # train
    for key in ("num_steps", "global_batch_size", "micro_batches", "log_every", "checkpoint_every",
                "keep_checkpoints", "num_t_bins"):
        _require(_int(t[key], 1), f"train.{key}={t[key]!r} must be a positive int")
    _require(t["keep_period"] is None or _int(t["keep_period"], 1),
             f"train.keep_period={t['keep_period']!r} must be a positive int (or unset)")
    _require(t["global_batch_size"] % t["micro_batches"] == 0,
             f"train.global_batch_size={t['global_batch_size']} is not divisible by "
             f"train.micro_batches={t['micro_batches']}")
    # sample
    _require(_int(s["every"], 0), f"sample.every={s['every']!r} must be >= 0 (0: only at the end)")
    _require(_int(s["num_images"], 1), f"sample.num_images={s['num_images']!r} must be >= 1")
    values = s.to_dict() if hasattr(s, "to_dict") else dict(s)
    for key in ("sampler", "num_steps", "guidance_scale", "guidance_interval",
                "guidance_channels", "ema"):  # one field at a time, to name the key
        try:
            SamplingSpec.from_mapping({key: values[key]})
        except (ValueError, TypeError) as err:
            raise ValueError(f"sample.{key}={values[key]!r}: {err}") from None
    try:
        spec_ = sampling_spec(config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"sample.options={values['options']!r}: {err}") from None
    try:
        ema_choice(config, spec_.ema)
    except ValueError as err:
        raise ValueError(f"sample.ema={spec_.ema!r}: {err}") from None
    if spec_.sampler_options.get("variance") == "learned":
        _require(m["learn_sigma"], "sample.options variance='learned' needs model.learn_sigma")
    _require(spec_.encoder_refresh() is None or resolve_spec(spec)["family"] == "ddt",
             "sample.options encoder_interval / encoder_steps share a condition encoder across "
             "sampling steps: only a DDT model (model.spec family 'ddt') has one")
    # eval
    _require(_int(e["batch_size"], 1), f"eval.batch_size={e['batch_size']!r} must be >= 1")
    _require(_int(e["bpd_passes"], 1), f"eval.bpd_passes={e['bpd_passes']!r} must be >= 1")
    _require(_int(e["num_samples"], 0), f"eval.num_samples={e['num_samples']!r} must be >= 0")
    steps = e.get("num_steps", ())  # absent from configs stored before it existed
    _require(isinstance(steps, tuple | list) and all(_int(k, 1) for k in steps)
             and len(set(steps)) == len(steps),
             f"eval.num_steps={steps!r} must be distinct positive ints, e.g. "
             "--config.eval.num_steps='(1, 2)' (() = sample.num_steps)")
    # mesh
    for key in ("data", "fsdp"):
        v = config["mesh"][key]
        _require(_int(v) and (v >= 1 or v == -1), f"mesh.{key}={v!r} must be >= 1 or -1")


def _check_time_shift(diff: Mapping[str, Any]) -> None:
    """diffusion.time_shift: 'dimension' (RAE's α = sqrt(H·W·C / 4096)) or a positive number;
    a warp of a flow model's time (core.time_sampling), so only on the rectified-flow path with
    a weighted-ELBO objective, and not on top of the schedule shift diffusion.shift."""
    value = diff.get("time_shift", 1.0)
    time_sampling.resolve_time_shift(value, (1, 1, 1))  # raises ValueError naming the key
    if value == 1.0:
        return
    _require(not diff["learned_schedule"] and diff["schedule"] == "rectified_flow",
             f"diffusion.time_shift={value!r} warps a flow model's time: it needs "
             "diffusion.schedule='rectified_flow' (not a learned schedule)")
    _require(diff["objective"] != "meanflow",
             "diffusion.time_shift with diffusion.objective='meanflow': MeanFlow draws its own "
             "(r, t) pairs; set diffusion.time_shift=1")
    _require(float(diff["shift"]) == 1.0,
             "diffusion.time_shift and diffusion.shift both shift the noise levels; set one "
             "(time_shift warps the network's time, as RAE; shift moves λ, as SD3 in our time)")


def _check_meanflow(config: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """A MeanFlow config is the whole combination or none of it: objective 'meanflow', prediction
    'average_velocity', a two-time DiT, rectified flow, the 'meanflow' sampler."""
    m, diff = config["model"], config["diffusion"]
    sampler = config["sample"]["sampler"]
    is_mf = diff["objective"] == meanflow.OBJECTIVE
    _require(is_mf == (m["prediction"] == samplers.AVERAGE_VELOCITY),
             f"model.prediction={m['prediction']!r} with diffusion.objective="
             f"{diff['objective']!r}: MeanFlow's network predicts the average velocity, so "
             f"prediction {samplers.AVERAGE_VELOCITY!r} goes with objective "
             f"{meanflow.OBJECTIVE!r} and only with it")
    try:
        SamplingSpec(sampler=sampler).check_prediction(m["prediction"])
    except ValueError as err:
        raise ValueError(f"sample.sampler={sampler!r} with diffusion.objective="
                         f"{diff['objective']!r}: {err}") from None
    if not is_mf:
        return
    _require(spec["family"] == "dit" and spec.get("second_time", False),
             "diffusion.objective='meanflow' needs a two-time DiT u(z, r, t): set "
             "model.spec second_time=True (e.g. {'name': 'DiT-XL/2', 'second_time': True})")
    _require(not diff["learned_schedule"] and diff["schedule"] == "rectified_flow"
             and diff["shift"] == 1.0 and not diff["timesteps"],
             "diffusion.objective='meanflow' is defined on the rectified-flow path "
             "z_t = (1 − t) x + t ε: set diffusion.schedule='rectified_flow' with shift 1, "
             "timesteps 0 and no learned schedule")
    _require(not m["learn_sigma"], "model.learn_sigma does not apply to MeanFlow")
    repa = config.get("repa")
    _require(repa is None or not repa["enabled"],
             "repa.enabled with diffusion.objective='meanflow': REPA is implemented for the "
             "diffusion and flow-matching objectives only; set repa.enabled=false")
    if build_objective(diff).guided:
        _require(diff["class_conditional"] and diff["label_dropout"] > 0,
                 "MeanFlow's guidance (objective_kwargs omega, kappa) needs the unconditional "
                 "u(z, t, t | ∅) trained: a class-conditional model with "
                 "diffusion.label_dropout > 0")
def _validate_repa(config: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    r = config.get("repa")  # absent from configs stored before REPA existed: no REPA
    if r is None:
        return
    _require(isinstance(r["enabled"], bool), f"repa.enabled={r['enabled']!r} must be true/false")
    if not r["enabled"]:
        return
    _require(r["encoder"] in REPA_ENCODERS,
             f"repa.encoder={r['encoder']!r}; expected one of {REPA_ENCODERS}")
    _require(r["features"] in REPA_FEATURES,
             f"repa.features={r['features']!r}; expected one of {REPA_FEATURES}")
    blocks = num_blocks(spec)
    where = "the DDT's encoder has" if spec["family"] == "ddt" else "the model has"
    _require(_int(r["depth"], 1) and r["depth"] <= blocks,
             f"repa.depth={r['depth']!r} is beyond the model: {where} {blocks} blocks, so the "
             f"aligned hidden state must be after block 1..{blocks}")
    _require(_number(r["weight"]) and r["weight"] > 0,
             f"repa.weight={r['weight']!r} must be positive (REPA: 0.5; disable REPA with "
             "repa.enabled=false)")
    _require(_int(r["projector_dim"], 1),
             f"repa.projector_dim={r['projector_dim']!r} must be a positive int (REPA: 2048)")
    _require(_int(r["encoder_dim"], 0), f"repa.encoder_dim={r['encoder_dim']!r} must be an int "
             ">= 0 (0: the width of repa.encoder_size)")
    if r["encoder"] == "dinov2":
        _require(r["encoder_size"] in ("", *DINOV2_SIZES),
                 f"repa.encoder_size={r['encoder_size']!r}; expected one of "
                 f"{sorted(DINOV2_SIZES)} ('' = whatever the weights hold, with encoder_dim)")
    try:
        repa_encoder_dim(r)
    except ValueError as err:
        raise ValueError(str(err)) from None
    if r["features"] == "online":
        _require(bool(r["encoder_path"]),
                 f"repa.encoder_path is required with repa.encoder={r['encoder']!r}: the frozen "
                 "encoder's weights (a DINOv2 torch-hub .pth or Hugging Face folder, e.g. "
                 "facebook/dinov2-base; for 'digits' the .npz benchmarks/repa_digits.py writes)")


def sampling_spec(config: Mapping[str, Any], *, with_guide: bool = False) -> SamplingSpec:
    """The SamplingSpec of the config's `sample` section (its seed: the run's seed). AutoGuidance
    needs a second run, which only launch/sample.py loads (with_guide=True); without it an 'auto'
    section gives the unguided spec (w = 1), what the trainer's grids and end-of-run metrics
    draw."""
    s = config["sample"]
    values = s.to_dict() if hasattr(s, "to_dict") else dict(s)
    spec = SamplingSpec.from_mapping({**values, "seed": int(config["seed"])})
    if spec.guidance == "auto" and not with_guide:
        spec = spec.replace(guidance="cfg", guidance_scale=1.0)
    return spec


def check_batch(config: Mapping[str, Any], num_devices: int, data_parallel: int) -> None:
    """The global batch (and each micro-batch) must split evenly over every device."""
    b, n = config["train"]["global_batch_size"], config["train"]["micro_batches"]
    _require((b // n) % num_devices == 0,
             f"train.global_batch_size={b} with train.micro_batches={n} gives micro-batches of "
             f"{b // n}, not divisible by the {num_devices} devices (data-parallel size "
             f"{data_parallel} × fsdp {num_devices // data_parallel}). Use a multiple of "
             f"{num_devices * n}.")


def ema_choice(config: Mapping[str, Any], requested: str = "") -> str | None:
    """The EMA key to sample from: '' = the first decay, 'none' = raw parameters (None), or a
    decay such as '0.9999'."""
    decays = tuple(config["optim"]["ema_decays"])
    if requested in ("", None):
        return ema_name(decays[0])
    if requested == "none":
        return None
    try:
        decay = float(requested)
    except ValueError:
        decay = None
    names = [ema_name(x) for x in decays]
    if decay is None or ema_name(decay) not in names:
        raise ValueError(f"EMA {requested!r} is not trained in this run; choose one of "
                         f"{[str(x) for x in decays]} or 'none'")
    return ema_name(decay)


# ------------------------------------------------------------------------------ resuming
