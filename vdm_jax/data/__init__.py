"""Datasets and the input pipeline (tfds array_record + grain, sharded per host, resumable).

Datasets (`data.name`): "digits" (scikit-learn's 8×8 digits, K = 17 levels, embedded default),
"imagenet2012" (from data.manual_dir), "cifar10" (from data.manual_dir), "image_folder"
(data.image_folder = root/<split>/<label>/<image>) and "synthetic" (random 8-bit images of
data.image_size² × data.synthetic_channels and data.synthetic_classes labels, no files: for
timing the trainer on data of a given shape). Images are NHWC float32 in [−1, 1] with
x = 2(k + ½)/K − 1 for integer levels k; labels are int32.
"""

from vdm_jax.data.pipeline import (
    DATASETS,
    BatchIterator,
    DatasetInfo,
    dataset_info,
    eval_iterator,
    train_iterator,
)
from vdm_jax.data.pixels import levels_to_unit
from vdm_jax.data.records import center_crop
from vdm_jax.data.tfds_utils import DatasetNotFoundError, default_data_dir

__all__ = [
    "DATASETS",
    "BatchIterator",
    "DatasetInfo",
    "DatasetNotFoundError",
    "center_crop",
    "dataset_info",
    "default_data_dir",
    "eval_iterator",
    "levels_to_unit",
    "train_iterator",
]
