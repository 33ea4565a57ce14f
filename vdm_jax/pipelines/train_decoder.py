"""RAE decoder training as `launch/train_decoder.py` runs it: the networks a config names, the
training loop (vdm_jax.training.decoder), then the whole RAE path on the evaluation split.

    config = load(path, overrides)      # configs/*_rae_decoder.py
    summary = run(config, workdir)      # trains (or resumes); evaluates the EMA decoder

`model.kind`:
  * "rae": the encoder and latent statistics of the RAE at `model.weights` (either released
    layout, vdm_jax.importers.autoencoders), its decoder re-initialized from `seed` when
    `model.reinit_decoder` (training from scratch, as the official recipe) or fine-tuned;
  * "digits": `DigitsRAE`, the digits CNN trained here (the digits classifier, cached in the run
    directory) as the frozen representation encoder.
LPIPS (`loss.lpips_vgg`: torchvision's vgg16 file, `loss.lpips_heads`: the lpips package's
vgg.pth) is loaded only when `loss.perceptual_weight` > 0, the discriminator
(`loss.disc_dino`: DINO ViT-S/8, `loss.disc_heads`: optional trained heads) only when
`loss.disc_weight` > 0.

At the end, with the EMA decoder: latents (the encoder's tokens, normalized when the RAE has
statistics) of the evaluation split, written to `eval/latents.npz`; their decodings, clipped, to
`eval/reconstructions.npz`; the reconstruction error (L1, MSE and PSNR on [0, 1] pixels) and,
for the digits, the digits-FID of the reconstructions, its real-vs-real floor and the digits
classifier's accuracy on them, in `eval_results.json`. The digits RAE with the EMA decoder is
written to `RUN/autoencoder` (`vdm_jax.importers.rae.export_digits_rae`): the
`autoencoder.weights` that encodes the digits into a latent dataset (launch/encode_latents.py)
and decodes a latent model's samples (configs/digits_rae.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm_jax.data import digits as digits_data
from vdm_jax.data.pipeline import read_examples, split_size
from vdm_jax.data.pixels import unit_to_uint8
from vdm_jax.evaluation.digits import digits_metrics
from vdm_jax.evaluation.digits_classifier import train_or_load_digits_classifier
from vdm_jax.importers.autoencoders import load_autoencoder
from vdm_jax.importers.dino_disc import load_dino_discriminator
from vdm_jax.importers.lpips import load_lpips
from vdm_jax.importers.rae import export_digits_rae
from vdm_jax.io import write_json
from vdm_jax.nn.autoencoders.rae import RAE, DigitsRAE, RAEDecoder
from vdm_jax.rundir import RunDir
from vdm_jax.training.decoder import train_decoder

__all__ = ["build_networks", "evaluate_reconstructions", "run"]

MODEL_KINDS = ("rae", "digits")
EVAL_BATCH = 256


def build_networks(config: ml_collections.ConfigDict, workdir: str | Path
                   ) -> tuple[nnx.Module, nnx.Module | None, nnx.Module | None]:
    """(model, lpips or None, discriminator or None) of `config` (module docstring). Bad
    input: ValueError / FileNotFoundError naming it."""
    kind, seed = config.model.kind, int(config.seed)
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={kind!r}: expected one of {MODEL_KINDS}")
    if kind == "digits":
        if config.data.name != "digits":
            raise ValueError(f"model.kind='digits' trains on the digits, not data.name="
                             f"{config.data.name!r}")
        train = read_examples(config.data, "train", 0, split_size(config.data, "train"))
        clf = train_or_load_digits_classifier(train["image"], train["label"],
                                              RunDir(workdir).cache, digits_data.NUM_CLASSES)
        d = config.model.digits
        model = DigitsRAE(clf.model, hidden=d.hidden, layers=d.layers, heads=d.heads,
                          mlp=d.mlp, rngs=nnx.Rngs(seed))
    else:
        if not config.model.weights:
            raise ValueError("model.weights is required for model.kind='rae': a diffusers "
                             "AutoencoderRAE folder or the official files (the encoder and "
                             "the latent statistics come from it)")
        model = load_autoencoder(config.model.weights)
        if not isinstance(model, RAE):
            raise ValueError(f"model.weights={config.model.weights!r} holds an "
                             f"{type(model).__name__}, not an RAE")
        if config.model.reinit_decoder:
            model.decoder = RAEDecoder(model.config, rngs=nnx.Rngs(seed))
    lpips = disc = None
    if config.loss.perceptual_weight > 0:
        if not config.loss.lpips_vgg:
            raise ValueError("loss.perceptual_weight > 0 needs loss.lpips_vgg (torchvision's "
                             "vgg16 weights) and loss.lpips_heads (the lpips package's vgg.pth)")
        lpips = load_lpips(config.loss.lpips_vgg, config.loss.lpips_heads or None)
    if config.loss.disc_weight > 0:
        if not config.loss.disc_dino:
            raise ValueError("loss.disc_weight > 0 needs loss.disc_dino (the DINO ViT-S/8 "
                             "weights, dino_vit_small_patch8_224.pth)")
        disc = load_dino_discriminator(config.loss.disc_dino, config.loss.disc_heads or None,
                                       seed=seed)
    return model, lpips, disc


def evaluate_reconstructions(config: ml_collections.ConfigDict, workdir: str | Path,
                             model: nnx.Module, decoder_params: Any) -> dict[str, Any]:
    """Latents, reconstructions and their figures on the evaluation split (module docstring)
    with `decoder_params` (a pure dict of the decoder) in `model`."""
    rundir = RunDir(workdir)
    dec_state = nnx.state(model, nnx.All(nnx.Param, nnx.PathContains("decoder")))
    nnx.replace_by_pure_dict(dec_state, decoder_params)
    nnx.update(model, dec_state)
    graphdef, state = nnx.split(model)

    @jax.jit
    def encode_decode(state: nnx.State, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = nnx.merge(graphdef, state)
        tokens = m.encode_tokens(x)  # (B, g, g, C)
        z = m.normalize(tokens) if isinstance(m, RAE) else tokens  # the latents
        recon = m.decode_tokens(tokens.reshape(x.shape[0], -1, tokens.shape[-1]))
        return z, jnp.clip(recon, -1.0, 1.0)  # (B, g, g, C), (B, H, W, c)

    n = split_size(config.data, "eval")
    if n == 0:
        raise ValueError(f"data.name={config.data.name!r} has no evaluation split to "
                         "reconstruct")
    zs, xs, recons, labels = [], [], [], []
    for start in range(0, n, EVAL_BATCH):
        ex = read_examples(config.data, "eval", start, min(n, start + EVAL_BATCH))
        z, r = encode_decode(state, jnp.asarray(ex["image"]))
        zs.append(np.asarray(z))
        recons.append(np.asarray(r))
        xs.append(ex["image"])
        labels.append(ex["label"])
    z, recon, x = np.concatenate(zs), np.concatenate(recons), np.concatenate(xs)
    label = np.concatenate(labels).astype(np.int64)
    x01, r01 = (x + 1) / 2, (recon + 1) / 2
    mse = float(np.mean((r01 - x01) ** 2))
    results: dict[str, Any] = {
        "num_images": int(n),
        "latent_shape": list(z.shape[1:]),
        "l1": float(np.mean(np.abs(r01 - x01))),
        "mse": mse,
        "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
    }
    rundir.eval_dir.mkdir(parents=True, exist_ok=True)
    np.savez(rundir.eval_dir / "latents.npz", latents=z, labels=label)
    levels = digits_data.NUM_LEVELS if config.data.name == "digits" else 256
    images = unit_to_uint8(recon, levels)
    np.savez(rundir.eval_dir / "reconstructions.npz", images, label)
    if config.data.name == "digits":
        m = digits_metrics(images, label, rundir.cache, data_dir=config.data.data_dir,
                           seed=int(config.seed))
        results.update(digits_fid=m["digits_fid"], digits_fid_floor=m["digits_fid_floor"],
                       class_accuracy=m["class_accuracy"])
    return results


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) and evaluate; returns {"step", "seconds", "results"}."""
    model, lpips, disc = build_networks(config, workdir)
    summary = train_decoder(config, str(workdir), model, lpips=lpips, disc=disc)
    ema = next(iter(summary["ema"].values()))["decoder"]
    results = evaluate_reconstructions(config, workdir, model, ema)  # model: the EMA decoder
    results.update(step=summary["step"], train_seconds=round(summary["seconds"], 1))
    if isinstance(model, DigitsRAE):
        results["autoencoder"] = str(export_digits_rae(model, Path(workdir) / "autoencoder"))
    write_json(RunDir(workdir).eval_results, results)
    return {"step": summary["step"], "seconds": summary["seconds"], "results": results}
