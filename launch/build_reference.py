"""Build an ADM-format reference batch (.npz) from a dataset split with the FID Inception.

    python launch/build_reference.py --dataset=cifar10 --manual_dir=DIR --split=train \
        --out=cifar10_train_ref.npz --inception_weights=inception_fid.npz
    python launch/build_reference.py --dataset=imagenet2012 --manual_dir=DIR --image_size=256 \
        --split=train --max_images=50000 --out=imagenet256_ref.npz
    python launch/build_reference.py --dataset=image_folder --image_folder=ROOT --image_size=64 \
        --split=eval --out=folder_ref.npz
    python launch/build_reference.py --dataset=digits --split=eval --out=digits_ref.npz

Flags --dataset/--data_dir/--manual_dir/--image_folder/--image_size are the `data.*` config keys
of the input pipeline (vdm_jax/data/pipeline.py), so the images are exactly the training
preprocessing (ADM center crop), without flips, written back to 8 bits. --split=train reads a
random subset of --max_images training images (seeded by --seed, no repeats); --split=eval
the evaluation split (test/validation) in order. The .npz holds mu, sigma (pool3), mu_s, sigma_s
(sFID) of all images read and the first --num_stored_images of them as arr_0 (precision/recall);
the settings go to the .json beside it, which evaluate.py copies into its results.
"""

from __future__ import annotations

import sys

from absl import flags

from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.data import DATASETS
from vdm_jax.evaluation.features import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FID_MODE,
    FID_MODES,
    load_eval_inception,
)
from vdm_jax.evaluation.reference import build_reference, iter_reference_images
from vdm_jax.io import check_writable, write_json
from vdm_jax.rundir import RunDir

USAGE = ("python launch/build_reference.py --dataset=NAME --split=train|eval --out=REF.npz "
         "[--inception_weights=FILE]")
_DATASET = flags.DEFINE_enum("dataset", "digits", DATASETS, "data.name of the input pipeline.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir (default $VDM_JAX_DATA_DIR).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw files of imagenet2012 / cifar10.")
_FOLDER = flags.DEFINE_string("image_folder", None, "Root of an ImageFolder tree.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Crop size (required for imagenet2012 "
                                   "and image_folder).")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "eval"], "Split to read.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 50_000, "Images in the statistics (at most).")
_NUM_STORED = flags.DEFINE_integer("num_stored_images", 10_000, "Images stored as arr_0.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random training subset.")
_OUT = flags.DEFINE_string("out", None, "Output reference .npz.")
_WEIGHTS = flags.DEFINE_string(
    "inception_weights", None, "FID Inception weights; default $VDM_JAX_INCEPTION_WEIGHTS."
)
_RANDOM = flags.DEFINE_bool(
    "random_inception", False, "Random Inception weights (tests only: statistics meaningless)."
)
_BATCH = flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Inception batch size.")
_FID_MODE = flags.DEFINE_enum("fid_mode", DEFAULT_FID_MODE, list(FID_MODES),
                              "FID preprocessing ('adm': as the ADM evaluator; recorded beside "
                              "the batch, and evaluate.py uses the same).")
ARGS = ConfigArgs(USAGE, takes_config=False)


def main() -> None:
    if not _OUT.value or not _OUT.value.endswith(".npz"):
        raise ValueError(f"--out must name the output .npz file, got {_OUT.value!r}")
    check_writable(_OUT.value, "--out")  # before hours of Inception work
    model, weights = load_eval_inception(_WEIGHTS.value, 0 if _RANDOM.value else None)
    data = {
        "name": _DATASET.value, "data_dir": _DATA_DIR.value, "manual_dir": _MANUAL_DIR.value,
        "image_folder": _FOLDER.value, "image_size": _IMAGE_SIZE.value, "random_flip": False,
    }
    print(f"reading the {_SPLIT.value} split of {_DATASET.value} (at most {_MAX_IMAGES.value} "
          "images) through the FID Inception …", file=sys.stderr, flush=True)
    chunks = iter_reference_images(data, _SPLIT.value, _MAX_IMAGES.value, seed=_SEED.value)
    counts = []  # shapes of the chunks read, for the settings file
    ref = build_reference(
        (counts.append(c.shape) or c for c in chunks), model, _OUT.value,
        batch_size=_BATCH.value, num_stored_images=_NUM_STORED.value, mode=_FID_MODE.value,
    )
    settings = {
        "data": data, "split": _SPLIT.value, "num_images": sum(c[0] for c in counts),
        "seed": _SEED.value,
        "num_stored_images": 0 if ref.images is None else len(ref.images),
        "inception_weights": weights, "fid_mode": _FID_MODE.value,
        "image_shape": list(counts[0][1:]) if counts else None,
    }
    write_json(RunDir.settings_of(ref.path), settings)
    print(f"wrote {ref.path} (mu {ref.mu.shape}, mu_s {ref.mu_s.shape}, arr_0 "
          f"{None if ref.images is None else ref.images.shape}) and {RunDir.settings_of(ref.path)}")


if __name__ == "__main__":
    launch(main, ARGS, __doc__)
