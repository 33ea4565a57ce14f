"""The training config's schema: every key with its default, the validation of every value, and
the pieces of a config other layers read (EMA names, the sampling spec). See vdm_jax.config for
the sections."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from vdm_jax.core import objectives, schedules
from vdm_jax.data import DATASETS
from vdm_jax.model import DTYPES as MODEL_DTYPES
from vdm_jax.model import objective_kwargs, schedule_kwargs
from vdm_jax.nn.registry import resolve_spec
from vdm_jax.sampling_spec import SamplingSpec

DTYPES = tuple(MODEL_DTYPES)
PREDICTIONS = ("eps", "x", "v", "flow")


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
        synthetic_channels=3,  # data.name='synthetic' only (vdm_jax.data)
        synthetic_classes=10,
    ))
    c.model = ConfigDict(dict(
        spec=dict(family="dit", depth=2, hidden_size=64, num_heads=4, patch_size=2),
        prediction="eps",
        learn_sigma=False,
        dtype="float32",
    ))
    c.diffusion = ConfigDict(dict(
        schedule="cosine_log_snr",
        schedule_kwargs={},
        shift=1.0,
        learned_schedule=False,
        learned_schedule_features=1024,
        objective="eps_mse",
        objective_kwargs={},
        timesteps=0,
        label_dropout=0.1,
        class_conditional=True,
        vlb_weight=1.0,
    ))
    c.optim = ConfigDict(dict(
        lr=1e-4, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, grad_clip=1.0, ema_decays=(0.9999,),
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
        ema="",
        options={},
    ))
    c.eval = ConfigDict(dict(at_end=False, batch_size=256, bpd_passes=1, num_samples=0))
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
    _require(diff["objective"] in objectives.OBJECTIVES,
             f"diffusion.objective={diff['objective']!r}; expected one of "
             f"{sorted(objectives.OBJECTIVES)}")
    try:
        objectives.get_objective(diff["objective"], **objective_kwargs(diff))
    except ValueError as err:
        raise ValueError(f"diffusion.objective / objective_kwargs: {err}") from None
    _require(not m["learn_sigma"] or diff["timesteps"] > 0,
             "model.learn_sigma trains IDDPM's variance on a discrete grid: set "
             "diffusion.timesteps (DiT: 1000)")
    _require(_number(diff["label_dropout"]) and 0.0 <= diff["label_dropout"] <= 1.0,
             f"diffusion.label_dropout={diff['label_dropout']} must be in [0, 1]")
    _require(_number(diff["shift"]) and diff["shift"] > 0,
             f"diffusion.shift={diff['shift']} must be positive")
    # optim
    _require(_number(o["lr"]) and o["lr"] > 0, f"optim.lr={o['lr']} must be positive")
    _require(_int(o["warmup_steps"], 0), f"optim.warmup_steps={o['warmup_steps']!r} must be >= 0")
    _require(o["schedule"] in ("constant", "cosine"),
             f"optim.schedule={o['schedule']!r}; expected 'constant' or 'cosine'")
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
    try:
        spec_ = sampling_spec(config)
    except ValueError as err:
        raise ValueError(f"sample: {err}") from None
    ema_choice(config, spec_.ema)
    if spec_.sampler_options.get("variance") == "learned":
        _require(m["learn_sigma"], "sample.options variance='learned' needs model.learn_sigma")
    # eval
    _require(_int(e["batch_size"], 1), f"eval.batch_size={e['batch_size']!r} must be >= 1")
    _require(_int(e["bpd_passes"], 1), f"eval.bpd_passes={e['bpd_passes']!r} must be >= 1")
    _require(_int(e["num_samples"], 0), f"eval.num_samples={e['num_samples']!r} must be >= 0")
    # mesh
    for key in ("data", "fsdp"):
        v = config["mesh"][key]
        _require(_int(v) and (v >= 1 or v == -1), f"mesh.{key}={v!r} must be >= 1 or -1")


def sampling_spec(config: Mapping[str, Any]) -> SamplingSpec:
    """The SamplingSpec of the config's `sample` section (its seed: the run's seed)."""
    s = config["sample"]
    values = s.to_dict() if hasattr(s, "to_dict") else dict(s)
    return SamplingSpec.from_mapping({**values, "seed": int(config["seed"])})


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
