"""The training config schema (ml_collections) and its validation.

Every config module in configs/ starts from `default_config()` and overrides fields; the result
is locked, so a misspelt key on the command line (`--config.optim.lrr=1`) is an error, and
`validate` checks values before anything is written to the workdir. Sections:

    seed            int, fixes initialization, data order and diffusion noise
    data            dataset (see vdm_jax.data): name, data_dir, manual_dir, image_folder,
                    image_size, random_flip, worker_count
    model           name (registry, e.g. "DiT-S/2") or spec (dict, used when name is ""),
                    prediction ('eps' | 'x' | 'v' | 'flow'), learn_sigma, dtype (compute)
    diffusion       schedule (+ schedule_kwargs, shift) or learned_schedule; objective
                    (+ objective_kwargs); label_dropout; class_conditional; ddpm_steps and
                    vlb_weight for the learned-variance term
    optim           AdamW: lr, warmup_steps, schedule, b1, b2, eps, weight_decay, grad_clip;
                    ema_decays (one EMA per decay)
    train           num_steps, global_batch_size, micro_batches, log_every, checkpoint_every,
                    keep_checkpoints, keep_period, async_checkpoints, num_t_bins
    sample          periodic sample grids: every, sampler, num_steps, guidance_scale,
                    guidance_interval, num_images, ema
    eval            at_end, batch_size, bpd_passes, num_samples (metrics at the end of training)
    mesh            data, fsdp (−1 = the remaining devices)
    distributed     coordinator_address, num_processes, process_id (multi-host; optional)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from vdm_jax.core import objectives as losses
from vdm_jax.core import schedules as sch
from vdm_jax.data import DATASETS


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
    ))
    c.model = ConfigDict(dict(
        name="",
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
        label_dropout=0.1,
        class_conditional=True,
        ddpm_steps=1000,
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
        every=0,  # 0: only at the end
        sampler="dpm_solver_2m",
        num_steps=25,
        guidance_scale=1.0,
        guidance_interval=config_dict.placeholder(tuple),
        num_images=64,
        ema="",  # '' = the first of optim.ema_decays; 'none' = raw parameters
    ))
    c.eval = ConfigDict(dict(at_end=False, batch_size=256, bpd_passes=1, num_samples=0))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1))
    c.distributed = ConfigDict(dict(
        coordinator_address=config_dict.placeholder(str),
        num_processes=config_dict.placeholder(int),
        process_id=config_dict.placeholder(int),
    ))
    return c


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def validate(config: Mapping[str, Any]) -> None:
    """Check values a type system cannot: names, ranges, divisibility. Raises ValueError naming
    the field and what it accepts."""
    unknown = sorted(set(config) - set(default_config()))
    _require(not unknown, f"Unknown config keys {unknown}; valid: {sorted(default_config())}.")
    d, m, diff, o, t, s = (config[k] for k in ("data", "model", "diffusion", "optim", "train",
                                               "sample"))
    _require(d["name"] in DATASETS, f"data.name={d['name']!r}; expected one of {DATASETS}.")
    _require(diff["learned_schedule"] or diff["schedule"] in sch.SCHEDULES,
             f"diffusion.schedule={diff['schedule']!r}; expected one of {sorted(sch.SCHEDULES)}.")
    _require(diff["objective"] in losses.OBJECTIVES,
             f"diffusion.objective={diff['objective']!r}; expected one of "
             f"{sorted(losses.OBJECTIVES)}.")
    _require(0.0 <= diff["label_dropout"] <= 1.0,
             f"diffusion.label_dropout={diff['label_dropout']} must be in [0, 1].")
    _require(m["prediction"] in ("eps", "x", "v", "flow"),
             f"model.prediction={m['prediction']!r}; expected eps, x, v or flow.")
    _require(o["lr"] > 0, f"optim.lr={o['lr']} must be positive.")
    decays = o["ema_decays"]
    _require(isinstance(decays, tuple | list) and len(decays) > 0
             and all(_is_number(e) and 0.0 <= e < 1.0 for e in decays),
             f"optim.ema_decays={decays!r} must be one or more numbers in [0, 1), "
             "e.g. --config.optim.ema_decays='(0.9999,)'.")
    for key in ("num_steps", "global_batch_size", "micro_batches", "log_every", "checkpoint_every",
                "keep_checkpoints", "num_t_bins"):
        _require(isinstance(t[key], int) and t[key] > 0,
                 f"train.{key}={t[key]!r} must be a positive int.")
    _require(t["global_batch_size"] % t["micro_batches"] == 0,
             f"train.global_batch_size={t['global_batch_size']} is not divisible by "
             f"train.micro_batches={t['micro_batches']}.")
    _require(s["every"] >= 0, f"sample.every={s['every']} must be >= 0 (0: only at the end).")
    interval = s["guidance_interval"]
    _require(interval is None or (isinstance(interval, tuple | list) and len(interval) == 2
                                  and all(_is_number(x) for x in interval)
                                  and 0 <= interval[0] <= interval[1] <= 1),
             f"sample.guidance_interval={interval!r} must be None or (t_lo, t_hi) in [0, 1], "
             "e.g. --config.sample.guidance_interval='(0.1, 0.9)'.")


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
        raise ValueError(f"EMA {requested!r} not trained in this run; choose one of "
                         f"{[str(x) for x in decays]} or 'none'.")
    return ema_name(decay)
