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
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from vdm_jax.importers.rae import describe_rae, is_rae, load_rae
from vdm_jax.nn.autoencoders.rae import RAEConfig, abstract_rae

FIXTURE = Path(__file__).parent / "fixtures" / "rae"
DIFFUSERS = FIXTURE / "diffusers"
OFFICIAL = FIXTURE / "official"
PARITY = 1e-5


def rel_err(a, b) -> float:
    """max |a − b| / max |b|: error relative to the output's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


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
    m = load_rae(official_folder(tmp_path / "official"))
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


def test_describe_and_detection(tmp_path):
    d = describe_rae(DIFFUSERS)
    assert d == describe_rae(DIFFUSERS) and d["kind"] == "rae" and d["layout"] == "diffusers"
    assert d["stats_formula"] == "diffusers" and len(d["sha256"]) == 64
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
