"""The synthetic dataset (data.name='synthetic'), which lets launch/train.py and the benchmarks run
the trainer on data of a given shape with no files: its info, the batches' shape, range and
levels, records as pure functions of their index, a seeded and resumable stream, no evaluation
split, and the config checks of its keys."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from vdm_jax import config as config_lib
from vdm_jax.data import DatasetNotFoundError, dataset_info, eval_iterator, train_iterator
from vdm_jax.data.records import SyntheticSource


@pytest.fixture(scope="module")
def cfg():
    return ConfigDict(dict(name="synthetic", data_dir=None, manual_dir=None, image_folder=None,
                           image_size=6, random_flip=False, synthetic_channels=4,
                           synthetic_classes=7))


def test_info(cfg):
    info = dataset_info(cfg)
    assert info.image_shape == (6, 6, 4) and info.num_classes == 7 and info.num_levels == 256
    assert info.num_train == len(SyntheticSource(6, 4, 7)) and info.num_test == 0


def test_batches_shape_levels_and_records(cfg):
    batch = next(train_iterator(cfg, global_batch_size=16, seed=3))
    x, y = batch["image"], batch["label"]
    assert x.shape == (16, 6, 6, 4) and x.dtype == np.float32 and y.dtype == np.int32
    levels = (x + 1.0) * 256 / 2.0 - 0.5  # inverse of x = 2(k + ½)/K − 1
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert levels.min() >= 0 and levels.max() <= 255 and 0 <= y.min() and y.max() < 7
    # The batch's records are the source's (image and label together), and a record is a
    # function of its index alone.
    source = SyntheticSource(6, 4, 7)
    table = {source[i]["image"].tobytes(): int(source[i]["label"]) for i in range(len(source))}
    for image, label in zip(levels.round().astype(np.uint8), y, strict=True):
        assert table[image.tobytes()] == label
    again = SyntheticSource(6, 4, 7)
    for i in (0, 1, 12345):
        np.testing.assert_array_equal(source[i]["image"], again[i]["image"])
        assert source[i]["label"] == i % 7
    assert not np.array_equal(source[0]["image"], source[1]["image"])


def test_stream_is_seeded_and_resumable(cfg):
    a = train_iterator(cfg, global_batch_size=8, seed=1)
    b = train_iterator(cfg, global_batch_size=8, seed=1)
    first = [next(a) for _ in range(2)]
    state = a.get_state()
    third = next(a)
    for x, y in zip(first, [next(b) for _ in range(2)], strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    other = next(train_iterator(cfg, global_batch_size=8, seed=2))
    assert not np.array_equal(other["image"], first[0]["image"])
    c = train_iterator(cfg, global_batch_size=8, seed=1)
    c.set_state(state)
    np.testing.assert_array_equal(next(c)["image"], third["image"])


def test_no_evaluation_split(cfg):
    with pytest.raises(DatasetNotFoundError, match="synthetic"):
        eval_iterator(cfg, batch_size=4)


def test_config_keys_are_checked():
    c = config_lib.default_config()
    c.data.name = "synthetic"
    config_lib.validate(c)
    c.data.synthetic_channels = 0
    with pytest.raises(ValueError, match=r"data\.synthetic_channels"):
        config_lib.validate(c)
