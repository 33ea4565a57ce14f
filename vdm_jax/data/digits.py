"""scikit-learn's handwritten digits as a tfds dataset (the embedded default, no network).

`sklearn.datasets.load_digits()` ships 1797 images of 8×8 pixels with integer gray levels
k ∈ {0..16} (K = 17 levels) and labels 0..9, read from a file inside the scikit-learn package.

Fixed split: the rows of `load_digits()` are permuted with `np.random.default_rng(20240607)`;
the first 1497 permuted rows are `train`, the last 300 are `test`. Each example keeps its row
number in `load_digits()` as `index`, so the split can be audited.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data.tfds_utils import default_data_dir, load_prepared

NUM_LEVELS = 17  # gray levels 0..16
NUM_CLASSES = 10
NUM_IMAGES = 1797
NUM_TEST = 300
SPLIT_SEED = 20240607
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"


def split_rows() -> dict[str, np.ndarray]:
    """Row indices of `load_digits()` in each split (the seeded permutation documented above)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    return {TRAIN_SPLIT: perm[: NUM_IMAGES - NUM_TEST], EVAL_SPLIT: perm[NUM_IMAGES - NUM_TEST :]}


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder for `sklearn.datasets.load_digits` (image (8, 8, 1) uint8 in 0..16)."""

    name = "sklearn_digits"
    code_path = None  # no checksums file: nothing is downloaded (see tfds_utils.load_prepared)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "1497 train / 300 test from a seeded permutation."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # Raw levels, not an encoded Image: 0..16 is not an 8-bit image.
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        return {split: self._generate_examples(rows) for split, rows in split_rows().items()}

    def _generate_examples(self, rows):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1); levels are ints
        for row in rows:
            yield int(row), {
                "image": images[row],
                "label": int(digits.target[row]),
                "index": int(row),
            }


def load_builder(data_dir: str | None = None) -> SklearnDigits:
    """The prepared digits builder; prepares it (≈2 s) in `data_dir` on first use."""
    data_dir = default_data_dir(data_dir)
    return load_prepared(
        lambda: SklearnDigits(data_dir=data_dir, file_format="array_record"), data_dir=data_dir
    )
