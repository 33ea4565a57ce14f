"""ImageNet 2012 (ILSVRC 2012), prepared offline from the user's `manual_dir`.

`manual_dir` must hold ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from
https://image-net.org/download-images). Preparation stores the original JPEGs (any resolution)
as array_record under `data_dir/imagenet2012/5.1.0/`; resizing to the training resolution
happens at load time (ADM center crop, see records.center_crop), so one prepared copy serves
every resolution.

The builder is tfds's own `imagenet2012` (same name, version, features and label order), with the
three steps that need TensorFlow replaced: file access uses plain `open`/`tarfile`, and the
CMYK/PNG fix-ups use Pillow. Data prepared by tfds itself (array_record format) is read as is.

Before preparing, each tar's headers are walked (seeks only, no image is read): a tar cut short
(a member's data past the end of the file, or no end-of-archive marker after the last member) is a
one-line ValueError naming it, and so is a corrupt member found while preparing. Validation
labels are looked up by the number in each file name (ILSVRC2012_val_<n>.JPEG is line n of tfds's
list), so a missing file cannot shift the labels of the others.
"""

from __future__ import annotations

import io
import os
import re
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
URL = "https://image-net.org/download-images"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


def _damaged_tar(path: str, problem: str) -> ValueError:
    return ValueError(
        f"imagenet2012: {path} is truncated or corrupt ({problem}); download "
        f"{os.path.basename(path)} again from {URL} into {os.path.dirname(path)}."
    )


def check_tar(path: str) -> list[str]:
    """The member names of a tar, walking its headers only (seeks: cheap even for the 147 GB
    training tar); raises ValueError naming it when it is cut short."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            names = [member.name for member in tar]
            end = tar.offset  # where the end-of-archive marker (zero blocks) must start
    except (tarfile.TarError, EOFError) as e:
        raise _damaged_tar(path, f"{type(e).__name__}: {e}") from None
    with open(path, "rb") as f:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise _damaged_tar(path, f"it ends at byte {os.path.getsize(path)} without the "
                                 "end-of-archive marker")
    return names


def _iter_tar(path: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(member basename, file object) for each regular file of a tar, read as a stream."""
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                yield os.path.basename(member.name), tar.extractfile(member)


def _validation_labels(val_tar: str) -> dict[str, str]:
    """Maps validation image names to synsets: ILSVRC2012_val_<n>.JPEG has line n of tfds's list
    (the list is in file-name order)."""
    labels_path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    labels = labels_path.read_text().strip().splitlines()
    out = {}
    for name in map(os.path.basename, check_tar(val_tar)):
        match = _VAL_NAME.fullmatch(name)
        if not match or not 1 <= int(match[1]) <= len(labels):
            raise ValueError(
                f"imagenet2012: unexpected file {name!r} in {val_tar} (expected "
                f"ILSVRC2012_val_00000001.JPEG .. ILSVRC2012_val_{len(labels):08d}.JPEG); "
                f"download {VAL_TAR} again from {URL}."
            )
        out[name] = labels[int(match[1]) - 1]
    return out


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
            TRAIN_SPLIT: self._generate_examples(archive=_iter_tar(train_tar), tar_path=train_tar),
            EVAL_SPLIT: self._generate_examples(
                archive=_iter_tar(val_tar), validation_labels=_validation_labels(val_tar),
                tar_path=val_tar,
            ),
        }

    def _generate_examples(self, archive, validation_labels=None, labels_exist=True,
                           tar_path=""):
        # tfds's generator, with a damaged member (inner tar, stream) named as one line.
        current = [""]

        def tracked():
            for name, fobj in archive:
                current[0] = name
                yield name, fobj

        try:
            yield from super()._generate_examples(tracked(), validation_labels, labels_exist)
        except (tarfile.TarError, EOFError) as e:
            where = f"at member {current[0]}, " if current[0] else ""
            raise _damaged_tar(tar_path, f"{where}{type(e).__name__}: {e}") from None

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
        for name in (TRAIN_TAR, VAL_TAR):
            check_tar(os.path.join(manual, name))

    return load_prepared(
        lambda: Imagenet2012(data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        manual_dir=manual,
        check_inputs=check_inputs,
    )
