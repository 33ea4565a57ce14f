"""Evaluate a sample batch: FID, sFID, Inception Score, precision/recall (k = 3), digits metrics.

    # Inception metrics against an ADM reference batch (mu, sigma, mu_s, sigma_s; arr_0 images
    # for precision/recall), with the FID Inception weights (see launch/convert_inception.py):
    python launch/evaluate.py --samples=DIR/samples.npz --ref=REF.npz \
        --inception_weights=inception_fid.npz        # or $VDM_JAX_INCEPTION_WEIGHTS
    # Digits metrics (no outside weights): digits-FID, its real-vs-real floor, class accuracy;
    # the metric classifier is trained once and cached in --workdir (default: the samples' dir):
    python launch/evaluate.py --samples=DIR/samples.npz --digits --workdir=DIR

Both modes can be combined. The samples are an ADM `.npz` (`arr_0` uint8 NHWC, optional `arr_1`
labels). Sampling settings recorded beside them in DIR/samples.json (or --settings_from) are
merged into the results JSON, written to --out (default DIR/samples.metrics.json) with every
evaluation setting. Prints a table. Bad input: `error: ...` on stderr, exit status 2.
"""

from __future__ import annotations

from absl import app, flags

from vdm_jax.cli import exit_on_bad_input
from vdm_jax.evaluation.evaluate import DEFAULT_BATCH_SIZE, evaluate_samples_file, format_table

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


def main(argv: list[str]) -> None:
    with exit_on_bad_input():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
        if not _SAMPLES.value:
            raise ValueError("--samples=PATH.npz is required")
        metrics, _, path = evaluate_samples_file(
            _SAMPLES.value,
            ref_path=_REF.value,
            inception_weights=_WEIGHTS.value,
            random_inception_seed=0 if _RANDOM.value else None,
            digits=_DIGITS.value,
            cache_dir=_WORKDIR.value,
            data_dir=_DATA_DIR.value,
            settings_from=_SETTINGS.value,
            out=_OUT.value,
            batch_size=_BATCH.value,
        )
    print(format_table(metrics))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
