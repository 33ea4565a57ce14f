"""cifar10: offline preparation from the binary archive (a small fake one), exact values."""

import io
import tarfile

import numpy as np
import pytest
from ml_collections import ConfigDict

from vdm_jax.data import DatasetNotFoundError, dataset_info, eval_iterator, train_iterator

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _fake_archive(path, rng):
    """cifar-10-binary.tar.gz with 2 records per training file and 3 test records."""
    records = {}
    with tarfile.open(path, "w:gz") as tar:
        files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for n, name in enumerate(files):
            count = 3 if name == "test_batch.bin" else 2
            labels = (np.arange(count) + 2 * n) % 10
            images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)  # CHW
            data = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(count, -1)], 1)
            records[name] = list(zip(labels, images.transpose(0, 2, 3, 1), strict=True))  # HWC
            for member, blob in ((name, data.tobytes()),):
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        meta = ("\n".join(NAMES) + "\n").encode()
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
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
