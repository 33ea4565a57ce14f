"""The RAE decoder-training loop (vdm_jax/training/decoder.py) on a tiny RGB setting with all
three terms (L1, LPIPS, the DINO discriminator with DiffAug and the adaptive weight) and the
noise augmentation: a run stopped and resumed equals the uninterrupted run bit for bit, and the
official schedule's shape."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from vdm_jax.nn.autoencoders.rae import RAE, RAEConfig
from vdm_jax.nn.encoders.dino_disc import DinoDiscConfig, DinoDiscriminator
from vdm_jax.nn.encoders.dinov2 import DinoV2Config
from vdm_jax.nn.encoders.lpips import LPIPS
from vdm_jax.training.decoder import cosine_warmup_lr, decoder_train_config, train_decoder


def _config(num_steps: int):
    c = decoder_train_config()
    c.data.name = "synthetic"
    c.data.image_size = 16
    c.train.batch_size = 8
    # 65,536 synthetic records / 8 = 8,192 steps per epoch: the starts below fall inside 6 steps
    c.train.num_epochs = 6 / 8192
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 0
    c.train.async_checkpoints = False
    c.optim.warmup_epochs = 2 / 8192
    c.optim.decay_end_epoch = 6 / 8192
    c.loss.disc_update_start_epoch = 1 / 8192
    c.loss.disc_start_epoch = 2 / 8192
    return c


def _models():
    enc = DinoV2Config(hidden_size=16, num_layers=1, num_heads=2, patch_size=4, image_size=16,
                       num_registers=4, norm_affine=False)
    cfg = RAEConfig(encoder=enc, encoder_input_size=16, decoder_hidden_size=16,
                    decoder_num_layers=1, decoder_num_heads=2, decoder_mlp_size=32, patch_size=4)
    rae = RAE(cfg, rngs=nnx.Rngs(0))
    lpips = LPIPS(stages=((4,), (8,)), rngs=nnx.Rngs(1))
    disc = DinoDiscriminator(DinoDiscConfig(embed_dim=16, depth=2, num_heads=2, patch_size=4,
                                            image_size=16, key_depths=(0,), kernel_size=3),
                             rngs=nnx.Rngs(2))
    return rae, lpips, disc


def _run(workdir, num_steps, lines=None):
    rae, lpips, disc = _models()
    config = _config(num_steps)
    config.train.log_every = 1
    return train_decoder(config, str(workdir), rae, lpips=lpips, disc=disc,
                         log=(lines if lines is not None else []).append)


@pytest.mark.slow
def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    lines = []
    whole = _run(tmp_path / "whole", 0, lines)
    assert whole["step"] == 6
    # every term ran: the discriminator from step 2 (its loss > 0), the GAN term from step 3
    metrics = {int(line.split()[1].split("/")[0]): dict(
        (kv.split()[0], float(kv.split()[1])) for kv in line.split(": ", 1)[1].split(", "))
        for line in lines if line.startswith("step ")}
    assert metrics[1]["disc_loss"] == 0 and metrics[2]["disc_loss"] > 0
    assert metrics[6]["adaptive_weight"] > 0 and metrics[6]["rec"] > metrics[6]["l1"]
    first = _run(tmp_path / "split", 3)
    assert first["step"] == 3
    resumed = _run(tmp_path / "split", 0)
    assert resumed["step"] == 6
    for a, b in ((whole["params"], resumed["params"]), (whole["ema"], resumed["ema"])):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(la) == len(lb) > 0
        for x, y in zip(la, lb, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the decoder moved, and the EMA trails it
    moved = [np.abs(np.asarray(x) - np.asarray(y)).max()
             for x, y in zip(jax.tree.leaves(first["params"]), jax.tree.leaves(whole["params"]),
                             strict=True)]
    assert max(moved) > 0


def test_schedule_is_the_official_cosine_from_zero():
    lr = cosine_warmup_lr(2e-4, 2e-5, warmup=10, decay_end=30)
    np.testing.assert_allclose(float(lr(0)), 2e-4 / 10, rtol=1e-6)
    np.testing.assert_allclose(float(lr(9)), 2e-4, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 2e-4, rtol=1e-6)  # cosine starts at base
    np.testing.assert_allclose(float(lr(20)), 2e-5 + 0.5 * 1.8e-4, rtol=1e-6)  # half way
    np.testing.assert_allclose(float(lr(30)), 2e-5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(1000)), 2e-5, rtol=1e-6)


def test_imagenet_config_is_the_official_recipe():
    """configs/imagenet_rae_decoder.py against configs/stage1/training/DINOv2-B_decXL.yaml."""
    from pathlib import Path

    from vdm_jax.config import load

    c = load(Path(__file__).resolve().parents[1] / "configs" / "imagenet_rae_decoder.py")
    assert (c.train.batch_size, c.train.num_epochs) == (512, 16.0)
    assert (c.optim.lr, c.optim.final_lr, c.optim.b1, c.optim.b2, c.optim.weight_decay) == (
        2e-4, 2e-5, 0.9, 0.95, 0.0)
    assert (c.optim.warmup_epochs, c.optim.decay_end_epoch, list(c.optim.ema_decays)) == (
        1.0, 16.0, [0.9978])
    loss = c.loss
    assert (loss.perceptual_weight, loss.disc_weight, loss.disc_start_epoch,
            loss.disc_update_start_epoch, loss.lpips_start_epoch, loss.max_d_weight) == (
        1.0, 0.75, 8.0, 6.0, 0.0, 1e4)
    assert (loss.noise_tau, loss.diffaug_prob, loss.diffaug_cutout) == (0.8, 1.0, 0.0)


def test_bad_input_is_one_line_exit_2(tmp_path):
    """An RAE decoder run without the RAE's weights: one `error:` line, exit 2, nothing
    written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import xla_flags

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": xla_flags(2)}
    work = tmp_path / "run"
    r = subprocess.run([sys.executable, str(root / "launch" / "train_decoder.py"),
                        "--config=configs/imagenet_rae_decoder.py", f"--workdir={work}"],
                       capture_output=True, text=True, env=env, cwd=root, timeout=600)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: model.weights is required"), lines
    assert not work.exists()


def test_digits_rae_folder_is_the_autoencoder_of_a_latent_run(tmp_path):
    """The digits RAE written as RUN/autoencoder (export_digits_rae) loads back as an
    autoencoder (the same encode / decode), is recorded and hashed like the released RAEs, and
    encodes the digits into a latent dataset whose records are its latents and whose samples it
    decodes (the path of configs/digits_rae.py)."""
    import jax.numpy as jnp

    from vdm_jax.config import default_config
    from vdm_jax.data import latents
    from vdm_jax.data.pipeline import read_examples
    from vdm_jax.generation.decode import make_decoder
    from vdm_jax.importers.autoencoders import (
        describe_weights,
        latent_geometry,
        load_autoencoder,
        weights_sha256,
    )
    from vdm_jax.importers.rae import export_digits_rae
    from vdm_jax.model import DataSpec
    from vdm_jax.nn.autoencoders.rae import DigitsRAE
    from vdm_jax.nn.encoders.digits import DigitsCNN
    from vdm_jax.pipelines.encode_latents import encode_latents

    model = DigitsRAE(DigitsCNN(rngs=nnx.Rngs(0)), hidden=32, layers=1, heads=2, mlp=64,
                      rngs=nnx.Rngs(1))
    folder = export_digits_rae(model, tmp_path / "autoencoder")
    loaded = load_autoencoder(folder)
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1), minval=-1.0, maxval=1.0)
    z = model.encode(x)
    assert z.shape == (3, 4, 4, 64)
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(z))
    np.testing.assert_array_equal(np.asarray(loaded.decode(z, clip=True)),
                                  np.asarray(model.decode(z, clip=True)))
    record = describe_weights(folder)
    assert record["kind"] == "rae" and record["layout"] == "digits"
    assert record["sha256"] == weights_sha256(folder)
    assert latent_geometry(record, 8) == {"latent_shape": [4, 4, 64],
                                          "posterior": "deterministic", "decoded_size": 8}

    config = default_config()
    config.data.name, config.data.data_dir = "digits", str(tmp_path / "tfds")
    config.autoencoder.weights = str(folder)
    out = encode_latents(config, tmp_path / "latents", progress=False)
    ds = latents.open_latents(out)
    assert ds.latent_shape == (4, 4, 64) and ds.pixel_shape == (8, 8, 1)
    assert ds.num_examples("train") == 1497 and ds.num_examples("eval") == 300
    images = read_examples(config.data, "eval", 0, 2)["image"]
    stored = np.stack([latents.decode_record(ds.source("eval")[i], ds.record_shape)[0][0]
                       for i in range(2)]).astype(np.float32)
    np.testing.assert_allclose(stored, np.asarray(model.encode(jnp.asarray(images))),
                               rtol=1e-3, atol=1e-3)  # float16 records
    shift, scale = ds.normalization("per_channel")
    spec = DataSpec(image_shape=ds.latent_shape, num_classes=10, num_levels=256,
                    pixel_shape=ds.pixel_shape, latent_shift=tuple(shift),
                    latent_scale=tuple(scale), autoencoder=ds.metadata["autoencoder"])
    decode = make_decoder(spec, str(folder))
    xs = (stored - np.asarray(shift, np.float32)) * np.asarray(scale, np.float32)
    np.testing.assert_allclose(np.asarray(decode(jnp.asarray(xs))),
                               np.asarray(model.decode(jnp.asarray(stored), clip=True)),
                               atol=1e-5)
