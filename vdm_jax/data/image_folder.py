"""Any ImageFolder tree, `root/<split>/<label>/<image>.png|jpg|jpeg`, as a tfds dataset.

Splits are the subfolders of `root` (typically `train` and `test` or `val`); class indices follow
the sorted label folder names, over all splits.

Preparation (once per state of the tree) stores the images as array_record under
`data_dir/image_folder/<root name>_<hash of the absolute root>_<tree fingerprint>/1.1.0/`.
Every image is decoded fully with Pillow first (strict: a truncated file is an error even where
`PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is set), so that every stored record decodes when training
reads it. RGB JPEG/PNG files are then stored byte for byte, other images (grayscale, RGBA,
palette...) converted to RGB PNG.

Unreadable files: a file that does not decode (truncated, corrupt, or not an image despite its
extension) is SKIPPED, not fatal: one bad file among a million should not stop a run. Each one is
named in a warning with the reason, each split's count is logged, and the list is kept in the
prepared dataset's metadata (`builder.info.metadata["skipped"]`). Preparation refuses with a
one-line ValueError when a label folder holds image files but none of them decodes (the class
would be left without an example; a split of unreadable files is refused the same way).

Changes to the tree: the prepared copy is keyed by a fingerprint of the tree (the split and label
folder names, and the relative path, size and modification time of every image file), computed
each time the dataset is opened: one `stat` per file, ≈ 16 µs a file measured on a container's
overlay file system (≈ 16 s per million files). Adding, removing, replacing or touching a file,
or adding a class folder, therefore gives a new fingerprint, and the tree is prepared again into
a new directory; the old copy is kept (still valid for the tree as it was; delete it to reclaim
the space). A warning names both directories.

Preparation decodes with a thread per core (Pillow releases the GIL while decoding).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import tensorflow_datasets as tfds
from PIL import Image, ImageFile, UnidentifiedImageError

from vdm_jax.data.tfds_utils import default_data_dir, load_prepared, missing_files_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NUM_LEVELS = 256
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("test", "val", "validation")  # the first one present is the evaluation split
MAX_NAMED_SKIPS = 20  # skipped files named one warning each; the rest are counted

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

# {split: {label: [(file name, size in bytes, mtime in ns)]}}, every name sorted.
Listing = dict[str, dict[str, list[tuple[str, int, int]]]]


def _kind(entry: os.DirEntry) -> str | None:
    """'dir' or 'file' (symbolic links followed); None for a dangling link (a warning names it)
    or anything else. A symbolic link loop is a ValueError naming it."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
        dangling = entry.is_symlink()
    except OSError as e:  # ELOOP: `a -> b -> a`, or a link to itself
        raise ValueError(f"image_folder: {entry.path} is a symbolic link loop ({e.strerror}); "
                         "remove the link or point it at a real file or folder") from None
    if dangling:
        log.warning("image_folder: skipping %s, a symbolic link to %s, which does not exist",
                    entry.path, os.readlink(entry.path))
    return None


def _subdirs(path: str) -> list[str]:
    names = []
    for e in os.scandir(path):
        if not e.name.startswith(".") and _kind(e) == "dir":
            if os.path.realpath(e.path) in (os.path.realpath(path),
                                            os.path.realpath(os.path.dirname(path))):
                raise ValueError(f"image_folder: {e.path} links to a folder above it (a "
                                 "symbolic link cycle); remove the link")
            names.append(e.name)
    return sorted(names)


def _image_files(path: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the image files in `path`, sorted by name."""
    files = []
    for e in os.scandir(path):
        if e.name.lower().endswith(IMAGE_EXTENSIONS) and _kind(e) == "file":
            st = e.stat()
            files.append((e.name, st.st_size, st.st_mtime_ns))
    return sorted(files)


def class_names(root: str) -> list[str]:
    """Sorted label folder names over all splits (lists folders only: cheap on large trees)."""
    splits = _subdirs(root)
    return sorted({label for split in splits for label in _subdirs(os.path.join(root, split))})


def listing(root: str) -> Listing:
    """Every split, label folder (empty ones included) and image file of the tree, with sizes
    and modification times."""
    return {
        split: {
            label: _image_files(os.path.join(root, split, label))
            for label in _subdirs(os.path.join(root, split))
        }
        for split in _subdirs(root)
    }


def fingerprint(tree: Listing) -> str:
    """sha1 over the split and label folders and each image's relative path, size and mtime."""
    h = hashlib.sha1()
    for split, labels in tree.items():
        for label, files in labels.items():
            h.update(f"{split}/{label}/\n".encode())
            for name, size, mtime_ns in files:
                h.update(f"{split}/{label}/{name}\0{size}\0{mtime_ns}\n".encode())
    return h.hexdigest()


def scan(root: str, tree: Listing | None = None) -> dict[str, list[tuple[str, str]]]:
    """{split: [(label, path relative to root)]} for every image; splits without images dropped."""
    tree = listing(root) if tree is None else tree
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, labels in tree.items():
        files = [(label, os.path.join(split, label, name))
                 for label, entries in labels.items() for name, _, _ in entries]
        if files:
            splits[split] = files
    return splits


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Pillow raises on truncated files while preparing, whatever a library set globally."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _rgb_image_bytes(path: str) -> bytes:
    """The file's bytes if it is an RGB JPEG/PNG, else the image converted to an RGB PNG.

    Decodes the whole image first (`load()`), so a truncated or corrupt file raises here (OSError,
    or whatever error Pillow's decoder for that format raises), never when training reads it.
    """
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _read_or_error(path: str) -> bytes | str:
    """The image's bytes to store, or the reason it cannot be read (one line)."""
    try:
        return _rgb_image_bytes(path)
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        return "UnidentifiedImageError: not an image in a format Pillow knows"
    except MemoryError:
        raise
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        reason = " ".join(str(e).split()) or type(e).__name__
        return f"{type(e).__name__}: {reason}"


def _ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """fn over items on `workers` threads, results in order, at most 4 × workers in flight."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[concurrent.futures.Future[_R]] = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """A builder config per tree state: `root` is the absolute path, `tree` its listing."""

    root: str = ""
    tree: Listing | None = dataclasses.field(default=None, repr=False)  # tfds logs the repr
    fingerprint: str = ""


def _cache_prefix(root: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
    return f"{base or 'root'}_{hashlib.sha1(root.encode()).hexdigest()[:10]}"


def config_for(root: str) -> ImageFolderConfig:
    """The config of the tree at `root` as it is now (lists and stats every file)."""
    root = os.path.abspath(os.path.expanduser(root))
    tree = listing(root)
    digest = fingerprint(tree)
    return ImageFolderConfig(name=f"{_cache_prefix(root)}_{digest[:12]}", root=root, tree=tree,
                             fingerprint=digest)


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder for `root/<split>/<label>/<image>` (image (H, W, 3) uint8, label, file_name)."""

    name = "image_folder"
    code_path = None  # nothing is downloaded
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Original RGB JPEG/PNG bytes; other images converted to RGB PNG.",
        "1.1.0": "Every image decoded before it is stored; unreadable files skipped and listed "
                 "in the metadata; the directory is keyed by the tree's fingerprint.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        classes = sorted({label for labels in (config.tree or {}).values() for label in labels})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=classes),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        self.info.metadata.update(root=config.root, fingerprint=config.fingerprint, skipped={})
        splits = scan(config.root, config.tree)
        return {split: self._generate_examples(split, files) for split, files in splits.items()}

    def _generate_examples(self, split, files):
        root = self.builder_config.root
        skipped: list[str] = []
        self.info.metadata["skipped"][split] = skipped
        counts: dict[str, list[int]] = {}  # label -> [files, readable]
        paths = (os.path.join(root, rel_path) for _, rel_path in files)
        with _strict_decoding():
            results = _ordered_map(_read_or_error, paths, os.cpu_count() or 1)
            for (label, rel_path), data in zip(files, results, strict=True):
                count = counts.setdefault(label, [0, 0])
                count[0] += 1
                if isinstance(data, str):
                    skipped.append(f"{rel_path}: {data}")
                    if len(skipped) <= MAX_NAMED_SKIPS:
                        log.warning("image_folder: skipping unreadable %s (%s)",
                                    os.path.join(root, rel_path), data)
                    continue
                count[1] += 1
                yield rel_path, {"image": data, "label": label, "file_name": rel_path}
        for label, (num_files, readable) in counts.items():
            if not readable:
                prefix = os.path.join(split, label, "")
                first = next(s for s in skipped if s.startswith(prefix))[len(prefix):]
                raise ValueError(
                    f"image_folder: none of the {num_files} image file(s) in "
                    f"{os.path.join(root, split, label)} can be read (e.g. {first}); replace "
                    "them or remove the folder, then run again."
                )
        if skipped:
            log.warning("image_folder: skipped %d of %d files of split %r under %s "
                        "(unreadable; listed in the prepared dataset's metadata.json)",
                        len(skipped), len(files), split, root)


def _warn_if_tree_changed(data_dir: str, config: ImageFolderConfig) -> None:
    """Before preparing: names the copies prepared from earlier states of the same tree."""
    pattern = os.path.join(data_dir, ImageFolder.name, f"{_cache_prefix(config.root)}_*",
                           str(ImageFolder.VERSION), "dataset_info.json")
    older = sorted(os.path.dirname(os.path.dirname(p)) for p in glob.glob(pattern))
    if older:
        log.warning("image_folder: %s changed since it was prepared into %s (files added, "
                    "removed or modified); preparing it again into %s, the old copy is kept.",
                    config.root, ", ".join(older),
                    os.path.join(data_dir, ImageFolder.name, config.name))


def load_builder(root: str | None, data_dir: str | None = None) -> ImageFolder:
    """The prepared builder for the tree at `root` as it is now; prepares it if needed."""
    data_dir = default_data_dir(data_dir)
    layout = [f"{TRAIN_SPLIT}/<label>/<image>.png|jpg|jpeg", "test/<label>/<image>.png|jpg|jpeg"]
    if not root:
        raise missing_files_error("image_folder (data.image_folder is not set)", "<root>", layout)
    path = os.path.abspath(os.path.expanduser(root))
    hint = f"(no images under {os.path.join(path, TRAIN_SPLIT)}; the test split is optional)"
    if not os.path.isdir(path) or not class_names(path):
        raise missing_files_error("image_folder", path, layout, hint)
    config = config_for(path)
    for split, labels in (config.tree or {}).items():
        for label, files in labels.items():
            if not files:  # still a class: labels must not shift between the splits
                log.warning("image_folder: %s holds no image file; it stays class %r (no "
                            "examples in split %r): remove the folder if it is not meant to be "
                            "one", os.path.join(path, split, label), label, split)

    def check_inputs() -> None:
        if TRAIN_SPLIT not in scan(config.root, config.tree):
            raise missing_files_error("image_folder", config.root, layout, hint)
        _warn_if_tree_changed(data_dir, config)

    builder = load_prepared(
        lambda: ImageFolder(config=config, data_dir=data_dir, file_format="array_record"),
        data_dir=data_dir,
        check_inputs=check_inputs,
    )
    stored: Any = builder.info.metadata.get("fingerprint")
    if stored != config.fingerprint:  # a 48-bit prefix collision, or a copy edited by hand
        raise ValueError(
            f"image_folder: {builder.data_dir} was prepared from another state of {config.root} "
            f"(fingerprint {stored}, the tree's is now {config.fingerprint}); delete that "
            "directory to prepare it again."
        )
    return builder
