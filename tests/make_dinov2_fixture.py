"""Writes tests/fixtures/dinov2/: tiny random DINOv2 models in both released layouts, their
outputs from the reference implementations, PyTorch's bicubic resampling on fixed arrays, and
the parameter counts of the full-size models. Run once by a developer, not in CI:

    /work/refenv/bin/python tests/make_dinov2_fixture.py \
        --dinov2-repo DIR --convert-script FILE [--out tests/fixtures/dinov2]

Produced with torch 2.13.0 (CPU), transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6, and
  * --dinov2-repo: a checkout of github.com/facebookresearch/dinov2 (commit
    b8931f7bf91576930313be2c6d6af376033b35f0), the torch-hub code; its DinoVisionTransformer
    loads the hub-layout files strictly and gives the hub's own outputs (XFORMERS_DISABLED=1);
  * --convert-script: transformers' original hub → HF converter
    `transformers/models/dinov2/convert_dinov2_to_hf.py` from the transformers 4.40.0 wheel
    (sha256 838c268a…fac999 for the script). transformers 5.24 no longer ships the conversion
    scripts, so the one from the last wheels that did is used.

Models (hidden 16, 2 blocks, 2 heads, patch 14, mlp_ratio 4, pretraining image 56² = 4×4 grid):
  dinov2          transformers Dinov2Model, MLP FFN, no registers
  dinov2_reg      Dinov2WithRegistersModel, 4 registers
  dinov2_swiglu   Dinov2Model with use_swiglu_ffn (ViT-g's FFN: hidden 48 = ⌈⌊64·2/3⌋/8⌉·8)
Every parameter is randomized (position table, tokens and layer scales of order 1, so that
interpolation and token order errors show), then saved as
  hf_<name>/ (save_pretrained: config.json + model.safetensors, the released HF names) and
  hub_<name>.pth (torch-hub names, made by this script's own HF → hub renaming).
The renaming is verified twice: the converter's rename_keys / read_in_q_k_v / FFN renames,
applied to the hub dict, reproduce the HF state dict exactly; and the hub's
DinoVisionTransformer loads it with strict=True and matches transformers' output on the
pretraining grid.

outputs.npz (inputs NHWC, already "normalized" random images):
  img_square (2,56,56,3): pretraining grid; img_interp (2,42,84,3): 3×6 grid (rows
  downsampled, columns upsampled); img_crop (1,45,87,3): 3×6 grid plus a remainder the
  stride-14 convolution drops (transformers only; the hub code rejects it).
  {src}_{name}_{input}_{cls|reg|patch}: final-normed tokens, src = hf (transformers; its
  resampling) or hub (the facebookresearch code with its own resampling: offset 0.1 for
  dinov2 / dinov2_swiglu, antialias for dinov2_reg);
  hf_dinov2_square_layer0: transformers' hidden_states[1] (output of block 0, before the norm);
  mask (2,16) bool and hf_dinov2_mask_patch: outputs with bool_masked_pos.
resample.npz: F.interpolate(bicubic, align_corners=False) of fixed arrays (see `resample_cases`)
  and REPA's preprocessing of a fixed image.
param_counts.json: parameters of the full-size transformers models (meta device, no memory),
  ViT-S/B/L/g × {0, 4 registers}, and of the hub's models as a cross-check.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XFORMERS_DISABLED", "1")

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

HIDDEN, LAYERS, HEADS, PATCH, IMAGE = 16, 2, 2, 14, 56
LAYERSCALE = 0.5
MODELS = {  # name → (registers, swiglu)
    "dinov2": (0, False),
    "dinov2_reg": (4, False),
    "dinov2_swiglu": (0, True),
}
SIZES = {  # released sizes: hidden, layers, heads, swiglu (hub: vit_small/base/large/giant2)
    "vits14": (384, 12, 6, False),
    "vitb14": (768, 12, 12, False),
    "vitl14": (1024, 24, 16, False),
    "vitg14": (1536, 40, 24, True),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def hf_model(registers: int, swiglu: bool, seed: int) -> torch.nn.Module:
    kw = dict(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=4,
        image_size=IMAGE, patch_size=PATCH, layerscale_value=LAYERSCALE, use_swiglu_ffn=swiglu,
    )
    if registers:
        cfg = Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        model = Dinov2WithRegistersModel(cfg)
    else:
        model = Dinov2Model(Dinov2Config(**kw))
    model.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)  # LayerNorm scale
            elif "lambda1" in name:
                p.copy_(LAYERSCALE * (1.0 + 0.3 * noise))  # nonzero, per-channel layer scale
            elif any(t in name for t in ("cls_token", "position_embeddings", "register_tokens",
                                          "mask_token")):
                p.copy_(noise)  # order 1, so that resampling and token order matter
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 16
                p.copy_(noise / fan_in**0.5)  # weights ~ 1/sqrt(fan-in); biases ~ 1/4
    return model.eval()


def hf_to_hub(hf: dict[str, np.ndarray], swiglu: bool) -> dict[str, np.ndarray]:
    """This script's own renaming of the released HF names to the torch-hub names."""
    hub = {}
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    for k, v in top.items():
        if k in hf:
            hub[v] = hf[k]
    for i in range(LAYERS):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            hub[dst + f"attn.qkv.{leaf}"] = np.concatenate(
                [hf[src + f"attention.attention.{n}.{leaf}"] for n in ("query", "key", "value")]
            )
            hub[dst + f"attn.proj.{leaf}"] = hf[src + f"attention.output.dense.{leaf}"]
            for n in ("norm1", "norm2"):
                hub[dst + f"{n}.{leaf}"] = hf[src + f"{n}.{leaf}"]
            ffn = {"w12": "weights_in", "w3": "weights_out"} if swiglu else {"fc1": "fc1",
                                                                              "fc2": "fc2"}
            for h, f in ffn.items():
                hub[dst + f"mlp.{h}.{leaf}"] = hf[src + f"mlp.{f}.{leaf}"]
        hub[dst + "ls1.gamma"] = hf[src + "layer_scale1.lambda1"]
        hub[dst + "ls2.gamma"] = hf[src + "layer_scale2.lambda1"]
    return hub


def converter(script: Path):
    """transformers' hub → HF conversion, taken from its original script: create_rename_keys,
    rename_key, read_in_q_k_v and the FFN rename loop of convert_dinov2_checkpoint (parsed out
    with ast, as the module's top-level imports need torchvision and network access)."""
    tree = ast.parse(script.read_text())
    ns: dict = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in (
            "create_rename_keys", "rename_key", "read_in_q_k_v"
        ):
            exec(compile(ast.Module([node], []), str(script), "exec"), ns)
    main = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("convert_")
    )
    loop = next(
        n for n in ast.walk(main) if isinstance(n, ast.For) and "weights_in" in ast.unparse(n)
    )
    ffn_loop = compile(ast.Module([loop], []), str(script), "exec")

    def convert(hub: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
        sd = {k: torch.from_numpy(v.copy()) for k, v in hub.items()}
        for src, dest in ns["create_rename_keys"](config):
            ns["rename_key"](sd, src, dest)
        ns["read_in_q_k_v"](sd, config)
        exec(ffn_loop, {"state_dict": sd})
        # The 4.40 script predates registers; its registers twin (convert_dinov2_with_
        # registers_to_hf.py, not in any wheel) adds exactly this one rename.
        if "register_tokens" in sd:
            ns["rename_key"](sd, "register_tokens", "embeddings.register_tokens")
        return {k: v.numpy() for k, v in sd.items()}

    return convert


def hub_model(repo: Path, registers: int, swiglu: bool, antialias: bool, offset: float,
              **size) -> torch.nn.Module:
    sys.path.insert(0, str(repo))
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models.vision_transformer import DinoVisionTransformer

    kw = dict(embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS, img_size=IMAGE)
    kw.update(size)
    return DinoVisionTransformer(
        patch_size=PATCH, mlp_ratio=4, init_values=LAYERSCALE, block_chunks=0,
        ffn_layer="swiglufused" if swiglu else "mlp", num_register_tokens=registers,
        interpolate_antialias=antialias, interpolate_offset=offset,
        block_fn=functools.partial(Block, attn_class=MemEffAttention), **kw,
    ).eval()


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------------------
# Resampling and parameter counts
# ------------------------------------------------------------------------------------------------


def resample_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """F.interpolate(bicubic, align_corners=False) on fixed (1, C, h, w) arrays, stored NHWC."""
    out: dict[str, np.ndarray] = {}
    cases = {  # name → (input h, w, kwargs)
        "s4_to_3x6": (4, 4, dict(size=(3, 6), antialias=False)),
        "s4_to_3x6_aa": (4, 4, dict(size=(3, 6), antialias=True)),
        "s4_to_3x6_offset": (4, 4, dict(scale_factor=(3.1 / 4, 6.1 / 4), antialias=False)),
        "s37_to_16": (37, 37, dict(size=(16, 16), antialias=False)),
        "s37_to_16_aa": (37, 37, dict(size=(16, 16), antialias=True)),
        "s37_to_16_offset": (37, 37, dict(scale_factor=(16.1 / 37, 16.1 / 37), antialias=False)),
        "s37_to_40x64_aa": (37, 37, dict(size=(40, 64), antialias=True)),
    }
    for name, (h, w, kw) in cases.items():
        x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
        y = F.interpolate(torch.from_numpy(x), mode="bicubic", align_corners=False, **kw)
        out[name + "_in"] = x.transpose(0, 2, 3, 1)
        out[name + "_out"] = y.numpy().transpose(0, 2, 3, 1)
    # REPA's preprocess_raw_image for DINOv2: x/255 → Normalize → interpolate(size, bicubic).
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for name, side, size in (("repa_down", 32, 28), ("repa_up", 20, 28)):
        img = rng.uniform(-1, 1, (1, side, side, 3)).astype(np.float32)  # project convention
        x = (nchw(img) + 1) / 2
        y = F.interpolate((x - mean) / std, size=size, mode="bicubic")
        out[name + "_in"], out[name + "_out"] = img, y.numpy().transpose(0, 2, 3, 1)
    return out


def param_counts(repo: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for size, (d, layers, heads, swiglu) in SIZES.items():
        kw = dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=518, patch_size=14, use_swiglu_ffn=swiglu)
        for regs in (0, 4):
            with torch.device("meta"):
                if regs:
                    m = Dinov2WithRegistersModel(
                        Dinov2WithRegistersConfig(num_register_tokens=regs, **kw)
                    )
                else:
                    m = Dinov2Model(Dinov2Config(**kw))
                hub = hub_model(repo, regs, swiglu, False, 0.1, embed_dim=d, depth=layers,
                                num_heads=heads, img_size=518)
            n = sum(p.numel() for p in m.parameters())
            n_hub = sum(p.numel() for p in hub.parameters())
            assert n == n_hub, (size, regs, n, n_hub)
            counts[f"{size}_reg{regs}"] = n
    return counts


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dinov2-repo", type=Path, required=True)
    ap.add_argument("--convert-script", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "fixtures" / "dinov2")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    convert = converter(args.convert_script)

    inputs = {
        "square": rng.standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32),
        "interp": rng.standard_normal((2, 3 * PATCH, 6 * PATCH, 3)).astype(np.float32),
        "crop": rng.standard_normal((1, 3 * PATCH + 3, 6 * PATCH + 3, 3)).astype(np.float32),
    }
    arrays: dict[str, np.ndarray] = {f"img_{k}": v for k, v in inputs.items()}
    mask = rng.random((2, (IMAGE // PATCH) ** 2)) < 0.4
    arrays["mask"] = mask

    for seed, (name, (regs, swiglu)) in enumerate(MODELS.items()):
        model = hf_model(regs, swiglu, seed)
        hf_dir = out / f"hf_{name}"
        model.save_pretrained(hf_dir)
        hf_sd = load_file(str(hf_dir / "model.safetensors"))
        hub_sd = hf_to_hub(hf_sd, swiglu)

        # Check 1: transformers' own converter maps our hub dict back onto the HF dict.
        back = convert(hub_sd, model.config)
        assert sorted(back) == sorted(hf_sd), set(back) ^ set(hf_sd)
        for k in hf_sd:
            assert np.array_equal(back[k], hf_sd[k]), k
        torch.save({k: torch.from_numpy(v) for k, v in hub_sd.items()}, out / f"hub_{name}.pth")

        # Check 2: the hub code loads it strictly; its own resampling is the release default.
        antialias, offset = (True, 0.0) if regs else (False, 0.1)
        hub = hub_model(args.dinov2_repo, regs, swiglu, antialias, offset)
        hub.load_state_dict({k: torch.from_numpy(v) for k, v in hub_sd.items()}, strict=True)

        r = 1 + regs
        with torch.no_grad():
            for key in ("square", "interp", "crop"):
                x = nchw(inputs[key])
                o = model(pixel_values=x, output_hidden_states=True)
                hs = o.last_hidden_state.numpy()
                arrays[f"hf_{name}_{key}_cls"] = hs[:, 0]
                arrays[f"hf_{name}_{key}_reg"] = hs[:, 1:r]
                arrays[f"hf_{name}_{key}_patch"] = hs[:, r:]
                if name == "dinov2" and key == "square":
                    arrays["hf_dinov2_square_layer0"] = o.hidden_states[1].numpy()
                if key == "crop":
                    continue
                f = hub.forward_features(x)
                arrays[f"hub_{name}_{key}_cls"] = f["x_norm_clstoken"].numpy()
                arrays[f"hub_{name}_{key}_reg"] = f["x_norm_regtokens"].numpy()
                arrays[f"hub_{name}_{key}_patch"] = f["x_norm_patchtokens"].numpy()
            if name == "dinov2":
                o = model(pixel_values=nchw(inputs["square"]),
                          bool_masked_pos=torch.from_numpy(mask))
                arrays["hf_dinov2_mask_patch"] = o.last_hidden_state[:, 1:].numpy()
        sq = rel(arrays[f"hub_{name}_square_patch"], arrays[f"hf_{name}_square_patch"])
        it = rel(arrays[f"hub_{name}_interp_patch"], arrays[f"hf_{name}_interp_patch"])
        print(f"{name}: hub vs transformers, pretraining grid rel {sq:.2e}; 3×6 grid {it:.2e}")
        assert sq < 1e-5, sq
        if not regs:  # the hub's offset-0.1 resampling differs from transformers' (by design)
            assert it > 1e-3, it

    np.savez(out / "outputs.npz", **arrays)
    np.savez(out / "resample.npz", **resample_cases(rng))
    counts = param_counts(args.dinov2_repo)
    (out / "param_counts.json").write_text(json.dumps(
        {"source": "transformers 5.24.0 Dinov2Model / Dinov2WithRegistersModel on the meta "
                   "device (image 518, patch 14); equal to the hub DinoVisionTransformer's",
         "counts": counts}, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps(counts), f"\nwrote {out} ({total / 1e6:.2f} MB)")
    assert total < 2e6, total


if __name__ == "__main__":
    main()
