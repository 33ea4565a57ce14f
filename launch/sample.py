"""Draw N samples from a trained run into an ADM `.npz` (+ settings JSON and PNG grid), resumably.

    python launch/sample.py --workdir=workdirs/digits_dit --num_samples=1000 \
        --sampler=dpm_solver_2m --steps=25 --guidance_scale=2.0
    python launch/sample.py --workdir=DIR --num_samples=50000 --batch_size=500 --sampler=ddpm \
        --steps=250 --guidance_scale=1.5 --guidance_interval=0.1,0.9 --ema=0.9999

Restores the newest checkpoint of --workdir (or --step) with its first EMA (--ema: '' = first,
'none' = raw parameters, or a decay), and samples class-balanced labels for conditional models,
sharded over all devices (and hosts: jax.distributed is initialized from the environment on Cloud
TPU / SLURM). --sampler, --steps, --guidance_scale and --guidance_interval default to the run's
config.sample. Writes --out (default WORKDIR/samples/<sampler>_<steps>_w<scale>_n<N>.npz:
`arr_0` uint8 NHWC, `arr_1` labels), the settings beside it (<out>.json, read by
launch/evaluate.py) and a grid of the first 100 samples (<out>.png). Samples are drawn in chunks
of --batch_size saved as they finish: rerunning a killed job resumes at the first missing chunk
and gives the same samples as an uninterrupted run. Bad input: `error: ...`, exit status 2.
"""

from __future__ import annotations

from absl import app, flags, logging

from vdm_jax.cli import exit_on_bad_input

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
_NUM = flags.DEFINE_integer("num_samples", 50_000, "Number of samples N.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch (one chunk) per sampling call.")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler (vdm_jax.core.samplers.SAMPLERS); default "
                               "the run's config.sample.sampler.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps; default config.sample.num_steps.")
_SCALE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w (1 = none); "
                            "default config.sample.guidance_scale.")
_INTERVAL = flags.DEFINE_string("guidance_interval", None, "Guide only for t in [lo, hi], as "
                                "'lo,hi'; '' = always; default config.sample.guidance_interval.")
_EMA = flags.DEFINE_string("ema", "", "'' = the run's first EMA, 'none' = raw, or a decay.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed: chunk i uses fold_in(key(seed), i).")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default under WORKDIR/samples/).")
# Sampler options: only passed when given.
_ETA = flags.DEFINE_float("eta", None, "DDIM η in [0, 1] (0: deterministic).")
_VARIANCE = flags.DEFINE_string("variance", None, "DDPM step variance: posterior | forward.")
_LOF = flags.DEFINE_bool("lower_order_final", None, "dpm_solver_2m: first-order last step.")
_SPACING = flags.DEFINE_string("spacing", None, "Time grid: uniform | quadratic | shifted.")
_SHIFT = flags.DEFINE_float("shift", None, "Time shift of --spacing=shifted.")
_T_MIN = flags.DEFINE_float("t_min", None, "Last time of the grid (default 0).")
_T_MAX = flags.DEFINE_float("t_max", None, "First time of the grid (default 1, or 1 − 1e-3).")

# option flag -> samplers that take it (None: every sampler)
_OPTIONS = {
    "eta": (_ETA, ("ddim",)), "variance": (_VARIANCE, ("ddpm",)),
    "lower_order_final": (_LOF, ("dpm_solver_2m",)), "spacing": (_SPACING, None),
    "shift": (_SHIFT, None), "t_min": (_T_MIN, None), "t_max": (_T_MAX, None),
}


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """'lo,hi' -> (lo, hi); '' or None -> None."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"--guidance_interval must be 'lo,hi' (e.g. 0.1,0.9), got {text!r}"
        ) from None
    return lo, hi


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
    with exit_on_bad_input():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
        if not _WORKDIR.value:
            raise ValueError("--workdir=DIR (a training run) is required")
        from pathlib import Path

        import jax

        from vdm_jax.checkpoints.restore import load_for_inference
        from vdm_jax.core import samplers
        from vdm_jax.generation.batches import generate_samples
        from vdm_jax.parallel import distributed

        if _SAMPLER.value is not None:
            samplers.nfe(_SAMPLER.value, 1)  # an unknown sampler fails before the restore
        interval = parse_interval(_INTERVAL.value)
        distributed.initialize({})
        restored = load_for_inference(_WORKDIR.value, ema=_EMA.value, step=_STEP.value)
        s = restored.config.sample
        sampler = _SAMPLER.value or s.sampler
        steps = _STEPS.value if _STEPS.value is not None else s.num_steps
        scale = _SCALE.value if _SCALE.value is not None else s.guidance_scale
        if _INTERVAL.value is None and s.guidance_interval:
            interval = tuple(s.guidance_interval)
        options = {}
        for name, (flag, takers) in _OPTIONS.items():
            if flag.value is None:
                continue
            if takers is not None and sampler not in takers:
                raise ValueError(f"--{name} applies to {', '.join(takers)}, not {sampler!r}")
            options[name] = flag.value
        out = _OUT.value or str(
            Path(_WORKDIR.value) / "samples" / f"{sampler}_{steps}_w{scale:g}_n{_NUM.value}.npz"
        )
        result = generate_samples(
            restored, out, num_samples=_NUM.value, batch_size=_BATCH.value, sampler=sampler,
            num_steps=steps, guidance_scale=scale, guidance_interval=interval, seed=_SEED.value,
            workdir=_WORKDIR.value, **options,
        )
    if jax.process_index() == 0:
        print(f"wrote {result.npz} ({_NUM.value} samples), {result.settings_json} and "
              f"{result.grid}")


if __name__ == "__main__":
    app.run(main)
