"""SD-VAE (AutoencoderKL) in NNX and its importer, against diffusers.

Parity: tests/fixtures/sd_vae/ (tests/make_sd_vae_fixture.py, diffusers 0.42.1, torch 2.13.0) holds
a tiny random diffusers AutoencoderKL in three layouts and its encode moments / decode output on
fixed non-square images; each layout loaded here must reproduce them to ≤ 1e-5 relative (float32).
Variants of the layouts (old attention names, LDM without prefix, `.ckpt`, an architecture read
from shapes) are written to tmp_path from the committed files.
"""

import hashlib
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import load_file, save_file

from vdm_jax.importers.common import MissingDependencyError, WeightMismatchError
from vdm_jax.importers.sd_vae import (
    describe_weights,
    diffusers_name,
    ldm_name,
    load_autoencoder,
)
from vdm_jax.nn.autoencoders.sd_vae import (
    AutoencoderConfig,
    abstract_autoencoder,
    denormalize_latents,
    normalize_latents,
    random_autoencoder,
    sample_posterior,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sd_vae"
DIFFUSERS = FIXTURE / "diffusers"
LDM = FIXTURE / "ldm.safetensors"
SD_VAE_PARAMS = 83_653_863  # diffusers AutoencoderKL (stabilityai/sd-vae-ft-ema config)
PARITY = 1e-5


def rel_err(a, b) -> float:
    """max |a − b| / max |b|: error relative to the output's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def params(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURE / "io.npz"))


@pytest.fixture(scope="module")
def sd_vae_abstract():
    return abstract_autoencoder()  # eval_shape: no weights are allocated


@pytest.fixture(scope="module")
def vae():
    return load_autoencoder(DIFFUSERS)


@nnx.jit
def forward(model, images, latents):
    """encode(images), decode(latents) and decode(latents, clip=True) in one compilation (shared
    by models of one structure)."""
    mean, logvar = model.encode(images)
    return mean, logvar, model.decode(latents), model.decode(latents, clip=True)


def check_parity(model, io):
    mean, logvar, decoded, _ = forward(model, io["images"], io["latents"])
    assert mean.dtype == logvar.dtype == decoded.dtype == jnp.float32
    assert rel_err(mean, io["mean"]) <= PARITY
    assert rel_err(logvar, io["logvar"]) <= PARITY
    assert rel_err(decoded, io["decoded"]) <= PARITY


# ------------------------------------------------------------------------------- parity


def test_diffusers_safetensors_folder_matches_diffusers(vae, io):
    assert vae.config == AutoencoderConfig(block_out_channels=(8, 16, 16), norm_num_groups=4)
    check_parity(vae, io)
    # the clamp of logvar to [−30, 20] is part of what was matched (fixture biases push past it)
    assert io["logvar"][..., 0].max() == 20.0 and io["logvar"][..., 1].min() == -30.0


def test_diffusers_bin_folder_matches_diffusers(io):
    pytest.importorskip("torch")
    check_parity(load_autoencoder(FIXTURE / "diffusers_bin"), io)


def test_ldm_single_file_matches_diffusers(io):
    # LDM files carry no config; this one's 4 GroupNorm groups must be given (shapes cannot).
    check_parity(load_autoencoder(LDM, config=DIFFUSERS), io)
    check_parity(load_autoencoder(LDM, config=AutoencoderConfig(
        block_out_channels=(8, 16, 16), norm_num_groups=4)), io)


def test_old_attention_names_load_the_same(vae, tmp_path):
    state = load_file(str(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in state.items():
        for new, before in old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{before}.")
        renamed[k] = v
    assert sum(".query." in k for k in renamed) == 4  # weight and bias, encoder and decoder
    shutil.copy(DIFFUSERS / "config.json", tmp_path)
    save_file(renamed, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert_same_params(load_autoencoder(tmp_path), vae)


def test_ldm_without_prefix_with_training_keys(vae, tmp_path):
    state = load_file(str(LDM))
    bare = {k.removeprefix("first_stage_model."): v for k, v in state.items()
            if k.startswith("first_stage_model.")}
    assert "loss.logvar" in bare
    bare["loss.discriminator.main.0.weight"] = np.ones((2, 3, 4, 4), np.float32)
    bare["model_ema.decay"] = np.array(0.9999, np.float32)
    bare["model_ema.encoderconv_inweight"] = state["first_stage_model.encoder.conv_in.weight"]
    save_file(bare, str(tmp_path / "vae.safetensors"))
    assert_same_params(load_autoencoder(tmp_path / "vae.safetensors", config=DIFFUSERS), vae)


def test_ldm_ckpt_with_state_dict(vae, tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in load_file(str(LDM)).items()}
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "model.ckpt")
    assert_same_params(load_autoencoder(tmp_path / "model.ckpt", config=DIFFUSERS), vae)


def export_ldm(model, path):
    """Writes `model` in LDM names and PyTorch layouts (the inverse of the importer's maps)."""
    levels = len(model.config.block_out_channels)
    state = {}
    for key, value in params(model).items():
        path_ = tuple(str(k) for k in key)
        if path_[-1] == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif path_[-1] == "kernel":
            value = value.T[:, :, None, None]  # attention: 1×1 conv
        state[ldm_name(path_, levels=levels)] = np.ascontiguousarray(value)
    save_file(state, str(path))


def test_ldm_architecture_read_from_shapes(tmp_path):
    # Not the SD-VAE in anything shapes show (levels, widths, blocks, latent channels, no
    # quant_conv), with SD's 32 groups, which an LDM file cannot record.
    config = AutoencoderConfig(block_out_channels=(32, 64), layers_per_block=1,
                               latent_channels=3, use_quant_conv=False)
    model = random_autoencoder(config, seed=1)
    export_ldm(model, tmp_path / "vae.safetensors")
    loaded = load_autoencoder(tmp_path / "vae.safetensors")
    assert loaded.config == config
    assert_same_params(loaded, model)  # same structure and every tensor: the same function


def test_ldm_shapes_that_need_a_config_say_so():
    with pytest.raises(ValueError, match="pass config="):
        load_autoencoder(LDM)  # 8-channel levels: SD's 32 groups cannot apply


def test_names_follow_diffusers_and_ldm():
    path = ("decoder", "up_blocks", "0", "resnets", "2", "conv_shortcut", "kernel")
    assert diffusers_name(path) == "decoder.up_blocks.0.resnets.2.conv_shortcut.weight"
    assert ldm_name(path, levels=4) == "decoder.up.3.block.2.nin_shortcut.weight"
    path = ("encoder", "mid_block", "attention", "to_out", "bias")
    assert diffusers_name(path) == "encoder.mid_block.attentions.0.to_out.0.bias"
    old = diffusers_name(path, old_attention=True)
    assert old == "encoder.mid_block.attentions.0.proj_attn.bias"
    assert ldm_name(path, levels=4) == "encoder.mid.attn_1.proj_out.bias"
    assert ldm_name(("decoder", "post_quant_conv", "kernel"), levels=4) == "post_quant_conv.weight"


# ------------------------------------------------------------------------------- model


def test_sd_vae_parameter_count(sd_vae_abstract):
    model = sd_vae_abstract
    n = sum(int(np.prod(v.get_value().shape))
            for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert n == SD_VAE_PARAMS
    assert model.config.downsampling_factor == 8


def test_bfloat16_compute_close_to_float32(io):
    # bfloat16 keeps 8 significant bits (unit roundoff 2⁻⁹ ≈ 2e-3); ~20 convolutions round
    # their inputs and weights on the way, so errors of a few 1e-3 compound to ~1.5 % relative
    # (measured: 1.4 % on the mean, 1.6 % on the decoded images). 5 % allows for that and fails
    # on a broken bfloat16 path (float overflow, wrong casts give O(1) errors). A nonzero error
    # shows bfloat16 was really used.
    bf16 = load_autoencoder(DIFFUSERS, dtype=jnp.bfloat16)
    assert params(bf16)[("decoder", "conv_out", "kernel")].dtype == np.float32
    mean, logvar, decoded, _ = forward(bf16, io["images"], io["latents"])
    for got, want in ((mean, io["mean"]), (logvar, io["logvar"]), (decoded, io["decoded"])):
        assert got.dtype == jnp.float32
        err = float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))
        assert 1e-5 < err < 5e-2


def test_sharded_batch_matches_one_device(vae, io):
    assert jax.device_count() == 8
    rng = np.random.default_rng(1)
    images = np.clip(np.tile(io["images"], (4, 1, 1, 1)) + rng.uniform(-0.5, 0.5, (8, 24, 16, 3)),
                     -1, 1).astype(np.float32)  # 8 different images
    latents = rng.standard_normal((8, 6, 4, 4)).astype(np.float32)
    # reference: one device, two examples at a time (the compilation of the parity tests)
    chunks = [forward(vae, images[i:i + 2], latents[i:i + 2]) for i in range(0, 8, 2)]
    single = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]

    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    graphdef, state = nnx.split(vae)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))  # replicated

    @jax.jit
    def sharded_forward(state, images, latents):
        return forward(nnx.merge(graphdef, state), images, latents)

    sharded = sharded_forward(state, jax.device_put(images, batch),
                              jax.device_put(latents, batch))
    for got, want in zip(sharded, single, strict=True):
        assert got.sharding.spec == PartitionSpec("data")
        assert len(got.addressable_shards) == 8
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_decode_clip_only_when_asked(vae, io):
    raw = io["decoded"]
    assert np.abs(raw).max() > 1.0  # the fixture's random decoder overshoots
    clipped = forward(vae, io["images"], io["latents"])[3]
    np.testing.assert_allclose(clipped, np.clip(raw, -1, 1), rtol=PARITY, atol=PARITY)
    assert np.abs(np.asarray(clipped)).max() == 1.0


def test_sample_posterior_moments():
    mean = jnp.full((4000, 2, 2, 4), 0.5)
    logvar = jnp.full((4000, 2, 2, 4), np.log(0.25))  # std 0.5
    z = np.asarray(sample_posterior(jax.random.key(0), mean, logvar))
    # 64 000 draws: the standard errors of mean and std are 0.002 and 0.0014
    assert abs(z.mean() - 0.5) < 0.01 and abs(z.std() - 0.5) < 0.01
    z2 = np.asarray(sample_posterior(jax.random.key(0), mean, jnp.full_like(logvar, -30.0)))
    np.testing.assert_allclose(z2, 0.5, atol=1e-5)  # clamped logvar: std e^{-15}


def test_normalize_latents_inverts():
    config = AutoencoderConfig(scaling_factor=0.3611, shift_factor=0.1159)
    z = np.random.default_rng(0).standard_normal((2, 4, 4, 4))
    x = normalize_latents(z, config)
    np.testing.assert_allclose(x, (z - 0.1159) * 0.3611, rtol=1e-6)
    np.testing.assert_allclose(denormalize_latents(x, config), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize_latents(z, AutoencoderConfig()), z * 0.18215, rtol=1e-6)


def test_wrong_input_shapes(vae):
    with pytest.raises(ValueError, match=r"images must be NHWC \(B, H, W, 3\)"):
        vae.encode(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"latents must be NHWC \(B, H, W, 4\)"):
        vae.decode(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="compute dtype"):
        abstract_autoencoder(dtype=jnp.float16)


def test_from_diffusers_config():
    cfg = json.loads((DIFFUSERS / "config.json").read_text())
    assert AutoencoderConfig.from_diffusers_config(cfg).block_out_channels == (8, 16, 16)
    # the sd-vae-ft-ema config.json (diffusers 0.4.2): no scaling_factor → SD's 0.18215
    old = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512,
           512], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
           "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
           "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4}
    assert AutoencoderConfig.from_diffusers_config(old) == AutoencoderConfig()
    with pytest.raises(ValueError, match="describes a UNet2DConditionModel"):
        AutoencoderConfig.from_diffusers_config({**old, "_class_name": "UNet2DConditionModel"})
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderConfig.from_diffusers_config({**old, "down_block_types": ["X"] * 4})


# ------------------------------------------------------------------------------- bad input


def test_missing_path_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_autoencoder(tmp_path / "nowhere")
    assert "sd-vae-ft-ema" in str(e.value) and "diffusion_pytorch_model.safetensors" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"without config\.json"):
        load_autoencoder(tmp_path)
    shutil.copy(DIFFUSERS / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_autoencoder(tmp_path)


def test_weights_of_another_network(tmp_path, sd_vae_abstract):
    dit = {"x_embedder.proj.weight": np.zeros((384, 4, 2, 2), np.float32),
           "blocks.0.attn.qkv.weight": np.zeros((1152, 384), np.float32),
           "final_layer.linear.bias": np.zeros((32,), np.float32)}
    save_file(dit, str(tmp_path / "dit.safetensors"))
    with pytest.raises(WeightMismatchError) as e:
        load_autoencoder(tmp_path / "dit.safetensors")
    msg = str(e.value)
    assert "do not match the SD-VAE AutoencoderKL" in msg
    n = len(nnx.to_flat_state(nnx.state(sd_vae_abstract)))  # all of the SD-VAE's
    assert f"missing tensors ({n})" in msg and "decoder.conv_in.weight" in msg
    assert "unexpected tensors (3)" in msg and "x_embedder.proj.weight" in msg


def test_misshaped_and_missing_tensors_in_one_message(tmp_path):
    state = load_file(str(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    state["decoder.conv_out.bias"] = np.zeros((5,), np.float32)
    del state["encoder.conv_in.weight"]
    shutil.copy(DIFFUSERS / "config.json", tmp_path)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightMismatchError) as e:
        load_autoencoder(tmp_path)
    msg = str(e.value)
    assert "missing tensors (1)" in msg and "encoder.conv_in.weight" in msg
    assert "misshaped tensors (1)" in msg
    assert "decoder.conv_out.bias: got (5,), expected (3,)" in msg


def test_corrupt_safetensors(tmp_path):
    data = LDM.read_bytes()
    (tmp_path / "vae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is not a readable \.safetensors file"):
        load_autoencoder(tmp_path / "vae.safetensors")
    shutil.copy(DIFFUSERS / "config.json", tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"is not a readable \.safetensors file"):
        load_autoencoder(tmp_path)


def test_torch_pickle_without_torch_says_so():
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed")
    with pytest.raises(MissingDependencyError, match="pip install torch"):
        load_autoencoder(FIXTURE / "diffusers_bin")


def test_describe_weights_is_stable():
    d = describe_weights(DIFFUSERS)
    assert d == describe_weights(DIFFUSERS)
    weights = DIFFUSERS / "diffusion_pytorch_model.safetensors"
    assert d["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert d["weights_file"] == str(weights.resolve()) and d["layout"] == "diffusers"
    assert d["config"]["block_out_channels"] == [8, 16, 16] and d["config"]["norm_num_groups"] == 4
    assert json.loads(json.dumps(d)) == d
    ldm = describe_weights(LDM, config=DIFFUSERS)
    assert ldm["layout"] == "ldm" and ldm["config"] == d["config"]


# ------------------------------------------------------------------------------- benchmark


def test_autoencoder_benchmark_runs(tmp_path):
    from benchmarks import autoencoder as bench

    out = tmp_path / "autoencoder.json"
    tiny = '{"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}'
    result = bench.main(["--config", tiny, "--size", "16", "--batch", "8", "--dtypes", "float32",
                         "--runs", "2", "--torch_python", "none", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["host"]["cpu_count"] >= 1 and result["jax_version"] == jax.__version__
    (row,) = result["results"]
    assert row["torch"] is None and row["encode_ratio"] is None
    jax_row = row["jax"]
    assert (jax_row["devices"], jax_row["batch"], jax_row["dtype"]) == (8, 8, "float32")
    for what in ("encode", "decode"):
        assert len(jax_row[what]["times_s"]) == 2 and jax_row[what]["median_s"] > 0
