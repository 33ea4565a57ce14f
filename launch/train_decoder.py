"""Train an RAE decoder: python launch/train_decoder.py --config=configs/<name>.py --workdir=DIR.

The decoder-training loop of vdm_jax.training.decoder (L1 + LPIPS + the DINO discriminator with
VQGAN's adaptive weight, noise-augmented latents, EMA) on the networks the config names
(vdm_jax.pipelines.train_decoder), then the RAE path on the evaluation split with the EMA
decoder: latents, reconstructions and their figures (`eval_results.json`). Override any field
with `--config.<key>=<value>`. Rerunning with the same workdir resumes the run from its newest
checkpoint (bit for bit as if uninterrupted); a config that may not resume it is refused.

Exit status: 0 when done; 2 with one line `error: ...` for bad input (an unknown key or a wrong
value, missing or foreign weights, a workdir in use or holding another run), before anything is
written; 1 with `error: ...` when a loss becomes NaN or Inf.
"""

from __future__ import annotations

import json

from absl import app, flags

from vdm_jax.cli import ConfigArgs, exit_on_bad_input, fail, quiet_third_party_logs
from vdm_jax.parallel import host

USAGE = ("python launch/train_decoder.py --config=configs/<name>.py --workdir=DIR "
         "[--config.<key>=VALUE]")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
CONFIG = ConfigArgs(USAGE)


def main(argv: list[str]) -> None:
    quiet_third_party_logs()
    with exit_on_bad_input():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; flags are --name=value. "
                             f"Usage: {USAGE}")
        if not _WORKDIR.value:
            raise ValueError(f"--workdir=DIR is required. Usage: {USAGE}")
        if not CONFIG.path:
            raise ValueError(f"--config=PATH is required. Usage: {USAGE}")
        from vdm_jax.config import load
        from vdm_jax.pipelines import train_decoder as pipeline
        from vdm_jax.rundir import RunDir

        config = load(CONFIG.path, CONFIG.overrides)
        RunDir(_WORKDIR.value).check_writable()
        RunDir(_WORKDIR.value).check_unlocked()
        try:
            summary = pipeline.run(config, _WORKDIR.value)
        except FloatingPointError as e:
            fail(str(e), status=1)
    print(json.dumps(summary["results"], indent=1), flush=True)


if __name__ == "__main__":
    with exit_on_bad_input():
        host.configure()
    app.run(main, flags_parser=CONFIG.parse)
