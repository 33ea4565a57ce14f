"""Damaged data on the command line: launch/train.py exits 2 with one `error: ...` line naming
the file and what to do, no traceback, before the workdir exists; nothing is prepared and the
inputs are left as they were. Each case builds tiny synthetic inputs in tmp_path."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, snapshot, xla_flags
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
RECORD = 1 + 32 * 32 * 3


def _cifar_archive(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _cifar_files() -> dict[str, bytes]:
    """One record per .bin file (label 3, random image) and the 10 class names."""
    rng = np.random.default_rng(0)
    files = {name: bytes([3]) + rng.bytes(RECORD - 1) for name in CIFAR_FILES}
    files["batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode()
    return files


def _cifar_without_test_batch(manual: Path) -> tuple[list[str], str]:
    files = _cifar_files()
    del files["test_batch.bin"]
    _cifar_archive(manual / "cifar-10-binary.tar.gz", files)
    return (["--config.data.name=cifar10"],
            rf"{re.escape(str(manual / 'cifar-10-binary.tar.gz'))} has no "
            r"cifar-10-batches-bin/test_batch\.bin.*re-download cifar-10-binary\.tar\.gz from "
            rf"https://www\.cs\.toronto\.edu/~kriz/cifar\.html into {re.escape(str(manual))}")


def _cifar_truncated_archive(manual: Path) -> tuple[list[str], str]:
    path = manual / "cifar-10-binary.tar.gz"
    _cifar_archive(path, _cifar_files())
    path.write_bytes(path.read_bytes()[:-100])
    return (["--config.data.name=cifar10"],
            rf"cifar10: {re.escape(str(path))} is truncated or corrupt .*re-download")


def _cifar_bin_one_byte_short(manual: Path) -> tuple[list[str], str]:
    files = _cifar_files()
    files["data_batch_2.bin"] = files["data_batch_2.bin"][:-1]
    _cifar_archive(manual / "cifar-10-binary.tar.gz", files)
    return (["--config.data.name=cifar10"],
            r"cifar-10-batches-bin/data_batch_2\.bin in \S+ has 3072 bytes, not a whole number "
            r"of 3073-byte records.*re-download")


def _image_folder_class_unreadable(manual: Path) -> tuple[list[str], str]:
    for label in ("cat", "dog"):
        (manual / "train" / label).mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(manual / "train" / "cat" / "a.png")
    (manual / "train" / "dog" / "b.jpg").write_text("not an image")
    return (["--config.data.name=image_folder", f"--config.data.image_folder={manual}",
             "--config.data.image_size=8"],
            rf"none of the 1 image file\(s\) in {re.escape(str(manual / 'train' / 'dog'))} can "
            r"be read \(e\.g\. b\.jpg: UnidentifiedImageError")


def _imagenet_truncated_tar(manual: Path) -> tuple[list[str], str]:
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        with tarfile.open(manual / name, "w") as tar:
            blob = np.random.default_rng(0).bytes(5000)
            info = tarfile.TarInfo("n01440764.tar" if "train" in name else "x.JPEG")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path = manual / "ILSVRC2012_img_train.tar"
    path.write_bytes(path.read_bytes()[:3000])
    return (["--config.data.name=imagenet2012", "--config.data.image_size=8"],
            rf"imagenet2012: {re.escape(str(path))} is truncated or corrupt .*download "
            r"ILSVRC2012_img_train\.tar again from https://image-net\.org/download-images")


CASES: dict[str, Callable[[Path], tuple[list[str], str]]] = {
    "cifar_archive_without_test_batch": _cifar_without_test_batch,
    "cifar_truncated_archive": _cifar_truncated_archive,
    "cifar_bin_one_byte_short": _cifar_bin_one_byte_short,
    "image_folder_class_unreadable": _image_folder_class_unreadable,
    "imagenet_truncated_tar": _imagenet_truncated_tar,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case's launch/train.py run, started together (the runs mostly import: ~15 s each
    alone on 2 cores), with its directories, expected error and the inputs' snapshot."""
    env = {k: v for k, v in os.environ.items() if k != "VDM_JAX_TRACEBACK"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    out = {}
    for case, make in CASES.items():
        root = tmp_path_factory.mktemp(case)
        manual, data_dir, workdir = root / "manual", root / "tfds", root / "run"
        manual.mkdir()
        flags, expected = make(manual)
        args = [sys.executable, str(REPO / "launch" / "train.py"),
                f"--config={REPO / 'configs' / 'digits_dit.py'}", f"--workdir={workdir}",
                f"--config.data.manual_dir={manual}", f"--config.data.data_dir={data_dir}",
                *flags]
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        out[case] = dict(proc=proc, manual=manual, data_dir=data_dir, workdir=workdir,
                         expected=expected, before=snapshot(manual))
    for run in out.values():
        _, run["stderr"] = run["proc"].communicate(timeout=300)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_damaged_data_exits_2_with_one_line(runs, case):
    run = runs[case]
    stderr = run["stderr"]
    assert run["proc"].returncode == 2, stderr[-3000:]
    line = error_line(stderr)
    assert stderr.rstrip().endswith(line), stderr
    assert re.search(run["expected"], line), line
    assert not run["workdir"].exists()
    assert not list(run["data_dir"].rglob("dataset_info.json"))
    assert not list(run["data_dir"].rglob("*incomplete*"))
    assert snapshot(run["manual"]) == run["before"]
