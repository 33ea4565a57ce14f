"""The peer a user would pick, written in PyTorch from the DiT paper (Peebles & Xie 2023): the
DiT network, its training step (AdamW, EMA, ε-MSE with labels dropped) and DDIM sampling with
classifier-free guidance. Only `benchmarks/vs_pytorch.py` uses it, in a process of its own; it
imports torch and numpy only (torch is an optional benchmark dependency, never one of vdm_jax).

Network (the paper's §3.2, "adaLN-Zero" block), for latents x (B, C, H, W):
    patchify: p×p stride-p convolution → (B, T, D), T = HW/p², + fixed 2D sin-cos position
    c = MLP(sinusoid(t)) + Embedding(y)               (B, D); row num_classes = null label
    block:  (shift, scale, gate) × 2 = Linear(SiLU(c)) → 6D, zero-initialized
            x ← x + gate₁ · Attn(LN(x)(1 + scale₁) + shift₁)
            x ← x + gate₂ · MLP(LN(x)(1 + scale₂) + shift₂)        MLP: D → 4D, GELU(tanh) → D
    final:  LN, adaLN shift/scale, Linear(D, p²·C_out) zero-initialized, unpatchify
Attention is `F.scaled_dot_product_attention` (what timm's Attention calls; on CPU a fused
flash-attention kernel). Everything float32.

Training (the paper's §4 recipe): t ~ U{0..999} on DDPM's linear β schedule (1e-4 → 0.02),
x_t = √ᾱ_t x + √(1 − ᾱ_t) ε, loss = mean ‖ε − ε̂(x_t, t, y)‖², labels replaced by the null
class with probability 0.1; AdamW(lr 1e-4, no weight decay), gradients clipped to a global norm
(vdm_jax's default of 1.0, so both sides do the same work; 0 = no clipping), EMA 0.9999.

Sampling: DDIM (η = 0) on `num_steps` evenly spaced steps of the 1000; with guidance w ≠ 1
every step is one forward pass of the 2B batch (conditional, null) and ε̂ = ε̂_∅ + w (ε̂_y − ε̂_∅).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FREQ_DIM = 256  # width of the sinusoidal timestep features
NUM_TRAIN_STEPS = 1000  # DDPM's T


def sincos_position(dim: int, grid: int) -> np.ndarray:
    """Fixed 2D sin-cos position embedding (grid², dim): first half the column, second the row,
    each [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(dim/4))."""
    omega = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # (dim/4,)
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def embed(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1, 1) * omega[None]  # (T, dim/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (T, dim/2)

    return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)  # (T, dim)


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
    """[cos(t·ω_k), sin(t·ω_k)], ω_k = 10000^(−k/(dim/2)): t (B,) float → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) · (1 + scale) + shift, shift and scale (B, D) per sample."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear (biases on)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, N, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, N, T, Dh)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, N, T, Dh)
        return self.proj(a.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Mlp(nn.Module):
    """Linear(D, M) → GELU(tanh) → Linear(M, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (B, T, D)


def adaln(dim: int, n: int) -> nn.Sequential:
    """c (B, D) → SiLU → Linear(D, n·D): the modulation of a block (n = 6) or the output (2)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))


class Block(nn.Module):
    """One adaLN-Zero transformer block (module docstring)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = adaln(dim, 6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class PatchEmbed(nn.Module):
    """(B, C, H, W) → (B, T, D): a p×p stride-p convolution, tokens in row-major order."""

    def __init__(self, in_channels: int, dim: int, p: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, D)


class TimestepEmbedder(nn.Module):
    """t (B,) → Linear(256, D) → SiLU → Linear(D, D) of the sinusoidal features."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t))  # (B, D)


class LabelEmbedder(nn.Module):
    """y (B,) → table[y] (B, D); row num_classes is the null label of guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class FinalLayer(nn.Module):
    """LN → adaLN shift/scale → Linear(D, p²·C_out)."""

    def __init__(self, dim: int, p: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = adaln(dim, 2)
        self.linear = nn.Linear(dim, p * p * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 × (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p²·C_out)


class DiT(nn.Module):
    """DiT(x (B, C, H, W), t (B,) integer step in [0, 1000), y (B,) int) → ε̂ (B, C_out, H, W).

    Module names follow the published DiT state-dict layout, so `vdm_jax.importers.dit` reads
    this model's weights (tests/test_benchmarks.py checks that both compute the same function).
    """

    def __init__(self, *, input_size: int = 32, in_channels: int = 4, patch_size: int = 2,
                 hidden_size: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, learn_sigma: bool = False):
        super().__init__()
        d, p = hidden_size, patch_size
        self.p, self.grid = p, input_size // p
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.x_embedder = PatchEmbed(in_channels, d, p)
        pos = torch.from_numpy(sincos_position(d, self.grid))[None]  # (1, T, D)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # fixed, saved with the weights
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(num_classes, d)
        self.blocks = nn.ModuleList(Block(d, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(d, p, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's initialization: xavier-uniform Linears (and patch kernel), zero biases,
        N(0, 0.02) for the label table and the timestep MLP, zero adaLN and output layers (each
        block starts as the identity, the output at 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for i in (0, 2):
            nn.init.normal_(self.t_embedder.mlp[i].weight, std=0.02)
        final = self.final_layer
        for m in [*(b.adaLN_modulation[1] for b in self.blocks), final.adaLN_modulation[1],
                  final.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, g, p = x.shape[0], self.grid, self.p
        h = self.x_embedder(x) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            h = block(h, c)  # (B, T, D)
        h = self.final_layer(h, c)  # (B, T, p·p·C_out)
        h = h.view(b, g, g, p, p, self.out_channels)  # (B, gh, gw, p, q, C_out)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_channels, g * p, g * p)


def alphas_cumprod() -> torch.Tensor:
    """DDPM's ᾱ_t for t = 0..999 on the linear β schedule from 1e-4 to 0.02 (float64)."""
    betas = torch.linspace(1e-4, 0.02, NUM_TRAIN_STEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


class Trainer:
    """One training step of the recipe in the module docstring, on a fixed batch."""

    def __init__(self, model: DiT, *, lr: float = 1e-4, ema_decay: float = 0.9999,
                 label_dropout: float = 0.1, grad_clip: float = 1.0, seed: int = 0):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.ema_decay, self.label_dropout, self.grad_clip = ema_decay, label_dropout, grad_clip
        self.abar = alphas_cumprod().float()
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """x (B, C, H, W), y (B,) int64; returns the loss."""
        b = x.shape[0]
        t = torch.randint(0, NUM_TRAIN_STEPS, (b,), generator=self.gen)  # (B,)
        eps = torch.randn(x.shape, generator=self.gen)  # (B, C, H, W)
        a = self.abar[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        drop = torch.rand(b, generator=self.gen) < self.label_dropout
        y = torch.where(drop, torch.full_like(y, self.model.num_classes), y)  # null label
        out = self.model(x_t, t, y)[:, : x.shape[1]]  # (B, C, H, W) ε̂
        loss = F.mse_loss(out, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        with torch.no_grad():  # ema ← d·ema + (1 − d)·params
            torch._foreach_lerp_(self.ema, self.params, 1 - self.ema_decay)
        return float(loss.detach())


@torch.inference_mode()
def ddim_sample(model: DiT, labels: torch.Tensor, num_steps: int, guidance: float,
                shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """DDIM (η = 0) from noise (B, C, H, W) over `num_steps` of DDPM's 1000 steps, with
    classifier-free guidance at scale `guidance` (1 = conditional model only)."""
    gen = torch.Generator().manual_seed(seed)
    abar = alphas_cumprod().float()
    steps = list(range(0, NUM_TRAIN_STEPS, NUM_TRAIN_STEPS // num_steps))[::-1]
    c = shape[1]
    x = torch.randn(shape, generator=gen)
    guided = guidance != 1.0
    y = torch.cat([labels, torch.full_like(labels, model.num_classes)]) if guided else labels
    for i, s in enumerate(steps):
        t = torch.full((y.shape[0],), s, dtype=torch.long)
        inp = torch.cat([x, x]) if guided else x  # (B or 2B, C, H, W)
        eps = model(inp, t, y)[:, :c]
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        a = abar[s]
        a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else torch.tensor(1.0)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # the clean estimate
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def synthetic(batch: int, channels: int, size: int, num_classes: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch: latents uniform in [−1, 1] (B, C, H, W) and labels (B,)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32)
    y = rng.integers(0, max(num_classes, 1), (batch,))
    return torch.from_numpy(x), torch.from_numpy(y).long()


def run(task: str, spec: dict[str, Any], *, batch: int, input_size: int, in_channels: int,
        num_classes: int, steps: int, warmup: int, threads: int, num_steps: int = 50,
        guidance: float = 1.0, grad_clip: float = 1.0) -> dict[str, Any]:
    """Build the model and time `steps` calls of `task` ('train': one optimizer step; 'sample':
    one whole DDIM run) after `warmup` untimed ones, on `threads` intra-op threads. Returns
    the wall and process-CPU seconds of each timed call and the torch version."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DiT(input_size=input_size, in_channels=in_channels, num_classes=num_classes, **spec)
    x, y = synthetic(batch, in_channels, input_size, num_classes)
    if task == "train":
        trainer = Trainer(model, grad_clip=grad_clip)
        call = lambda: trainer.step(x, y)
    elif task == "sample":
        model.eval()
        call = lambda: ddim_sample(model, y, num_steps, guidance, tuple(x.shape))
    else:
        raise ValueError(f"task {task!r}: expected 'train' or 'sample'")
    for _ in range(warmup):
        call()
    walls, cpus = [], []
    for _ in range(steps):
        cpu, wall = time.process_time(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"walls": walls, "cpus": cpus, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
