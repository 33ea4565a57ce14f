"""The Stable Diffusion VAE (AutoencoderKL, LDM's "kl-f8"; Rombach et al. 2022) in Flax NNX, NHWC.

    images (B, H, W, 3) in [-1, 1]
      → Encoder: conv_in → L down levels [layers_per_block × ResnetBlock, stride-2 Downsample
        except at the last level] → MidBlock [ResnetBlock, self-attention, ResnetBlock]
        → GroupNorm → SiLU → conv_out (2·latent channels) → quant_conv 1×1
      → (mean, logvar) (B, H/f, W/f, latent), f = 2^(L−1) (8 for the SD-VAE)
    latents (B, H/f, W/f, latent)
      → Decoder: post_quant_conv 1×1 → conv_in → MidBlock → L up levels [(layers_per_block + 1)
        × ResnetBlock, nearest ×2 Upsample + 3×3 conv except at the last level]
        → GroupNorm → SiLU → conv_out
      → images (B, H, W, 3), nominally in [-1, 1] (not clipped unless `decode(..., clip=True)`)

ResnetBlock(x) = shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), shortcut a 1×1 conv when
the channel count changes. Every GroupNorm has `norm_num_groups` groups and ε = 1e-6. The mid
block's attention is single-head over the H·W positions, head dimension C, with its own GroupNorm
and a residual connection. Downsample pads the bottom and right by one (LDM/diffusers:
F.pad(x, (0, 1, 0, 1))) then applies a 3×3 stride-2 conv with no further padding: an even H
becomes H/2, so images whose sides are multiples of f round-trip to their own size.

The posterior is the diagonal Gaussian N(mean, exp(logvar)); logvar is clipped to [−30, 20] as
diffusers/LDM do. `sample_posterior` draws z = mean + exp(logvar / 2) · ε. What a diffusion model
is trained on is `normalize_latents(z) = (z − shift_factor) · scaling_factor` (0.18215 for SD 1/2,
no shift), undone by `denormalize_latents` before decoding.

Module and parameter names follow diffusers' AutoencoderKL (`encoder.down_blocks.0.resnets.1.conv2`,
`decoder.mid_block.attention.to_q`) except that `quant_conv` lives in the Encoder and
`post_quant_conv` in the Decoder, so each is usable on its own (`vae.encoder(images)` returns the
posterior moments, `vae.decoder(latents)` the images). Weights: vdm_jax.importers.sd_vae.

Precision: parameters float32; convolutions, linear layers and the residual stream in `dtype`
(float32 or bfloat16); GroupNorm statistics and outputs, SiLU after them, and the attention
logits and softmax in float32. The returned moments and images are float32.

Sharding: plain data parallelism needs nothing here — every operation is per example (GroupNorm
normalizes within an example), so `jax.jit` with the batch sharded over a mesh and the parameters
replicated computes the same function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "COMPUTE_DTYPES",
    "LOGVAR_RANGE",
    "AutoencoderConfig",
    "AutoencoderKL",
    "Decoder",
    "Encoder",
    "abstract_autoencoder",
    "denormalize_latents",
    "normalize_latents",
    "random_autoencoder",
    "sample_posterior",
]

Array = jax.Array
Dtype = Any

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution / LDM clamp
NORM_EPS = 1e-6
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of an AutoencoderKL; the defaults are the SD-VAE (stabilityai/sd-vae-ft-ema,
    sd-vae-ft-mse, SD 1.x/2.x), 83,653,863 parameters.

    `scaling_factor` and `shift_factor` do not change the network: they map its latents to the
    unit-variance latents a diffusion model sees (`normalize_latents`). `use_quant_conv`,
    `use_post_quant_conv` and `mid_block_add_attention` are False in some later VAEs (e.g. FLUX's).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in
                                                             self.block_out_channels))
        sizes = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "layers_per_block": self.layers_per_block, "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
        }
        bad = [f"{k} = {v!r}" for k, v in sizes.items() if not (isinstance(v, int) and v > 0)]
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            bad.append(f"block_out_channels = {self.block_out_channels!r}")
        if bad:
            raise ValueError(f"invalid AutoencoderConfig: {', '.join(bad)} (positive integers)")
        indivisible = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if indivisible:
            raise ValueError(
                f"AutoencoderConfig: norm_num_groups = {self.norm_num_groups} does not divide the "
                f"block channels {indivisible} of block_out_channels {self.block_out_channels}"
            )
        if not self.scaling_factor > 0:
            raise ValueError(f"AutoencoderConfig: scaling_factor must be > 0, got "
                             f"{self.scaling_factor!r}")

    @property
    def downsampling_factor(self) -> int:
        """f: images (H, W) ↔ latents (H/f, W/f)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> AutoencoderConfig:
        """From the dict of a diffusers AutoencoderKL `config.json`.

        `block_out_channels` and `layers_per_block` must be present (diffusers' own defaults for
        them, (64,) and 1, are not the SD-VAE); the other fields default as in diffusers. Raises
        ValueError for another model class or block types, activations or norms this network
        does not implement.
        """
        name = config.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise ValueError(f"config.json describes a {name}, not an AutoencoderKL")
        missing = [k for k in ("block_out_channels", "layers_per_block") if k not in config]
        if missing:
            raise ValueError(f"AutoencoderKL config.json lacks {', '.join(missing)}")
        levels = len(config["block_out_channels"])
        unsupported = []
        for key, kind in (("down_block_types", "DownEncoderBlock2D"),
                          ("up_block_types", "UpDecoderBlock2D")):
            types = list(config.get(key, [kind] * levels))
            if types != [kind] * levels:
                unsupported.append(f"{key} = {types} (expected {levels} × {kind})")
        if config.get("act_fn", "silu") != "silu":
            unsupported.append(f"act_fn = {config['act_fn']!r} (expected 'silu')")
        if unsupported:
            raise ValueError("unsupported AutoencoderKL config: " + "; ".join(unsupported))
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: config[k] for k in fields if config.get(k) is not None})


# ------------------------------------------------------------------------------------ layers


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: Any = None,
          dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """kernel×kernel conv, float32 params, `dtype` compute; 'same' zero padding by default."""
    if padding is None:
        padding = ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))
    return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding=padding,
                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _group_norm(channels: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    # float32 statistics and output whatever the compute dtype; two-pass variance as in PyTorch
    # (E[x²] − E[x]² loses digits when |mean| ≫ std).
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=NORM_EPS, use_fast_variance=False,
                         dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


class ResnetBlock(nnx.Module):
    """x ↦ shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))); shortcut = 1×1 conv iff cin ≠ cout."""

    def __init__(self, cin: int, cout: int, groups: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.norm1 = _group_norm(cin, groups, rngs)
        self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
        self.norm2 = _group_norm(cout, groups, rngs)
        self.conv2 = _conv(cout, cout, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        h = self.conv1(nnx.silu(self.norm1(x)))  # (B, H, W, Cout)
        h = self.conv2(nnx.silu(self.norm2(h)))  # (B, H, W, Cout)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)  # (B, H, W, Cout)
        return x + h  # (B, H, W, Cout)


class Attention(nnx.Module):
    """Single-head self-attention over the H·W positions with GroupNorm and a residual:
    x + to_out(softmax(q kᵀ / √C) v), (q, k, v) = (to_q, to_k, to_v)(GN(x))."""

    def __init__(self, channels: int, groups: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.group_norm = _group_norm(channels, groups, rngs)
        linear = lambda: nnx.Linear(channels, channels, dtype=dtype, param_dtype=jnp.float32,
                                    rngs=rngs)
        self.to_q, self.to_k, self.to_v, self.to_out = linear(), linear(), linear(), linear()

    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, c)  # (B, T, C) float32, T = H·W
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)  # (B, T, C) each, dtype
        # Written out rather than jax.nn.dot_product_attention: the head dimension (512 in the
        # SD-VAE) is beyond cuDNN's fused kernels anyway, and this keeps the softmax float32.
        logits = jnp.einsum("btc,bsc->bts", q, k, preferred_element_type=jnp.float32)  # (B,T,T)
        weights = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v.dtype)  # (B, T, T)
        o = jnp.einsum("bts,bsc->btc", weights, v)  # (B, T, C)
        return x + self.to_out(o).reshape(b, h, w, c)  # (B, H, W, C)


class Downsample(nnx.Module):
    """Pad bottom/right by one, then a 3×3 stride-2 conv: (B, H, W, C) → (B, H/2, W/2, C) for
    even H, W (LDM's asymmetric padding; the trained weights assume it)."""

    def __init__(self, channels: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), dtype=dtype,
                          rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv(x)  # (B, H/2, W/2, C)


class Upsample(nnx.Module):
    """Nearest-neighbour ×2, then a 3×3 conv: (B, H, W, C) → (B, 2H, 2W, C)."""

    def __init__(self, channels: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
        return self.conv(x)  # (B, 2H, 2W, C)


class MidBlock(nnx.Module):
    """ResnetBlock → Attention (unless disabled) → ResnetBlock, all at C channels."""

    def __init__(self, channels: int, groups: int, add_attention: bool, *, dtype: Dtype,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, dtype=dtype, rngs=rngs)
                                 for _ in range(2)])
        self.attention = (Attention(channels, groups, dtype=dtype, rngs=rngs)
                          if add_attention else None)

    def __call__(self, x: Array) -> Array:
        x = self.resnets[0](x)  # (B, H, W, C)
        if self.attention is not None:
            x = self.attention(x)  # (B, H, W, C)
        return self.resnets[1](x)  # (B, H, W, C)


class DownBlock(nnx.Module):
    """`layers` ResnetBlocks (cin → cout, then cout → cout), then Downsample unless last."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool, *,
                 dtype: Dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs)
            for i in range(layers)
        ])
        self.downsample = Downsample(cout, dtype=dtype, rngs=rngs) if downsample else None

    def __call__(self, x: Array) -> Array:
        for resnet in self.resnets:
            x = resnet(x)  # (B, H, W, Cout)
        if self.downsample is not None:
            x = self.downsample(x)  # (B, H/2, W/2, Cout)
        return x


class UpBlock(nnx.Module):
    """`layers` ResnetBlocks (cin → cout, then cout → cout), then Upsample unless last."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool, *,
                 dtype: Dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs)
            for i in range(layers)
        ])
        self.upsample = Upsample(cout, dtype=dtype, rngs=rngs) if upsample else None

    def __call__(self, x: Array) -> Array:
        for resnet in self.resnets:
            x = resnet(x)  # (B, H, W, Cout)
        if self.upsample is not None:
            x = self.upsample(x)  # (B, 2H, 2W, Cout)
        return x


def _check_dtype(dtype: Dtype) -> None:
    if jnp.dtype(dtype).name not in COMPUTE_DTYPES:
        raise ValueError(f"AutoencoderKL compute dtype must be one of {COMPUTE_DTYPES}, got "
                         f"{jnp.dtype(dtype).name}")


def _check_input(x: Array, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{what} must be NHWC (B, H, W, {channels}), got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- encoder/decoder


class Encoder(nnx.Module):
    """images (B, H, W, in_channels) in [-1, 1] → (mean, logvar), each (B, H/f, W/f, latent)
    float32, logvar clipped to [−30, 20]. Includes quant_conv."""

    def __init__(self, config: AutoencoderConfig, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        _check_dtype(dtype)
        self.config = config
        ch, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = _conv(config.in_channels, ch[0], 3, dtype=dtype, rngs=rngs)
        cins = (ch[0], *ch[:-1])
        self.down_blocks = nnx.List([
            DownBlock(cin, cout, config.layers_per_block, g, i < len(ch) - 1, dtype=dtype,
                      rngs=rngs)
            for i, (cin, cout) in enumerate(zip(cins, ch, strict=True))
        ])
        self.mid_block = MidBlock(ch[-1], g, config.mid_block_add_attention, dtype=dtype,
                                  rngs=rngs)
        self.conv_norm_out = _group_norm(ch[-1], g, rngs)
        moments = 2 * config.latent_channels
        self.conv_out = _conv(ch[-1], moments, 3, dtype=dtype, rngs=rngs)
        self.quant_conv = (_conv(moments, moments, 1, dtype=dtype, rngs=rngs)
                           if config.use_quant_conv else None)

    def __call__(self, images: Array) -> tuple[Array, Array]:
        _check_input(images, self.config.in_channels, "images")
        h = self.conv_in(images)  # (B, H, W, C0)
        for block in self.down_blocks:
            h = block(h)  # (B, H/2^(i+1), W/2^(i+1), Ci); the last level keeps its size
        h = self.mid_block(h)  # (B, H/f, W/f, C_last)
        h = self.conv_out(nnx.silu(self.conv_norm_out(h)))  # (B, H/f, W/f, 2·latent)
        if self.quant_conv is not None:
            h = self.quant_conv(h)  # (B, H/f, W/f, 2·latent)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)  # (B, H/f, W/f, latent) ×2
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """latents (B, h, w, latent) → images (B, f·h, f·w, out_channels) float32, nominally in
    [-1, 1]; clipped to it only with clip=True. Includes post_quant_conv."""

    def __init__(self, config: AutoencoderConfig, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        _check_dtype(dtype)
        self.config = config
        self.dtype = dtype
        ch, g, lat = config.block_out_channels, config.norm_num_groups, config.latent_channels
        self.post_quant_conv = (_conv(lat, lat, 1, dtype=dtype, rngs=rngs)
                                if config.use_post_quant_conv else None)
        self.conv_in = _conv(lat, ch[-1], 3, dtype=dtype, rngs=rngs)
        self.mid_block = MidBlock(ch[-1], g, config.mid_block_add_attention, dtype=dtype,
                                  rngs=rngs)
        rev = ch[::-1]
        cins = (rev[0], *rev[:-1])
        self.up_blocks = nnx.List([
            UpBlock(cin, cout, config.layers_per_block + 1, g, i < len(rev) - 1, dtype=dtype,
                    rngs=rngs)
            for i, (cin, cout) in enumerate(zip(cins, rev, strict=True))
        ])
        self.conv_norm_out = _group_norm(ch[0], g, rngs)
        self.conv_out = _conv(ch[0], config.out_channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, latents: Array, *, clip: bool = False) -> Array:
        _check_input(latents, self.config.latent_channels, "latents")
        z = latents.astype(self.dtype)  # (B, h, w, latent)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)  # (B, h, w, latent)
        h = self.conv_in(z)  # (B, h, w, C_last)
        h = self.mid_block(h)  # (B, h, w, C_last)
        for block in self.up_blocks:
            h = block(h)  # (B, 2^(i+1)·h, 2^(i+1)·w, C_{L-1-i}); the last level keeps its size
        x = self.conv_out(nnx.silu(self.conv_norm_out(h))).astype(jnp.float32)  # (B, H, W, 3)
        return jnp.clip(x, -1.0, 1.0) if clip else x


class AutoencoderKL(nnx.Module):
    """The KL autoencoder: `encode(images) -> (mean, logvar)`, `decode(latents) -> images`.

    images NHWC float in [-1, 1]; latents (B, H/f, W/f, latent_channels), f = 8 for the SD-VAE.
    `dtype`: compute dtype, float32 or bfloat16 (parameters are float32 either way).
    """

    def __init__(self, config: AutoencoderConfig | None = None, *, dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        config = config or AutoencoderConfig()
        _check_dtype(dtype)
        self.config = config
        self.dtype = dtype
        self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(config, dtype=dtype, rngs=rngs)

    def encode(self, images: Array) -> tuple[Array, Array]:
        """images (B, H, W, C_in) in [-1, 1] → posterior (mean, logvar), each
        (B, H/f, W/f, latent) float32, logvar ∈ [−30, 20]."""
        return self.encoder(images)

    def decode(self, latents: Array, *, clip: bool = False) -> Array:
        """latents (B, h, w, latent) (unnormalized: `denormalize_latents` first if they come
        from a diffusion model) → images (B, f·h, f·w, C_out) float32. Not clipped to [-1, 1]
        unless clip=True (the raw decoder output slightly overshoots)."""
        return self.decoder(latents, clip=clip)


# ------------------------------------------------------------------------------ pure functions


def sample_posterior(rng: Array, mean: Array, logvar: Array) -> Array:
    """z = mean + exp(logvar / 2) · ε, ε ~ N(0, I): a draw from the encoder's posterior
    (same shape as mean, float32)."""
    eps = jax.random.normal(rng, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * eps


def normalize_latents(z: Array, config: AutoencoderConfig) -> Array:
    """Autoencoder latents → the roughly unit-variance latents a diffusion model is trained on:
    (z − shift_factor) · scaling_factor (diffusers' pipelines)."""
    shift = config.shift_factor or 0.0
    return (z - shift) * config.scaling_factor


def denormalize_latents(x: Array, config: AutoencoderConfig) -> Array:
    """Inverse of `normalize_latents`: x / scaling_factor + shift_factor, ready to decode."""
    shift = config.shift_factor or 0.0
    return x / config.scaling_factor + shift


def abstract_autoencoder(config: AutoencoderConfig | None = None, *,
                         dtype: Dtype = jnp.float32) -> AutoencoderKL:
    """The model with shape-only variables (`nnx.eval_shape`), to be filled by `nnx.update` or
    the importer; no initializer runs."""
    return nnx.eval_shape(lambda: AutoencoderKL(config, dtype=dtype, rngs=nnx.Rngs(0)))


def random_autoencoder(config: AutoencoderConfig | None = None, *, dtype: Dtype = jnp.float32,
                       seed: int = 0) -> AutoencoderKL:
    """Random weights drawn with NumPy into the abstract model (benchmarks, tests): kernels
    ~ N(0, 1/fan_in), biases ~ N(0, 0.02²), GroupNorm scale 1 + N(0, 0.02²), bias N(0, 0.02²).
    Much faster than the eager JAX initializers for the full SD-VAE."""
    model = abstract_autoencoder(config, dtype=dtype)
    rng = np.random.default_rng(seed)
    filled = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape = var.get_value().shape
        if path[-1] == "kernel":
            std = 1.0 / math.sqrt(int(np.prod(shape[:-1])))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            if path[-1] == "scale":
                value += 1.0
        filled.append((path, jnp.asarray(value)))
    nnx.update(model, nnx.from_flat_state(filled))
    return model
