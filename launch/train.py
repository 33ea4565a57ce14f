"""Train a diffusion model: python launch/train.py --config=configs/<name>.py --workdir=DIR.

Override any config field with `--config.<key>=<value>`, e.g. `--config.train.num_steps=100`;
a dict-valued field is replaced whole with a Python literal, e.g.
`--config.diffusion.schedule_kwargs="{'gamma_min': -7.0, 'gamma_max': 5.0}"`. Rerunning with the
same workdir resumes its run with the run's stored config, plus the overrides given now where a
run may change them (vdm_jax.config.SAFE_ON_RESUME); --config may then be omitted. Multi-host:
jax.distributed is initialized from --config.distributed.* when given, or from the environment
on Cloud TPU / SLURM (see launch/tpu/README.md).

Exit status: 0 when training finished or was stopped by SIGTERM or a Ctrl-C once training runs
(the current step is saved: `Preempted (SIGTERM): saved step k in DIR.`), or by SIGTERM during
the end-of-run evaluation (training is saved; a rerun evaluates); 130 with one line
`error: aborted ...` for a second Ctrl-C, or one while preparing or compiling (at once, without
waiting for a save in flight); 2 with one line `error: ...` for bad input (an unknown key or a
wrong value, a config the devices or the data cannot serve, a workdir in use or holding another
run), before anything is written; 1 with `error: ...` when the loss becomes NaN or Inf or the
disk fills up (the last complete checkpoint stays the newest).
"""

from __future__ import annotations

import sys

from absl import flags

from vdm_jax.cli import ConfigArgs, exit_on_bad_input, fail, fail_now, launch
from vdm_jax.parallel import host
from vdm_jax.rundir import RunDir

USAGE = "python launch/train.py --config=configs/<name>.py --workdir=DIR [--config.<key>=VALUE]"
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
CONFIG = ConfigArgs(USAGE)  # --config and --config.<key>=<value>, split off before absl


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        # At once: no waiting for a checkpoint in flight (orbax's temporary directory is
        # ignored, and removed at the next start).
        fail_now("aborted by Ctrl-C; rerun the same command to resume from the newest complete "
                 "checkpoint", status=130)


def _main() -> None:
    with exit_on_bad_input():
        if not _WORKDIR.value:
            raise ValueError(f"--workdir=DIR is required. Usage: {USAGE}")
        RunDir(_WORKDIR.value).check_writable()  # the output's place first
        path, overrides = CONFIG.path, CONFIG.overrides
        from vdm_jax.parallel import distributed
        from vdm_jax.pipelines import train as pipeline
        from vdm_jax.training.loop import DiskFullError, NonFiniteLossError

        distributed.initialize(pipeline.distributed_settings(_WORKDIR.value, path, overrides))
        config, notes = pipeline.resolve_config(_WORKDIR.value, path, overrides)
        for note in notes:
            print(note, file=sys.stderr, flush=True)
        try:
            summary = pipeline.run(config, _WORKDIR.value)
        except NonFiniteLossError as e:
            fail(str(e), status=1)
        except DiskFullError as e:  # orbax's threads of the failed save would only repeat it
            fail_now(str(e), status=1)
    if summary.get("stopped_in") == "evaluation":
        print(f"Preempted ({summary['signal']}) during the end-of-run evaluation: training is "
              f"saved (step {summary['step']} in {_WORKDIR.value}); rerun the same command to "
              "evaluate.", flush=True)
    elif summary["preempted"]:
        print(f"Preempted ({summary['signal']}): saved step {summary['step']} in "
              f"{_WORKDIR.value}.", flush=True)
    elif "results" in summary:
        print(pipeline.format_results(summary["results"]), flush=True)
    elif summary["sample_grid"]:
        print(f"sample grid: {summary['sample_grid']}", flush=True)


if __name__ == "__main__":
    # Before JAX initializes: malloc retention, XLA flags, one virtual CPU device per core
    # (vdm_jax.parallel.host; VDM_HOST_MALLOC / VDM_CPU_DEVICES / XLA_FLAGS override).
    launch(main, CONFIG, __doc__, before=host.configure)
