"""CIFAR-10 (32×32×3, 10 classes, 50000 train / 10000 test), prepared offline.

`manual_dir` must hold the binary version from https://www.cs.toronto.edu/~kriz/cifar.html,
either the archive `cifar-10-binary.tar.gz` or its extracted folder `cifar-10-batches-bin/`
(data_batch_1..5.bin, test_batch.bin, batches.meta.txt). Each record of a .bin file is one label
byte followed by 3072 image bytes in CHW order.

The builder is tfds's own `cifar10` (same name, version and features), with reading done by
`open`/`tarfile` and PNG encoding by Pillow instead of TensorFlow; data prepared by tfds itself in
array_record format is read as is.

Before preparing, the inputs are checked whole (the archive is read to its end): a missing member,
a truncated or corrupt archive, a .bin file that is not a whole number of records or holds a
label outside 0..9, or a label file without 10 names is a one-line FileNotFoundError/ValueError
naming the file and saying to download it again.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image
from tensorflow_datasets.image_classification import cifar as _tfds_cifar

from vdm_jax.data.tfds_utils import (
    DatasetNotFoundError,
    default_data_dir,
    load_prepared,
    missing_files_error,
)

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


URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _redownload(manual_dir: str) -> str:
    """What to do about a bad input file: the extracted folder, when present, is what is read."""
    if os.path.isdir(os.path.join(manual_dir, FOLDER)):
        return (f"re-download {ARCHIVE} from {URL} and extract it again into {manual_dir} "
                f"(replacing {FOLDER}/)")
    return f"re-download {ARCHIVE} from {URL} into {manual_dir}"


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

    archive = os.path.join(manual_dir, ARCHIVE)

    def read_member(name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with _open_archive(archive, manual_dir) as tar:
                try:
                    member = tar.extractfile(f"{FOLDER}/{name}")
                except KeyError:
                    member = None
                if member is None:
                    raise _missing_member(archive, name, manual_dir)
                return member.read()

        return read

    return {name: read_member(name) for name in names}


@contextlib.contextmanager
def _open_archive(archive: str, manual_dir: str) -> Iterator[tarfile.TarFile]:
    """The archive, open; a truncated or corrupt one is a ValueError naming it."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(
            f"cifar10: {archive} is truncated or corrupt ({type(e).__name__}: {e}); "
            f"{_redownload(manual_dir)}."
        ) from None


def _missing_member(archive: str, name: str, manual_dir: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"cifar10: {archive} has no {FOLDER}/{name} (an incomplete archive, or not the binary "
        f"version); {_redownload(manual_dir)}."
    )


def _check_records(data: bytes, where: str, manual_dir: str) -> None:
    """A .bin file is a non-empty whole number of records, each label in 0..9."""
    if not data or len(data) % _RECORD_BYTES:
        raise ValueError(
            f"cifar10: {where} has {len(data)} bytes, not a whole number of {_RECORD_BYTES}-byte "
            f"records (1 label byte + 32×32×3 image bytes): it is truncated or corrupt; "
            f"{_redownload(manual_dir)}."
        )
    labels = np.frombuffer(data, np.uint8)[::_RECORD_BYTES]
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise ValueError(
            f"cifar10: record {bad} of {where} has label {labels[bad]}, not in 0..9: the file is "
            f"corrupt (or from CIFAR-100); {_redownload(manual_dir)}."
        )


def _check_meta(data: bytes, where: str, manual_dir: str) -> list[str]:
    """The 10 class names of batches.meta.txt."""
    names = [n for n in data.decode(errors="replace").split("\n") if n]
    if len(names) != NUM_CLASSES:
        raise ValueError(
            f"cifar10: {where} lists {len(names)} class names, not {NUM_CLASSES}: it is corrupt; "
            f"{_redownload(manual_dir)}."
        )
    return names


def check_files(manual_dir: str) -> None:
    """Reads every input file whole and checks it (see the module docstring); the archive is
    read to its end, so a truncated one is found before preparing starts."""

    def check(name: str, data: bytes, where: str) -> None:
        if name == META_FILE:
            _check_meta(data, where, manual_dir)
        else:
            _check_records(data, where, manual_dir)

    folder = os.path.join(manual_dir, FOLDER)
    if os.path.isdir(folder):
        for name, read in _file_readers(manual_dir).items():
            check(name, read(), os.path.join(folder, name))
        return
    archive = os.path.join(manual_dir, ARCHIVE)
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_FILES, *TEST_FILES, META_FILE)}
    found = set()
    with _open_archive(archive, manual_dir) as tar:
        for member in tar:  # streams through the whole archive
            if member.name in wanted and member.isfile():
                name = wanted[member.name]
                check(name, tar.extractfile(member).read(), f"{member.name} in {archive}")
                found.add(name)
    for name in wanted.values():
        if name not in found:
            raise _missing_member(archive, name, manual_dir)


def decode_records(data: bytes) -> Iterator[tuple[int, np.ndarray]]:
    """(label, image (32, 32, 3) uint8) for each 3073-byte record of a CIFAR-10 .bin file."""
    if len(data) % _RECORD_BYTES:
        raise ValueError(f"cifar10: {len(data)} bytes are not a whole number of "
                         f"{_RECORD_BYTES}-byte records.")
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
        manual_dir = os.fspath(dl_manager.manual_dir)
        readers = _file_readers(manual_dir)
        names = _check_meta(readers[META_FILE](), META_FILE, manual_dir)
        self.info.features["label"].names = names
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
        check_files(manual)

    return load_prepared(
        lambda: Cifar10(data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        manual_dir=manual,
        check_inputs=check_inputs,
    )
