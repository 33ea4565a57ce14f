"""ImageNet 2012 (ILSVRC 2012), prepared offline from the user's `manual_dir`.

`manual_dir` must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from
https://image-net.org/download-images). Preparation stores the original JPEGs (any resolution)
as array_record under `data_dir/imagenet2012/5.1.0/`; resizing to the training resolution
happens at load time (ADM center crop, see pipeline.center_crop), so one prepared copy serves
every resolution.

The builder is tfds's own `imagenet2012` (same name, version, features and label order), with the
three steps that need TensorFlow replaced: file access uses plain `open`/`tarfile`, and the
CMYK/PNG fix-ups use Pillow. Data prepared by tfds itself (array_record format) is read as is.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from typing import IO

import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as _tfds_imagenet

from vdm_jax.data.tfds_utils import default_data_dir, load_prepared, missing_files_error

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
NUM_CLASSES = 1000
NUM_LEVELS = 256
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"


def _iter_tar(path: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(member basename, file object) for each regular file of a tar, read as a stream."""
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield os.path.basename(member.name), tar.extractfile(member)


def _validation_labels(val_tar: str) -> dict[str, str]:
    """Maps validation image names to synsets: tfds's label list is in sorted-name order."""
    labels_path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    labels = labels_path.read_text().strip().splitlines()
    with tarfile.open(val_tar, mode="r:") as tar:
        names = sorted(os.path.basename(n) for n in tar.getnames())
    return dict(zip(names, labels, strict=False))


def _reencode_rgb_jpeg(data: bytes) -> bytes:
    """Decodes any image (CMYK JPEG, PNG) and re-encodes it as an RGB JPEG (quality 100)."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=100)
    return out.getvalue()


class Imagenet2012(_tfds_imagenet.Builder, skip_registration=True):
    """tfds's imagenet2012 builder, prepared without TensorFlow (train and validation splits)."""

    name = "imagenet2012"
    code_path = None  # no checksums file: nothing is downloaded

    def _split_generators(self, dl_manager):
        train_tar = os.path.join(dl_manager.manual_dir, TRAIN_TAR)
        val_tar = os.path.join(dl_manager.manual_dir, VAL_TAR)
        return {
            TRAIN_SPLIT: self._generate_examples(archive=_iter_tar(train_tar)),
            EVAL_SPLIT: self._generate_examples(
                archive=_iter_tar(val_tar), validation_labels=_validation_labels(val_tar)
            ),
        }

    def _fix_image(self, image_fname, image):
        # Same 23 files as tfds (22 CMYK JPEGs, one PNG named .JPEG), fixed with Pillow.
        if image_fname in _tfds_imagenet.CMYK_IMAGES or image_fname in _tfds_imagenet.PNG_IMAGES:
            return io.BytesIO(_reencode_rgb_jpeg(image.read()))
        return image


def load_builder(data_dir: str | None = None, manual_dir: str | None = None) -> Imagenet2012:
    """The prepared imagenet2012 builder; prepares it from `manual_dir` on first use.

    Raises DatasetNotFoundError naming `manual_dir` and the two tar files when the data is
    neither prepared in `data_dir` nor available in `manual_dir`.
    """
    data_dir = default_data_dir(data_dir)
    manual = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else None
    prepared_dir = os.path.join(data_dir, "imagenet2012", str(Imagenet2012.VERSION))

    def check_inputs() -> None:
        hint = (
            f"No prepared data in {prepared_dir}. Download the tar files from "
            "https://image-net.org/download-images and set data.manual_dir to their directory; "
            "they are prepared once (no network access)."
        )
        if not manual_dir:
            raise missing_files_error(
                "imagenet2012 (data.manual_dir is not set)", "<manual_dir>", [TRAIN_TAR, VAL_TAR],
                hint,
            )
        missing = [f for f in (TRAIN_TAR, VAL_TAR) if not os.path.isfile(os.path.join(manual, f))]
        if missing:
            raise missing_files_error("imagenet2012", manual, missing, hint)

    return load_prepared(
        lambda: Imagenet2012(data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        manual_dir=manual,
        check_inputs=check_inputs,
    )
