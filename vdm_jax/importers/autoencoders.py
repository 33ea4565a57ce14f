"""One entry point for every frozen autoencoder's weights: the SD-VAE (vdm_jax.importers.sd_vae)
and the RAE (vdm_jax.importers.rae), told apart by their files.

    load_autoencoder(path)   → AutoencoderKL | RAE  (both: encode / decode, NHWC, [−1, 1])
    describe_weights(path)   → the record stored with latents (SD-VAE: as before; RAE: with
                               "kind": "rae")
    weights_sha256(path)     → the SHA-256 that record holds (what latents are checked against)
    latent_geometry(record, image_size) → the latents' (h, w, c), whether they are posterior
                               moments or deterministic, and the decoded image size

`kind` ('sd_vae' | 'rae', the config's `autoencoder.kind`), when given, must be what the files
are; None reads it from them. Paths in the RAE layouts (a diffusers AutoencoderRAE folder, or a
folder with the official model.pt and dinov2/) are RAEs, everything else is read as an SD-VAE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from vdm_jax.importers import rae, sd_vae
from vdm_jax.importers.common import file_sha256, weights_at

__all__ = ["KINDS", "autoencoder_kind", "describe_weights", "latent_geometry",
           "load_autoencoder", "weights_sha256"]

KINDS = ("sd_vae", "rae")


def autoencoder_kind(path: str | os.PathLike, kind: str | None = None) -> str:
    """'rae' or 'sd_vae' for the weights at `path`; ValueError when `kind` says otherwise,
    FileNotFoundError when nothing is there."""
    p = weights_at(path, "autoencoder weights",
                   f"for the SD-VAE, {sd_vae.GET_WEIGHTS}; for the RAE, {rae.GET_WEIGHTS}")
    found = "rae" if rae.is_rae(p) else "sd_vae"
    if kind is not None and kind not in KINDS:
        raise ValueError(f"autoencoder.kind={kind!r}; expected one of {KINDS} (or unset: read "
                         "from the weights)")
    if kind is not None and kind != found:
        what = {"rae": "an RAE (diffusers AutoencoderRAE folder or official model.pt + dinov2/)",
                "sd_vae": "an SD-VAE (AutoencoderKL folder or LDM checkpoint)"}
        raise ValueError(f"autoencoder.kind={kind!r} but {p} holds {what[found]}: set "
                         f"--config.autoencoder.kind={found} or give {kind} weights")
    return found


def load_autoencoder(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                     kind: str | None = None) -> Any:
    """The autoencoder at `path`: an AutoencoderKL or an RAE (module docstring)."""
    if autoencoder_kind(path, kind) == "rae":
        return rae.load_rae(path, dtype=dtype)
    return sd_vae.load_autoencoder(path, dtype=dtype)


def describe_weights(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """What to record with latents made by these weights (the importer's own record)."""
    if autoencoder_kind(path, kind) == "rae":
        return rae.describe_rae(path)
    return sd_vae.describe_weights(path)


def weights_sha256(path: str | os.PathLike) -> str:
    """The "sha256" `describe_weights` records, computed again from the files."""
    if autoencoder_kind(path) == "rae":
        return rae.rae_sha256(path)
    weights, _ = sd_vae.locate_weights(path)
    return file_sha256(weights)


def latent_geometry(record: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """For images of side `image_size` encoded by the autoencoder of `record` (a
    `describe_weights` result): {"latent_shape": [h, w, c], "posterior": "moments" (SD-VAE:
    mean and log-variance stored) or "deterministic" (RAE: the latent itself),
    "decoded_size": side of the decoded images}. ValueError when the size does not fit."""
    cfg = record["config"]
    if record.get("kind") == "rae":
        p = int(cfg["patch_size"])
        g = int(cfg["encoder_input_size"]) // int(cfg["encoder"]["patch_size"])
        if image_size != p * g:
            raise ValueError(
                f"data.image_size={image_size}, but this RAE decodes {p * g}×{p * g} images "
                f"(encoder input {cfg['encoder_input_size']}²): encode {p * g}² images, or use "
                "the RAE made for this resolution")
        return {"latent_shape": [g, g, int(cfg["encoder"]["hidden_size"])],
                "posterior": "deterministic", "decoded_size": image_size}
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    if image_size % f:
        raise ValueError(f"data.image_size={image_size} is not divisible by the autoencoder's "
                         f"downsampling factor {f}")
    return {"latent_shape": [image_size // f, image_size // f, int(cfg["latent_channels"])],
            "posterior": "moments", "decoded_size": image_size}
