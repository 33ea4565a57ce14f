"""Writes tests/fixtures/sd_vae/: a tiny random diffusers AutoencoderKL in the three layouts users
have, and its outputs on fixed inputs, for tests/test_sd_vae.py.

Run once by a developer, NOT in CI (needs torch and diffusers):

    /work/refenv/bin/python tests/make_sd_vae_fixture.py

Produced with torch 2.13.0+cpu, diffusers 0.42.1, safetensors 0.8.0, numpy 2.4.6.

Model: AutoencoderKL(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
latent_channels=4) — the SD-VAE's structure (three levels, so a downsampling factor of 4;
two channels per GroupNorm group at 8 channels, four at 16; two levels of equal width, so a
wrong order of the decoder's up blocks changes values, not only shapes). Every tensor is
random (norm scales 1 + N(0, 0.2²), all biases nonzero) so each one matters; two logvar
channels of quant_conv get biases +25 and −35, so the [−30, 20] clamp of the posterior is
exercised.

Files:
  diffusers/        config.json + diffusion_pytorch_model.safetensors (save_pretrained)
  diffusers_bin/    config.json + diffusion_pytorch_model.bin (save_pretrained, torch pickle)
  ldm.safetensors   single-file LDM/CompVis layout (encoder.down.0.block.0.norm1.weight, mid
                    attention as 1×1 convs q/k/v/proj_out, decoder.up numbered bottom-up) under a
                    `first_stage_model.` prefix, plus keys that are not the autoencoder as in a
                    full SD checkpoint (model.diffusion_model.*, model_ema.*) and a
                    `first_stage_model.loss.logvar` as in an LDM training checkpoint.
  io.npz            images (2, 24, 16, 3) in [-1, 1] (non-square), their posterior `mean` and
                    `logvar` (2, 6, 4, 4), `latents` (2, 6, 4, 4) ~ N(0, 1) and `decoded`
                    (2, 24, 16, 3) = decode(latents). All NHWC float32.

The diffusers → LDM key mapping below is this script's own; it is checked independently by
loading ldm.safetensors back with diffusers' `AutoencoderKL.from_single_file(...,
config=<diffusers/>)` offline (diffusers' LDM converter) and requiring every tensor to be
identical. The old diffusers attention names (query/key/value/proj_attn), which the test makes
from diffusers/ by renaming, are checked the same way through `from_pretrained`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

OUT = Path(__file__).parent / "fixtures" / "sd_vae"
CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=24,
    scaling_factor=0.18215,
)
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomize(model: AutoencoderKL, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:  # conv / linear weight: N(0, 1/fan_in) keeps activations O(1)
                p.copy_(noise / np.sqrt(p[0].numel()))
        lat = model.config.latent_channels
        model.quant_conv.bias[lat] = 25.0  # logvar channel 0 → clamped at 20
        model.quant_conv.bias[lat + 1] = -35.0  # logvar channel 1 → clamped at −30


def to_ldm_key(key: str, levels: int) -> str:
    """diffusers AutoencoderKL state-dict name → LDM/CompVis name."""
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.",
                 key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.",
                 key)
    # LDM numbers the decoder's levels from the full-resolution end, diffusers from the latent end.
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", key)
    key = key.replace(".mid_block.attentions.0.", ".mid.attn_1.")
    for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                     ("to_out.0", "proj_out")):
        key = key.replace(f".attn_1.{new}.", f".attn_1.{old}.")
    return key.replace(".conv_shortcut.", ".nin_shortcut.")


def ldm_state_dict(model: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(model.config.block_out_channels)
    out = {}
    for key, value in model.state_dict().items():
        new = to_ldm_key(key, levels)
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1×1 convs
        out["first_stage_model." + new] = value.contiguous()
    assert len(out) == len(model.state_dict()), "LDM key mapping is not one-to-one"
    g = torch.Generator().manual_seed(1)
    out["first_stage_model.loss.logvar"] = torch.zeros(())
    out["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3, generator=g)
    out["model_ema.decay"] = torch.tensor(0.9999)
    return out


def assert_same_weights(a: AutoencoderKL, b: AutoencoderKL, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: different tensor names"
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{what}: {k} differs"


def main() -> int:
    torch.manual_seed(0)
    model = AutoencoderKL(**CONFIG).eval()
    randomize(model)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    model.save_pretrained(OUT / "diffusers", safe_serialization=True)
    model.save_pretrained(OUT / "diffusers_bin", safe_serialization=False)
    save_file(ldm_state_dict(model), str(OUT / "ldm.safetensors"))

    # Independent checks of the layouts, through diffusers' own loaders, offline.
    for folder in ("diffusers", "diffusers_bin"):
        loaded = AutoencoderKL.from_pretrained(OUT / folder, local_files_only=True)
        assert_same_weights(model, loaded, folder)
    single = AutoencoderKL.from_single_file(
        str(OUT / "ldm.safetensors"), config=str(OUT / "diffusers"), local_files_only=True
    )
    assert_same_weights(model, single, "ldm.safetensors via from_single_file")
    with tempfile.TemporaryDirectory() as tmp:  # the pre-0.14 attention names
        sd = load_file(str(OUT / "diffusers" / "diffusion_pytorch_model.safetensors"))
        renamed = {}
        for k, v in sd.items():
            for new, old in OLD_ATTENTION_NAMES.items():
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
            renamed[k] = v
        assert any(".query." in k for k in renamed)
        shutil.copy(OUT / "diffusers" / "config.json", tmp)
        save_file(renamed, os.path.join(tmp, "diffusion_pytorch_model.safetensors"))
        old = AutoencoderKL.from_pretrained(tmp, local_files_only=True)
        assert_same_weights(model, old, "old attention names")

    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, size=(2, 24, 16, 3)).astype(np.float32)
    latents = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
    nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous().numpy()
    with torch.no_grad():
        posterior = model.encode(nchw(images)).latent_dist
        decoded = model.decode(nchw(latents)).sample
        # the single-file model computes the same function
        assert torch.equal(single.decode(nchw(latents)).sample, decoded)
    mean, logvar = nhwc(posterior.mean), nhwc(posterior.logvar)
    assert logvar[..., 0].max() == 20.0 and logvar[..., 1].min() == -30.0, "clamp not exercised"
    np.savez(OUT / "io.npz", images=images, mean=mean, logvar=logvar, latents=latents,
             decoded=nhwc(decoded))

    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")
    assert total < 2e6, "fixture over 2 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
