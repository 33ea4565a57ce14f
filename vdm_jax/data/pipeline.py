"""Input pipeline: tfds array_record sources read with grain, sharded per host, resumable.

Every dataset is a prepared tfds builder (see the dataset modules); its splits are random-access
sources of decoded examples `{"image": (H, W, C) uint8, "label": int, ...}`. Preprocessing, in
numpy/Pillow, per example:

  1. ADM center crop (`center_crop`): halve with a BOX filter while min(H, W) ≥ 2·size, resize
     with BICUBIC so that min(H, W) = size, crop the central size × size square;
  2. optional horizontal flip with probability ½ (training only), drawn from grain's
     per-record rng, so a given record in a given epoch is always flipped the same way;
  3. scaling of the integer level k ∈ {0..K−1} to x = 2(k + ½)/K − 1 ∈ (−1, 1)
     (CONVENTIONS.md; K = 17 for the digits, 256 for 8-bit images).

Training (`train_iterator`): grain IndexSampler + DataLoader, globally shuffled from `seed`,
reshuffled every epoch, repeated forever; host p of P reads only the contiguous shard p of the
split (grain ShardOptions: contiguous even split, the first N mod P hosts taking one extra
example) and yields the local batch of global_batch_size / P examples. Since every host's stream
is infinite, no host waits on another at an epoch boundary. The iterator's state (grain
checkpointing, JSON bytes) restores the exact stream.

The records and their transforms are in `vdm_jax.data.records`; an opened dataset is one of
three small types (a tfds builder, the synthetic source, a latent dataset) with the same
methods: info, source(split), train_transform, eval_transform.

Evaluation (`eval_iterator`): one unshuffled pass over the test split; batches are padded and
carry a boolean `mask`, and every host yields the same number of batches.

Config (`data`): name, data_dir, manual_dir, image_folder, image_size (default: 8 for digits,
32 for cifar10 and synthetic, required otherwise), random_flip, synthetic_channels and
synthetic_classes (data.name='synthetic' only: C and the number of classes); optional
worker_count (grain worker processes, default 0) and read_threads (grain reader threads, default
0 for digits, 8 otherwise). The number of levels K is a property of the dataset
(DatasetInfo.num_levels); `data.num_levels` is not read.
The digits, 1497 tiny records, are decoded once and served from memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from vdm_jax.data import cifar10, digits, image_folder, imagenet
from vdm_jax.data import latents as latents_lib
from vdm_jax.data.records import EvalPreprocess, InMemorySource, SyntheticSource, TrainPreprocess
from vdm_jax.data.tfds_utils import DatasetNotFoundError, data_source

DATASETS = ("digits", "imagenet2012", "cifar10", "image_folder", "synthetic")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the likelihood need to know about a dataset after preprocessing.

    image_shape: (H, W, C) of the batches; num_levels: K, the number of intensity levels
    (bits/dim are computed for data discretized to K levels); num_train / num_test: examples in
    the training and evaluation splits.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int
    num_train: int
    num_test: int
    # Latent datasets (data.latent_dir): the decoded images' shape, the normalization
    # x = (z − shift) · scale per channel, and the autoencoder that made them.
    pixel_shape: tuple[int, int, int] | None = None
    latent_shift: tuple[float, ...] | None = None
    latent_scale: tuple[float, ...] | None = None
    autoencoder: dict | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TfdsDataset:
    """An opened image dataset: a prepared tfds builder, its splits decoded to uint8 levels."""

    train_split: str
    eval_split: str | None
    num_classes: int
    num_levels: int
    channels: int
    image_size: int
    read_threads: int  # grain reader threads: worth it only when decoding releases the GIL
    builder: Any
    in_memory: bool  # small datasets: decode every record once, keep the arrays in memory

    def where(self) -> str:
        return f"{self.builder.name} in {self.builder.data_dir!r}"

    def no_eval_split(self) -> str:
        return f"{self.where()}: no evaluation split ({'/'.join(image_folder.EVAL_SPLITS)})."

    def info(self) -> DatasetInfo:
        splits = self.builder.info.splits
        return DatasetInfo(
            image_shape=(self.image_size, self.image_size, self.channels),
            num_classes=self.num_classes, num_levels=self.num_levels,
            num_train=splits[self.train_split].num_examples,
            num_test=splits[self.eval_split].num_examples if self.eval_split else 0)

    def source(self, split: str) -> Any:
        """Random-access source of a split: tfds array_record (decoded examples) or, for the
        digits, the same in memory."""
        source = data_source(self.builder, split)
        return InMemorySource(source) if self.in_memory else source

    def train_transform(self, flip: bool, data_config: Mapping[str, Any]) -> Any:
        return TrainPreprocess(self.image_size, self.num_levels, flip)

    def eval_transform(self) -> Any:
        return EvalPreprocess(self.image_size, self.num_levels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SyntheticDataset(_TfdsDataset):
    """data.name='synthetic': random uint8 records (`SyntheticSource`), no files, no eval split."""

    builder: SyntheticSource  # the one split's source
    in_memory: bool = False

    def where(self) -> str:
        return "data.name='synthetic'"

    def no_eval_split(self) -> str:
        return "data.name='synthetic' has no evaluation split (it is for timing the trainer)"

    def info(self) -> DatasetInfo:
        return DatasetInfo(image_shape=(self.image_size, self.image_size, self.channels),
                           num_classes=self.num_classes, num_levels=self.num_levels,
                           num_train=len(self.builder), num_test=0)

    def source(self, split: str) -> Any:
        return self.builder


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LatentDataset(_TfdsDataset):
    """data.latent_dir: an autoencoder's latents (vdm_jax.data.latents), normalized by
    latent_norm = (shift, scale)."""

    builder: latents_lib.LatentDataset
    latent_norm: tuple[tuple[float, ...], tuple[float, ...]]
    in_memory: bool = False

    def where(self) -> str:
        return str(self.builder.root)

    def info(self) -> DatasetInfo:
        ds = self.builder
        return DatasetInfo(
            image_shape=ds.latent_shape, num_classes=self.num_classes, num_levels=256,
            num_train=ds.num_examples("train"), num_test=ds.num_examples("eval"),
            pixel_shape=ds.pixel_shape, latent_shift=self.latent_norm[0],
            latent_scale=self.latent_norm[1], autoencoder=ds.metadata["autoencoder"])

    def source(self, split: str) -> Any:
        return self.builder.source(split)

    def train_transform(self, flip: bool, data_config: Mapping[str, Any]) -> Any:
        return latents_lib.LatentTrainPreprocess(
            self.builder.record_shape, *self.latent_norm, flip,
            _get(data_config, "latent_posterior", "sample"))

    def eval_transform(self) -> Any:
        return latents_lib.LatentEvalPreprocess(self.builder.record_shape, *self.latent_norm)


_Dataset = _TfdsDataset | _SyntheticDataset | _LatentDataset


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    return default if value is None else value


# name -> (module, native image size or None, channels)
_MODULES = {
    "digits": (digits, 8, 1),
    "imagenet2012": (imagenet, None, 3),
    "cifar10": (cifar10, 32, 3),
    "image_folder": (image_folder, None, 3),
}


def _open_latents(config: Mapping[str, Any]) -> _Dataset:
    """The latent dataset of `config.latent_dir` (vdm_jax.data.latents)."""
    ds = latents_lib.open_latents(config["latent_dir"])
    posterior = _get(config, "latent_posterior", "sample")
    if posterior not in latents_lib.POSTERIORS:
        raise ValueError(f"data.latent_posterior={posterior!r}; expected one of "
                         f"{latents_lib.POSTERIORS}")
    shift, scale = ds.normalization(_get(config, "latent_scaling", "autoencoder"))
    h, w, c = ds.latent_shape
    if h != w:
        raise ValueError(f"latent dataset {ds.root} holds non-square latents {h}×{w}")
    return _LatentDataset(
        builder=ds, train_split="train", eval_split="eval" if ds.num_examples("eval") else None,
        num_classes=ds.num_classes, num_levels=256, channels=c, image_size=h,
        read_threads=int(_get(config, "read_threads", 8)),
        latent_norm=(tuple(shift), tuple(scale)),
    )
def _open_synthetic(config: Mapping[str, Any]) -> _Dataset:
    size, channels = _get(config, "image_size", 32), _get(config, "synthetic_channels", 3)
    classes = _get(config, "synthetic_classes", 10)
    for key, value in (("image_size", size), ("synthetic_channels", channels),
                       ("synthetic_classes", classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"data.{key} must be a positive int for data.name='synthetic' "
                             f"(got {value!r})")
    return _SyntheticDataset(train_split="train", eval_split=None, num_classes=classes,
                             num_levels=256, channels=channels, image_size=size, read_threads=0,
                             builder=SyntheticSource(size, channels, classes))


def _open(config: Mapping[str, Any]) -> _Dataset:
    """Prepares (if needed) and opens the dataset named by `config.name`, or the latent dataset
    of `config.latent_dir` when it is set."""
    if _get(config, "latent_dir"):
        return _open_latents(config)
    name = _get(config, "name", "digits")
    if name == "synthetic":
        return _open_synthetic(config)
    if name not in _MODULES:
        raise ValueError(f"Unknown dataset data.name={name!r}; expected one of {DATASETS}.")
    module, native, channels = _MODULES[name]
    size = _get(config, "image_size", native)
    if not isinstance(size, int) or size <= 0:  # checked before a long preparation
        raise ValueError(
            f"data.image_size must be a positive int for {name!r} (got {size!r}); "
            "e.g. 256 for ImageNet 256×256."
        )
    data_dir = _get(config, "data_dir")
    if name == "image_folder":
        builder = image_folder.load_builder(_get(config, "image_folder"), data_dir)
        splits = builder.info.splits
        test = next((s for s in image_folder.EVAL_SPLITS if s in splits), None)
    elif name == "digits":
        builder, test = digits.load_builder(data_dir), digits.EVAL_SPLIT
    else:
        builder, test = module.load_builder(data_dir, _get(config, "manual_dir")), module.EVAL_SPLIT
    return _TfdsDataset(
        builder=builder,
        train_split=module.TRAIN_SPLIT,
        eval_split=test,
        num_classes=builder.info.features["label"].num_classes,
        num_levels=module.NUM_LEVELS,
        channels=channels,
        image_size=size,
        in_memory=name == "digits",
        read_threads=int(_get(config, "read_threads", 0 if name == "digits" else 8)),
    )


def dataset_info(data_config: Mapping[str, Any]) -> DatasetInfo:
    """Shapes, classes, levels and split sizes of `data_config.name` (prepares it if needed)."""
    return _open(data_config).info()


# --------------------------------------------------------------------------- iterators


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
    return index, count


def _check_sharding(sharding: NamedSharding | None, index: int, count: int) -> None:
    if sharding is not None and (index, count) != (jax.process_index(), jax.process_count()):
        raise ValueError(
            f"mesh_sharding needs the real process layout: got process {index} of {count}, but "
            f"jax runs process {jax.process_index()} of {jax.process_count()}. Simulated hosts "
            "yield local numpy batches: leave mesh_sharding=None."
        )


def _local_batch(batch_size: int, process_count: int, what: str) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"{what}={batch_size} must be a positive multiple of process_count={process_count} "
            "(each host loads batch_size / process_count examples)."
        )
    return batch_size // process_count


def _shard_range(num_examples: int, index: int, count: int) -> tuple[int, int]:
    """Host `index`'s contiguous shard [start, stop): the first num_examples % count hosts get
    one extra example (grain's even_split without drop_remainder)."""
    per, extra = divmod(num_examples, count)
    start = index * per + min(index, extra)
    return start, start + per + (index < extra)


def _to_global(
    batch: dict[str, np.ndarray], sharding: NamedSharding, global_batch_size: int
) -> dict[str, jax.Array]:
    """Local (B/P, ...) numpy arrays -> global (B, ...) jax.Arrays sharded along the batch."""
    out = {}
    for key, local in batch.items():
        spec = PartitionSpec(*tuple(sharding.spec)[: local.ndim])  # labels/mask: batch axis only
        out[key] = jax.make_array_from_process_local_data(
            NamedSharding(sharding.mesh, spec), local, (global_batch_size, *local.shape[1:])
        )
    return out


class BatchIterator:
    """Infinite iterator of training batches with grain's checkpointable state.

    Yields {"image": (B, H, W, C) float32 in [−1, 1], "label": (B,) int32}, where B is the local
    batch (numpy) or, with `mesh_sharding`, the global batch (jax.Array).
    """

    def __init__(
        self,
        loader_iterator: Any,
        mesh_sharding: NamedSharding | None,
        global_batch_size: int,
    ):
        self._iterator = loader_iterator
        self._sharding = mesh_sharding
        self._global_batch_size = global_batch_size

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._iterator)
        if self._sharding is None:
            return batch
        return _to_global(batch, self._sharding, self._global_batch_size)

    def get_state(self) -> bytes:
        """The position in the stream, as JSON bytes (grain DataLoader state)."""
        return self._iterator.get_state()

    def set_state(self, state: bytes | str) -> None:
        """Restores a position saved by `get_state` (bytes, or the same JSON as str)."""
        self._iterator.set_state(state.encode() if isinstance(state, str) else state)


def train_iterator(
    data_config: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    mesh_sharding: NamedSharding | None = None,
) -> BatchIterator:
    """Infinite, shuffled, per-host-sharded stream of training batches (see the module doc).

    process_index / process_count default to jax's; each host yields global_batch_size /
    process_count examples per batch, or global jax.Arrays when `mesh_sharding` (the batch
    sharding) is given. `seed` (0 ≤ seed < 2³²) fixes the order of every epoch and the flips.
    """
    index, count = _processes(process_index, process_count)
    _check_sharding(mesh_sharding, index, count)
    local_batch = _local_batch(global_batch_size, count, "global_batch_size")
    if not (isinstance(seed, int | np.integer) and 0 <= int(seed) < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    ds = _open(data_config)
    source = ds.source(ds.train_split)
    if len(source) < count:
        raise ValueError(f"{len(source)} training examples cannot be sharded over {count} hosts.")
    worker_count = int(_get(data_config, "worker_count", 0))
    if worker_count > 0 and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; outside absl.app.run use their defaults.
        flags.FLAGS.mark_as_parsed()
    shard = grain.ShardOptions(shard_index=index, shard_count=count, drop_remainder=False)
    sampler = grain.IndexSampler(
        num_records=len(source), shard_options=shard, shuffle=True, num_epochs=None, seed=int(seed)
    )
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[ds.train_transform(bool(_get(data_config, "random_flip")), data_config),
                    grain.Batch(local_batch, drop_remainder=True)],
        worker_count=worker_count,
        shard_options=shard,
        # A small read-ahead: huge buffers only add thread churn on few-core hosts.
        read_options=grain.ReadOptions(
            num_threads=ds.read_threads, prefetch_buffer_size=min(256, max(64, 2 * local_batch))
        ),
    )
    return BatchIterator(iter(loader), mesh_sharding, global_batch_size)


def eval_iterator(
    data_config: Mapping[str, Any],
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    mesh_sharding: NamedSharding | None = None,
    split: str = "eval",
) -> Iterator[dict[str, Any]]:
    """One unshuffled pass over the evaluation split (split="eval") or the training split
    (split="train", e.g. for baselines fitted on it), padded so all hosts yield as many batches.

    `batch_size` is global: each host yields batch_size / process_count rows per batch,
    {"image": (b, H, W, C) float32, "label": (b,) int32, "mask": (b,) bool}, where padded rows
    have mask False (and zero image/label). Host p reads the contiguous shard p of the split;
    there are ⌈⌈N / P⌉ / b⌉ batches per host. With `mesh_sharding`, yields global jax.Arrays.
    """
    index, count = _processes(process_index, process_count)
    _check_sharding(mesh_sharding, index, count)
    local_batch = _local_batch(batch_size, count, "batch_size")
    if split not in ("eval", "train"):
        raise ValueError(f"split must be 'eval' or 'train', got {split!r}.")
    ds = _open(data_config)
    if split == "eval" and ds.eval_split is None:
        raise DatasetNotFoundError(ds.no_eval_split())
    source = ds.source(ds.eval_split if split == "eval" else ds.train_split)
    start, stop = _shard_range(len(source), index, count)
    num_batches = math.ceil(math.ceil(len(source) / count) / local_batch)
    batches = (
        grain.MapDataset.source(source)[start:stop]
        .map(ds.eval_transform())
        .batch(local_batch, drop_remainder=False)
        .to_iter_dataset(grain.ReadOptions(num_threads=ds.read_threads, prefetch_buffer_size=256))
    )
    shape = (ds.image_size, ds.image_size, ds.channels)
    return _padded(iter(batches), num_batches, local_batch, shape, mesh_sharding, batch_size)


def _padded(
    batches: Iterator[dict[str, np.ndarray]],
    num_batches: int,
    local_batch: int,
    image_shape: tuple[int, int, int],
    mesh_sharding: NamedSharding | None,
    global_batch_size: int,
) -> Iterator[dict[str, Any]]:
    for _ in range(num_batches):
        batch = next(batches, None)
        n = 0 if batch is None else len(batch["label"])
        out = {
            "image": np.zeros((local_batch, *image_shape), np.float32),
            "label": np.zeros((local_batch,), np.int32),
            "mask": np.arange(local_batch) < n,
        }
        if n:
            out["image"][:n] = batch["image"]
            out["label"][:n] = batch["label"]
        yield out if mesh_sharding is None else _to_global(out, mesh_sharding, global_batch_size)


def split_size(data_config: Mapping[str, Any], split: str) -> int:
    """Examples in split 'train' or 'eval' (0 when the dataset has no evaluation split)."""
    ds = _open(data_config)
    name = ds.train_split if split == "train" else ds.eval_split
    if name is None:
        return 0
    return len(ds.source(name))


def read_examples(data_config: Mapping[str, Any], split: str, start: int, stop: int
                  ) -> dict[str, np.ndarray]:
    """Examples [start, stop) of split 'train' or 'eval' in order, preprocessed as for evaluation
    (ADM center crop, no flip): {"image": (n, S, S, C) float32 in [−1, 1], "label": (n,)}.
    For encoding a dataset offline (vdm_jax.pipelines.encode_latents)."""
    ds = _open(data_config)
    name = ds.train_split if split == "train" else ds.eval_split
    if name is None:
        raise DatasetNotFoundError(f"{ds.where()} has no {split!r} split.")
    source = ds.source(name)
    batches = (
        grain.MapDataset.source(source)[start:stop]
        .map(ds.eval_transform())
        .batch(max(1, stop - start), drop_remainder=False)
        .to_iter_dataset(grain.ReadOptions(num_threads=ds.read_threads, prefetch_buffer_size=64))
    )
    return next(iter(batches))
