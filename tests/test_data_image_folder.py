"""ImageFolder trees: preparation, labels, ADM center-crop geometry, flips, missing data."""

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from vdm_jax.data import DatasetNotFoundError, dataset_info, eval_iterator, train_iterator

SIZE = 16
A, B, C = (200, 30, 90), (10, 220, 40), (0, 0, 0)


def _unit(level):
    """x = 2(k + ½)/256 − 1."""
    return (2.0 * np.asarray(level, np.float64) + 1.0) / 256.0 - 1.0


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "my images"
    # Landscape 48×32: the central 32×32 square is A, the side strips C. BOX halves it to 24×16
    # (min side 32 ≥ 2·16), then the crop keeps columns 4..20, i.e. exactly the A square.
    wide = np.zeros((32, 48, 3), np.uint8)
    wide[:, 8:40] = A
    _save(root / "train" / "cat" / "wide.png", wide)
    # Portrait 32×64: the central rows 16..48 are B, the top/bottom strips C.
    tall = np.zeros((64, 32, 3), np.uint8)
    tall[16:48] = B
    _save(root / "train" / "dog" / "tall.png", tall)
    # Grayscale 20×12 (converted to RGB), upsampled with BICUBIC to 27×16 then cropped.
    _save(root / "train" / "dog" / "gray.png", np.full((12, 20), 77), "L")
    # Square 16×16, left half A, right half B: tells a flip apart.
    halves = np.zeros((16, 16, 3), np.uint8)
    halves[:, :8], halves[:, 8:] = A, B
    _save(root / "train" / "cat" / "halves.png", halves)
    _save(root / "test" / "dog" / "flat.jpg", np.full((40, 40, 3), 120))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def cfg(tree, tmp_path_factory):
    return ConfigDict(
        dict(name="image_folder", image_folder=str(tree), image_size=SIZE, random_flip=False,
             data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=None, seed=0)
    )


def _by_content(image):
    """Names the training image a preprocessed (16, 16, 3) crop comes from."""
    candidates = {
        "wide": np.broadcast_to(_unit(A), image.shape),
        "tall": np.broadcast_to(_unit(B), image.shape),
        "gray": np.broadcast_to(_unit(77), image.shape),
    }
    halves = np.empty(image.shape)
    halves[:, :8], halves[:, 8:] = _unit(A), _unit(B)
    candidates["halves"] = halves
    candidates["halves_flipped"] = halves[:, ::-1]
    for name, want in candidates.items():
        if np.allclose(image, want, atol=1e-6):
            return name
    raise AssertionError(f"unexpected crop:\n{image[..., 0]}")


def test_labels_and_center_crop_geometry(cfg):
    info = dataset_info(cfg)
    assert (info.image_shape, info.num_classes, info.num_levels) == ((SIZE, SIZE, 3), 2, 256)
    assert (info.num_train, info.num_test) == (4, 1)
    batch = next(train_iterator(cfg, global_batch_size=4, seed=0))  # one batch = one epoch
    assert batch["image"].shape == (4, SIZE, SIZE, 3)
    pairs = zip(batch["image"], batch["label"], strict=True)
    seen = {_by_content(im): int(lab) for im, lab in pairs}
    assert seen == {"wide": 0, "halves": 0, "tall": 1, "gray": 1}  # classes: sorted folder names


def test_random_flip_mirrors_some_epochs_only(cfg):
    cfg = ConfigDict(cfg.to_dict())
    cfg.random_flip = True
    it = train_iterator(cfg, global_batch_size=4, seed=1)
    names = [_by_content(im) for _ in range(8) for im in next(it)["image"]]
    assert names.count("halves") + names.count("halves_flipped") == 8
    assert names.count("halves") > 0 and names.count("halves_flipped") > 0
    assert names.count("wide") == names.count("tall") == names.count("gray") == 8  # symmetric


def test_eval_split_reads_jpeg(cfg):
    (batch,) = list(eval_iterator(cfg, batch_size=2))
    np.testing.assert_array_equal(batch["mask"], [True, False])
    assert batch["label"][0] == 1
    np.testing.assert_allclose(batch["image"][0], _unit(120), atol=2 * 2 / 256)  # JPEG ±2


def test_missing_root_names_the_path_and_the_layout(tmp_path):
    root = tmp_path / "nowhere"
    cfg = ConfigDict(dict(name="image_folder", image_folder=str(root), image_size=SIZE,
                          data_dir=str(tmp_path / "tfds")))
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_info(cfg)
    assert isinstance(err.value, FileNotFoundError)
    assert str(root) in str(err.value) and "train/<label>/<image>.png|jpg|jpeg" in str(err.value)
    assert err.value.__cause__ is None
