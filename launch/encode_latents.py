"""Encode a dataset once with an autoencoder (the SD-VAE) into a latent dataset for training.

    python launch/encode_latents.py --config=configs/imagenet_dit.py --out=DIR \
        --config.data.manual_dir=/path/to/ILSVRC2012 --config.autoencoder.weights=sd-vae-ft-ema/

Reads the config's image dataset (data.name / manual_dir / image_folder at data.image_size,
ADM center crop) — the config's data.latent_dir is ignored here — and writes to --out the
posterior moments of every image and of its horizontal flip with its label
(vdm_jax.data.latents), sharded over all devices and hosts, in chunks published as they finish:
rerunning a killed job encodes only what is missing, and the result is the same as an
uninterrupted run's. A progress bar shows images/s and the ETA. The autoencoder, the SHA-256 of
its weights, the crop and the per-channel latent statistics are recorded in DIR/metadata.json;
training then takes --config.data.latent_dir=DIR. Bad input: one line `error: ...`, exit 2.
"""

from __future__ import annotations

from absl import flags

from vdm_jax import config as config_lib
from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.io import check_writable

USAGE = ("python launch/encode_latents.py --config=configs/<name>.py --out=DIR "
         "--config.autoencoder.weights=PATH [--config.<key>=VALUE]")
_OUT = flags.DEFINE_string("out", None, "Directory of the latent dataset.")
_CHUNK = flags.DEFINE_integer("chunk_size", 1024, "Examples per chunk file (the unit of resume).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per encoder call (split over devices).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Encoder compute dtype.")
CONFIG = ConfigArgs(USAGE)  # --config and --config.<key>=<value>, split off before absl


def main() -> None:
    if not _OUT.value or not CONFIG.path:
        raise ValueError(f"--config and --out are required. Usage: {USAGE}")
    check_writable(_OUT.value, "--out", directory=True)  # before hours of encoding
    import jax.numpy as jnp

    from vdm_jax.parallel import distributed
    from vdm_jax.pipelines.encode_latents import encode_latents

    config = config_lib.load(CONFIG.path, CONFIG.overrides)
    distributed.initialize(config.distributed)
    with config.unlocked():  # encode the images; the latents go to --out
        config.data.kind, config.data.latent_dir = "images", None
    out = encode_latents(config, _OUT.value, chunk_size=_CHUNK.value,
                         batch_size=_BATCH.value, dtype=getattr(jnp, _DTYPE.value))
    print(f"wrote the latent dataset {out}")


if __name__ == "__main__":
    launch(main, CONFIG, __doc__)
