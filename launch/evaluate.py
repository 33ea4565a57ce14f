"""Evaluate samples and runs: FID, sFID, IS, precision/recall (k = 3), digits metrics, bits/dim.

    # Inception metrics against an ADM reference batch (mu, sigma, mu_s, sigma_s; arr_0 images
    # for precision/recall), with the FID Inception weights (see launch/convert_inception.py):
    python launch/evaluate.py --samples=DIR/samples.npz --ref=REF.npz \
        --inception_weights=inception_fid.npz        # or $VDM_JAX_INCEPTION_WEIGHTS
    # Digits metrics (no outside weights): digits-FID, its real-vs-real floor, class accuracy;
    # the metric classifier is trained once and cached in --workdir (default: the samples' dir):
    python launch/evaluate.py --samples=DIR/samples.npz --digits --workdir=DIR

    # Held-out bits/dim (−ELBO on the evaluation split, its terms, and the uniform and
    # independent per-pixel baselines) of a trained run, alone or beside the sample metrics:
    python launch/evaluate.py --bpd_workdir=RUN [--ema=0.9999] [--bpd_passes=8]
    python launch/evaluate.py --samples=RUN/samples/x.npz --digits --bpd_workdir=RUN

All modes can be combined. The samples are an ADM `.npz` (`arr_0` uint8 NHWC, optional `arr_1`
labels). Sampling settings recorded beside them in DIR/samples.json (or --settings_from) are
merged into the results JSON, written to --out (default DIR/samples.metrics.json) with every
evaluation setting; with --bpd_workdir and no --samples, to --out (default
RUN/eval/bpd_step<step>_<ema>.json, beside the checkpoints). Prints a table. Bad input:
`error: ...` on stderr, exit status 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import flags

from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.evaluation.evaluate import evaluate_samples_file
from vdm_jax.evaluation.features import DEFAULT_BATCH_SIZE, FID_MODES
from vdm_jax.evaluation.likelihood import bpd_metrics
from vdm_jax.evaluation.results import format_table, write_results_json
from vdm_jax.io import check_writable
from vdm_jax.rundir import RunDir

USAGE = ("python launch/evaluate.py --samples=FILE.npz [--ref=REF.npz | --digits] "
         "[--bpd_workdir=RUN] [--out=FILE.json]")
_SAMPLES = flags.DEFINE_string("samples", None, "Sample batch .npz (arr_0 uint8 NHWC, arr_1).")
_REF = flags.DEFINE_string("ref", None, "ADM reference batch .npz: FID, sFID, IS, prec./recall.")
_WEIGHTS = flags.DEFINE_string(
    "inception_weights", None,
    "FID Inception weights (.pth of pytorch-fid or converted .npz); default "
    "$VDM_JAX_INCEPTION_WEIGHTS.",
)
_RANDOM = flags.DEFINE_bool(
    "random_inception", False, "Random Inception weights (tests only: figures are meaningless)."
)
_DIGITS = flags.DEFINE_bool("digits", False, "Digits metrics (digits-FID, class accuracy).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Cache directory of the digits classifier (default: the samples' dir)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir of the digits (default cache).")
_SETTINGS = flags.DEFINE_string(
    "settings_from", None, "Sampling settings JSON to merge (default: <samples>.json if present)."
)
_OUT = flags.DEFINE_string("out", None, "Results JSON (default: <samples>.metrics.json).")
_BATCH = flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Inception batch size.")
_FID_MODE = flags.DEFINE_enum(
    "fid_mode", None, list(FID_MODES), "FID preprocessing: 'adm' (the ADM evaluator's, which "
    "made the published FIDs and reference batches) or 'pytorch_fid'; default: the mode recorded "
    "beside the reference by build_reference.py, else 'adm'.")
_BPD_WORKDIR = flags.DEFINE_string(
    "bpd_workdir", None, "Training run whose held-out bits/dim (−ELBO) to report."
)
_EMA = flags.DEFINE_string("ema", "", "bits/dim parameters: '' = the run's first EMA, 'none' = "
                           "raw, or a decay.")
_BPD_STEP = flags.DEFINE_integer("bpd_step", None, "Checkpoint step (default: the newest).")
_BPD_PASSES = flags.DEFINE_integer(
    "bpd_passes", None, "Passes over the split with fresh (t, ε); default config.eval.bpd_passes."
)
_BPD_BATCH = flags.DEFINE_integer(
    "bpd_batch_size", None, "bits/dim batch size; default the run's config.eval.batch_size."
)


ARGS = ConfigArgs(USAGE, takes_config=False)


def _path(value: str | None) -> str | None:
    """A path flag with `~` expanded (the shell leaves `--flag=~/x` alone)."""
    return os.path.expanduser(value) if value else value


def main() -> None:
    if not _SAMPLES.value and not _BPD_WORKDIR.value:
        raise ValueError("give --samples=PATH.npz and/or --bpd_workdir=RUN")
    samples, ref, out = _path(_SAMPLES.value), _path(_REF.value), _path(_OUT.value)
    # The results' path before any work (bits/dim and Inception features take minutes).
    if out:
        check_writable(out, "--out")
    elif samples:
        check_writable(RunDir.results_of(samples), "the results file beside --samples "
                       "(give --out)")
    else:
        check_writable(RunDir(_path(_BPD_WORKDIR.value)).eval_dir, "--bpd_workdir's eval/ "
                       "(give --out)", directory=True)
    # Then the inputs: bits/dim may take minutes before the samples are read.
    for what, path in (("sample batch", samples), ("reference batch", ref)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
    bpd = None
    if _BPD_WORKDIR.value:
        from vdm_jax.checkpoints.restore import load_for_inference

        restored = load_for_inference(_BPD_WORKDIR.value, ema=_EMA.value, step=_BPD_STEP.value)
        bpd = bpd_metrics(restored, passes=_BPD_PASSES.value, batch_size=_BPD_BATCH.value)
        bpd[1]["bpd"]["workdir"] = str(restored.rundir.root)
    if not samples:
        metrics = {**bpd[0], "unavailable": {}}
        path = write_results_json(
            out or restored.rundir.bpd_results(restored.step, restored.ema),
            metrics, bpd[1],
        )
        print(format_table(metrics))
        print(f"wrote {path}")
        return
    metrics, _, path = evaluate_samples_file(
        samples,
        ref_path=ref,
        inception_weights=_path(_WEIGHTS.value),
        random_inception_seed=0 if _RANDOM.value else None,
        digits=_DIGITS.value,
        cache_dir=_path(_WORKDIR.value),
        data_dir=_path(_DATA_DIR.value),
        settings_from=_path(_SETTINGS.value),
        out=out,
        batch_size=_BATCH.value,
        fid_mode=_FID_MODE.value,
        extra=bpd,
    )
    print(format_table(metrics))
    print(f"wrote {path}")


if __name__ == "__main__":
    launch(main, ARGS, __doc__)
