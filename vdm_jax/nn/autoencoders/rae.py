"""The representation autoencoder (RAE; Zheng, Tong, Xie et al. 2025, "Diffusion Transformers with
Representation Autoencoders") in Flax NNX, NHWC: a frozen DINOv2-with-registers encoder and a
ViT-MAE-style pixel decoder, as in the official code (bytetriper/RAE, `src/stage1/rae.py`) and
diffusers' `AutoencoderRAE`.

    images (B, H, W, 3) in [−1, 1]
      → x̂ = (bicubic_resize((x + 1)/2, S) − μ_img) / σ_img,  S = encoder_input_size (224; 448 for
        512² images), PyTorch's bicubic without antialiasing, ImageNet μ_img, σ_img
      → DINOv2 (patch 14, 4 registers) → last block's tokens → LayerNorm without scale and bias
      → drop CLS and the 4 registers → tokens (B, g, g, C), g = S / 14 (16), C = 768 for ViT-B
      → z = s · (tokens − m) / d  (per position and channel: m, d of shape (g, g, C); s the
        scaling factor, 1 in the releases)
    latents z (B, g, g, C)
      → tokens = z / s · d + m → Linear(C, D) → [trainable CLS] + tokens → + fixed 2-D sin-cos
        positions (MAE's, the CLS position zero) → L × ViTLayer → LayerNorm → Linear(D, p·p·3)
      → drop CLS → unpatchify (p = 16) → × σ_img + μ_img → images (B, p·g, p·g, 3), × 2 − 1

The denominator d depends on which file the statistics come from (`RAEConfig.stats_formula`):
  * "official" (bytetriper/RAE `stat.pt` {mean, var}, shape (C, g, g)): d = sqrt(var + 1e-5);
  * "diffusers" (AutoencoderRAE's `_latents_mean` / `_latents_std` buffers): d = std + 1e-5;
  * "none": no statistics, d = 1 and m = 0 (the official RAE without `normalization_stat_path`).
The module holds the statistics in the file's own form (`latent_spread` is var or std) as
`LatentStatistics` variables, not Params, so that training the decoder leaves them alone.

ViTLayer (ViT-MAE, pre-norm, LayerNorm ε = 1e-12):
    x ← x + W_o · MHA(LN_before(x)),  x ← x + W_2 · GELU(W_1 · LN_after(x))   (exact GELU)
Decoder sizes (official `configs/decoder/ViT*/config.json`): `DECODER_SIZES`, width D, layers L,
heads N, MLP width; XL = (1152, 28, 16, 4096), 16 × 16 patches → 256² at p = 16.

The official decoder keeps its position table as a frozen Parameter (saved in `model.pt`);
diffusers as a buffer that it recomputes with `get_2d_sincos_pos_embed(..., base_size=16)`, whose
positions are arange(g) · 16 / g: the same as MAE's arange(g) for g = 16 (256² images) but half
steps for g = 32 (512²). This port always uses MAE's integer positions (what the official
decoders were trained with).

Module names follow the official decoder (`decoder_embed`, `decoder_layers.i`, `decoder_norm`,
`decoder_pred`, `trainable_cls_token`); the encoder is `vdm_jax.nn.encoders.dinov2.DinoV2` with
`norm_affine=False`. Weights: `vdm_jax.importers.rae`.

Precision: parameters float32; matmuls in `dtype` (float32 or bfloat16); the residual stream,
LayerNorms, attention softmax, statistics and outputs in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from vdm_jax.nn.encoders.digits import TOKEN_DIM, DigitsCNN
from vdm_jax.nn.encoders.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoV2,
    DinoV2Config,
    abstract_dinov2,
    preprocess,
)
from vdm_jax.nn.layers import dense, sincos_2d, unpatchify

__all__ = [
    "DECODER_SIZES",
    "DINOV2_REGISTERS",
    "NOISE_TAU",
    "RAE",
    "STATS_EPS",
    "STATS_FORMULAS",
    "DigitsRAE",
    "LatentStatistics",
    "RAEConfig",
    "RAEDecoder",
    "ViTLayer",
    "abstract_rae",
    "decoder_position_table",
    "digits_rae_config",
    "noise_tokens",
]

Array = jax.Array
Dtype = Any

# name → (width D, layers L, heads N, MLP width): the official configs/decoder/ViT{B,L,XL}.
DECODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "XL": (1152, 28, 16, 4096),
}
STATS_FORMULAS = ("official", "diffusers", "none")
STATS_EPS = 1e-5  # RAE(eps=1e-5) and diffusers' hard-coded 1e-5
NOISE_TAU = 0.8  # noise_tau of the official decoder training (configs/stage1/training/*.yaml)
DINOV2_REGISTERS = 4  # the released RAE encoders are DINOv2 with 4 registers


def _default_encoder() -> DinoV2Config:
    # transformers' Dinov2WithRegistersModel (antialiased table resampling), final LN non-affine.
    return DinoV2Config.for_size("vitb14", registers=DINOV2_REGISTERS, norm_affine=False)


@dataclasses.dataclass(frozen=True)
class RAEConfig:
    """Architecture of an RAE; the defaults are the released DINOv2-B (with registers) → ViT-XL
    decoder at 256² (nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08). `encoder_input_size` 448 and
    statistics of shape (32, 32, 768) make the 512² model."""

    encoder: DinoV2Config = dataclasses.field(default_factory=_default_encoder)
    encoder_input_size: int = 224
    decoder_hidden_size: int = 1152
    decoder_num_layers: int = 28
    decoder_num_heads: int = 16
    decoder_mlp_size: int = 4096
    patch_size: int = 16
    num_channels: int = 3
    decoder_layer_norm_eps: float = 1e-12
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    stats_formula: str = "official"
    stats_eps: float = STATS_EPS
    scaling_factor: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        bad = []
        if self.encoder.norm_affine:
            bad.append("encoder.norm_affine must be False (RAE drops the final LayerNorm's affine)")
        if self.encoder_input_size % self.encoder.patch_size:
            bad.append(f"encoder_input_size {self.encoder_input_size} is not a multiple of the "
                       f"encoder patch {self.encoder.patch_size}")
        if self.decoder_hidden_size % self.decoder_num_heads:
            bad.append(f"decoder_hidden_size {self.decoder_hidden_size} is not divisible by "
                       f"decoder_num_heads {self.decoder_num_heads}")
        if self.stats_formula not in STATS_FORMULAS:
            bad.append(f"stats_formula {self.stats_formula!r} is not one of {STATS_FORMULAS}")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            bad.append("image_mean / image_std need one value per channel")
        if not self.scaling_factor > 0:
            bad.append(f"scaling_factor must be > 0, got {self.scaling_factor!r}")
        if bad:
            raise ValueError("invalid RAEConfig: " + "; ".join(bad))

    @classmethod
    def for_size(cls, decoder: str = "XL", **overrides) -> RAEConfig:
        """A released decoder size ('B', 'L', 'XL') on the DINOv2-B encoder."""
        if decoder not in DECODER_SIZES:
            raise ValueError(f"unknown RAE decoder size {decoder!r}: expected one of "
                             f"{sorted(DECODER_SIZES)}")
        d, layers, heads, mlp = DECODER_SIZES[decoder]
        kw = dict(decoder_hidden_size=d, decoder_num_layers=layers, decoder_num_heads=heads,
                  decoder_mlp_size=mlp)
        return cls(**{**kw, **overrides})

    @property
    def grid(self) -> int:
        """Side g of the latent grid: encoder_input_size / encoder patch (16 for 224)."""
        return self.encoder_input_size // self.encoder.patch_size

    @property
    def image_size(self) -> int:
        """Side of the decoded images: p · g (256 for the released 224-input model)."""
        return self.patch_size * self.grid

    @property
    def latent_channels(self) -> int:
        """C: the encoder width (768 for DINOv2-B)."""
        return self.encoder.hidden_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(g, g, C) of one latent, NHWC."""
        return (self.grid, self.grid, self.latent_channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists, the encoder config as a dict)."""
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RAEConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["encoder"] = DinoV2Config(**d["encoder"])
        return cls(**d)


class LatentStatistics(nnx.Variable):
    """Per-position latent statistics (mean, var or std) read from the weights; not trained."""


def decoder_position_table(dim: int, grid: int) -> np.ndarray:
    """(1 + g², D) float32: a zero row for the CLS token, then MAE's fixed 2-D sin-cos embedding
    of the g × g grid at integer positions (first half the column, second half the row)."""
    return np.concatenate([np.zeros((1, dim), np.float32), sincos_2d(dim, (grid, grid))], axis=0)


def noise_tokens(key: Array, tokens: Array, tau: float = NOISE_TAU) -> Array:
    """RAE's noise augmentation of the decoder's input during its training (official
    `RAE.noising`): tokens + σ·ε with σ = τ·u, u ~ U[0, 1) drawn once per example and
    ε ~ N(0, I); applied to the encoder's tokens before the latent statistics. (B, ...) →
    (B, ...) float32."""
    k_sigma, k_eps = jax.random.split(key)
    shape = (tokens.shape[0],) + (1,) * (tokens.ndim - 1)
    sigma = tau * jax.random.uniform(k_sigma, shape)  # (B, 1, …) per example
    return tokens + sigma * jax.random.normal(k_eps, tokens.shape)  # (B, …)


def _sharding_context() -> contextlib.AbstractContextManager:
    """Without a mesh to shard onto: plain arrays that keep their logical-axis metadata."""
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # float32 statistics whatever the compute dtype; two-pass variance as PyTorch's LayerNorm.
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)


class ViTLayer(nnx.Module):
    """ViT-MAE block: x ← x + W_o·MHA(LN_before(x)); x ← x + W_2·GELU(W_1·LN_after(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float, *, dtype: Dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.num_heads = heads
        self.layernorm_before = _layer_norm(dim, eps, rngs)
        self.query = dense(dim, dim, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.key = dense(dim, dim, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.value = dense(dim, dim, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.out = dense(dim, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.layernorm_after = _layer_norm(dim, eps, rngs)
        self.fc1 = dense(dim, mlp, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(mlp, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        # x: the float32 residual stream (B, T, D); branches compute in `dtype`.
        h = self.layernorm_before(x).astype(self.dtype)  # (B, T, D)
        split = lambda t: rearrange(t, "b t (n h) -> b t n h", n=self.num_heads)
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))  # (B,T,N,Dh)
        o = jax.nn.dot_product_attention(q, k, v)  # (B, T, N, Dh), softmax(q·kᵀ/√Dh)·v
        x = x + self.out(rearrange(o, "b t n h -> b t (n h)")).astype(jnp.float32)  # (B, T, D)
        h = self.layernorm_after(x).astype(self.dtype)  # (B, T, D)
        h = nnx.gelu(self.fc1(h), approximate=False)  # (B, T, MLP)
        return x + self.fc2(h).astype(jnp.float32)  # (B, T, D) f32


class RAEDecoder(nnx.Module):
    """tokens (B, g·g, C) (the encoder's, unnormalized) → pixels (B, p·g, p·g, 3) in the
    encoder's input space (ImageNet-normalized), float32."""

    def __init__(self, config: RAEConfig, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        d = config.decoder_hidden_size
        self.decoder_embed = dense(config.latent_channels, d, (None, "embed"), dtype=dtype,
                                   rngs=rngs)
        self.trainable_cls_token = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
        self.decoder_layers = nnx.List([
            ViTLayer(d, config.decoder_num_heads, config.decoder_mlp_size,
                     config.decoder_layer_norm_eps, dtype=dtype, rngs=rngs)
            for _ in range(config.decoder_num_layers)
        ])
        self.decoder_norm = _layer_norm(d, config.decoder_layer_norm_eps, rngs)
        p = config.patch_size
        self.decoder_pred = dense(d, p * p * config.num_channels, ("embed", None),
                                  dtype=jnp.float32, rngs=rngs)

    def __call__(self, tokens: Array) -> Array:
        cfg = self.config
        b, t, _ = tokens.shape
        g = cfg.grid
        if t != g * g:
            raise ValueError(f"the RAE decoder takes {g}×{g} = {g * g} tokens, got {t}")
        x = self.decoder_embed(tokens.astype(self.dtype)).astype(jnp.float32)  # (B, T, D)
        cls = jnp.broadcast_to(self.trainable_cls_token.get_value(), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)  # (B, 1 + T, D)
        x = x + decoder_position_table(x.shape[-1], g)  # (B, 1 + T, D), fixed positions
        for layer in self.decoder_layers:
            x = layer(x)  # (B, 1 + T, D) f32
        x = self.decoder_norm(x)  # (B, 1 + T, D) f32
        patches = self.decoder_pred(x)[:, 1:]  # (B, T, p·p·3) f32, CLS dropped
        return unpatchify(patches, (g, g), cfg.patch_size)  # (B, p·g, p·g, 3)


class RAE(nnx.Module):
    """The representation autoencoder: `encode(images) -> latents`, `decode(latents) -> images`.

    images NHWC in [−1, 1]; latents (B, g, g, C) normalized by the statistics (module
    docstring). The encoder is frozen in RAE; only `decoder` is trained.
    """

    def __init__(self, config: RAEConfig | None = None, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        config = config or RAEConfig()
        self.config = config
        self.dtype = dtype
        self.encoder = DinoV2(config.encoder, dtype=dtype, rngs=rngs)
        with _sharding_context():
            self.decoder = RAEDecoder(config, dtype=dtype, rngs=rngs)
        self.latent_mean = LatentStatistics(jnp.zeros(config.latent_shape, jnp.float32))
        self.latent_spread = LatentStatistics(jnp.ones(config.latent_shape, jnp.float32))

    def _denominator(self) -> Array:
        """d of z = (tokens − m) / d, (g, g, C) float32."""
        cfg = self.config
        spread = self.latent_spread.get_value().astype(jnp.float32)
        if cfg.stats_formula == "official":
            return jnp.sqrt(spread + cfg.stats_eps)  # RAE: var → sqrt(var + eps)
        if cfg.stats_formula == "diffusers":
            return spread + cfg.stats_eps  # AutoencoderRAE: std → std + eps
        return jnp.ones_like(spread)

    def _mean(self) -> Array:
        m = self.latent_mean.get_value().astype(jnp.float32)
        return m if self.config.stats_formula != "none" else jnp.zeros_like(m)

    def encode_tokens(self, images: Array) -> Array:
        """images (B, H, W, 3) in [−1, 1] → the encoder's patch tokens (B, g, g, C) float32,
        before the latent statistics (what `stat.pt` was computed on)."""
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != cfg.num_channels:
            raise ValueError(f"images must be NHWC (B, H, W, {cfg.num_channels}), got "
                             f"{tuple(images.shape)}")
        s = cfg.encoder_input_size
        x = preprocess(images, s, mean=cfg.image_mean, std=cfg.image_std)  # (B, S, S, 3)
        tokens = self.encoder(x)["x_norm_patchtokens"]  # (B, g·g, C): no CLS, no registers
        return tokens.reshape(images.shape[0], cfg.grid, cfg.grid, -1)  # (B, g, g, C)

    def normalize(self, tokens: Array) -> Array:
        """z = s · (tokens − m) / d, (B, g, g, C)."""
        return (tokens - self._mean()) / self._denominator() * self.config.scaling_factor

    def denormalize(self, z: Array) -> Array:
        """tokens = z / s · d + m, inverse of `normalize`."""
        z = jnp.asarray(z, jnp.float32) / self.config.scaling_factor
        return z * self._denominator() + self._mean()

    def encode(self, images: Array) -> Array:
        """images (B, H, W, 3) in [−1, 1], any size (resized to the encoder's input) →
        latents (B, g, g, C) float32."""
        return self.normalize(self.encode_tokens(images))  # (B, g, g, C)

    def decode(self, latents: Array, *, clip: bool = False) -> Array:
        """latents (B, g, g, C) → images (B, p·g, p·g, 3) float32 in [−1, 1] (not clipped
        unless clip=True)."""
        cfg = self.config
        if latents.ndim != 4 or tuple(latents.shape[1:]) != cfg.latent_shape:
            raise ValueError(f"latents must be (B, {', '.join(map(str, cfg.latent_shape))}), got "
                             f"{tuple(latents.shape)}")
        tokens = self.denormalize(latents).reshape(latents.shape[0], cfg.grid * cfg.grid, -1)
        x = self.decode_tokens(tokens)  # (B, H, W, 3) in [−1, 1]
        return jnp.clip(x, -1.0, 1.0) if clip else x

    def decode_tokens(self, tokens: Array) -> Array:
        """The encoder's tokens (B, g·g, C), before the statistics → images (B, p·g, p·g, 3) in
        [−1, 1], not clipped: the decoder as its training sees it."""
        return _decoder_images(self.decoder, tokens)


def _decoder_images(decoder: RAEDecoder, tokens: Array) -> Array:
    """x = 2(decoder(tokens) · σ_img + μ_img) − 1: the decoder's output, normalized as the
    encoder's input, back to [−1, 1]. (B, T, C) → (B, H, W, channels)."""
    cfg = decoder.config
    x = decoder(tokens)  # (B, H, W, c) in the encoder's input normalization
    x01 = x * np.asarray(cfg.image_std, np.float32) + np.asarray(cfg.image_mean, np.float32)
    return 2.0 * x01 - 1.0  # (B, H, W, c): [0, 1] → [−1, 1]


class DigitsRAE(nnx.Module):
    """An RAE at the digits' scale (the CPU demonstration of the decoder training): the frozen
    digits CNN (`vdm_jax.nn.encoders.digits`, trained as the digits classifier) as the
    representation encoder, its 4 × 4 × 64 `tokens` as the latents (no statistics), and the
    same ViT-MAE decoder (`RAEDecoder`, patch 2 → 8 × 8 × 1, μ_img = σ_img = ½ so its output
    space is [0, 1] as the ImageNet-normalized one is for the RAE).

    images (B, 8, 8, 1) in [−1, 1] → encode_tokens → (B, 4, 4, 64) → decode_tokens → (B, 8, 8, 1).
    As an autoencoder of latent diffusion (`encode` / `decode`, the RAE's interface; saved and
    loaded by `vdm_jax.importers.rae`, layout 'digits') the latents are the tokens themselves.
    """

    def __init__(self, encoder: DigitsCNN, *, hidden: int = 128, layers: int = 2, heads: int = 4,
                 mlp: int = 256, rngs: nnx.Rngs):
        self.encoder = encoder
        self.config = digits_rae_config(hidden=hidden, layers=layers, heads=heads, mlp=mlp)
        with _sharding_context():
            self.decoder = RAEDecoder(self.config, rngs=rngs)

    def encode_tokens(self, images: Array) -> Array:
        """images (B, 8, 8, 1) in [−1, 1] → tokens (B, 4, 4, 64) float32, without gradient."""
        t = jax.lax.stop_gradient(self.encoder.feature_map(images))  # (B, 4, 4, 64)
        return t.astype(jnp.float32)

    def decode_tokens(self, tokens: Array) -> Array:
        """tokens (B, 16, 64) → images (B, 8, 8, 1) in [−1, 1], not clipped."""
        return _decoder_images(self.decoder, tokens)

    def encode(self, images: Array) -> Array:
        """images (B, 8, 8, 1) in [−1, 1] → latents (B, 4, 4, 64) float32 (= the tokens; no
        statistics: a latent dataset normalizes per channel, `data.latent_scaling`)."""
        return self.encode_tokens(images)

    def decode(self, latents: Array, *, clip: bool = False) -> Array:
        """latents (B, 4, 4, 64) → images (B, 8, 8, 1) float32 in [−1, 1] (clipped if clip)."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.config.latent_shape:
            raise ValueError(f"latents must be (B, {', '.join(map(str, self.config.latent_shape))}"
                             f"), got {tuple(latents.shape)}")
        tokens = jnp.asarray(latents, jnp.float32).reshape(latents.shape[0], -1,
                                                           latents.shape[-1])  # (B, 16, 64)
        x = self.decode_tokens(tokens)  # (B, 8, 8, 1)
        return jnp.clip(x, -1.0, 1.0) if clip else x


def digits_rae_config(*, hidden: int = 128, layers: int = 2, heads: int = 4,
                      mlp: int = 256) -> RAEConfig:
    """The RAEConfig whose decoder fits the digits CNN's 4 × 4 × 64 tokens and 8 × 8 × 1 images
    (only the decoder reads it: the encoder entry describes the token grid, 8 / 2 = 4, and
    width 64)."""
    enc = DinoV2Config(hidden_size=TOKEN_DIM, num_layers=0, num_heads=4, patch_size=2,
                       image_size=8, norm_affine=False)
    return RAEConfig(encoder=enc, encoder_input_size=8, decoder_hidden_size=hidden,
                     decoder_num_layers=layers, decoder_num_heads=heads, decoder_mlp_size=mlp,
                     patch_size=2, num_channels=1, image_mean=(0.5,), image_std=(0.5,),
                     stats_formula="none")


def abstract_rae(config: RAEConfig | None = None, *, dtype: Dtype = jnp.float32) -> RAE:
    """The model with shape-only variables, to be filled by the importer (or counted). Built as
    shells plus clones of one abstract decoder layer and the abstract DINOv2 (see
    `vdm_jax.nn.encoders.dinov2.abstract_dinov2`: eval_shape's cost grows with depth²)."""
    config = config or RAEConfig()
    shallow = dataclasses.replace(
        config, decoder_num_layers=0,
        encoder=dataclasses.replace(config.encoder, num_layers=0),
    )
    with _sharding_context():
        shell = nnx.eval_shape(lambda: RAE(shallow, dtype=dtype, rngs=nnx.Rngs(0)))
        layer = nnx.eval_shape(lambda: ViTLayer(
            config.decoder_hidden_size, config.decoder_num_heads, config.decoder_mlp_size,
            config.decoder_layer_norm_eps, dtype=dtype, rngs=nnx.Rngs(0)))
    shell.config = config
    shell.decoder.config = config
    shell.decoder.decoder_layers = nnx.List([nnx.clone(layer)
                                             for _ in range(config.decoder_num_layers)])
    shell.encoder = abstract_dinov2(config.encoder, dtype=dtype)
    return shell
