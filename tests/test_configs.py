"""Smoke tests of every config in configs/: two training steps each on CPU, with mock data and
the model shrunk to a tiny one of the same family (the recipe — schedule, objective,
parameterization, learned σ / schedule, EMAs, mesh — is the config's own)."""

import io
import os
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import PIXELS

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.pipelines import train as pipeline

REPO = Path(__file__).resolve().parents[1]
# Every module of configs/ that is a config (has get_config); imagenet_common is a shared recipe.
# The RAE decoder configs (*_rae_decoder.py) are launch/train_decoder.py's, tested in
# tests/test_rae_decoder.py.
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if "def get_config" in p.read_text() and not p.stem.endswith("_rae_decoder"))
METADATA_DIR = os.path.join(os.path.dirname(__file__), "data")
TINY = {
    "dit": dict(family="dit", depth=1, hidden_size=32, num_heads=2, patch_size=2),
    "jit": dict(family="jit", depth=2, hidden_size=32, num_heads=2, patch_size=16,
                bottleneck_dim=8, in_context_len=2, in_context_start=1),
    "ddt": dict(family="ddt", encoder_depth=2, decoder_depth=1, hidden_size=32, num_heads=2,
                patch_size=2),
    "ditdh": dict(family="dit_dh", depth=1, hidden_size=32, num_heads=2, patch_size=1,
                  head_depth=1, head_hidden_size=48, head_num_heads=2),
}
# REPA's frozen encoder, shrunk: the tiny random DINOv2 of tests/fixtures/dinov2 (D = 16).
TINY_DINOV2 = Path(__file__).parent / "fixtures" / "dinov2" / "hf_dinov2"


def load_config(name):
    config = config_lib.load(REPO / "configs" / f"{name}.py")
    config.unlock()  # the test shrinks the model and the run below
    return config


def _fake_cifar(manual_dir: Path) -> None:
    """A cifar-10-binary.tar.gz with 4 records per file (the real layout, random pixels)."""
    rng = np.random.default_rng(0)
    with tarfile.open(manual_dir / "cifar-10-binary.tar.gz", "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            labels = rng.integers(0, 10, (4, 1), dtype=np.uint8)
            blob = np.concatenate([labels, rng.integers(0, 256, (4, 3072), np.uint8)], 1)
            _add(tar, f"cifar-10-batches-bin/{name}", blob.tobytes())
        meta = ("\n".join("abcdefghij") + "\n").encode()
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", meta)


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_every_config_is_covered():
    assert set(CONFIGS) >= {"digits_dit", "cifar10_vdm", "imagenet_dit", "imagenet_jit",
                            "imagenet_sit", "imagenet_sit_repa", "imagenet_ddt", "digits_meanflow",
                            "imagenet_meanflow", "imagenet_rae", "digits_rae"}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_two_steps(name, tmp_path, request):
    c = load_config(name)
    spec = c.model.spec.to_dict()
    kind = (spec.get("name", "") + spec.get("family", "")).lower()
    c.model.spec = next((TINY[f] for f in ("jit", "ddt", "ditdh") if f in kind.replace("_", "")),
                        TINY["dit"])
    if spec.get("second_time"):  # MeanFlow's two-time DiT
        c.model.spec = {**c.model.spec, "second_time": True}
    if c.repa.enabled:  # the recipe's REPA on the tiny model, with a tiny DINOv2
        c.repa.depth = 1
        c.repa.projector_dim = 32
        c.repa.encoder_path = str(TINY_DINOV2)
        c.repa.encoder_size = ""
        c.repa.encoder_dim = 16
    c.model.dtype = "float32"
    c.train.num_steps = 2
    c.train.global_batch_size = 8
    c.train.micro_batches = 1
    c.train.checkpoint_every = 2
    c.train.async_checkpoints = False
    c.sample.every = 0
    c.sample.num_images = 8
    c.sample.num_steps = 2
    c.eval.at_end = False
    c.data.worker_count = 0
    c.mesh.data, c.mesh.fsdp = (-1, 1) if c.mesh.data != 1 else (1, -1)
    if c.diffusion.learned_schedule:
        c.diffusion.learned_schedule_features = 16
    if c.data.kind == "latents":  # the session's photo latents stand in for ImageNet's
        paths = request.getfixturevalue("latent_setup")
        c.data.name, c.data.image_folder = "image_folder", str(paths["images"])
        c.data.data_dir, c.data.image_size = str(paths["data_dir"]), PIXELS
        c.data.latent_dir, c.autoencoder.weights = str(paths["latents"]), str(paths["vae"])
        out = pipeline.run(c, tmp_path / "run")
    elif c.data.name == "imagenet2012":
        c.data.image_size = 32
        with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_FILES,
                                    data_dir=METADATA_DIR):
            out = pipeline.run(c, tmp_path / "run")
    else:
        if c.data.name == "cifar10":
            (tmp_path / "manual").mkdir()
            _fake_cifar(tmp_path / "manual")
            c.data.manual_dir = str(tmp_path / "manual")
            c.data.data_dir = str(tmp_path / "tfds")
        out = pipeline.run(c, tmp_path / "run")
    assert out["step"] == 2 and np.isfinite(out["metrics"]["loss"])
    if c.repa.enabled:  # the alignment term was trained and logged
        assert np.isfinite(out["metrics"]["repa_loss"]) and "repa" in out["state"]["params"]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert out["sample_grid"] is not None and Path(out["sample_grid"]).is_file()
    if c.diffusion.learned_schedule:  # the ELBO's gradient reached the schedule network
        net = jax.device_get(out["state"]["params"]["schedule"])
        init = jax.device_get(dm.build(c, out["data"], c.seed)[1]["schedule"])
        changed = [not np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(net), jax.tree.leaves(init), strict=True)]
        assert all(changed)
