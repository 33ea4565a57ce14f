"""cifar10: offline preparation from the binary archive (a small fake one), exact values."""

import io
import tarfile

import numpy as np
import pytest
from conftest import snapshot
from ml_collections import ConfigDict

from vdm_jax.data import DatasetNotFoundError, dataset_info, eval_iterator, train_iterator

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _fake_files(rng):
    """{member name: bytes} of a binary CIFAR-10 with 2 records per training file and 3 test
    records, and {member name: [(label, image HWC)]}."""
    files, records = {}, {}
    for n, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        count = 3 if name == "test_batch.bin" else 2
        labels = (np.arange(count) + 2 * n) % 10
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)  # CHW
        data = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(count, -1)], 1)
        records[name] = list(zip(labels, images.transpose(0, 2, 3, 1), strict=True))  # HWC
        files[name] = data.tobytes()
    files["batches.meta.txt"] = ("\n".join(NAMES) + "\n").encode()
    return files, records


def _write_archive(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _fake_archive(path, rng):
    """cifar-10-binary.tar.gz with 2 records per training file and 3 test records."""
    files, records = _fake_files(rng)
    _write_archive(path, files)
    return records


def _key(image_levels, label):
    return np.asarray(image_levels, np.uint8).tobytes(), int(label)


@pytest.fixture
def setup(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    records = _fake_archive(manual / "cifar-10-binary.tar.gz", np.random.default_rng(0))
    cfg = ConfigDict(dict(name="cifar10", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual),
                          image_size=None, random_flip=False, image_folder=None))
    return cfg, records


def test_prepares_offline_and_reads_exact_levels(setup):
    cfg, records = setup
    info = dataset_info(cfg)
    assert (info.image_shape, info.num_classes, info.num_levels) == ((32, 32, 3), 10, 256)
    assert (info.num_train, info.num_test) == (10, 3)

    batch = next(train_iterator(cfg, global_batch_size=10, seed=0))  # one epoch
    levels = (batch["image"] + 1.0) * 256 / 2 - 0.5  # inverse of x = 2(k + ½)/K − 1
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    got = sorted(_key(np.rint(im), lab) for im, lab in zip(levels, batch["label"], strict=True))
    want = sorted(
        _key(im, lab) for name, recs in records.items() if name != "test_batch.bin"
        for lab, im in recs
    )
    assert got == want

    (ev,) = list(eval_iterator(cfg, batch_size=4))
    assert ev["mask"].tolist() == [True, True, True, False]
    levels = np.rint((ev["image"][:3] + 1.0) * 128 - 0.5)
    got = sorted(_key(im, lab) for im, lab in zip(levels, ev["label"][:3], strict=True))
    assert got == sorted(_key(im, lab) for lab, im in records["test_batch.bin"])


def test_missing_archive_names_the_directory(tmp_path):
    cfg = ConfigDict(dict(name="cifar10", data_dir=str(tmp_path / "tfds"),
                          manual_dir=str(tmp_path / "empty")))
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_info(cfg)
    assert str(tmp_path / "empty") in str(err.value)
    assert "cifar-10-binary.tar.gz" in str(err.value)


# ------------------------------------------------------------------- damaged inputs: one line
def _bad_input(tmp_path, layout, damage):
    """manual_dir holding the fake files, damaged by damage(files) (in place), as an archive or
    the extracted folder; returns (config, manual_dir)."""
    manual = tmp_path / "manual"
    manual.mkdir()
    files, _ = _fake_files(np.random.default_rng(1))
    damage(files)
    if layout == "archive":
        _write_archive(manual / "cifar-10-binary.tar.gz", files)
    else:
        (manual / "cifar-10-batches-bin").mkdir()
        for name, blob in files.items():
            (manual / "cifar-10-batches-bin" / name).write_bytes(blob)
    cfg = ConfigDict(dict(name="cifar10", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual),
                          image_size=None, random_flip=False, image_folder=None))
    return cfg, manual


def _assert_one_line_and_nothing_prepared(err, tmp_path, manual, before):
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None, message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and str(manual) in message
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert not list((tmp_path / "tfds").rglob("*incomplete*"))
    assert snapshot(manual) == before  # the inputs are left as they were


def test_archive_without_test_batch_names_the_member(tmp_path):
    cfg, manual = _bad_input(tmp_path, "archive", lambda files: files.pop("test_batch.bin"))
    before = snapshot(manual)
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_info(cfg)
    assert (f"{manual / 'cifar-10-binary.tar.gz'} has no cifar-10-batches-bin/test_batch.bin"
            in str(err.value))
    assert "re-download cifar-10-binary.tar.gz" in str(err.value)
    _assert_one_line_and_nothing_prepared(err, tmp_path, manual, before)


def test_truncated_archive_is_named(tmp_path):
    cfg, manual = _bad_input(tmp_path, "archive", lambda files: None)
    archive = manual / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    before = snapshot(manual)
    with pytest.raises(ValueError) as err:
        dataset_info(cfg)
    assert f"cifar10: {archive} is truncated or corrupt" in str(err.value)
    _assert_one_line_and_nothing_prepared(err, tmp_path, manual, before)


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_bin_file_one_byte_short_is_named(tmp_path, layout):
    def cut(files):
        files["data_batch_3.bin"] = files["data_batch_3.bin"][:-1]

    cfg, manual = _bad_input(tmp_path, layout, cut)
    before = snapshot(manual)
    with pytest.raises(ValueError) as err:
        dataset_info(cfg)
    where = ("cifar-10-batches-bin/data_batch_3.bin in " + str(manual / "cifar-10-binary.tar.gz")
             if layout == "archive" else str(manual / "cifar-10-batches-bin" / "data_batch_3.bin"))
    assert f"cifar10: {where} has 6145 bytes, not a whole number of 3073-byte records" in str(
        err.value)
    if layout == "folder":  # the extracted folder is what is read: it must be replaced
        assert "extract it again" in str(err.value)
    _assert_one_line_and_nothing_prepared(err, tmp_path, manual, before)


def test_label_out_of_range_is_named(tmp_path):
    def corrupt(files):
        data = bytearray(files["test_batch.bin"])
        data[3073] = 37  # the label byte of record 1
        files["test_batch.bin"] = bytes(data)

    cfg, manual = _bad_input(tmp_path, "archive", corrupt)
    before = snapshot(manual)
    with pytest.raises(ValueError) as err:
        dataset_info(cfg)
    assert "record 1 of cifar-10-batches-bin/test_batch.bin" in str(err.value)
    assert "has label 37, not in 0..9" in str(err.value)
    _assert_one_line_and_nothing_prepared(err, tmp_path, manual, before)
