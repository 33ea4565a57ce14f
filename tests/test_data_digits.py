"""Digits dataset and the pipeline's sharding, resumption and evaluation stream."""

import collections
import json

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from sklearn.datasets import load_digits

from vdm_jax.data import dataset_info, eval_iterator, train_iterator
from vdm_jax.data.digits import load_builder

K = 17


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return ConfigDict(
        dict(name="digits", data_dir=data_dir, manual_dir=None, image_folder=None,
             image_size=8, random_flip=False, num_levels=K, seed=0)
    )


def _levels(x):
    """Inverse of x = 2(k + ½)/K − 1."""
    return (np.asarray(x) + 1.0) * K / 2.0 - 0.5


def _records(images, labels):
    return collections.Counter(
        (np.asarray(im).tobytes(), int(lab)) for im, lab in zip(images, labels, strict=True)
    )


def test_split_is_a_partition_of_load_digits(cfg):
    builder = load_builder(cfg.data_dir)
    reference = load_digits()
    seen = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split)
        for i in range(len(source)):
            ex = source[i]
            row = int(ex["index"])
            assert row not in seen, f"row {row} in {seen.get(row)} and {split}"
            seen[row] = split
            np.testing.assert_array_equal(ex["image"][..., 0], reference.images[row])
            assert ex["label"] == reference.target[row]
    assert sorted(seen) == list(range(1797))
    info = dataset_info(cfg)
    assert (info.num_train, info.num_test) == (1497, 300)
    assert (info.image_shape, info.num_classes, info.num_levels) == ((8, 8, 1), 10, K)


def test_values_on_the_17_level_grid_and_labels(cfg):
    it = train_iterator(cfg, global_batch_size=500, seed=1)
    batch = next(it)
    assert batch["image"].shape == (500, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    k = _levels(batch["image"])
    np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
    assert k.min() > -0.5 and k.max() < K - 0.5
    assert np.abs(batch["image"]).max() < 1.0
    assert set(np.unique(batch["label"])) == set(range(10))


def _first_records(it, n):
    images, labels = [], []
    while len(labels) < n:
        b = next(it)
        images.extend(b["image"])
        labels.extend(b["label"])
    return images[:n], labels[:n]


def test_two_hosts_read_disjoint_shards_covering_the_split(cfg):
    # 1497 = 749 + 748: host p's first epoch is its shard (grain's even split).
    source = load_builder(cfg.data_dir).as_data_source("train")
    want = _records([s["image"] for s in source], [s["label"] for s in source])
    got = collections.Counter()
    for p, n in ((0, 749), (1, 748)):
        it = train_iterator(cfg, global_batch_size=32, seed=5, process_index=p, process_count=2)
        images, labels = _first_records(it, n)
        assert images[0].shape == (8, 8, 1)
        got += _records([np.rint(_levels(im)).astype(np.uint8) for im in images], labels)
    assert got == want


def test_resumed_iterator_yields_the_same_batches(cfg):
    cfg = ConfigDict(cfg.to_dict())
    cfg.random_flip = True  # the flips must be restored too
    it = train_iterator(cfg, global_batch_size=64, seed=7)
    for _ in range(20):
        next(it)
    state = json.dumps(it.get_state().decode())  # survives a JSON round trip
    expected = [next(it) for _ in range(6)]  # crosses the epoch boundary (23.4 batches/epoch)

    resumed = train_iterator(cfg, global_batch_size=64, seed=7)
    resumed.set_state(json.loads(state))
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_order_depends_on_seed_and_epochs_are_reshuffled(cfg):
    def first_labels(seed, n_batches, batch=1497):  # one batch = one epoch here
        it = train_iterator(cfg, global_batch_size=batch, seed=seed)
        return [next(it)["label"] for _ in range(n_batches)]

    epoch0, epoch1 = first_labels(3, 2)
    np.testing.assert_array_equal(np.bincount(epoch0), np.bincount(epoch1))  # same examples
    assert not np.array_equal(epoch0, epoch1)  # in another order
    np.testing.assert_array_equal(first_labels(3, 1, batch=64)[0], epoch0[:64])
    assert not np.array_equal(first_labels(4, 1, batch=64)[0], epoch0[:64])


def test_global_arrays_match_local_batches(cfg):
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = 8 * jax.device_count()
    local = next(train_iterator(cfg, global_batch_size=batch, seed=2))
    glob = next(train_iterator(cfg, global_batch_size=batch, seed=2, mesh_sharding=sharding))
    assert isinstance(glob["image"], jax.Array) and glob["image"].sharding.is_equivalent_to(
        sharding, 4
    )
    np.testing.assert_array_equal(np.asarray(glob["image"]), local["image"])
    np.testing.assert_array_equal(np.asarray(glob["label"]), local["label"])


def test_eval_stream_is_ordered_padded_and_equal_length_across_hosts(cfg):
    source = load_builder(cfg.data_dir).as_data_source("test")
    want = np.stack([(2.0 * s["image"] + 1.0) / K - 1.0 for s in source]).astype(np.float32)
    per_host = [
        list(eval_iterator(cfg, batch_size=64, process_index=p, process_count=2)) for p in (0, 1)
    ]
    assert len(per_host[0]) == len(per_host[1]) == 5  # ⌈150 / 32⌉
    rows = []
    for batches in per_host:
        for b in batches:
            assert b["image"].shape == (32, 8, 8, 1) and b["mask"].dtype == bool
            assert not np.any(b["image"][~b["mask"]])
            rows.append(b["image"][b["mask"]])
    np.testing.assert_allclose(np.concatenate(rows), want, atol=1e-6)


def test_bad_batch_sizes_and_seeds_raise(cfg):
    with pytest.raises(ValueError, match="multiple of process_count=2"):
        train_iterator(cfg, global_batch_size=33, seed=0, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="multiple of process_count=4"):
        eval_iterator(cfg, batch_size=6, process_index=1, process_count=4)
    with pytest.raises(ValueError, match="seed"):
        train_iterator(cfg, global_batch_size=8, seed=-1)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with pytest.raises(ValueError, match="mesh_sharding needs the real process layout"):
        train_iterator(cfg, global_batch_size=16, seed=0, process_index=1, process_count=2,
                       mesh_sharding=sharding)
    with pytest.raises(ValueError, match="Unknown dataset"):
        dataset_info(ConfigDict(dict(name="mnist")))


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("VDM_JAX_DATA_DIR", str(tmp_path / "env_dir"))
    info = dataset_info(ConfigDict(dict(name="digits", data_dir=None)))
    assert info.num_train == 1497
    assert (tmp_path / "env_dir" / "sklearn_digits" / "1.0.0" / "dataset_info.json").exists()
