"""ImageFolder trees: preparation, labels, ADM center-crop geometry, flips, missing data,
unreadable files (skipped), changes to the tree after preparation (prepared again)."""

import io
import json
import logging
import os

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


# ------------------------------------------------------------------ unreadable files, changes
def _jpeg_bytes(seed, size=(24, 24)):
    """A random-noise RGB JPEG (no two alike), as bytes."""
    noise = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _truncated_jpeg(path):
    """A JPEG cut in the middle of its scan: the header opens, the pixels do not decode."""
    data = _jpeg_bytes(99, size=(64, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:  # only the header is read: this passes
        assert image.size == (64, 64)


def _flat_tree(root, colors):
    """root/<split>/<label>/<name>.png, each a flat 16×16 image of its color."""
    for rel, color in colors.items():
        _save(root / rel, np.full((SIZE, SIZE, 3), color))


def _folder_cfg(root, data_dir, **kw):
    return ConfigDict(dict(name="image_folder", image_folder=str(root), image_size=SIZE,
                           random_flip=False, data_dir=str(data_dir), **kw))


def _prepared_dirs(data_dir):
    """The version directories of every prepared copy under data_dir."""
    return sorted(p.parent for p in data_dir.glob("image_folder/*/*/dataset_info.json"))


def _colors_and_labels(batches):
    """{color of each (flat) image: labels} over the batches (padding rows left out)."""
    out = {}
    for batch in batches:
        mask = batch.get("mask", np.ones(len(batch["label"]), bool))
        for image, label in zip(batch["image"][mask], batch["label"][mask], strict=True):
            level = np.rint((image.reshape(-1, 3).mean(0) + 1) * 128 - 0.5)
            out.setdefault(tuple(int(v) for v in level), set()).add(int(label))
    return out


GOOD = {"train/cat/a.png": (200, 10, 10), "train/dog/b.png": (10, 200, 10),
        "train/dog/c.png": (10, 10, 200), "test/dog/d.png": (90, 90, 90)}


def test_unreadable_files_are_skipped_named_and_counted(tmp_path, caplog):
    """A truncated JPEG and a text file named .jpg: each skipped with a warning naming it, the
    count logged and kept in the metadata; the readable images are all there."""
    root = tmp_path / "tree"
    _flat_tree(root, GOOD)
    _truncated_jpeg(root / "train" / "cat" / "cut.jpg")
    (root / "train" / "dog" / "notes.jpg").write_text("not an image")
    cfg = _folder_cfg(root, tmp_path / "tfds")
    with caplog.at_level(logging.WARNING):
        info = dataset_info(cfg)
    assert (info.num_train, info.num_test, info.num_classes) == (3, 1, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad, reason in (("train/cat/cut.jpg", "image file is truncated"),
                        ("train/dog/notes.jpg", "not an image")):
        assert any(str(root / bad) in w and reason in w for w in warnings), (bad, warnings)
    assert any("skipped 2 of 5 files of split 'train'" in w for w in warnings), warnings
    (prepared,) = _prepared_dirs(tmp_path / "tfds")
    skipped = json.loads((prepared / "metadata.json").read_text())["skipped"]
    assert [s.split(":")[0] for s in skipped["train"]] == ["train/cat/cut.jpg",
                                                           "train/dog/notes.jpg"]
    assert skipped["test"] == []


def test_a_truncated_jpeg_never_reaches_training(tmp_path):
    """The truncated file is not stored, so training and evaluation read past it, every epoch
    (it used to crash training at the same step on every resume)."""
    root = tmp_path / "tree"
    _flat_tree(root, GOOD)
    _truncated_jpeg(root / "train" / "cat" / "cut.jpg")
    _truncated_jpeg(root / "test" / "dog" / "cut.jpg")
    cfg = _folder_cfg(root, tmp_path / "tfds")
    it = train_iterator(cfg, global_batch_size=2, seed=0)
    seen = _colors_and_labels(next(it) for _ in range(9))  # 6 epochs of 3 images
    assert seen == {GOOD["train/cat/a.png"]: {0}, GOOD["train/dog/b.png"]: {1},
                    GOOD["train/dog/c.png"]: {1}}
    assert _colors_and_labels(eval_iterator(cfg, batch_size=2)) == {GOOD["test/dog/d.png"]: {1}}


def test_a_class_without_a_readable_image_is_refused(tmp_path):
    """Every file of test/cat unreadable: one-line ValueError naming the folder; nothing is
    prepared and the tree is untouched."""
    root = tmp_path / "tree"
    _flat_tree(root, GOOD)
    _truncated_jpeg(root / "test" / "cat" / "cut.jpg")
    (root / "test" / "cat" / "notes.jpg").write_text("not an image")
    before = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    with pytest.raises(ValueError) as err:
        dataset_info(_folder_cfg(root, tmp_path / "tfds"))
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None
    assert f"none of the 2 image file(s) in {root / 'test' / 'cat'} can be read" in message
    assert _prepared_dirs(tmp_path / "tfds") == []
    assert not list((tmp_path / "tfds").glob("image_folder/*/*incomplete*"))
    assert sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before


def test_a_changed_tree_is_prepared_again_and_the_old_copy_kept(tmp_path, caplog):
    """Adding a class folder, replacing a file, removing one: each time the labels and the data
    follow the tree as it is (they used to come from the tree and the old copy respectively)."""
    root, data_dir = tmp_path / "tree", tmp_path / "tfds"
    _flat_tree(root, GOOD)
    cfg = _folder_cfg(root, data_dir)

    def train_colors():
        n = dataset_info(cfg).num_train
        return _colors_and_labels([next(train_iterator(cfg, global_batch_size=n, seed=0))])

    assert train_colors() == {GOOD["train/cat/a.png"]: {0}, GOOD["train/dog/b.png"]: {1},
                              GOOD["train/dog/c.png"]: {1}}
    (first,) = _prepared_dirs(data_dir)

    # A new class folder sorting first: every label index shifts by one.
    _flat_tree(root, {"train/ant/e.png": (50, 60, 70)})
    with caplog.at_level(logging.WARNING):
        assert dataset_info(cfg).num_classes == 3
    assert train_colors() == {(50, 60, 70): {0}, GOOD["train/cat/a.png"]: {1},
                              GOOD["train/dog/b.png"]: {2}, GOOD["train/dog/c.png"]: {2}}
    assert any(f"changed since it was prepared into {first.parent}" in r.getMessage()
               for r in caplog.records)

    # A file replaced in place (same name), another removed.
    _flat_tree(root, {"train/dog/b.png": (240, 240, 0)})
    os.utime(root / "train/dog/b.png", ns=(1, 1))  # a distinct mtime, whatever the clock's tick
    (root / "train" / "dog" / "c.png").unlink()
    assert train_colors() == {(50, 60, 70): {0}, GOOD["train/cat/a.png"]: {1},
                              (240, 240, 0): {2}}

    prepared = _prepared_dirs(data_dir)
    assert len(prepared) == 3 and first in prepared  # the old copies are kept, intact
    assert len({p.parent.name for p in prepared}) == 3
