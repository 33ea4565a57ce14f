"""CIFAR-10 (32×32×3, 10 classes, 50000 train / 10000 test), prepared offline.

`manual_dir` must hold the binary version from https://www.cs.toronto.edu/~kriz/cifar.html,
either the archive `cifar-10-binary.tar.gz` or its extracted folder `cifar-10-batches-bin/`
(data_batch_1..5.bin, test_batch.bin, batches.meta.txt). Each record of a .bin file is one label
byte followed by 3072 image bytes in CHW order.

The builder is tfds's own `cifar10` (same name, version and features), with reading done by
`open`/`tarfile` and PNG encoding by Pillow instead of TensorFlow; data prepared by tfds itself in
array_record format is read as is.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image
from tensorflow_datasets.image_classification import cifar as _tfds_cifar

from vdm_jax.data.tfds_utils import default_data_dir, load_prepared, missing_files_error

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
META_FILE = "batches.meta.txt"
NUM_CLASSES = 10
NUM_LEVELS = 256
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"
_RECORD_BYTES = 1 + 32 * 32 * 3


def _file_readers(manual_dir: str) -> dict[str, Callable[[], bytes]]:
    """name -> function returning that file's bytes, from the extracted folder or the archive."""
    folder = os.path.join(manual_dir, FOLDER)
    names = (*TRAIN_FILES, *TEST_FILES, META_FILE)
    if os.path.isdir(folder):

        def read_file(name: str) -> Callable[[], bytes]:
            def read() -> bytes:
                with open(os.path.join(folder, name), "rb") as f:
                    return f.read()

            return read

        return {name: read_file(name) for name in names}

    def read_member(name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with tarfile.open(os.path.join(manual_dir, ARCHIVE), mode="r:gz") as tar:
                return tar.extractfile(f"{FOLDER}/{name}").read()

        return read

    return {name: read_member(name) for name in names}


def decode_records(data: bytes) -> Iterator[tuple[int, np.ndarray]]:
    """(label, image (32, 32, 3) uint8) for each 3073-byte record of a CIFAR-10 .bin file."""
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD_BYTES)
    for row in records:
        yield int(row[0]), row[1:].reshape(3, 32, 32).transpose(1, 2, 0)


class Cifar10(_tfds_cifar.Cifar10, skip_registration=True):
    """tfds's cifar10 builder, prepared without TensorFlow from `manual_dir`."""

    name = "cifar10"
    code_path = None  # no checksums file: nothing is downloaded
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    manual_dir should contain {ARCHIVE} (or its extracted folder {FOLDER}/) from
    https://www.cs.toronto.edu/~kriz/cifar.html.
    """

    def _split_generators(self, dl_manager):
        readers = _file_readers(os.fspath(dl_manager.manual_dir))
        names = readers[META_FILE]().decode().split("\n")
        self.info.features["label"].names = [n for n in names if n]
        return {
            TRAIN_SPLIT: self._generate_examples("train_", [readers[f] for f in TRAIN_FILES]),
            EVAL_SPLIT: self._generate_examples("test_", [readers[f] for f in TEST_FILES]),
        }

    def _generate_examples(self, split_prefix, filepaths):
        # `filepaths` are byte readers here; keys and ids follow tfds (running index per split).
        index = 0
        for read in filepaths:
            for label, image in decode_records(read()):
                yield index, {
                    "id": f"{split_prefix}{index:05d}",
                    "image": Image.fromarray(image),  # PNG-encoded by Pillow
                    "label": label,
                }
                index += 1


def load_builder(data_dir: str | None = None, manual_dir: str | None = None) -> Cifar10:
    """The prepared cifar10 builder; prepares it from `manual_dir` on first use."""
    data_dir = default_data_dir(data_dir)
    manual = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else None

    def check_inputs() -> None:
        hint = (
            f"No prepared data in {data_dir}/cifar10. Put {ARCHIVE} (or its extracted folder "
            f"{FOLDER}/) from https://www.cs.toronto.edu/~kriz/cifar.html in data.manual_dir; "
            "it is prepared once (no network access)."
        )
        expected = [ARCHIVE, *(f"{FOLDER}/{f}" for f in (*TRAIN_FILES, *TEST_FILES, META_FILE))]
        if not manual:
            raise missing_files_error("cifar10 (data.manual_dir is not set)", "<manual_dir>",
                                      expected, hint)
        folder = os.path.join(manual, FOLDER)
        if os.path.isdir(folder):
            missing = [f"{FOLDER}/{f}" for f in (*TRAIN_FILES, *TEST_FILES, META_FILE)
                       if not os.path.isfile(os.path.join(folder, f))]
        else:
            missing = [] if os.path.isfile(os.path.join(manual, ARCHIVE)) else expected
        if missing:
            raise missing_files_error("cifar10", manual, missing, hint)

    return load_prepared(
        lambda: Cifar10(data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        manual_dir=manual,
        check_inputs=check_inputs,
    )
