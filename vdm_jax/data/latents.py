"""Latent datasets: an image dataset encoded once by an autoencoder, read back by grain.

A latent directory (made by `launch/encode_latents.py`, vdm_jax.pipelines.encode_latents):

    DIR/metadata.json           how it was made and what it holds (below); written first as a
                                manifest of the settings, completed with the statistics last
    DIR/<split>/chunk_%06d.array_record    examples [i·C, (i + 1)·C) of the split, C = chunk size

One record per image: the label (int32, little-endian) followed by the posterior moments of the
center-cropped image AND of its horizontal flip, float16, shape (2, h, w, 2c): [no flip, flip] ×
concat(mean, logvar) of the c latent channels; for a deterministic encoder (the RAE; metadata
"posterior": "deterministic") the latents themselves, shape (2, h, w, c). Storing moments
rather than one sample lets every epoch draw a fresh z = mean + exp(logvar/2)·ε
(`data.latent_posterior='sample'`, DiT's practice draws one per image per epoch) or use the
mean ('mean'), and the flip is the usual augmentation.

metadata.json: {"format": FORMAT, "autoencoder": importers.autoencoders.describe_weights(...)
(path, sha256 of the weights, architecture; the RAE's with "kind": "rae" and its statistics'
formula), "crop": {"method": "adm_center_crop", "image_size":
S}, "source": the data config that was encoded, "latent_shape": [h, w, c], "pixel_shape": [S, S,
3], "num_classes", "chunk_size", "splits": {split: {"num_examples", "num_chunks"}}, "stats":
{"mean": [c], "std": [c]} of the posterior means over the training split (both flips), computed
once every chunk is written} — a directory without "stats" is unfinished.

The model sees normalized latents x = (z − shift) · scale, per channel: shift = shift_factor,
scale = scaling_factor of the autoencoder (`data.latent_scaling='autoencoder'`: 0.18215 for the
SD-VAE, as DiT), or shift = mean, scale = 1 / std of the stored statistics ('per_channel').
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain.python as grain
import numpy as np

from vdm_jax.importers.autoencoders import weights_sha256
from vdm_jax.io import read_json

__all__ = [
    "FORMAT",
    "LatentDataset",
    "LatentEvalPreprocess",
    "LatentTrainPreprocess",
    "check_matches",
    "chunk_path",
    "decode_record",
    "describe",
    "encode_record",
    "open_latents",
]

FORMAT = "vdm_jax.latents.v1"
SCALINGS = ("autoencoder", "per_channel")
POSTERIORS = ("sample", "mean")
_LABEL = struct.Struct("<i")


def chunk_path(root: str | os.PathLike, split: str, index: int) -> Path:
    return Path(root) / split / f"chunk_{index:06d}.array_record"


def encode_record(moments: np.ndarray, label: int) -> bytes:
    """One example: label (int32) + moments (2, h, w, 2c) as float16 bytes."""
    return _LABEL.pack(int(label)) + np.ascontiguousarray(moments, np.float16).tobytes()


def decode_record(record: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, np.int32]:
    """Inverse of `encode_record`: (moments (2, h, w, 2c) float16, label int32)."""
    (label,) = _LABEL.unpack_from(record, 0)
    moments = np.frombuffer(record, np.float16, offset=_LABEL.size).reshape(shape)
    return moments, np.int32(label)


@dataclasses.dataclass(frozen=True)
class LatentDataset:
    """An opened latent directory (module docstring): metadata and per-split chunk files."""

    root: Path
    metadata: dict[str, Any]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.metadata["latent_shape"])

    @property
    def deterministic(self) -> bool:
        """Whether records hold the latents themselves (RAE) rather than posterior moments."""
        return self.metadata.get("posterior") == "deterministic"

    @property
    def record_shape(self) -> tuple[int, int, int, int]:
        h, w, c = self.latent_shape
        return (2, h, w, c if self.deterministic else 2 * c)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.metadata["pixel_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    def num_examples(self, split: str) -> int:
        return int(self.metadata["splits"].get(split, {}).get("num_examples", 0))

    def source(self, split: str) -> grain.ArrayRecordDataSource:
        info = self.metadata["splits"].get(split)
        if not info or not info["num_examples"]:
            raise FileNotFoundError(f"latent dataset {self.root} has no {split!r} split")
        paths = [str(chunk_path(self.root, split, i)) for i in range(info["num_chunks"])]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"latent dataset {self.root} lacks {len(missing)} chunk(s) of {split!r}, e.g. "
                f"{missing[0]}: rerun launch/encode_latents.py with the same arguments")
        return grain.ArrayRecordDataSource(paths)

    def normalization(self, scaling: str) -> tuple[list[float], list[float]]:
        """(shift, scale) per channel of x = (z − shift) · scale (module docstring)."""
        c = self.latent_shape[-1]
        if scaling == "autoencoder":
            cfg = self.metadata["autoencoder"]["config"]
            return [float(cfg.get("shift_factor") or 0.0)] * c, [float(cfg["scaling_factor"])] * c
        if scaling == "per_channel":
            stats = self.metadata["stats"]
            return ([float(m) for m in stats["mean"]],
                    [1.0 / max(float(s), 1e-12) for s in stats["std"]])
        raise ValueError(f"data.latent_scaling={scaling!r}; expected one of {SCALINGS}")


def open_latents(root: str | os.PathLike) -> LatentDataset:
    """The latent dataset in `root`; FileNotFoundError / ValueError naming what is wrong."""
    root = Path(root).expanduser()
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"data.latent_dir={root} holds no latent dataset ({meta_path} is missing): make it "
            "with launch/encode_latents.py --config=<your config> --out=" + str(root))
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} latent dataset (unreadable or another "
                         "format): re-encode it with launch/encode_latents.py")
    if "stats" not in meta:
        raise ValueError(f"latent dataset {root} is unfinished (encoding was interrupted): rerun "
                         "launch/encode_latents.py with the same arguments to complete it")
    return LatentDataset(root, meta)


def _to_model_space(z: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((z - shift) * scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LatentTrainPreprocess(grain.RandomMapTransform):
    """A record → {"image": x (h, w, c) float32, "label"}: one of the two flips (when
    random_flip), a posterior draw or its mean, normalized (module docstring)."""

    record_shape: tuple[int, int, int, int]
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    random_flip: bool
    posterior: str

    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, Any]:
        moments, label = decode_record(element, self.record_shape)
        flip = int(self.random_flip and rng.random() < 0.5)
        c = len(self.shift)
        mean = moments[flip, ..., :c].astype(np.float32)  # (h, w, c)
        # records of c channels hold deterministic latents (RAE): nothing to draw
        if self.posterior == "sample" and self.record_shape[-1] == 2 * c:
            std = np.exp(0.5 * moments[flip, ..., c:].astype(np.float32))
            z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        else:
            z = mean
        return {"image": _to_model_space(z, np.asarray(self.shift, np.float32),
                                         np.asarray(self.scale, np.float32)),
                "label": label}


@dataclasses.dataclass(frozen=True)
class LatentEvalPreprocess(grain.MapTransform):
    """A record → the normalized posterior mean of the unflipped image."""

    record_shape: tuple[int, int, int, int]
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    def map(self, element: bytes) -> dict[str, Any]:
        moments, label = decode_record(element, self.record_shape)
        c = len(self.shift)
        z = moments[0, ..., :c].astype(np.float32)
        return {"image": _to_model_space(z, np.asarray(self.shift, np.float32),
                                         np.asarray(self.scale, np.float32)),
                "label": label}


def check_matches(metadata: Mapping[str, Any], *, weights: str | os.PathLike | None,
                  image_size: int | None, where: str) -> None:
    """ValueError when latents described by `metadata` (or a DataSpec's autoencoder record plus
    crop) were made with other autoencoder weights than `weights` or another crop than
    `image_size`: latents of other weights decode to other images. FileNotFoundError when the
    weights are missing."""
    made = metadata["autoencoder"]
    if weights is not None:
        sha = weights_sha256(weights)
        if made.get("sha256") != sha:
            raise ValueError(
                f"{where} was encoded with other autoencoder weights ({made.get('weights_file')},"
                f" sha256 {str(made.get('sha256'))[:12]}…) than autoencoder.weights={weights} "
                f"(sha256 {sha[:12]}…): use the same weights, or re-encode with "
                "launch/encode_latents.py")
    crop = metadata.get("crop", {}).get("image_size")
    if image_size is not None and crop is not None and int(crop) != int(image_size):
        raise ValueError(
            f"{where} holds {crop}×{crop} center crops, but data.image_size={image_size}: set "
            f"data.image_size={crop} or re-encode")


def describe(dataset: LatentDataset) -> Mapping[str, Any]:
    """A short record of the dataset for configs and results (root, autoencoder hash, crop)."""
    return {"latent_dir": str(dataset.root), "format": FORMAT,
            "autoencoder_sha256": dataset.metadata["autoencoder"].get("sha256"),
            "crop": dataset.metadata["crop"]}
