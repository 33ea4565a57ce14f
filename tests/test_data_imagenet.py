"""imagenet2012: tfds mock data (vendored metadata), offline preparation from tar files, errors."""

import io
import os
import socket
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import snapshot
from ml_collections import ConfigDict
from PIL import Image

from vdm_jax.data import DatasetNotFoundError, dataset_info, eval_iterator, train_iterator

METADATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def _cfg(**kw):
    base = dict(name="imagenet2012", data_dir=None, manual_dir=None, image_size=256,
                random_flip=True, image_folder=None, seed=0)
    return ConfigDict({**base, **kw})


def test_mock_data_yields_256_batches_in_range():
    cfg = _cfg(data_dir="/nonexistent/tfds")  # mock_data substitutes the vendored metadata dir
    with tfds.testing.mock_data(
        num_examples=10, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=METADATA_DIR
    ):
        info = dataset_info(cfg)
        assert (info.image_shape, info.num_classes, info.num_levels) == ((256, 256, 3), 1000, 256)
        assert (info.num_train, info.num_test) == (1_281_167, 50_000)  # from the metadata
        it = train_iterator(cfg, global_batch_size=4, seed=0)
        for _ in range(3):  # crosses the 10-example epoch
            batch = next(it)
            assert batch["image"].shape == (4, 256, 256, 3) and batch["image"].dtype == np.float32
            assert -1.0 < batch["image"].min() and batch["image"].max() < 1.0
            assert batch["image"].std() > 0.1  # the random images, not padding
            assert batch["label"].dtype == np.int32
            assert np.all((batch["label"] >= 0) & (batch["label"] < 1000))
        batches = list(eval_iterator(cfg, batch_size=4))
        assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]


def _jpeg(color, size=(300, 200), mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _add(tar, name, data):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


# Distinct colors identify the examples after decoding and cropping.
TRAIN = {
    ("n01440764", "n01440764_1.JPEG"): (250, 250, 250),
    ("n01440764", "n01440764_2.JPEG"): (20, 120, 220),
    ("n01443537", "n01443537_7.JPEG"): (120, 220, 20),
}
VAL = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


@pytest.fixture
def manual_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
        for synset in sorted({s for s, _ in TRAIN}):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for (s, name), color in TRAIN.items():
                    if s == synset:
                        _add(t, name, _jpeg(color))
            _add(train, f"{synset}.tar", inner.getvalue())
        # One of tfds's known CMYK JPEGs: must come out as 3-channel RGB.
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as t:
            _add(t, "n01739381_1309.JPEG", _jpeg((0, 255, 255, 0), mode="CMYK"))
        _add(train, "n01739381.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
        for i, color in enumerate(VAL, start=1):
            _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(color, size=(180, 240)))
    return manual


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _unit(color):
    """x = 2(k + ½)/256 − 1."""
    return (2 * np.asarray(color, np.float64) + 1) / 256 - 1


def _nearest(image, colors):
    mean = image.reshape(-1, 3).mean(0)
    return min(colors, key=lambda c: np.abs(mean - _unit(c)).sum())


def test_prepares_from_tar_files_offline(manual_dir, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    synsets = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    val_synsets = (
        tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split()
    )
    cfg = _cfg(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir), image_size=64,
               random_flip=False)
    info = dataset_info(cfg)
    assert (info.num_train, info.num_test, info.image_shape) == (4, 3, (64, 64, 3))

    batch = next(train_iterator(cfg, global_batch_size=4, seed=0))
    x = batch["image"]
    assert x.shape == (4, 64, 64, 3)
    colors = {**{c: synsets.index(s) for (s, _), c in TRAIN.items()},
              (255, 0, 0): synsets.index("n01739381")}
    found = {}
    for image, label in zip(x, batch["label"], strict=True):
        color = _nearest(image, list(colors))
        np.testing.assert_allclose(image, np.broadcast_to(_unit(color), image.shape),
                                   atol=8 * 2 / 256)  # JPEG of a flat color: within 8 levels
        found[color] = int(label)
    assert found == colors

    (ev,) = list(eval_iterator(cfg, batch_size=4))
    assert ev["mask"].tolist() == [True, True, True, False]
    # Validation labels: tfds's list, in sorted file-name order; the split is read in its
    # stored order, so match images by color.
    for image, label in zip(ev["image"][:3], ev["label"][:3], strict=True):
        i = VAL.index(_nearest(image, VAL))
        assert label == synsets.index(val_synsets[i])


def test_missing_tar_files_name_the_directory_and_files(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    cfg = _cfg(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_info(cfg)
    message = str(err.value)
    assert str(manual) in message and "ILSVRC2012_img_train.tar" in message
    assert "ILSVRC2012_img_val.tar" not in message.split("Expected:")[1].split("No prepared")[0]
    assert err.value.__cause__ is None and err.value.__context__ is None

    with pytest.raises(DatasetNotFoundError, match="manual_dir is not set") as err:
        dataset_info(_cfg(data_dir=str(tmp_path / "tfds")))
    assert "ILSVRC2012_img_train.tar" in str(err.value)
    assert str(tmp_path / "tfds" / "imagenet2012" / "5.1.0") in str(err.value)


def test_missing_image_size_is_reported_before_preparing(tmp_path):
    with pytest.raises(ValueError, match=r"data\.image_size must be a positive int"):
        dataset_info(_cfg(data_dir=str(tmp_path / "tfds"), image_size=None))
    assert not (tmp_path / "tfds").exists()


# ---------------------------------------------------------------- damaged tar files: one line
def _end_of_member(tar_path, index):
    """Byte offset just past member `index`'s data (padded to the 512-byte block)."""
    with tarfile.open(tar_path) as tar:
        member = tar.getmembers()[index]
    return member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


@pytest.mark.parametrize("cut", ["inside_a_member", "at_a_member_boundary"])
@pytest.mark.parametrize("which", ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"])
def test_truncated_tar_is_named_before_preparing(manual_dir, tmp_path, monkeypatch, which, cut):
    """A tar cut short (mid-data, or cleanly after a member: tarfile alone reads that as a
    shorter archive) is one ValueError line naming it and where to get it; nothing prepared."""
    _no_network(monkeypatch)
    path = manual_dir / which
    end = _end_of_member(path, 1)
    path.write_bytes(path.read_bytes()[: end - 700 if cut == "inside_a_member" else end])
    before = snapshot(manual_dir)
    cfg = _cfg(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir), image_size=64)
    with pytest.raises(ValueError) as err:
        dataset_info(cfg)
    message = str(err.value)
    assert message.startswith(f"imagenet2012: {path} is truncated or corrupt"), message
    assert f"download {which} again from https://image-net.org/download-images into " \
           f"{manual_dir}" in message
    assert "\n" not in message and err.value.__cause__ is None
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert snapshot(manual_dir) == before


def test_validation_labels_follow_the_file_number(manual_dir, tmp_path, monkeypatch):
    """A validation tar without image 2: image 3 keeps label 3 of tfds's list (it used to take
    label 2: labels were matched by sorted position)."""
    _no_network(monkeypatch)
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as val:
        for i in (1, 3):
            _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(VAL[i - 1], size=(180, 240)))
    synsets = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    val_synsets = (
        tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split()
    )
    assert val_synsets[1] != val_synsets[2]  # else the test could not tell
    cfg = _cfg(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir), image_size=64)
    (ev,) = list(eval_iterator(cfg, batch_size=2))
    got = {VAL.index(_nearest(image, VAL)) + 1: int(label)
           for image, label in zip(ev["image"], ev["label"], strict=True)}
    assert got == {1: synsets.index(val_synsets[0]), 3: synsets.index(val_synsets[2])}


def test_corrupt_synset_tar_is_named(tmp_path, monkeypatch):
    """A whole training tar whose inner n01443537.tar is garbage: found while preparing, one
    ValueError line naming both tars; nothing prepared."""
    _no_network(monkeypatch)
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as t:
            _add(t, "n01440764_1.JPEG", _jpeg((250, 250, 250)))
        _add(train, "n01440764.tar", inner.getvalue())
        _add(train, "n01443537.tar", np.random.default_rng(0).bytes(3000))
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
        _add(val, "ILSVRC2012_val_00000001.JPEG", _jpeg(VAL[0]))
    cfg = _cfg(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual), image_size=64)
    with pytest.raises(ValueError) as err:
        dataset_info(cfg)
    message = str(err.value)
    assert message.startswith(f"imagenet2012: {manual / 'ILSVRC2012_img_train.tar'} is "
                              "truncated or corrupt (at member n01443537.tar, ReadError"), message
    assert "\n" not in message and err.value.__cause__ is None
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
