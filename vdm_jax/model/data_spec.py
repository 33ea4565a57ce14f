"""What a model must know of its data (`DataSpec`): shapes, classes, levels, and for latent data
the autoencoder that decodes it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["DataSpec"]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model must know of its data: image_shape (H, W, C) of a batch (for a latent model,
    the latents'), num_classes (0 = unconditional) and num_levels K (bits/dim are for data on K
    levels; for latent data, the 256 levels of the decoded pixels). Latent data adds pixel_shape
    (the decoded images'), the normalization x = (z − latent_shift) · latent_scale per channel,
    and the autoencoder record (vdm_jax.importers.autoencoders.describe_weights) whose weights
    decode it. Training takes it from the dataset; checkpoints store it, so a run directory alone
    rebuilds the model and decodes its samples."""

    image_shape: tuple[int, int, int]
    num_classes: int
    num_levels: int
    pixel_shape: tuple[int, int, int] | None = None
    latent_shift: tuple[float, ...] | None = None
    latent_scale: tuple[float, ...] | None = None
    autoencoder: dict | None = None

    @property
    def is_latent(self) -> bool:
        return self.pixel_shape is not None

    @classmethod
    def from_info(cls, info: Any) -> DataSpec:
        """From a vdm_jax.data.DatasetInfo (duck-typed: the model layer does not import data)."""
        return cls(tuple(info.image_shape), int(info.num_classes), int(info.num_levels),
                   getattr(info, "pixel_shape", None), getattr(info, "latent_shift", None),
                   getattr(info, "latent_scale", None), getattr(info, "autoencoder", None))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        def tup(key: str, kind: type) -> tuple | None:
            return None if d.get(key) is None else tuple(kind(v) for v in d[key])

        return cls(tup("image_shape", int), int(d["num_classes"]), int(d["num_levels"]),
                   tup("pixel_shape", int), tup("latent_shift", float), tup("latent_scale", float),
                   d.get("autoencoder"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

