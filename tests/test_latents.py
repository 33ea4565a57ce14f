"""Latent diffusion end to end on the CPU with real images: photos (scikit-learn's) → ImageFolder
→ tiny random SD-VAE-shaped autoencoder → launch/encode_latents.py → 2 training steps of a tiny
latent DiT → launch/sample.py writes uint8 images of the pixel resolution → launch/evaluate.py.
Plus: resuming a killed encoding gives the uninterrupted dataset, the latent input pipeline, and
bad input (one line, exit 2, nothing written)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    PIXELS,
    assert_same_latents,
    encode_latents_killed,
    error_line,
    make_tiny_vae,
    photo_config,
    snapshot,
    xla_flags,
)
from flax import nnx

from vdm_jax.data import latents, train_iterator
from vdm_jax.data.adm_npz import load_samples
from vdm_jax.importers.sd_vae import load_autoencoder
from vdm_jax.pipelines import encode_latents as encode_lib

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "XLA_FLAGS": xla_flags(2)}


def _run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)


def _config_file(tmp: Path, paths: dict, latents: bool) -> Path:
    """A config module for the launch scripts: the conftest photo config."""
    path = tmp / ("latent_cfg.py" if latents else "pixel_cfg.py")
    plain = {k: str(v) for k, v in paths.items()}
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from pathlib import Path\n"
        "from conftest import photo_config\n\n\n"
        "def get_config():\n"
        f"    paths = {{k: Path(v) for k, v in {plain!r}.items()}}\n"
        f"    return photo_config(paths, latents={latents})\n")
    return path


def test_latent_records_hold_both_flips_and_the_moments(latent_setup):
    """Each record's moments equal the autoencoder's encoding of the center crop and of its flip;
    the stored statistics are those of the training split's posterior means."""
    ds = latents.open_latents(latent_setup["latents"])
    assert ds.latent_shape == (PIXELS // 2, PIXELS // 2, 4)
    assert ds.pixel_shape == (PIXELS, PIXELS, 3)
    assert ds.num_examples("train") == 12 and ds.num_examples("eval") == 4
    from vdm_jax.data.pipeline import read_examples

    config = photo_config(latent_setup)
    images = read_examples(config.data, "train", 0, 3)["image"]  # (3, 32, 32, 3) in [-1, 1]
    vae = load_autoencoder(latent_setup["vae"])
    source = ds.source("train")
    for i in range(3):
        moments, _ = latents.decode_record(source[i], ds.record_shape)
        for flip, image in enumerate((images[i], images[i][:, ::-1])):
            mean, logvar = vae.encode(image[None])
            np.testing.assert_allclose(moments[flip, ..., :4], mean[0], atol=2e-3, rtol=2e-3)
            np.testing.assert_allclose(moments[flip, ..., 4:], logvar[0], atol=2e-2, rtol=2e-3)
    means = np.concatenate([latents.decode_record(source[i], ds.record_shape)[0][..., :4]
                            .astype(np.float64).reshape(-1, 4) for i in range(len(source))])
    np.testing.assert_allclose(ds.metadata["stats"]["mean"], means.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ds.metadata["stats"]["std"], means.std(0), rtol=1e-6)


def test_latent_batches_are_normalized_posterior_draws(latent_setup):
    """Training batches: x = (z − shift)·scale of a posterior draw of one of the two flips; with
    latent_posterior='mean' and no flips, exactly the scaled mean of the unflipped image."""
    ds = latents.open_latents(latent_setup["latents"])
    scale = ds.metadata["autoencoder"]["config"]["scaling_factor"]
    config = photo_config(latent_setup, latents=True)
    config.data.random_flip, config.data.latent_posterior = False, "mean"
    batch = next(train_iterator(config.data, global_batch_size=12, seed=0,
                                process_index=0, process_count=1))
    assert batch["image"].shape == (12, *ds.latent_shape) and batch["image"].dtype == np.float32
    source = ds.source("train")
    expected = {int(latents.decode_record(source[i], ds.record_shape)[1]) for i in range(12)}
    assert set(batch["label"].tolist()) == expected
    stored = np.stack([latents.decode_record(source[i], ds.record_shape)[0][0, ..., :4]
                       for i in range(12)]).astype(np.float32) * scale
    for x in batch["image"]:  # an epoch is a permutation: every x is one record's scaled mean
        assert np.min(np.abs(stored - x).reshape(12, -1).max(1)) <= 1e-6
    config.data.random_flip, config.data.latent_posterior = True, "sample"
    draws = next(train_iterator(config.data, global_batch_size=12, seed=1,
                                process_index=0, process_count=1))["image"]
    gaps = [np.min(np.abs(stored - x).reshape(12, -1).max(1)) for x in draws]
    assert min(gaps) > 1e-4  # posterior draws, not means


def test_killed_encoding_resumes_to_the_uninterrupted_dataset(latent_setup, tmp_path):
    """An encoding that dies after 2 chunks (leaving a temporary file, as a kill mid-write does)
    and is rerun gives byte-identical chunks and the same metadata as the uninterrupted run."""
    config = photo_config(latent_setup)
    out = tmp_path / "latents"
    encode_latents_killed(config, out, chunks=2, leave_temporary=True)
    assert "stats" not in json.loads((out / "metadata.json").read_text())
    with pytest.raises(ValueError, match="unfinished"):
        latents.open_latents(out)
    encode_lib.encode_latents(config, out, chunk_size=4, batch_size=8, progress=False)
    assert_same_latents(out, latent_setup["latents"])


@pytest.mark.slow
def test_photos_to_latents_to_samples_to_metrics(latent_setup, tmp_path):
    """The whole path through the launch scripts, on real images."""
    cfg = _config_file(tmp_path, latent_setup, latents=True)
    pixel_cfg = _config_file(tmp_path, latent_setup, latents=False)
    out = tmp_path / "latents"
    encoded = _run("encode_latents.py", f"--config={pixel_cfg}", f"--out={out}",
                   "--chunk_size=5")
    assert encoded.returncode == 0, encoded.stderr[-3000:]
    assert latents.open_latents(out).num_examples("train") == 12
    run = tmp_path / "run"
    trained = _run("train.py", f"--config={cfg}", f"--workdir={run}",
                   f"--config.data.latent_dir={out}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    grid = sorted((run / "samples").glob("step_*.png"))
    assert grid, "the trainer's grid of decoded samples"
    sampled = _run("sample.py", f"--workdir={run}", "--num_samples=10", "--batch_size=10",
                   "--steps=2", f"--out={tmp_path / 's.npz'}")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    batch = load_samples(tmp_path / "s.npz")
    assert batch.images.shape == (10, PIXELS, PIXELS, 3) and batch.images.dtype == np.uint8
    assert batch.images.std() > 0
    settings = json.loads((tmp_path / "s.json").read_text())
    assert settings["latent_shape"] == [PIXELS // 2, PIXELS // 2, 4]
    ref = tmp_path / "ref.npz"
    built = _run("build_reference.py", "--dataset=image_folder",
                 f"--image_folder={latent_setup['images']}", f"--image_size={PIXELS}",
                 "--split=eval", f"--data_dir={latent_setup['data_dir']}", "--random_inception",
                 "--batch_size=4", f"--out={ref}")
    assert built.returncode == 0, built.stderr[-3000:]
    evaluated = _run("evaluate.py", f"--samples={tmp_path / 's.npz'}", f"--ref={ref}",
                     "--random_inception", "--batch_size=10")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "s.metrics.json").read_text())["metrics"]
    assert np.isfinite(metrics["fid"])


def _other_architecture(path: Path) -> Path:
    """A weights file of another network: a tiny DiT's parameters as safetensors."""
    from safetensors.numpy import save_file

    from vdm_jax.nn.registry import build_model

    model = build_model({"family": "dit", "depth": 1, "hidden_size": 32, "num_heads": 2,
                         "patch_size": 2}, input_size=8, in_channels=4, num_classes=2,
                        rngs=nnx.Rngs(0))
    flat = {".".join(map(str, k)): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(nnx.state(model))}
    save_file(flat, str(path))
    return path


@pytest.mark.parametrize("case", ["missing_weights", "other_architecture", "other_weights",
                                  "missing_latent_dir"])
def test_bad_input_exits_2_and_writes_nothing(case, latent_setup, tmp_path):
    cfg = _config_file(tmp_path, latent_setup, latents=True)
    pixel_cfg = _config_file(tmp_path, latent_setup, latents=False)
    out, run = tmp_path / "out", tmp_path / "run"
    if case == "missing_weights":
        args = ("encode_latents.py", f"--config={pixel_cfg}", f"--out={out}",
                f"--config.autoencoder.weights={tmp_path / 'absent'}")
        expected = r"sd-vae-ft-ema"
    elif case == "other_architecture":
        weights = _other_architecture(tmp_path / "dit.safetensors")
        args = ("encode_latents.py", f"--config={pixel_cfg}", f"--out={out}",
                f"--config.autoencoder.weights={weights}")
        expected = r"do not match the SD-VAE"
    elif case == "other_weights":
        other = make_tiny_vae(tmp_path / "other_vae", seed=7)
        args = ("train.py", f"--config={cfg}", f"--workdir={run}",
                f"--config.autoencoder.weights={other}")
        expected = r"encoded with other autoencoder weights"
    else:
        args = ("train.py", f"--config={cfg}", f"--workdir={run}",
                f"--config.data.latent_dir={tmp_path / 'nowhere'}")
        expected = r"holds no latent dataset.*encode_latents"
    before = snapshot(latent_setup["latents"])
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(expected, error_line(proc.stderr)), proc.stderr[-2000:]
    assert not out.exists() and not run.exists()
    assert snapshot(latent_setup["latents"]) == before


def test_shard_every_example_once_over_hosts(latent_setup):
    """Two simulated hosts read disjoint halves of the latent training split."""
    config = photo_config(latent_setup, latents=True)
    config.data.random_flip, config.data.latent_posterior = False, "mean"
    seen = []
    for index in range(2):
        it = train_iterator(config.data, global_batch_size=12, seed=0, process_index=index,
                            process_count=2)
        seen.append({x.tobytes() for x in next(it)["image"]})
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]
