"""Writes tests/fixtures/dit/: a tiny random DiT in the official PyTorch layout and its outputs.

Run once, by a developer, with the reference environment (not in CI; the tests need only NumPy
and safetensors):

    /work/refenv/bin/python tests/make_dit_fixture.py

Produced with torch 2.13.0 (CPU), diffusers 0.42.1, safetensors 0.8.0, numpy 2.4.6.

The network is facebookresearch/DiT models.py's `DiT` (SiT's `SiT` in willisma/SiT models.py is
the same network; only its forward drops the variance half of the output) at a tiny size:
depth 2, hidden 32, 4 heads, patch 2, 8×8×4 inputs (a 4×4 token grid), 10 classes with the
label-dropout null row (11 rows), learn_sigma (8 output channels). Every weight is random and
nonzero (the official init zeroes the adaLN and final layers, which would hide mistakes).
Names and shapes are those of the official state dict (`x_embedder.proj.weight`,
`t_embedder.mlp.0.weight`, `y_embedder.embedding_table.weight`, `blocks.N.attn.qkv.weight`,
`blocks.N.adaLN_modulation.1.weight`, `final_layer.linear.weight`, `pos_embed`, ...).

Reference outputs: diffusers' `DiTTransformer2DModel` loaded with these weights through a key map
written here (official → diffusers: fused qkv split into to_q/to_k/to_v, the shared timestep and
label embedders copied into every block's norm1.emb, the final layer into proj_out_1/2). As
shipped, diffusers' DiT is NOT the official network: its `Timesteps(..., downscale_freq_shift=1)`
uses frequencies 10000^(−k/127) where DiT's models.py uses 10000^(−k/128) (k < 128). The
generator therefore sets `downscale_freq_shift = 0` on every block's time projection (the one
attribute that differs), records how far the unpatched model is off (printed), and checks the
patched model against a second, independent reference: a small functional torch
re-implementation of the official forward pass written here from models.py (`official_forward`).
The two must agree to 1e-5 relative or nothing is written.

Files (all < 2 MB together):
  official_weights.safetensors  the state dict (float32), as DiT's train.py / released files
                                name it, `pos_embed` (1, 16, 32) included
  reference_dit.npz     x (B, C, H, W) NCHW, step (B,) int64 DiT step indices 0..999 (0 and 999
                        included), y (B,) int64 (10 = the null class), out (B, 2C, H, W): the
                        network output at those steps (DiT's convention)
  reference_sit.npz     x, tau (B,) float32 SiT times in [0, 1] (1 = data, 0 and 1 included), y,
                        out (B, 2C, H, W): the same network evaluated at t = tau (SiT embeds tau
                        unscaled); SiT's velocity is out[:, :C]
  train_checkpoint.pt   train.py's {"model", "ema", "opt", "args"} form: "ema" = the weights
                        above, "model" = other random weights, "opt" = an AdamW state after one
                        step, "args" = an argparse.Namespace (loads with weights_only=True once
                        argparse.Namespace is an allowed global)
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import diffusers
import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from safetensors.numpy import save_file

OUT = Path(__file__).parent / "fixtures" / "dit"
DEPTH, HIDDEN, HEADS, PATCH, CHANNELS, SIZE, CLASSES = 2, 32, 4, 2, 4, 8, 10
FREQ = 256


# ------------------------------------------------------------------------------------------------
# The official layout
# ------------------------------------------------------------------------------------------------


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE/DiT 2D table: first half from the column index, second half from the row index,
    each [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(−k/(dim/4)). (grid², dim) float32."""
    omega = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    col, row = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def emb(pos):
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([emb(col), emb(row)], axis=1).astype(np.float32)


def random_official_state_dict(seed: int) -> dict[str, np.ndarray]:
    """Every tensor of DiT(depth=2, hidden=32, heads=4, patch=2, in=4, classes=10, learn_sigma)
    by its official name, random: weights N(0, 1/fan_in), biases N(0, 0.1²); the modulation
    layers smaller so that (1 + scale) stays near 1."""
    rng = np.random.default_rng(seed)
    d, p, c = HIDDEN, PATCH, CHANNELS
    c_out = 2 * c

    def linear(name, n_out, n_in, gain=1.0):
        sd[f"{name}.weight"] = (gain * rng.standard_normal((n_out, n_in)) / math.sqrt(n_in))
        sd[f"{name}.bias"] = 0.1 * rng.standard_normal(n_out)

    sd: dict[str, np.ndarray] = {}
    sd["x_embedder.proj.weight"] = rng.standard_normal((d, c, p, p)) / math.sqrt(c * p * p)
    sd["x_embedder.proj.bias"] = 0.1 * rng.standard_normal(d)
    linear("t_embedder.mlp.0", d, FREQ, gain=2.0)
    linear("t_embedder.mlp.2", d, d)
    sd["y_embedder.embedding_table.weight"] = rng.standard_normal((CLASSES + 1, d))
    for i in range(DEPTH):
        linear(f"blocks.{i}.attn.qkv", 3 * d, d)
        linear(f"blocks.{i}.attn.proj", d, d)
        linear(f"blocks.{i}.mlp.fc1", 4 * d, d)
        linear(f"blocks.{i}.mlp.fc2", d, 4 * d)
        linear(f"blocks.{i}.adaLN_modulation.1", 6 * d, d, gain=0.3)
    linear("final_layer.adaLN_modulation.1", 2 * d, d, gain=0.3)
    linear("final_layer.linear", p * p * c_out, d)
    sd["pos_embed"] = sincos_pos_embed(d, SIZE // p)[None]
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# Reference 1: the official forward pass, re-implemented functionally from DiT's models.py
# ------------------------------------------------------------------------------------------------


def official_forward(sd: dict[str, torch.Tensor], x, t, y) -> torch.Tensor:
    """DiT.forward (models.py) in eval mode: x (N, C, H, W), t (N,) step or SiT time, y (N,) int
    → (N, 2C, H, W)."""
    d, p = HIDDEN, PATCH

    def lin(h, name):
        return F.linear(h, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def modulate(h, shift, scale):
        return h * (1 + scale[:, None]) + shift[:, None]

    def ln(h):
        return F.layer_norm(h, (d,), eps=1e-6)

    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (N, T, D)
    half = FREQ // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=x.dtype) / half)
    args = t[:, None].to(x.dtype) * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 256)
    t_emb = lin(F.silu(lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")  # (N, D)
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]  # (N, D)
    n, tokens = h.shape[:2]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        mod = lin(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        a = modulate(ln(h), shift_msa, scale_msa)
        qkv = lin(a, f"{b}.attn.qkv").reshape(n, tokens, 3, HEADS, d // HEADS)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, N, heads, T, Dh)
        att = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(d // HEADS), dim=-1)
        o = (att @ qkv[2]).transpose(1, 2).reshape(n, tokens, d)
        h = h + gate_msa[:, None] * lin(o, f"{b}.attn.proj")
        m = modulate(ln(h), shift_mlp, scale_mlp)
        m = lin(F.gelu(lin(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
        h = h + gate_mlp[:, None] * m
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = lin(modulate(ln(h), shift, scale), "final_layer.linear")  # (N, T, p·p·2C)
    g = SIZE // p
    h = h.reshape(n, g, g, p, p, 2 * CHANNELS)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, 2 * CHANNELS, SIZE, SIZE)


# ------------------------------------------------------------------------------------------------
# Reference 2: diffusers' DiTTransformer2DModel with the official weights
# ------------------------------------------------------------------------------------------------


def to_diffusers(sd: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Official DiT names → DiTTransformer2DModel names."""
    d = HIDDEN
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(DEPTH):
        o, b = f"transformer_blocks.{i}", f"blocks.{i}"
        # diffusers keeps a copy of the (shared) conditioning embedders in every block.
        emb = f"{o}.norm1.emb"
        for leaf in ("weight", "bias"):
            out[f"{emb}.timestep_embedder.linear_1.{leaf}"] = sd[f"t_embedder.mlp.0.{leaf}"]
            out[f"{emb}.timestep_embedder.linear_2.{leaf}"] = sd[f"t_embedder.mlp.2.{leaf}"]
            out[f"{o}.norm1.linear.{leaf}"] = sd[f"{b}.adaLN_modulation.1.{leaf}"]
            qkv = sd[f"{b}.attn.qkv.{leaf}"]  # rows: q (D), k (D), v (D)
            for j, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{o}.attn1.{name}.{leaf}"] = qkv[j * d:(j + 1) * d]
            out[f"{o}.attn1.to_out.0.{leaf}"] = sd[f"{b}.attn.proj.{leaf}"]
            out[f"{o}.ff.net.0.proj.{leaf}"] = sd[f"{b}.mlp.fc1.{leaf}"]
            out[f"{o}.ff.net.2.{leaf}"] = sd[f"{b}.mlp.fc2.{leaf}"]
        out[f"{emb}.class_embedder.embedding_table.weight"] = sd[
            "y_embedder.embedding_table.weight"
        ]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def diffusers_model(sd: dict[str, np.ndarray], official_timesteps: bool) -> DiTTransformer2DModel:
    model = DiTTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=HIDDEN // HEADS, in_channels=CHANNELS,
        out_channels=2 * CHANNELS, num_layers=DEPTH, sample_size=SIZE, patch_size=PATCH,
        num_embeds_ada_norm=CLASSES, norm_eps=1e-6,  # DiT's LayerNorms use eps 1e-6
    )
    missing, unexpected = model.load_state_dict(to_diffusers(sd), strict=True)
    assert not missing and not unexpected
    table = model.pos_embed.pos_embed[0].numpy()
    assert np.abs(table - sd["pos_embed"][0]).max() < 1e-6, "diffusers' sin-cos table differs"
    if official_timesteps:
        for block in model.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0  # 10000^(−k/128) as in DiT
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def reference_outputs(sd, x, t, y) -> torch.Tensor:
    """The network output by diffusers (patched), checked against `official_forward`."""
    with torch.no_grad():
        ours = official_forward({k: torch.from_numpy(v) for k, v in sd.items()}, x, t, y)
        ref = diffusers_model(sd, True)(x, timestep=t, class_labels=y).sample
        shipped = diffusers_model(sd, False)(x, timestep=t, class_labels=y).sample
    err = relative(ours, ref)
    print(f"  re-implementation vs diffusers (official frequencies): {err:.2e} relative")
    print(f"  diffusers as shipped (downscale_freq_shift=1) vs official: "
          f"{relative(shipped, ref):.2e} relative")
    assert err <= 1e-5, err
    return ref


# ------------------------------------------------------------------------------------------------
# train.py's checkpoint form
# ------------------------------------------------------------------------------------------------


def adamw_state(sd: dict[str, np.ndarray], x, t, y) -> dict:
    """An AdamW state dict after one step on `sd` (train.py's optimizer: lr 1e-4, no decay)."""
    params = {k: torch.from_numpy(v.copy()).requires_grad_(k != "pos_embed") for k, v in sd.items()}
    trainable = [v for k, v in params.items() if k != "pos_embed"]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0)
    official_forward(params, x, t, y).square().mean().backward()
    opt.step()
    return opt.state_dict()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    sd = random_official_state_dict(seed=0)
    x = torch.from_numpy(rng.standard_normal((6, CHANNELS, SIZE, SIZE)).astype(np.float32))
    y = torch.tensor([0, 3, 9, CLASSES, CLASSES, 5], dtype=torch.int64)  # 10 = null class

    print("DiT convention (integer steps):")
    step = torch.tensor([0, 1, 250, 500, 998, 999], dtype=torch.int64)
    out = reference_outputs(sd, x, step, y)
    np.savez(OUT / "reference_dit.npz", x=x.numpy(), step=step.numpy(), y=y.numpy(),
             out=out.numpy())

    print("SiT convention (tau in [0, 1], 1 = data):")
    tau = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.875, 1.0], dtype=torch.float32)
    out = reference_outputs(sd, x, tau, y)
    np.savez(OUT / "reference_sit.npz", x=x.numpy(), tau=tau.numpy(), y=y.numpy(),
             out=out.numpy())

    save_file(sd, str(OUT / "official_weights.safetensors"))

    model_sd = random_official_state_dict(seed=1)
    args = argparse.Namespace(
        data_path="imagenet/train", results_dir="results", model="DiT-tiny", image_size=64,
        num_classes=CLASSES, epochs=1400, global_batch_size=256, global_seed=0, vae="ema",
        num_workers=4, log_every=100, ckpt_every=50_000,
    )
    checkpoint = {
        "model": {k: torch.from_numpy(v) for k, v in model_sd.items()},
        "ema": {k: torch.from_numpy(v) for k, v in sd.items()},
        "opt": adamw_state(model_sd, x, step, y),
        "args": args,
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    (OUT / "train_checkpoint.pt").write_bytes(buffer.getvalue())
    with torch.serialization.safe_globals([argparse.Namespace]):
        back = torch.load(OUT / "train_checkpoint.pt", weights_only=True)
    assert back["args"].model == "DiT-tiny"

    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT}: {total / 1e6:.2f} MB (torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, safetensors {safetensors.__version__}, "
          f"numpy {np.__version__})")
    assert total < 2e6


if __name__ == "__main__":
    main()
