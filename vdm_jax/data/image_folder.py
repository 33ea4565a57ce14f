"""Any ImageFolder tree, `root/<split>/<label>/<image>.png|jpg|jpeg`, as a tfds dataset.

The tree is prepared once into array_record under
`data_dir/image_folder/<root name>_<hash of the absolute root>/1.0.0/`: RGB JPEG/PNG files are
stored byte for byte, other files (grayscale, RGBA, palette...) are converted to RGB PNG. Class
indices follow the sorted label folder names, over all splits. Splits are the
subfolders of `root` (typically `train` and `test` or `val`). The prepared copy is not refreshed
when the tree changes: delete its folder to prepare it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from typing import ClassVar

import tensorflow_datasets as tfds
from PIL import Image

from vdm_jax.data.tfds_utils import default_data_dir, load_prepared, missing_files_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NUM_LEVELS = 256
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("test", "val", "validation")  # the first one present is the evaluation split


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images(path: str) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(path)
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def class_names(root: str) -> list[str]:
    """Sorted label folder names over all splits (lists folders only: cheap on large trees)."""
    splits = _subdirs(root)
    return sorted({label for split in splits for label in _subdirs(os.path.join(root, split))})


def scan(root: str) -> dict[str, list[tuple[str, str]]]:
    """{split: [(label, path relative to root)]} for every image; splits without images dropped."""
    splits: dict[str, list[tuple[str, str]]] = {}
    for split in _subdirs(root):
        files = [
            (label, os.path.join(split, label, name))
            for label in _subdirs(os.path.join(root, split))
            for name in _images(os.path.join(root, split, label))
        ]
        if files:
            splits[split] = files
    return splits


def _rgb_image_bytes(path: str) -> bytes:
    """The file's bytes if it is an RGB JPEG/PNG, else the image converted to an RGB PNG."""
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """A builder config per tree: `root` is the absolute path of the tree."""

    root: str = ""


def config_for(root: str) -> ImageFolderConfig:
    root = os.path.abspath(os.path.expanduser(root))
    base = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
    digest = hashlib.sha1(root.encode()).hexdigest()[:10]
    return ImageFolderConfig(name=f"{base or 'root'}_{digest}", root=root)


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder for `root/<split>/<label>/<image>` (image (H, W, 3) uint8, label, file_name)."""

    name = "image_folder"
    code_path = None  # nothing is downloaded
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Original RGB JPEG/PNG bytes; other images converted to RGB PNG."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        classes = class_names(self.builder_config.root)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=classes),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        splits = scan(self.builder_config.root)
        return {split: self._generate_examples(files) for split, files in splits.items()}

    def _generate_examples(self, files):
        root = self.builder_config.root
        for label, rel_path in files:
            yield rel_path, {
                "image": _rgb_image_bytes(os.path.join(root, rel_path)),
                "label": label,
                "file_name": rel_path,
            }


def load_builder(root: str | None, data_dir: str | None = None) -> ImageFolder:
    """The prepared builder for the tree at `root`; prepares it on first use."""
    data_dir = default_data_dir(data_dir)
    layout = [f"{TRAIN_SPLIT}/<label>/<image>.png|jpg|jpeg", "test/<label>/<image>.png|jpg|jpeg"]
    if not root:
        raise missing_files_error("image_folder (data.image_folder is not set)", "<root>", layout)
    config = config_for(root)

    hint = f"(no images under {os.path.join(config.root, TRAIN_SPLIT)}; the test split is optional)"
    # Checked before tfds builds the label names from the tree in `_info`.
    if not os.path.isdir(config.root) or not class_names(config.root):
        raise missing_files_error("image_folder", config.root, layout, hint)

    def check_inputs() -> None:  # lists every file: only run before preparing
        if TRAIN_SPLIT not in scan(config.root):
            raise missing_files_error("image_folder", config.root, layout, hint)

    return load_prepared(
        lambda: ImageFolder(config=config, data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        check_inputs=check_inputs,
    )
