"""Encoding a dataset once with an autoencoder: what `launch/encode_latents.py` runs.

    encode_latents(config, out_dir)

For each split ('train', and 'eval' when the dataset has one) the images of `config.data` are
read in order with the training pipeline's ADM center crop at `data.image_size` (no flip), and
each image and its horizontal flip are encoded by the autoencoder of `autoencoder.weights` (an
SD-VAE or an RAE, `vdm_jax.importers.autoencoders`) into posterior moments (SD-VAE) or the
deterministic latents (RAE), stored as `vdm_jax.data.latents` records in chunks of `chunk_size`
examples.

Resumable: metadata.json is first written as a manifest of the settings (autoencoder and its
weights' SHA-256, crop, source, shapes, chunk size, split sizes); each chunk is published
atomically when complete; a rerun with the same settings encodes only the missing chunks, so a
killed run finishes into exactly the dataset an uninterrupted one makes (encoding is
deterministic: no posterior draw is stored). A directory holding latents of other settings is
refused. The per-channel mean and std of the posterior means over the training split (both
flips) are computed last and complete the metadata.

Sharding: chunk i belongs to host i mod P; each host encodes its chunks with the batch sharded
over its local devices (data parallelism; the autoencoder is replicated), so hosts never wait
on each other until the final statistics (process 0 computes them after a barrier).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from tqdm import tqdm

from vdm_jax.data import latents
from vdm_jax.data.pipeline import dataset_info, read_examples, split_size
from vdm_jax.importers.autoencoders import describe_weights, latent_geometry, load_autoencoder
from vdm_jax.io import publish, read_json, write_json

__all__ = ["DEFAULT_CHUNK_SIZE", "encode_latents"]

DEFAULT_CHUNK_SIZE = 1024
SPLITS = ("train", "eval")
_NOT_IN_MANIFEST = ("stats",)


def _source_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the data config that say which images were encoded."""
    return {k: data.get(k) for k in ("name", "image_folder", "image_size")}


def _manifest(config: ConfigDict, chunk_size: int) -> dict[str, Any]:
    info = dataset_info(config.data)
    size = int(config.data.image_size or info.image_shape[0])
    autoencoder = describe_weights(config.autoencoder.weights,
                                   kind=config.autoencoder.get("kind"))
    geometry = latent_geometry(autoencoder, size)
    splits = {}
    for split in SPLITS:
        n = split_size(config.data, split)
        if n:
            splits[split] = {"num_examples": n, "num_chunks": math.ceil(n / chunk_size)}
    return {
        "format": latents.FORMAT,
        "autoencoder": autoencoder,
        "crop": {"method": "adm_center_crop", "image_size": size},
        "source": _source_record(config.data.to_dict()),
        "latent_shape": geometry["latent_shape"],
        "pixel_shape": [size, size, int(info.image_shape[-1])],
        "num_classes": int(info.num_classes),
        "chunk_size": int(chunk_size),
        "splits": splits,
        "moments_dtype": "float16",
        # absent (the SD-VAE's posterior moments) in datasets made before the RAE existed
        **({"posterior": "deterministic"} if geometry["posterior"] == "deterministic" else {}),
    }


def _comparable(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in _NOT_IN_MANIFEST}
    # The weights are identified by their hash; the files may have moved.
    out["autoencoder"] = {k: v for k, v in out["autoencoder"].items()
                          if k not in ("path", "weights_file")}
    return out


def _prepare_dir(out: Path, manifest: dict[str, Any]) -> None:
    """Process 0: write the manifest, or check the one there is ours."""
    meta_path = out / "metadata.json"
    if meta_path.exists():
        found = read_json(meta_path)
        if not isinstance(found, dict) or _comparable(found) != _comparable(
                json.loads(json.dumps(manifest))):
            raise ValueError(
                f"{out} already holds a latent dataset of other settings (see {meta_path}): "
                "use another --out, or delete it to encode these")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, manifest)


def _encode_fn(model: Any, mesh: jax.sharding.Mesh, deterministic: bool):
    """A jitted fn(images (B, S, S, C) in [−1, 1]) → moments (B, 2, h, w, 2c) float16 of each
    image and its horizontal flip (deterministic: the latents (B, 2, h, w, c)), the batch
    sharded over `mesh`."""
    graphdef, state = nnx.split(model)
    batch = NamedSharding(mesh, PartitionSpec("data"))

    @jax.jit
    def encode(state: nnx.State, images: jax.Array) -> jax.Array:
        images = jax.lax.with_sharding_constraint(images, batch)
        both = jnp.concatenate([images, images[:, :, ::-1]])  # (2B, S, S, C): image, flip
        if deterministic:  # RAE: z = encode(x), nothing to sample
            moments = nnx.merge(graphdef, state).encode(both)  # (2B, h, w, c)
        else:
            mean, logvar = nnx.merge(graphdef, state).encode(both)  # 2 × (2B, h, w, c)
            moments = jnp.concatenate([mean, logvar], axis=-1)  # (2B, h, w, 2c)
        b = images.shape[0]
        return jnp.stack([moments[:b], moments[b:]], axis=1).astype(jnp.float16)

    return lambda images: encode(state, images)


def _write_chunk(path: Path, moments: np.ndarray, labels: np.ndarray) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    with publish(path) as tmp:
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        try:
            for m, y in zip(moments, labels, strict=True):
                writer.write(latents.encode_record(m, int(y)))
        finally:
            writer.close()


def _statistics(out: Path, meta: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-channel mean and std of the posterior means (RAE: the latents) of the training split
    (both flips), accumulated in float64."""
    dataset = latents.LatentDataset(out, dict(meta))
    source = dataset.source("train")
    shape = dataset.record_shape
    c = dataset.latent_shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for i in range(len(source)):
        moments, _ = latents.decode_record(source[i], shape)
        mean = moments[..., :c].astype(np.float64).reshape(-1, c)
        total += mean.sum(0)
        total_sq += (mean**2).sum(0)
        count += len(mean)
    mu = total / count
    var = np.maximum(total_sq / count - mu**2, 0.0)
    return {"mean": mu.tolist(), "std": np.sqrt(var).tolist()}


def encode_latents(config: ConfigDict, out_dir: str | os.PathLike, *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 64,
                   dtype: Any = jnp.float32, progress: bool = True) -> Path:
    """Encode the dataset of `config.data` with `config.autoencoder.weights` into `out_dir` (see
    the module docstring); returns the directory. Bad input raises ValueError /
    FileNotFoundError before anything is written."""
    if not config.autoencoder.weights:
        raise ValueError("--config.autoencoder.weights=PATH is required: the SD-VAE folder "
                         "(config.json + diffusion_pytorch_model.safetensors) or a single-file "
                         "checkpoint, or an RAE folder (diffusers AutoencoderRAE, or the "
                         "official model.pt + stat.pt + dinov2/)")
    if config.data.latent_dir:
        raise ValueError("data.latent_dir is set: encode the image dataset (unset it); the "
                         "latents go to --out")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be positive, got {chunk_size}, "
                         f"{batch_size}")
    out = Path(out_dir).expanduser().absolute()
    node = out
    while not node.exists() and node.parent != node:
        node = node.parent
    if not node.is_dir() or not os.access(node, os.W_OK):
        raise ValueError(f"--out={out}: {node} is not a writable directory")
    manifest = _manifest(config, chunk_size)
    model = load_autoencoder(config.autoencoder.weights, dtype=dtype,
                             kind=config.autoencoder.get("kind"))
    index, count = jax.process_index(), jax.process_count()
    if index == 0:
        _prepare_dir(out, manifest)
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vdm_jax.encode_latents start")
    devices = jax.local_devices()
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    # Each chunk is encoded in batches that split evenly over the local devices.
    batch = max(len(devices), batch_size - batch_size % len(devices))
    encode = _encode_fn(model, mesh, manifest.get("posterior") == "deterministic")

    todo = []
    for split, info in manifest["splits"].items():
        for i in range(info["num_chunks"]):
            if i % count == index and not latents.chunk_path(out, split, i).is_file():
                start = i * chunk_size
                todo.append((split, i, start, min(start + chunk_size, info["num_examples"])))
    total = sum(stop - start for *_, start, stop in todo)
    done_before = sum(info["num_examples"] for info in manifest["splits"].values()) - total
    if index == 0 and done_before:
        print(f"resuming: {done_before} images already encoded in {out}", flush=True)
    bar = tqdm(total=total, disable=None if progress and index == 0 else True,  # None: a
               desc="encode", unit="img", dynamic_ncols=True)  # terminal only, no \r in logs
    try:
        for split, i, start, stop in todo:
            examples = read_examples(config.data, split, start, stop)
            images, labels = examples["image"], examples["label"]
            n = len(images)
            pad = (-n) % batch
            if pad:  # a fixed batch shape: the last batch would compile a second time
                images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            parts = [np.asarray(encode(jnp.asarray(images[j:j + batch])))
                     for j in range(0, len(images), batch)]
            _write_chunk(latents.chunk_path(out, split, i), np.concatenate(parts)[:n], labels)
            bar.update(n)
    finally:
        bar.close()
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vdm_jax.encode_latents chunks")
    finished = read_json(out / "metadata.json") or {}
    if index == 0 and (todo or "stats" not in finished):
        write_json(out / "metadata.json", {**manifest, "stats": _statistics(out, manifest)})
    elif index == 0:
        print(f"{out} already holds these latents: nothing to do.", flush=True)
    return out
