"""Offline preparation of tfds builders shared by every dataset module.

Every dataset reaches the pipeline as a tfds builder whose data is stored as array_record in
`data_dir`, so that `builder.as_data_source(split)` gives random access (no TensorFlow needed).
Preparation never touches the network: inputs come from a local `manual_dir` (or are generated,
for the digits) and are checked before tfds is called, so that a missing file is reported as a
`DatasetNotFoundError` naming the directory and the files expected.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

ENV_DATA_DIR = "VDM_JAX_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "vdm_jax", "tensorflow_datasets")


class DatasetNotFoundError(FileNotFoundError):
    """The data of a dataset is missing or unprepared (names the directory and the files)."""


def default_data_dir(data_dir: str | None = None) -> str:
    """Resolves where tfds stores prepared data: `data_dir`, else $VDM_JAX_DATA_DIR, else
    ~/.cache/vdm_jax/tensorflow_datasets."""
    path = data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(path))


def missing_files_error(
    dataset: str, directory: str, expected: Sequence[str], hint: str = ""
) -> DatasetNotFoundError:
    """A DatasetNotFoundError listing the files expected in `directory`."""
    lines = [f"{dataset}: data not found in {directory!r}. Expected:"]
    lines += [f"  {os.path.join(directory, name)}" for name in expected]
    if hint:
        lines.append(hint)
    return DatasetNotFoundError("\n".join(lines))


@contextlib.contextmanager
def _file_lock(directory: str) -> Iterator[None]:
    """Serializes preparation between processes (pytest-xdist workers, several launches)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".vdm_jax_prepare.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _DropMisleading(logging.Filter):
    """tfds log lines that mislead here: a "custom data configuration" is how every image folder
    is named, and the "Variant folder ... has no dataset_info.json" warnings concern the folder
    being prepared."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno < logging.ERROR and "tensorflow_datasets" in record.pathname
                    and ("Using custom data configuration" in message
                         or "has no dataset_info.json" in message))


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Without tfds's misleading console output: the "Downloading and preparing dataset" and
    "downloaded and prepared" lines it prints (nothing is downloaded: the inputs are local) and
    the log lines of `_DropMisleading`. Its progress bars, warnings and errors still show."""
    drop = _DropMisleading()
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow_datasets")]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def load_prepared(
    make_builder: Callable[[], Any],
    *,
    data_dir: str,
    manual_dir: str | None = None,
    check_inputs: Callable[[], None] | None = None,
) -> Any:
    """Returns a prepared builder, preparing it offline first if needed (saying so on stderr,
    instead of tfds's "Downloading and preparing" line).

    `make_builder()` constructs the builder (cheap: it only reads metadata); `check_inputs()`
    raises DatasetNotFoundError when the raw inputs needed for preparation are absent. The
    builder is re-created after preparation so that its info holds the written split sizes.
    """
    with _quiet_tfds():
        builder = make_builder()
        if builder.is_prepared():
            return builder
        with _file_lock(data_dir):
            builder = make_builder()  # another process may have prepared it meanwhile
            if not builder.is_prepared():
                if check_inputs is not None:
                    check_inputs()
                config = tfds.download.DownloadConfig(
                    manual_dir=manual_dir,
                    try_download_gcs=False,  # never fetch prepared data from GCS
                    compute_stats=tfds.download.ComputeStatsMode.SKIP,
                )
                print(f"preparing {builder.name} in {builder.data_dir} from local files (once: "
                      "later runs reuse it) …", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                builder.download_and_prepare(download_config=config)
                print(f"prepared {builder.name} in {time.perf_counter() - t0:.1f} s.",
                      file=sys.stderr, flush=True)
        return make_builder()


def data_source(builder: Any, split: str) -> Any:
    """Random-access source of decoded examples (dicts of numpy arrays) for `split`."""
    if split not in builder.info.splits:
        raise DatasetNotFoundError(
            f"{builder.name}: split {split!r} not found in {builder.data_dir!r} "
            f"(available: {sorted(builder.info.splits)})."
        )
    fmt = builder.info.file_format
    if fmt is not None and fmt != tfds.core.FileFormat.ARRAY_RECORD:
        raise DatasetNotFoundError(
            f"{builder.name}: the data in {builder.data_dir!r} is stored as {fmt.value}, but "
            "random access needs array_record files. Convert it with `tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record` "
            "or delete the directory to prepare it again."
        )
    return builder.as_data_source(split=split)
