"""Draw N samples from a trained run into an ADM `.npz` (+ settings JSON and PNG grid), resumably.

    python launch/sample.py --workdir=workdirs/digits_dit --num_samples=1000 \
        --sampler=dpm_solver_2m --steps=25 --guidance_scale=2.0
    python launch/sample.py --workdir=DIR --num_samples=50000 --batch_size=500 --sampler=ddpm \
        --steps=250 --guidance_scale=1.5 --guidance_interval=0.1,0.9 --ema=0.9999
    python launch/sample.py --workdir=DDT_RUN --num_samples=50000 --encoder_interval=2   # DDT
    python launch/sample.py --workdir=RUN --sampler=euler --steps=49 --guidance=auto \
        --guidance_scale=1.42 --guide_workdir=SMALL_RUN --guide_step=20000   # AutoGuidance
    python launch/sample.py --workdir=SIT_RUN --sampler=dopri5 --rtol=1e-3 --atol=1e-6  # SiT ODE
    python launch/sample.py --workdir=RUN --dtype=bfloat16      # sample in another precision

The run directory alone is enough: the checkpoint's config and data spec rebuild the model (no
dataset is opened). Restores the newest checkpoint of --workdir (or --step) with its first EMA
(--ema: '' = first, 'none' = raw parameters, or a decay), computing in --dtype (default the
run's sample.dtype: float32 for imported runs, else its model.dtype), and samples class-balanced
labels for conditional models, sharded over all devices (and hosts: jax.distributed is
initialized from the environment on Cloud TPU / SLURM). The sampling settings start from the
run's config.sample (one `SamplingSpec`); each flag given replaces its field. Writes --out (default
WORKDIR/samples/<name>.npz, the name carrying every setting, the checkpoint step, N and the batch
size: `arr_0` uint8 NHWC, `arr_1` labels), the settings beside it (<out>.json, read by
launch/evaluate.py) and a grid of the first 100 samples (<out>.png). Chunks of --batch_size are
saved as they finish: rerunning a killed job resumes at the first missing chunk and gives the
same samples as an uninterrupted run. A finished file of other settings is never overwritten.
AutoGuidance (--guidance=auto) restores a second run, --guide_workdir (default the config's
sample.guide_workdir), the same way (--guide_step, --guide_ema), and refuses one of other data,
latent space or prediction; both networks run in one jitted sampling program.
Bad input: `error: ...`, exit status 2, nothing written.
"""

from __future__ import annotations

from absl import flags

from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.io import check_writable
from vdm_jax.parallel import host
from vdm_jax.rundir import RunDir

USAGE = "python launch/sample.py --workdir=RUN [--num_samples=N] [--out=FILE.npz] [--sampler=...]"

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
_NUM = flags.DEFINE_integer("num_samples", 50_000, "Number of samples N.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch (one chunk) per sampling call.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default under WORKDIR/samples/).")
# SamplingSpec fields: each replaces the run's config.sample value when given.
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler (vdm_jax.core.samplers.SAMPLERS).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps.")
_SCALE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w (1 = none).")
_INTERVAL = flags.DEFINE_string("guidance_interval", None,
                                "Guide only for t in [lo, hi], as 'lo,hi'; '' = always.")
_CHANNELS = flags.DEFINE_integer("guidance_channels", None, "Guide only the first k channels "
                                 "(DiT's sample.py: 3); 0 = all.")
_EMA = flags.DEFINE_string("ema", None, "'' = the run's first EMA, 'none' = raw, or a decay.")
_SEED = flags.DEFINE_integer("seed", None, "Seed: chunk i uses fold_in(key(seed), i).")
_GUIDANCE = flags.DEFINE_string("guidance", None, "'cfg' (classifier-free) or 'auto' "
                                "(AutoGuidance by --guide_workdir).")
_GUIDE = flags.DEFINE_string("guide_workdir", None, "AutoGuidance: the guide's run directory.")
_GUIDE_EMA = flags.DEFINE_string("guide_ema", None, "The guide's EMA ('' first, 'none', decay).")
_GUIDE_STEP = flags.DEFINE_integer("guide_step", None, "The guide's checkpoint step (default: "
                                   "its newest).")
_DTYPE = flags.DEFINE_string("dtype", None, "Sampling compute dtype: float32 | bfloat16 (default: "
                             "the run's sample.dtype, else its model.dtype; imports: float32).")
# Sampler options (SamplingSpec.options).
_ETA = flags.DEFINE_float("eta", None, "DDIM η in [0, 1] (0: deterministic).")
_VARIANCE = flags.DEFINE_string("variance", None, "DDPM step variance (see samplers.VARIANCES).")
_LOF = flags.DEFINE_bool("lower_order_final", None, "dpm_solver_2m: first-order last step.")
_SPACING = flags.DEFINE_string("spacing", None, "Time grid spacing (see samplers.SPACINGS).")
_SHIFT = flags.DEFINE_float("shift", None, "Time shift of --spacing=shifted.")
_T_MIN = flags.DEFINE_float("t_min", None, "Last time of the grid (default 0).")
_T_MAX = flags.DEFINE_float("t_max", None, "First time of the grid (default 1, or 1 − 1e-3).")
_LAST_SIZE = flags.DEFINE_float("last_step_size", None, "A separate last grid step of this size "
                                "(SiT, REPA, DDT: 0.04); 0 = none.")
_FORM = flags.DEFINE_string("diffusion_form", None, "sit_sde: SiT's diffusion coefficient "
                            "(see core.sit_sde.DIFFUSION_FORMS; SiT's default sigma).")
_NORM = flags.DEFINE_float("diffusion_norm", None, "sit_sde: scale of the diffusion coefficient.")
_LAST = flags.DEFINE_string("last_step", None, "sit_sde: last step mean | tweedie | euler.")
_RTOL = flags.DEFINE_float("rtol", None, "dopri5: relative tolerance (SiT's 1e-3).")
_ATOL = flags.DEFINE_float("atol", None, "dopri5: absolute tolerance (SiT's 1e-6).")
# DDT's encoder sharing (SamplingSpec SHARING_OPTIONS), with every sampler.
_ENC_INTERVAL = flags.DEFINE_integer("encoder_interval", None, "DDT: recompute the condition "
                                     "encoder every k steps (1 = every step).")
_ENC_STEPS = flags.DEFINE_list("encoder_steps", None, "DDT: the steps that recompute the "
                               "condition encoder, e.g. 0,1,3,7 (a non-uniform schedule).")
_OPTIONS = {"eta": _ETA, "variance": _VARIANCE, "lower_order_final": _LOF, "spacing": _SPACING,
            "shift": _SHIFT, "t_min": _T_MIN, "t_max": _T_MAX, "encoder_interval": _ENC_INTERVAL,
            "last_step_size": _LAST_SIZE, "diffusion_form": _FORM, "diffusion_norm": _NORM,
            "last_step": _LAST, "rtol": _RTOL, "atol": _ATOL}
ARGS = ConfigArgs(USAGE, takes_config=False)


def parse_interval(text: str) -> tuple[float, float] | None:
    """'lo,hi' -> (lo, hi); '' -> None (the interval is checked by SamplingSpec)."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance_interval must be 'lo,hi' (e.g. 0.1,0.9), or '' to "
                         f"guide at every step, got {text!r}") from None
    return lo, hi


def spec_changes() -> dict:
    """The SamplingSpec fields given on the command line."""
    changes: dict = {}
    for key, flag in (("sampler", _SAMPLER), ("num_steps", _STEPS), ("guidance_scale", _SCALE),
                      ("ema", _EMA), ("seed", _SEED), ("guidance", _GUIDANCE),
                      ("dtype", _DTYPE)):
        if flag.value is not None:
            changes[key] = flag.value
    if _INTERVAL.value is not None:
        changes["guidance_interval"] = parse_interval(_INTERVAL.value)
    if _CHANNELS.value is not None:
        changes["guidance_channels"] = _CHANNELS.value or None
    options = {k: f.value for k, f in _OPTIONS.items() if f.value is not None}
    if _ENC_STEPS.value is not None:
        try:
            options["encoder_steps"] = [int(v) for v in _ENC_STEPS.value]
        except ValueError:
            raise ValueError(f"--encoder_steps must be step indices such as 0,1,3,7, got "
                             f"{','.join(_ENC_STEPS.value)!r}") from None
    if options:
        changes["options"] = options
    return changes


def main() -> None:
    if not _WORKDIR.value:
        raise ValueError("--workdir=DIR (a training run) is required")
    # The output's place first: before the restore and the sampling (minutes to hours).
    if _OUT.value:
        check_writable(_OUT.value, "--out")
    else:
        check_writable(RunDir(_WORKDIR.value).samples, "the workdir's samples/ (give --out)",
                       directory=True)
    import jax

    from vdm_jax import config as config_lib
    from vdm_jax.checkpoints.restore import load_for_inference
    from vdm_jax.core import samplers
    from vdm_jax.generation.batches import generate_samples
    from vdm_jax.parallel import distributed
    from vdm_jax.sampling_spec import COMMON_OPTIONS, SHARING_OPTIONS, SamplingSpec

    changes = spec_changes()
    # Fail before the restore on a bad value: the fields that do not depend on the sampler,
    # and the sampler with its options when one is given.
    SamplingSpec(**{k: v for k, v in changes.items() if k not in ("sampler", "options")})
    if "sampler" in changes:
        SamplingSpec(sampler=changes["sampler"],
                     options=tuple(changes.get("options", {}).items()))
    distributed.initialize({})
    restored = load_for_inference(_WORKDIR.value, ema=changes.get("ema", ""),
                                  step=_STEP.value)
    spec = config_lib.sampling_spec(restored.config, with_guide=True)
    if changes.get("sampler", spec.sampler) != spec.sampler:
        # The run's options of its own sampler do not carry over to another one.
        keep = (COMMON_OPTIONS + SHARING_OPTIONS
                + samplers.SAMPLER_OPTIONS[changes["sampler"]])
        spec = spec.replace(options={k: None for k, _ in spec.options if k not in keep})
    spec = spec.replace(**changes)
    guide = None
    if spec.guidance == "auto" and spec.guided(restored.model.num_classes):
        section = restored.config.sample
        workdir = _GUIDE.value or section.get("guide_workdir")
        if not workdir:
            raise ValueError("--guidance=auto needs --guide_workdir=DIR (the guide run)")
        ema = _GUIDE_EMA.value if _GUIDE_EMA.value is not None else section.get(
            "guide_ema", "")
        step = _GUIDE_STEP.value if _GUIDE_STEP.value is not None else section.get(
            "guide_step")
        guide = load_for_inference(workdir, ema=ema, step=step, mesh=restored.mesh)
    result = generate_samples(restored, spec, num_samples=_NUM.value,
                              batch_size=_BATCH.value, out=_OUT.value, guide=guide)
    if jax.process_index() == 0:
        nfe = result.settings.get("nfe_per_chunk")
        cost = f", NFE {nfe['mean']:g} per chunk (min {nfe['min']}, max {nfe['max']})" if nfe \
            else ""
        print(f"wrote {result.npz} ({_NUM.value} samples, {result.settings['dtype']}{cost}), "
              f"{result.settings_json} and {result.grid}")


if __name__ == "__main__":
    # Before JAX initializes: malloc retention, XLA flags, one virtual CPU device per core
    # (vdm_jax.parallel.host; VDM_HOST_MALLOC / VDM_CPU_DEVICES / XLA_FLAGS override).
    launch(main, ARGS, __doc__, before=host.configure)
