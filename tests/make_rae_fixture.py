"""Writes tests/fixtures/rae/: a tiny random RAE in the two released layouts and the outputs of
the two reference implementations on fixed inputs. Run once by a developer, not in CI:

    .venv/bin/python tests/make_rae_fixture.py --rae-src DIR [--out tests/fixtures/rae]

Produced with torch 2.13.0 (CPU), diffusers 0.42.1, transformers 5.25.0, safetensors 0.8.0,
numpy 2.4.6, and --rae-src: the `src/` folder of github.com/bytetriper/RAE at commit
a4d18c4 (its `stage1.RAE`, `GeneralDecoder` and `Dinov2withNorm` are imported from there).

The model: DINOv2 with 4 registers (width 64, 1 block, 1 head — diffusers' AutoencoderRAE fixes
64-wide heads —, patch 14, pretraining image 518² as diffusers builds it), input 224² → 16 × 16
tokens; decoder width 32, 2 layers, 2 heads, MLP 64, patch 16 → 256² images. Every parameter is
random (LayerNorm scales and biases included), latent statistics mean = k/4 and std = 1/2 + k/8
(exact in float32 and in config.json), var = std².

Files:
  diffusers/          AutoencoderRAE.save_pretrained (config.json + safetensors), statistics
                      (mean, std) in the config and the `_latents_mean/_latents_std` buffers
  official/model.pt   the official GeneralDecoder's state_dict (with its frozen decoder_pos_embed)
  official/stat.pt    {"mean": (C, 16, 16), "var": (C, 16, 16)}
  official/config.json  the official decoder config (configs/decoder/ViT*/config.json form)
  official/dinov2/config.json  the encoder's transformers config; its model.safetensors is the
                      diffusers file's `encoder.*` tensors with the prefix removed (the test writes
                      it; this script wrote the same and loaded it with the official
                      Dinov2withNorm, i.e. Dinov2WithRegistersModel.from_pretrained)
  outputs.npz         images_u8 (2, 64, 64, 3) uint8: images are x = (k + ½)/128 − 1 repeated
                      4× (256²) or 8× (512²) along both sides; in the references' [0, 1] space
                      (x + 1)/2.
                      diffusers_z256 (2, 16, 16, C) NHWC: AutoencoderRAE.encode at 256²;
                      diffusers_x256: decode(diffusers_z256) as [−1, 1], pixels [:, ::4, ::4];
                      official_z256 [..., ::4] channels: the official RAE's encode (stat.pt:
                      sqrt(var + eps)); official_x256: its decode of diffusers_z256, [:, ::4, ::4];
                      at 512² (encoder input 448², statistics repeated 2× along both grid axes,
                      the first image): diffusers_z512 [..., ::4] channels; official_x512 the
                      official RAE's decode of diffusers_z256[:1] repeated 2× (1, 32, 32, C),
                      [:, ::8, ::8]; diffusers_x512 the same from diffusers, whose positions
                      differ at 32×32 (get_2d_sincos_pos_embed's base_size=16).
  counts.json         parameters of the official ViT-B/L/XL GeneralDecoder at full size (meta
                      device): trainable (requires_grad) and all (the frozen position table too),
                      and of diffusers' RAEDecoder at XL; the library versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import diffusers
import numpy as np
import safetensors
import torch
import transformers
from diffusers import AutoencoderRAE
from safetensors.torch import load_file, save_file

ENC_HIDDEN, ENC_LAYERS, ENC_PATCH = 64, 1, 14
DEC_HIDDEN, DEC_LAYERS, DEC_HEADS, DEC_MLP, DEC_PATCH = 32, 2, 2, 64, 16
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
OFFICIAL_SIZES = {"B": "ViTB", "L": "ViTL", "XL": "ViTXL"}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Kernels N(0, 1/fan_in); tokens, position tables, biases, layer scales N(0, 0.5²);
    LayerNorm scales 1 + N(0, 0.5²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "token" not in name and "position" not in name:
                std = 1.0 / float(np.prod(p.shape[1:])) ** 0.5
            else:
                std = 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
            if "norm" in name and name.endswith(".weight"):
                p.add_(1.0)


def stats(c: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(3)
    mean = rng.integers(-4, 5, (c, g, g)) / 4.0
    std = 0.5 + rng.integers(0, 9, (c, g, g)) / 8.0
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).double().numpy().astype(np.float32)


def diffusers_model(mean, std, input_size: int) -> AutoencoderRAE:
    return AutoencoderRAE(
        encoder_type="dinov2", encoder_hidden_size=ENC_HIDDEN, encoder_patch_size=ENC_PATCH,
        encoder_num_hidden_layers=ENC_LAYERS, decoder_hidden_size=DEC_HIDDEN,
        decoder_num_hidden_layers=DEC_LAYERS, decoder_num_attention_heads=DEC_HEADS,
        decoder_intermediate_size=DEC_MLP, patch_size=DEC_PATCH, encoder_input_size=input_size,
        latents_mean=mean.tolist(), latents_std=std.tolist(),
    ).eval()


def decoder_config(num_layers: int = DEC_LAYERS, width: int = DEC_HIDDEN, heads: int = DEC_HEADS,
                   mlp: int = DEC_MLP) -> dict:
    """The official configs/decoder/ViT*/config.json form (hidden_size and patch_size are
    overwritten by RAE)."""
    return {
        "architectures": ["ViTMAEForPreTraining"], "model_type": "vit_mae",
        "decoder_hidden_size": width, "decoder_intermediate_size": mlp,
        "decoder_num_attention_heads": heads, "decoder_num_hidden_layers": num_layers,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "hidden_size": 768, "image_size": 224, "intermediate_size": 3072,
        "layer_norm_eps": 1e-12, "num_attention_heads": 12, "num_channels": 3,
        "num_hidden_layers": 12, "patch_size": "SHOULD BE RELOADED", "qkv_bias": True,
    }


def official_rae(work: Path, dinov2_dir: Path, decoder_state: dict, stat_path: Path | None,
                 input_size: int):
    from stage1 import RAE

    dec_dir = work / f"decoder_cfg_{input_size}"
    dec_dir.mkdir(exist_ok=True)
    # transformers 5 validates patch_size as an int (the official code pins 4.x, which accepted
    # the placeholder string); RAE overwrites it with decoder_patch_size either way.
    (dec_dir / "config.json").write_text(json.dumps({**decoder_config(), "patch_size": DEC_PATCH}))
    model = RAE(
        encoder_cls="Dinov2withNorm", encoder_config_path=str(dinov2_dir),
        encoder_input_size=input_size,
        encoder_params={"dinov2_path": str(dinov2_dir), "normalize": True},
        decoder_config_path=str(dec_dir), decoder_patch_size=DEC_PATCH,
        pretrained_decoder_path=None, noise_tau=0.0, reshape_to_2d=True,
        normalization_stat_path=str(stat_path) if stat_path else None,
    ).eval()
    # the official RAE loads the decoder with strict=False; here strictly, so a renaming
    # error cannot pass silently (the position table differs in size at 448²: skipped there).
    state = {k: v for k, v in decoder_state.items()
             if not (k == "decoder_pos_embed" and v.shape != model.decoder.decoder_pos_embed.shape)}
    missing, unexpected = model.decoder.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"decoder_pos_embed"}, (missing, unexpected)
    return model


def to_official_decoder(diffusers_state: dict) -> dict:
    """diffusers' `decoder.*` names → the official GeneralDecoder's."""
    out = {}
    for k, v in diffusers_state.items():
        if not k.startswith("decoder."):
            continue
        k = k[len("decoder."):]
        k = (k.replace(".attention.to_q.", ".attention.attention.query.")
              .replace(".attention.to_k.", ".attention.attention.key.")
              .replace(".attention.to_v.", ".attention.attention.value.")
              .replace(".attention.to_out.0.", ".attention.output.dense."))
        out[k] = v
    return out


def param_counts(src: Path) -> dict:
    from stage1.decoders import GeneralDecoder
    from stage1.decoders.utils import ViTMAEConfig

    counts = {}
    for size, folder in OFFICIAL_SIZES.items():
        cfg = ViTMAEConfig(**{k: v for k, v in json.loads(
            (src.parent / "configs" / "decoder" / folder / "config.json").read_text()).items()
            if k not in ("architectures", "model_type", "_name_or_path", "torch_dtype",
                         "transformers_version")})
        cfg.hidden_size, cfg.patch_size, cfg.image_size = 768, 16, 256
        with torch.device("meta"):
            dec = GeneralDecoder(cfg, num_patches=256)
        counts[f"official_{size}_trainable"] = sum(p.numel() for p in dec.parameters()
                                                   if p.requires_grad)
        counts[f"official_{size}_all"] = sum(p.numel() for p in dec.parameters())
    with torch.device("meta"):
        d = AutoencoderRAE(decoder_hidden_size=1152, decoder_num_hidden_layers=28,
                           decoder_num_attention_heads=16, decoder_intermediate_size=4096)
    counts["diffusers_XL_decoder"] = sum(p.numel() for p in d.decoder.parameters())
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rae-src", required=True, type=Path, help="bytetriper/RAE's src/ folder")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "fixtures" / "rae")
    args = ap.parse_args()
    sys.path.insert(0, str(args.rae_src))
    torch.manual_seed(0)
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    (out / "official" / "dinov2").mkdir(parents=True)

    grid = 224 // ENC_PATCH
    mean, std = stats(ENC_HIDDEN, grid)
    ref = diffusers_model(mean, std, 224)
    randomize(ref, 1)
    ref.save_pretrained(out / "diffusers")
    cfg_file = out / "diffusers" / "config.json"  # the same JSON without the indentation
    cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()), separators=(",", ":")))
    dstate = load_file(str(out / "diffusers" / "diffusion_pytorch_model.safetensors"))
    reloaded = AutoencoderRAE.from_pretrained(out / "diffusers").eval()  # the saved files work

    # official layout: decoder model.pt, stat.pt, decoder config, DINOv2 folder
    official_dec = to_official_decoder(dstate)
    from stage1.decoders.decoder import get_2d_sincos_pos_embed

    official_dec["decoder_pos_embed"] = torch.from_numpy(
        get_2d_sincos_pos_embed(DEC_HIDDEN, grid, add_cls_token=True)).float()[None]
    torch.save(official_dec, out / "official" / "model.pt")
    torch.save({"mean": mean, "var": std**2}, out / "official" / "stat.pt")
    (out / "official" / "config.json").write_text(json.dumps(decoder_config(), indent=2))
    work = Path(tempfile.mkdtemp())
    dinov2_dir = work / "dinov2"
    ref.encoder.config.save_pretrained(dinov2_dir)
    shutil.copy(dinov2_dir / "config.json", out / "official" / "dinov2" / "config.json")
    enc_state = {k[len("encoder."):]: v for k, v in dstate.items() if k.startswith("encoder.")}
    save_file(enc_state, str(dinov2_dir / "model.safetensors"))
    (dinov2_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "image_mean": IMAGENET[0],
        "image_std": IMAGENET[1]}))
    official = official_rae(work, dinov2_dir, official_dec, out / "official" / "stat.pt", 224)

    rng = np.random.default_rng(0)
    images_u8 = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x_pm = (images_u8.astype(np.float32) + 0.5) / 128.0 - 1.0  # [-1, 1]

    def images(repeat: int) -> torch.Tensor:
        x = np.repeat(np.repeat(x_pm, repeat, 1), repeat, 2).astype(np.float64)
        return torch.from_numpy((x + 1.0) / 2.0).permute(0, 3, 1, 2).contiguous()

    # The references run in float64 (the port is compared in float32): PyTorch's float32 CPU
    # bicubic resampling alone is off by up to 9e-5 (in [0, 1] units) on these images, more
    # than the 1e-5 tolerance, while float64 resampling agrees with the exact one to 1e-12.
    ref.double()
    reloaded.double()
    official.double()

    res: dict[str, np.ndarray] = {"images_u8": images_u8}
    with torch.no_grad():
        x256 = images(4)
        z = ref.encode(x256).latent
        assert torch.equal(z, reloaded.encode(x256).latent)
        res["diffusers_z256"] = nhwc(z)
        zo = official.encode(x256)
        res["official_z256"] = nhwc(zo)[..., ::4]
        # decoded from the stored (float32) latents, which the test decodes too
        z32 = torch.from_numpy(res["diffusers_z256"]).double().permute(0, 3, 1, 2)
        res["diffusers_x256"] = nhwc(ref.decode(z32).sample * 2 - 1)[:, ::4, ::4]
        res["official_x256"] = nhwc(official.decode(z32) * 2 - 1)[:, ::4, ::4]
        # diffusers and the official code must agree on the tokens (same encoder weights)
        tok_d = z * (std.double() + 1e-5) + mean
        tok_o = zo * torch.sqrt(std.double() ** 2 + 1e-5) + mean
        print("tokens diffusers vs official, max abs diff:", float((tok_d - tok_o).abs().max()))

        # 512²: encoder input 448², statistics repeated to 32 × 32; one image
        mean5, std5 = (t.repeat_interleave(2, 1).repeat_interleave(2, 2) for t in (mean, std))
        ref5 = diffusers_model(mean5, std5, 448).double()
        st5 = {k: v for k, v in dstate.items() if not k.startswith("_latents")}
        st5["_latents_mean"], st5["_latents_std"] = mean5, std5
        ref5.load_state_dict(st5, strict=True)
        x512 = images(8)[:1]
        res["diffusers_z512"] = nhwc(ref5.encode(x512).latent)[..., ::4]
        stat5 = work / "stat512.pt"
        torch.save({"mean": mean5, "var": std5**2}, stat5)
        official5 = official_rae(work, dinov2_dir, official_dec, stat5, 448).double()
        zin = torch.from_numpy(res["diffusers_z256"][:1]).double().permute(0, 3, 1, 2)
        zin = zin.repeat_interleave(2, 2).repeat_interleave(2, 3).contiguous()
        res["official_x512"] = nhwc(official5.decode(zin) * 2 - 1)[:, ::8, ::8]
        res["diffusers_x512"] = nhwc(ref5.decode(zin).sample * 2 - 1)[:, ::8, ::8]
        diff = np.abs(res["diffusers_x512"] - res["official_x512"]).max()
        print("512² decode, diffusers vs official (positions and stats formula), max abs diff:",
              diff)

    np.savez_compressed(out / "outputs.npz", **res)
    counts = param_counts(args.rae_src)
    counts["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "transformers": transformers.__version__,
                          "safetensors": safetensors.__version__, "numpy": np.__version__,
                          "rae_commit": "a4d18c4"}
    (out / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    shutil.rmtree(work)
    print(json.dumps(counts, indent=2))
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:>9}  {f.relative_to(out)}")


if __name__ == "__main__":
    main()
