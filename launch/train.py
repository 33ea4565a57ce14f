"""Train a diffusion model: python launch/train.py --config=configs/<name>.py --workdir=DIR.

Override any config field on the command line, e.g. `--config.train.num_steps=100`. Rerunning
with the same workdir resumes from its newest checkpoint. Multi-host: jax.distributed is
initialized from --config.distributed.* when given, or from the environment on Cloud TPU / SLURM
(see launch/tpu/README.md). Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.cli import exit_on_bad_input

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config module.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO
    with exit_on_bad_input():
        from vdm_jax.training import distributed, trainer

        config = _CONFIG.value
        distributed.initialize(config.distributed)
        summary = trainer.train(config, _WORKDIR.value)
        if summary["preempted"]:
            print(f"Preempted: saved step {summary['step']} in {_WORKDIR.value}.")
            return
        if config.eval.at_end and summary["step"] >= config.train.num_steps:
            results = trainer.evaluate_at_end(summary, config, _WORKDIR.value)
            print(trainer.format_results(results), flush=True)
        elif summary["sample_grid"]:
            print(f"sample grid: {summary['sample_grid']}")


if __name__ == "__main__":
    app.run(main)
