"""RAE (vdm_jax.nn.autoencoders.rae) and its importer, against diffusers and the official code.

Parity: tests/fixtures/rae/ (tests/make_rae_fixture.py: diffusers 0.42.1, transformers 5.25.0,
torch 2.13.0, bytetriper/RAE a4d18c4) holds a tiny random RAE in the diffusers AutoencoderRAE
layout and the official one (decoder model.pt, stat.pt, decoder config; the DINOv2 folder is
written here from the diffusers file, as the generator wrote it), and the outputs of both
references on fixed images. Each layout loaded here must reproduce its own reference to ≤ 1e-5
relative in float32: diffusers normalizes latents by (z − mean)/(std + 1e-5), the official code
by (z − mean)/sqrt(var + 1e-5).
"""

import json
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_latents, encode_latents_killed, error_line, rel_err
from flax import nnx
from safetensors.numpy import load_file, save_file

from vdm_jax.importers.autoencoders import weights_sha256
from vdm_jax.importers.rae import describe_rae, is_rae, load_rae
from vdm_jax.nn.autoencoders.rae import NOISE_TAU, RAEConfig, abstract_rae, noise_tokens

FIXTURE = Path(__file__).parent / "fixtures" / "rae"
DIFFUSERS = FIXTURE / "diffusers"
OFFICIAL = FIXTURE / "official"
PARITY = 1e-5



@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "outputs.npz"))


def images(ref, repeat: int) -> np.ndarray:
    x = (ref["images_u8"].astype(np.float32) + 0.5) / 128.0 - 1.0  # (2, 64, 64, 3) in [−1, 1]
    return np.repeat(np.repeat(x, repeat, 1), repeat, 2)


@pytest.fixture(scope="module")
def diffusers_model():
    return load_rae(DIFFUSERS)


def official_folder(dst: Path) -> Path:
    """The official layout: model.pt, stat.pt, config.json and dinov2/ (HF folder whose
    safetensors are the diffusers file's encoder.* tensors)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "stat.pt", "config.json"):
        shutil.copy(OFFICIAL / name, dst / name)
    (dst / "dinov2").mkdir()
    shutil.copy(OFFICIAL / "dinov2" / "config.json", dst / "dinov2" / "config.json")
    state = load_file(str(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    save_file({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")},
              str(dst / "dinov2" / "model.safetensors"))
    return dst


def test_diffusers_encode_decode_256(diffusers_model, ref):
    m = diffusers_model
    z = np.asarray(m.encode(jnp.asarray(images(ref, 4))))
    assert z.shape == (2, 16, 16, 64)
    assert rel_err(z, ref["diffusers_z256"]) <= PARITY
    x = np.asarray(m.decode(jnp.asarray(ref["diffusers_z256"])))
    assert x.shape == (2, 256, 256, 3)
    assert rel_err(x[:, ::4, ::4], ref["diffusers_x256"]) <= PARITY


def test_diffusers_encode_512_and_official_positions(tmp_path, ref):
    """448² encoder input (512² images): a diffusers folder with encoder_input_size 448 and the
    statistics repeated to 32 × 32, as the generator built it. Decoding follows the official
    code (MAE's integer positions), not diffusers' half-step positions at 32 × 32."""
    folder = tmp_path / "rae512"
    folder.mkdir()
    cfg = json.loads((DIFFUSERS / "config.json").read_text())
    state = load_file(str(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    up = lambda a: np.repeat(np.repeat(np.asarray(a, np.float32), 2, 1), 2, 2)
    state["_latents_mean"], state["_latents_std"] = (up(state["_latents_mean"]),
                                                     up(state["_latents_std"]))
    cfg.update(encoder_input_size=448, latents_mean=state["_latents_mean"].tolist(),
               latents_std=state["_latents_std"].tolist())
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    m = load_rae(folder)
    z = np.asarray(m.encode(jnp.asarray(images(ref, 8)[:1])))
    assert z.shape == (1, 32, 32, 64)
    assert rel_err(z[..., ::4], ref["diffusers_z512"]) <= PARITY
    # official decode of the same tokens: the diffusers stats formula is undone first
    z256 = ref["diffusers_z256"][:1]
    zin = np.repeat(np.repeat(z256, 2, 1), 2, 2)
    x = np.asarray(m.decode(jnp.asarray(zin)))
    assert x.shape == (1, 512, 512, 3)
    assert rel_err(x[:, ::8, ::8], ref["official_x512"]) <= PARITY
    assert rel_err(x[:, ::8, ::8], ref["diffusers_x512"]) > 1e-2  # diffusers' positions differ


def test_official_layout(tmp_path, ref):
    pytest.importorskip("torch")  # model.pt and stat.pt are torch pickles
    folder = official_folder(tmp_path / "official")
    m = load_rae(folder)
    d = describe_rae(folder)
    assert d["layout"] == "official" and d["stats_formula"] == "official"
    assert sorted(d["files"]) == ["dinov2/model.safetensors", "model.pt", "stat.pt"]
    assert weights_sha256(folder) == d["sha256"]
    assert m.config.stats_formula == "official"
    assert m.config.decoder_num_heads == 2 and m.config.encoder_input_size == 224
    z = np.asarray(m.encode(jnp.asarray(images(ref, 4))))
    assert rel_err(z[..., ::4], ref["official_z256"]) <= PARITY
    x = np.asarray(m.decode(jnp.asarray(ref["diffusers_z256"])))
    assert rel_err(x[:, ::4, ::4], ref["official_x256"]) <= PARITY


def test_layouts_share_weights(diffusers_model, tmp_path):
    pytest.importorskip("torch")
    off = load_rae(official_folder(tmp_path / "official"))
    a = dict(nnx.to_flat_state(nnx.state(diffusers_model, nnx.Param)))
    b = dict(nnx.to_flat_state(nnx.state(off, nnx.Param)))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].get_value(), b[k].get_value(), err_msg=str(k))


def test_vit_xl_decoder_parameter_count():
    """The ViT-XL decoder's trainable parameters equal the official GeneralDecoder's (counted
    in the generator at full size on the meta device); the official module additionally holds
    the frozen position table (1, 257, 1152) as a Parameter, a constant here."""
    counts = json.loads((FIXTURE / "counts.json").read_text())
    for size in ("B", "L", "XL"):
        model = abstract_rae(RAEConfig.for_size(size))
        n = sum(v.get_value().size
                for _, v in nnx.to_flat_state(nnx.state(model.decoder, nnx.Param)))
        print(f"ViT-{size} decoder: {n:,} parameters (official trainable "
              f"{counts[f'official_{size}_trainable']:,}, with the position table "
              f"{counts[f'official_{size}_all']:,})")
        assert n == counts[f"official_{size}_trainable"]
        assert n + 257 * model.config.decoder_hidden_size == counts[f"official_{size}_all"]
    assert counts["diffusers_XL_decoder"] == counts["official_XL_trainable"]


def test_noise_augmentation_distribution():
    """σ = τ·U[0, 1) per example: each example's noise std lies in [0, τ] and their mean is
    τ/2 (4000 examples, 256 draws each: std error of the mean ≈ 0.004·τ)."""
    import jax

    tokens = jnp.ones((4000, 16, 16))
    noise = np.asarray(noise_tokens(jax.random.key(0), tokens)) - 1.0
    sigma = noise.reshape(4000, -1).std(axis=1)
    assert sigma.max() <= NOISE_TAU * 1.2 and sigma.min() < 0.02 * NOISE_TAU
    assert abs(sigma.mean() - NOISE_TAU / 2) < 0.02 * NOISE_TAU
    assert abs(np.mean(sigma < NOISE_TAU / 2) - 0.5) < 0.03  # uniform: median τ/2
    np.testing.assert_array_equal(noise_tokens(jax.random.key(0), tokens) - 1.0, noise)


def test_describe_and_detection(tmp_path):
    d = describe_rae(DIFFUSERS)
    assert d == describe_rae(DIFFUSERS) and d["kind"] == "rae" and d["layout"] == "diffusers"
    assert d["stats_formula"] == "diffusers" and len(d["sha256"]) == 64
    assert weights_sha256(DIFFUSERS) == d["sha256"]  # what latents are checked against
    assert RAEConfig.from_dict(d["config"]) == load_rae(DIFFUSERS).config
    assert is_rae(DIFFUSERS) and is_rae(OFFICIAL)
    assert not is_rae(Path(__file__).parent / "fixtures" / "sd_vae" / "diffusers")


# ------------------------------------------------------------------------------- bad input


def test_missing_path_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="RAE-dinov2-wReg-base-ViTXL-n08"):
        load_rae(tmp_path / "nothing")


def test_mismatched_stats_shape(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(DIFFUSERS, folder)
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    state["_latents_mean"] = np.zeros((64, 8, 8), np.float32)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"shape \(64, 8, 8\).*another model or resolution"):
        load_rae(folder)


def test_another_models_weights(tmp_path):
    """The SD-VAE's files in an RAE folder: refused with the mismatch listed."""
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(DIFFUSERS / "config.json", folder / "config.json")
    shutil.copy(FIXTURE.parent / "sd_vae" / "diffusers" / "diffusion_pytorch_model.safetensors",
                folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="does not hold an AutoencoderRAE"):
        load_rae(folder)


def test_official_missing_encoder(tmp_path):
    folder = tmp_path / "official"
    folder.mkdir()
    shutil.copy(OFFICIAL / "model.pt", folder / "model.pt")
    with pytest.raises(FileNotFoundError, match="lacks dinov2"):
        load_rae(folder)


# ------------------------------------------------------------------- latents of the RAE


RAE_PIXELS = 256  # the fixture RAE decodes 16 × 16 tokens of patch 16


def rae_config(setup):
    from conftest import photo_config

    c = photo_config(setup)
    c.data.image_size = RAE_PIXELS
    c.autoencoder.weights, c.autoencoder.kind = str(DIFFUSERS), "rae"
    return c


@pytest.fixture(scope="module")
def rae_latents(latent_setup, tmp_path_factory):
    from vdm_jax.pipelines.encode_latents import encode_latents

    out = tmp_path_factory.mktemp("rae") / "latents"
    encode_latents(rae_config(latent_setup), out, chunk_size=4, batch_size=8, progress=False)
    return out


def test_rae_latents_record_the_rae_and_its_latents(latent_setup, rae_latents, diffusers_model):
    """encode_latents with autoencoder.kind='rae': records hold the deterministic latents of the
    crop and its flip (float16), metadata the RAE's description (files' SHA-256, formula)."""
    from vdm_jax.data import latents
    from vdm_jax.data.pipeline import read_examples

    ds = latents.open_latents(rae_latents)
    assert ds.deterministic and ds.latent_shape == (16, 16, 64)
    assert ds.record_shape == (2, 16, 16, 64) and ds.pixel_shape == (RAE_PIXELS, RAE_PIXELS, 3)
    assert ds.metadata["autoencoder"] == describe_rae(DIFFUSERS) | {
        "path": ds.metadata["autoencoder"]["path"]}
    assert ds.metadata["autoencoder"]["stats_formula"] == "diffusers"
    images = read_examples(rae_config(latent_setup).data, "train", 0, 2)["image"]
    source = ds.source("train")
    for i in range(2):
        stored, _ = latents.decode_record(source[i], ds.record_shape)
        for flip, image in enumerate((images[i], images[i][:, ::-1])):
            z = np.asarray(diffusers_model.encode(jnp.asarray(image[None])))[0]
            np.testing.assert_allclose(stored[flip].astype(np.float32), z, atol=4e-3, rtol=2e-3)
    # the trainer's batches are the stored latents (no posterior draw), normalized by
    # the RAE's scaling factor 1: the statistics are already applied
    config = rae_config(latent_setup)
    config.data.kind, config.data.latent_dir = "latents", str(rae_latents)
    config.data.random_flip = False
    from vdm_jax.data import train_iterator

    batch = next(train_iterator(config.data, global_batch_size=4, seed=0, process_index=0,
                                process_count=1))
    all_z = np.stack([latents.decode_record(source[i], ds.record_shape)[0][0]
                      for i in range(len(source))]).astype(np.float32)
    for x in batch["image"]:
        assert np.min(np.abs(all_z - x).reshape(len(all_z), -1).max(1)) == 0.0


def test_rae_killed_encoding_resumes_to_the_same_latents(latent_setup, rae_latents, tmp_path):
    from vdm_jax.pipelines import encode_latents as encode_lib

    config, out = rae_config(latent_setup), tmp_path / "latents"
    encode_latents_killed(config, out, chunks=2)
    encode_lib.encode_latents(config, out, chunk_size=4, batch_size=8, progress=False)
    assert_same_latents(out, rae_latents)


def test_rae_decodes_latent_samples(rae_latents):
    """generation.decode with the RAE: latents of a latent model → 256² images in [−1, 1]."""
    from vdm_jax.data import latents
    from vdm_jax.generation.decode import make_decoder
    from vdm_jax.model import DataSpec

    ds = latents.open_latents(rae_latents)
    spec = DataSpec(image_shape=ds.latent_shape, num_classes=ds.num_classes, num_levels=256,
                    pixel_shape=ds.pixel_shape, latent_shift=(0.0,) * 64,
                    latent_scale=(1.0,) * 64, autoencoder=ds.metadata["autoencoder"])
    decode = make_decoder(spec, str(DIFFUSERS))
    z = latents.decode_record(ds.source("train")[0], ds.record_shape)[0][:1].astype(np.float32)
    x = np.asarray(decode(jnp.asarray(z)))
    assert x.shape == (1, RAE_PIXELS, RAE_PIXELS, 3) and np.abs(x).max() <= 1.0


def _launch(*args: str):
    import os
    import subprocess
    import sys

    from conftest import xla_flags

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": xla_flags(2)}
    return subprocess.run([sys.executable, str(root / "launch" / "encode_latents.py"), *args],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)


def test_rae_bad_input_is_one_line_exit_2(latent_setup, tmp_path):
    """Each bad RAE input: one `error:` line, exit 2, nothing written — a mismatched statistics
    shape, the SD-VAE's weights in an AutoencoderRAE folder, the wrong kind, a missing folder,
    a size the RAE does not decode."""
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from test_rae import rae_config\n\n\n"
        "def get_config():\n"
        f"    return rae_config({ {k: str(v) for k, v in latent_setup.items()}!r})\n")
    stats = tmp_path / "stats"
    shutil.copytree(DIFFUSERS, stats)
    state = load_file(str(stats / "diffusion_pytorch_model.safetensors"))
    state["_latents_std"] = np.ones((64, 8, 8), np.float32)
    save_file(state, str(stats / "diffusion_pytorch_model.safetensors"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(DIFFUSERS / "config.json", foreign / "config.json")
    shutil.copy(FIXTURE.parent / "sd_vae" / "diffusers" / "diffusion_pytorch_model.safetensors",
                foreign / "diffusion_pytorch_model.safetensors")
    sd_vae = FIXTURE.parent / "sd_vae" / "diffusers"
    cases = [  # through the launch script: one line, exit 2
        ([f"--config.autoencoder.weights={stats}"], r"_latents_std.*\(64, 8, 8\)"),
        ([f"--config.autoencoder.weights={sd_vae}"], "autoencoder.kind='rae' but"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        proc = _launch(f"--config={cfg}", f"--out={out}", *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert re.search(message, error_line(proc.stderr)), proc.stderr
        assert not out.exists()
    # the other cases raise the bad-input errors (ValueError / FileNotFoundError) that the
    # launch scripts report the same way, before anything is written
    from vdm_jax.pipelines.encode_latents import encode_latents

    for weights, size, error, message in [
        (foreign, RAE_PIXELS, ValueError, "does not hold an AutoencoderRAE"),
        (tmp_path / "none", RAE_PIXELS, FileNotFoundError, "no autoencoder weights at"),
        (DIFFUSERS, 128, ValueError, "this RAE decodes 256×256 images"),
    ]:
        config = rae_config(latent_setup)
        config.autoencoder.weights, config.data.image_size = str(weights), size
        with pytest.raises(error, match=message):
            encode_latents(config, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
