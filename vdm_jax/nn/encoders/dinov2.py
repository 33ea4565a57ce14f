"""DINOv2 ViT (Oquab et al. 2023), with or without registers (Darcet et al. 2024), Flax NNX: the
frozen target network of REPA. Same computation as the released models (facebookresearch/dinov2
torch hub and transformers' Dinov2Model / Dinov2WithRegistersModel); weights come from
`vdm_jax.importers.dinov2.load_dinov2`.

    x (B,H,W,3) ImageNet-normalized → patchify 14×14 → Linear → [CLS] + patches
      → + learned position embedding (pretraining grid 37×37, resampled to the input grid)
      → insert R register tokens after CLS → L × Block → LayerNorm
      → x_norm_clstoken (B,D), x_norm_regtokens (B,R,D), x_norm_patchtokens (B,T,D)

A Block is pre-norm with layer scale (γ initialized to `layerscale_value`):
    x ← x + γ₁ ⊙ Attn(LN(x)),   x ← x + γ₂ ⊙ FFN(LN(x)),   LayerNorm ε = 1e-6,
FFN = Linear(D, 4D) → GELU (exact, erf) → Linear(4D, D) for S/B/L, and for g the fused SwiGLU
w3(SiLU(x W₁) ⊙ x W₂) with hidden h = ⌈⌊4D·2/3⌋ / 8⌉·8 (= 4096 for D = 1536; W₁, W₂ stored
stacked as one (D, 2h) Linear, `w12` / `weights_in` in the files).

Position embedding. The learned table covers the pretraining grid M×M (518/14 = 37) plus CLS.
For an input grid gh×gw it is resampled bicubically (align_corners=False), in float32, exactly
as the released code does, which differs between releases (`DinoV2Config.pos_antialias`,
`pos_offset`; presets in `POS_INTERPOLATIONS`):
  * transformers Dinov2Model: F.interpolate(size=(gh, gw), bicubic, antialias=False): Keys cubic
    with a = −0.75 (PyTorch's, not jax.image.resize's a = −0.5), border taps clamped;
  * transformers Dinov2WithRegistersModel, hub `*_reg` models: antialias=True: PyTorch's
    antialiased (PIL-style) bicubic, a = −0.5, support widened by the downscale factor, weights
    renormalized at the border;
  * torch hub originals (`dinov2_vitb14`): antialias=False with `scale_factor = (g + 0.1)/M`
    instead of a size (the "interpolate_offset" kludge), so the sampling positions use the
    scale M/(g + 0.1) rather than M/g;
  * REPA: resamples the hub table once to 16×16 with timm's `resample_abs_pos_embed`
    (size, antialias=True) and feeds 224×224 images, i.e. the antialiased rule above.
As in every release, the table is used as is (no resampling) when the grid is the pretraining
grid and H = W. `resample_matrix` builds these rules as (out, in) matrices in NumPy; they were
checked against torch's F.interpolate (tests/test_dinov2.py).

Inputs whose sides are not multiples of 14 are cropped to the largest multiple (the released
stride-14 convolution ignores the remainder). `preprocess` maps [−1, 1] NHWC images to the
network's input (REPA's resize + ImageNet normalization).

Precision: parameters float32; matmuls in `dtype` (bfloat16 on accelerators); the residual
stream, LayerNorm, layer scale, the attention softmax, the position-embedding resampling and the
outputs in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vdm_jax.nn.layers import dense, patchify

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POS_INTERPOLATIONS",
    "SIZES",
    "DinoV2",
    "DinoV2Config",
    "abstract_dinov2",
    "preprocess",
    "resample_matrix",
]

Array = jax.Array
Dtype = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REPA_RESOLUTION = 224  # REPA: 224·(resolution // 256), i.e. 16×16 patches for 256² images

# name → (hidden size D, layers L, heads N, SwiGLU FFN); patch 14, pretraining 518² (37×37 grid).
SIZES: dict[str, tuple[int, int, int, bool]] = {
    "vits14": (384, 12, 6, False),
    "vitb14": (768, 12, 12, False),
    "vitl14": (1024, 24, 16, False),
    "vitg14": (1536, 40, 24, True),
}
POS_INTERPOLATIONS = ("transformers", "hub", "repa")

trunc_normal_002 = nnx.initializers.truncated_normal(0.02)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


def pos_interpolation(style: str, num_registers: int) -> tuple[bool, float]:
    """(antialias, offset) of a release's position-embedding resampling (module docstring)."""
    if style == "transformers":
        return num_registers > 0, 0.0
    if style == "hub":
        return (True, 0.0) if num_registers else (False, 0.1)
    if style == "repa":
        return True, 0.0
    raise ValueError(
        f"unknown position-embedding interpolation {style!r}: expected one of {POS_INTERPOLATIONS}"
    )


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
    """Architecture of a DINOv2 ViT. `image_size` is the pretraining resolution (its grid
    image_size // patch_size is the position table's); `pos_antialias` / `pos_offset` choose
    how that table is resampled to other grids (module docstring). `norm_affine=False` makes
    the final LayerNorm a plain standardization (no scale, no bias), as RAE's encoder."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    swiglu: bool = False
    patch_size: int = 14
    image_size: int = 518
    in_channels: int = 3
    num_registers: int = 0
    layerscale_value: float = 1.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    pos_antialias: bool = False
    pos_offset: float = 0.0
    norm_affine: bool = True  # False: the final LayerNorm without scale and bias (RAE's encoder)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.image_size < self.patch_size or self.num_registers < 0:
            raise ValueError(
                f"invalid DINOv2 config: image_size {self.image_size} < patch_size "
                f"{self.patch_size} or num_registers {self.num_registers} < 0"
            )

    @property
    def pos_grid(self) -> int:
        """Side M of the pretraining grid covered by the position table (37 for 518/14)."""
        return self.image_size // self.patch_size

    @property
    def ffn_hidden(self) -> int:
        """FFN width: int(D·mlp_ratio), or for SwiGLU two thirds of it rounded up to 8."""
        h = int(self.hidden_size * self.mlp_ratio)
        return (int(h * 2 / 3) + 7) // 8 * 8 if self.swiglu else h

    @classmethod
    def for_size(
        cls, name: str, *, registers: int = 0, interpolation: str = "transformers", **overrides
    ) -> DinoV2Config:
        """A released size: 'vits14', 'vitb14', 'vitl14', 'vitg14'; registers 0 or 4;
        interpolation one of POS_INTERPOLATIONS (see the module docstring)."""
        if name not in SIZES:
            raise ValueError(f"unknown DINOv2 size {name!r}: expected one of {sorted(SIZES)}")
        d, layers, heads, swiglu = SIZES[name]
        antialias, offset = pos_interpolation(interpolation, registers)
        kw = dict(
            hidden_size=d, num_layers=layers, num_heads=heads, swiglu=swiglu,
            num_registers=registers, pos_antialias=antialias, pos_offset=offset,
        )
        return cls(**{**kw, **overrides})


# ------------------------------------------------------------------------------------------------
# PyTorch's bicubic resampling as matrices
# ------------------------------------------------------------------------------------------------


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel W_a(x) (support |x| < 2)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resample_matrix(
    in_size: int, out_size: int, *, antialias: bool = False, scale_factor: float | None = None
) -> np.ndarray:
    """(out_size, in_size) float64 matrix R with y = R x equal, along one axis, to PyTorch's
    `F.interpolate(mode='bicubic', align_corners=False, antialias=...)` with `size=out_size`,
    or with `scale_factor` (then PyTorch maps coordinates with 1/scale_factor, not in/out).

    antialias=False: output i reads src = s·(i + ½) − ½, s = in/out, through W_{−0.75} at the
    4 taps ⌊src⌋−1 … ⌊src⌋+2, taps beyond the border clamped to the edge sample.
    antialias=True: W_{−0.5}((j + ½ − s·(i + ½)) / max(s, 1)) over the inputs j within
    2·max(s, 1) of the centre, normalized to sum 1 (PIL's rule, which PyTorch follows).
    Rows sum to 1 in both cases.
    """
    scale = in_size / out_size if scale_factor is None else 1.0 / scale_factor
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if not antialias:
        src = scale * (rows + 0.5) - 0.5
        base = np.floor(src)
        t = src - base
        for k in range(4):  # taps base-1 .. base+2, at distance |t - (k - 1)| from src
            idx = np.clip(base - 1 + k, 0, in_size - 1).astype(int)
            np.add.at(m, (rows, idx), _keys_cubic(t - (k - 1), -0.75))
        return m
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    for i in rows:
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates, as the C++ cast does
        hi = min(int(center + support + 0.5), in_size)
        w = _keys_cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
        m[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return m


def _resize_2d(x: Array, rh: np.ndarray, rw: np.ndarray) -> Array:
    """Separable resampling of (B, H, W, C) by (H', H) and (W', W) matrices, float32 exact."""
    hp = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes: this must match float32 PyTorch
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(rh, jnp.float32), x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(rw, jnp.float32), x, precision=hp)


def preprocess(
    x: Array, resolution: int | tuple[int, int] = REPA_RESOLUTION, *, antialias: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> Array:
    """REPA's DINOv2 input: images NHWC in [−1, 1], any size → (B, h, w, 3) float32,
    x̂ = (bicubic_resize((x + 1)/2) − mean) / std with the ImageNet mean/std by default
    (RAE reads its own from its config; the same values for DINOv2).

    The resize is PyTorch's `F.interpolate(mode='bicubic', align_corners=False)` without
    antialiasing (W_{−0.75}, clamped border), because that is what REPA applies
    (`preprocess_raw_image`: 256² → 224², 512² → 448²); features of the frozen encoder then
    match the ones REPA aligned to. antialias=True gives PyTorch's antialiased bicubic instead
    (closer to PIL, better for strong downscaling, but not REPA's). REPA normalizes before
    resizing; every resampling row sums to 1, so the order does not matter.
    REPA reads uint8 images as k/255; the project's x = 2(k + ½)/256 − 1 maps to (k + ½)/256,
    a difference below 2e-3 in [0, 1] units.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess expects NHWC RGB images (B, H, W, 3), got {x.shape}")
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    x01 = (jnp.asarray(x, jnp.float32) + 1.0) / 2.0  # (B, H, W, 3) in [0, 1]
    if (h, w) != tuple(x.shape[1:3]):
        x01 = _resize_2d(
            x01,
            resample_matrix(x.shape[1], h, antialias=antialias),
            resample_matrix(x.shape[2], w, antialias=antialias),
        )  # (B, h, w, 3)
    mu, sd = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (x01 - mu) / sd  # (B, h, w, 3)


# ------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------


def _sharding_context() -> contextlib.AbstractContextManager:
    """Without a mesh to shard onto: plain arrays that keep their logical-axis metadata (as
    vdm_jax.nn.registry.build_model does)."""
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def _layer_norm(cfg: DinoV2Config, rngs: nnx.Rngs, *, affine: bool = True) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_scale=affine, use_bias=affine,
        dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention with separate q, k, v projections (as the HF files store
    them; the hub's fused qkv is split on import). Scale 1/sqrt(Dh), float32 softmax."""

    def __init__(self, cfg: DinoV2Config, *, dtype: Dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=trunc_normal_002)
        self.query = dense(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.key = dense(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.value = dense(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.proj = dense(d, d, ("heads", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        split = lambda t: rearrange(t, "b t (n h) -> b t n h", n=self.num_heads)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))  # (B,T,N,Dh)
        o = jax.nn.dot_product_attention(q, k, v)  # (B, T, N, Dh)
        return self.proj(rearrange(o, "b t n h -> b t (n h)"))  # (B, T, D)


class Mlp(nnx.Module):
    """Linear(D, 4D) → GELU (exact) → Linear(4D, D)."""

    def __init__(self, cfg: DinoV2Config, *, dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=trunc_normal_002)
        self.fc1 = dense(cfg.hidden_size, cfg.ffn_hidden, ("embed", "mlp"), **kw)
        self.fc2 = dense(cfg.ffn_hidden, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        return self.fc2(nnx.gelu(self.fc1(x), approximate=False))  # (B, T, D)


class SwiGLUFFN(nnx.Module):
    """w3(SiLU(x W₁) ⊙ x W₂), W₁ and W₂ stacked in one Linear w12 (D, 2h) (DINOv2's fused
    SwiGLU; h = cfg.ffn_hidden)."""

    def __init__(self, cfg: DinoV2Config, *, dtype: Dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs, kernel_init=trunc_normal_002)
        self.w12 = dense(cfg.hidden_size, 2 * cfg.ffn_hidden, ("embed", "mlp"), **kw)
        self.w3 = dense(cfg.ffn_hidden, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        x1, x2 = jnp.split(self.w12(x), 2, axis=-1)  # 2 × (B, T, h)
        return self.w3(nnx.silu(x1) * x2)  # (B, T, D)


class LayerScale(nnx.Module):
    """x ⊙ γ, γ ∈ R^D initialized to `layerscale_value`."""

    def __init__(self, cfg: DinoV2Config):
        init = jnp.full((cfg.hidden_size,), cfg.layerscale_value, jnp.float32)
        self.gamma = nnx.Param(init)

    def __call__(self, x: Array) -> Array:
        return x * self.gamma.get_value()  # (B, T, D)


class Block(nnx.Module):
    """x ← x + γ₁ ⊙ Attn(LN(x)); x ← x + γ₂ ⊙ FFN(LN(x))."""

    def __init__(self, cfg: DinoV2Config, *, dtype: Dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm1 = _layer_norm(cfg, rngs)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ls1 = LayerScale(cfg)
        self.norm2 = _layer_norm(cfg, rngs)
        ffn = SwiGLUFFN if cfg.swiglu else Mlp
        self.mlp = ffn(cfg, dtype=dtype, rngs=rngs)
        self.ls2 = LayerScale(cfg)

    def __call__(self, x: Array) -> Array:
        # x: the float32 residual stream; the branches compute in `dtype`.
        h = self.norm1(x).astype(self.dtype)  # (B, T, D)
        x = x + self.ls1(self.attn(h).astype(jnp.float32))  # (B, T, D) f32
        h = self.norm2(x).astype(self.dtype)  # (B, T, D)
        return x + self.ls2(self.mlp(h).astype(jnp.float32))  # (B, T, D) f32


class DinoV2(nnx.Module):
    """DINOv2 ViT: model(x) → dict of features (see `__call__`). Build a released size with
    `DinoV2(DinoV2Config.for_size('vitb14'), rngs=...)`, or load weights with
    `vdm_jax.importers.dinov2.load_dinov2`."""

    def __init__(self, cfg: DinoV2Config, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        with _sharding_context():
            self._build(cfg, dtype, rngs)

    def _build(self, cfg: DinoV2Config, dtype: Dtype, rngs: nnx.Rngs) -> None:
        d, p, m = cfg.hidden_size, cfg.patch_size, cfg.pos_grid
        # The stride-p p×p patch convolution, written as a Linear on flattened (p, p, C) patches.
        self.patch_embed = dense(
            p * p * cfg.in_channels, d, ("patch", "embed"), dtype=dtype, rngs=rngs,
            kernel_init=trunc_normal_002,
        )
        self.cls_token = nnx.Param(1e-6 * jax.random.normal(rngs.params(), (1, 1, d)))
        self.pos_embed = nnx.Param(trunc_normal_002(rngs.params(), (1, 1 + m * m, d)))
        if cfg.num_registers:
            self.register_tokens = nnx.Param(jnp.zeros((1, cfg.num_registers, d)))
        self.mask_token = nnx.Param(jnp.zeros((1, d)))  # iBOT masking; only `masks` uses it
        self.blocks = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = _layer_norm(cfg, rngs, affine=cfg.norm_affine)

    def position_embedding(self, grid: tuple[int, int], square_input: bool) -> Array:
        """(1 + gh·gw, D) float32: CLS entry, then the M×M table resampled to `grid` (module
        docstring); unchanged when grid = (M, M) and the input is square, as in the releases."""
        cfg, m = self.cfg, self.cfg.pos_grid
        table = self.pos_embed.get_value().astype(jnp.float32)[0]  # (1 + M², D)
        if grid == (m, m) and square_input:
            return table
        scale = [None, None]
        if cfg.pos_offset:  # hub kludge: F.interpolate(scale_factor=(g + offset) / M)
            scale = [(g + cfg.pos_offset) / m for g in grid]
        rh = resample_matrix(m, grid[0], antialias=cfg.pos_antialias, scale_factor=scale[0])
        rw = resample_matrix(m, grid[1], antialias=cfg.pos_antialias, scale_factor=scale[1])
        patch = table[1:].reshape(1, m, m, -1)  # (1, M, M, D)
        patch = _resize_2d(patch, rh, rw).reshape(grid[0] * grid[1], -1)  # (gh·gw, D)
        return jnp.concatenate([table[:1], patch], axis=0)  # (1 + gh·gw, D)

    def __call__(
        self, x: Array, *, masks: Array | None = None, layers: Sequence[int] = ()
    ) -> dict[str, Any]:
        """Features of ImageNet-normalized images (see `preprocess`).

        x: (B, H, W, C) float NHWC; sides not multiples of p are cropped to them.
        masks: optional (B, T) bool; True patches are replaced by the mask token (iBOT).
        layers: 0-based block indices whose outputs (B, 1 + R + T, D), before the final norm,
            are returned under "layers" (REPA-style feature taps; apply `model.norm` for the
            hub's get_intermediate_layers(norm=True)).
        Returns float32 "x_norm_clstoken" (B, D), "x_norm_regtokens" (B, R, D),
        "x_norm_patchtokens" (B, T, D) (REPA's target), "x_prenorm" (B, 1 + R + T, D),
        "layers" (tuple), T = gh·gw patches in row-major order.
        """
        cfg, p = self.cfg, self.cfg.patch_size
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"DinoV2 expects NHWC images (B, H, W, {cfg.in_channels}), got {x.shape}"
            )
        b, hgt, wid, _ = x.shape
        grid = (hgt // p, wid // p)
        if min(grid) < 1:
            raise ValueError(f"image {hgt}×{wid} is smaller than one {p}×{p} patch")
        bad = [i for i in layers if not 0 <= i < cfg.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range for {cfg.num_layers} blocks")
        x = x[:, : grid[0] * p, : grid[1] * p].astype(self.dtype)  # (B, gh·p, gw·p, C)
        tokens = self.patch_embed(patchify(x, p))  # (B, T, D)
        if masks is not None:
            mask_token = self.mask_token.get_value().astype(tokens.dtype)  # (1, D)
            tokens = jnp.where(masks[..., None], mask_token[None], tokens)  # (B, T, D)
        cls = jnp.broadcast_to(self.cls_token.get_value(), (b, 1, cfg.hidden_size))  # (B, 1, D)
        h = jnp.concatenate([cls.astype(tokens.dtype), tokens], axis=1)  # (B, 1 + T, D)
        h = h.astype(jnp.float32) + self.position_embedding(grid, hgt == wid)  # (B, 1 + T, D)
        if cfg.num_registers:
            reg = jnp.broadcast_to(
                self.register_tokens.get_value(), (b, cfg.num_registers, cfg.hidden_size)
            )  # (B, R, D)
            h = jnp.concatenate([h[:, :1], reg, h[:, 1:]], axis=1)  # (B, 1 + R + T, D)
        taps = []
        for i, block in enumerate(self.blocks):
            h = block(h)  # (B, 1 + R + T, D) f32
            if i in layers:
                taps.append(h)
        out = self.norm(h)  # (B, 1 + R + T, D) f32
        r = cfg.num_registers
        return {
            "x_norm_clstoken": out[:, 0],  # (B, D)
            "x_norm_regtokens": out[:, 1 : 1 + r],  # (B, R, D)
            "x_norm_patchtokens": out[:, 1 + r :],  # (B, T, D)
            "x_prenorm": h,  # (B, 1 + R + T, D)
            "layers": tuple(taps),
        }


def abstract_dinov2(cfg: DinoV2Config, *, dtype: Dtype = jnp.float32) -> DinoV2:
    """The model with abstract (shape-only) parameters: no random init, no memory; fill it with
    `vdm_jax.importers.common.assign` or count its parameters.

    Built as a block-less shell plus copies of one abstract Block: `nnx.eval_shape` of the whole
    model costs time quadratic in depth (each RNG-counter update inside the trace makes JAX scan
    the whole jaxpr for an error message it then discards), minutes for ViT-g on a CPU.
    """
    shell = nnx.eval_shape(
        lambda: DinoV2(dataclasses.replace(cfg, num_layers=0), dtype=dtype, rngs=nnx.Rngs(0))
    )
    block = nnx.eval_shape(lambda: _new_block(cfg, dtype))
    shell.cfg = cfg
    shell.blocks = nnx.List([nnx.clone(block) for _ in range(cfg.num_layers)])
    return shell


def _new_block(cfg: DinoV2Config, dtype: Dtype) -> Block:
    with _sharding_context():
        return Block(cfg, dtype=dtype, rngs=nnx.Rngs(0))
