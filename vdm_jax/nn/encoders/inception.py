"""The FID Inception-v3 (TF graph inception-2015-12-05 as ported by pytorch-fid) in Flax NNX.

Architecture = torchvision's Inception-v3 (no aux head, 1008 classes) with pytorch-fid's patches:
  * A, C and first E blocks (Mixed_5b-d, Mixed_6b-e, Mixed_7b): 3×3/1 average pool of the pool
    branch excludes the zero padding from the mean (TF semantics, `count_include_pad=False`);
  * last E block (Mixed_7c): the pool branch uses a 3×3/1 *max* pool (a quirk of the TF graph).
Every conv is conv(no bias) → BatchNorm(ε = 1e-3, running statistics) → ReLU.

Module and parameter names mirror the PyTorch state dict (`Mixed_6d.branch1x1.conv`), so the
converter (`convert_inception.py`) is a rename plus transposes. Layout is NHWC.

Inputs. The network takes NHWC float images with 3 channels at 299×299; other sizes are resized
inside the forward pass as pytorch-fid does. Two preprocessings of 8-bit images k (`FID_MODES`;
`preprocess_uint8(images, mode)` / `fid_input(x, mode)` give the 299×299 network input):
  'pytorch_fid'  2k/255 − 1, then PyTorch's bilinear resize (`F.interpolate(align_corners=False)`:
                 half-pixel centres, no antialiasing; `resize_bilinear`): pytorch-fid's inputs,
                 and this project's only preprocessing before the 'adm' mode.
  'adm'          what ADM's evaluator (guided-diffusion `evaluations/evaluator.py`) computes, and
                 so what the published DiT/SiT numbers and the `VIRTUAL_imagenet256_labeled.npz`
                 reference statistics are: float k fed to the TF graph at `ExpandDims:0`, whose
                 `ResizeBilinear` op (TF1 legacy: align_corners=False, half_pixel_centers=False;
                 `resize_bilinear_tf1`) resizes to 299×299, then `Sub` 128 and `Mul` 1/128:
                 (k − 128)/128. The two sample different positions: at 256 → 299 their
                 network inputs differ by up to ≈ 0.1 on images, ≈ 0.26 on uniform noise.

Outputs (dict):
  pool3            (B, 2048)      final average pool: FID features, precision/recall features.
  logits           (B, 1008)      fc(pool3) = pool3 · W + b: the network's classifier logits.
  logits_unbiased  (B, 1008)      pool3 · W without the bias: what the Inception Score uses in
                                  improved-GAN / ADM (`softmax/logits/MatMul`) and torch-fidelity.
  mixed_6          (B, 17, 17, 768)  output of Mixed_6d (TF `mixed_6/join`), after BN + ReLU.

sFID features. ADM takes `mixed_6/conv:0`[..., :7] of the TF graph, flattened in (H, W, C) order:
  * `mixed_6` is Mixed_6d. The graph's blocks are mixed, mixed_1, mixed_2 (35×35: Mixed_5b-d),
    mixed_3 (Mixed_6a), mixed_4 … mixed_7 (17×17: Mixed_6b-e), mixed_8 (Mixed_7a), mixed_9,
    mixed_10 (Mixed_7b-c); torch-fidelity's TF → PyTorch weight map (`convert_inception_weights.py`)
    maps `mixed_6/conv/{conv2d_params,batchnorm}` to `Mixed_6d.branch1x1.{conv,bn}`. (`conv` is
    the block's 1×1 branch; the other 768 → 192 1×1 conv, `mixed_6/tower_2/conv`, follows the
    pool `mixed_6/tower_2/pool`: the pool branch.)
  * `mixed_6/conv:0` is that branch AFTER BatchNorm and ReLU, not the bare convolution. Each conv
    layer of the graph is the node sequence `<name>/conv2d_params`, `<name>/Conv2D`,
    `<name>/batchnorm/{beta,gamma,moving_mean,moving_variance}`, `<name>/batchnorm`
    (BatchNormWithGlobalNormalization), `<name>/CheckNumerics`, `<name>/control_dependency`,
    `<name>` (the graph's op list, e.g. as printed in Tensorflex's docs; pools likewise end in the
    op named `<name>`, the MaxPool/AvgPool itself). The op named `mixed_6/conv` is therefore the
    layer's last op, after the batchnorm and its identity checks: the ReLU, the only op left for
    the nonlinearity that pytorch-fid/torch-fidelity place after every BatchNorm and with which
    they reproduce `pool_3` of this graph (torch-fidelity's test: ≤ 1e-5 relative).
  * Hence the features are relu(bn(conv(·))) of Mixed_6d.branch1x1, channels 0–6. Mixed_6d's
    output concatenates [branch1x1 (192), branch7x7, branch7x7dbl, branch_pool], so they are
    `mixed_6[..., :7]`, flattened (H, W, C) like ADM's NHWC reshape: `spatial_features`
    (B, 2023). (Taking Mixed_6e, i.e. TF `mixed_7`, or 768 channels, as some ports do, is not
    ADM's sFID.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "FID_IMAGE_SIZE",
    "FID_MODES",
    "InceptionV3",
    "abstract_inception",
    "fid_input",
    "make_inception_fn",
    "preprocess_uint8",
    "random_inception",
    "resize_bilinear",
    "resize_bilinear_tf1",
    "spatial_features",
]

FID_IMAGE_SIZE = 299
FID_MODES = ("adm", "pytorch_fid")  # preprocessing of 8-bit images: see the module docstring
NUM_SFID_CHANNELS = 7  # ADM: spatial = mixed_6/conv[..., :7] → 17·17·7 = 2023 features.


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """relu(BN(conv(x))): conv without bias, BatchNorm in inference mode with ε = 1e-3 (TF's)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        rngs: nnx.Rngs,
    ):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(
            cin, cout, _pair(kernel), strides=_pair(stride),
            padding=((ph, ph), (pw, pw)), use_bias=False,
            kernel_init=nnx.initializers.he_normal(), rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


def _avg_pool_3x3_tf(x: jax.Array) -> jax.Array:
    # TF's SAME average pool divides by the number of *valid* inputs (count_include_pad=False).
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                        count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nnx.Module):
    """Mixed_5b-d (35×35): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)                                               # (B, H, W, 64)
        b5 = self.branch5x5_2(self.branch5x5_1(x))                           # (B, H, W, 64)
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, H, W, 96)
        bp = self.branch_pool(_avg_pool_3x3_tf(x))                           # (B, H, W, pool)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)                    # (B, H, W, 224+pool)


class InceptionB(nnx.Module):
    """Mixed_6a (35×35 → 17×17): 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)                                               # (B, 17, 17, 384)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 17, 17, 96)
        bp = _max_pool_3x3(x, stride=2, pad=0)                               # (B, 17, 17, cin)
        return jnp.concatenate([b3, bd, bp], axis=-1)                        # (B, 17, 17, 480+cin)


class InceptionC(nnx.Module):
    """Mixed_6b-e (17×17): 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avgpool→1×1."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)                                               # (B, 17, 17, 192)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))         # (B, 17, 17, 192)
        bd = self.branch7x7dbl_1(x)                                          # (B, 17, 17, c7)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))                    # (B, 17, 17, c7)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))                    # (B, 17, 17, 192)
        bp = self.branch_pool(_avg_pool_3x3_tf(x))                           # (B, 17, 17, 192)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)                    # (B, 17, 17, 768)


class InceptionD(nnx.Module):
    """Mixed_7a (17×17 → 8×8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))                           # (B, 8, 8, 320)
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))                       # (B, 17, 17, 192)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))                      # (B, 8, 8, 192)
        bp = _max_pool_3x3(x, stride=2, pad=0)                               # (B, 8, 8, cin)
        return jnp.concatenate([b3, b7, bp], axis=-1)                        # (B, 8, 8, 512+cin)


class InceptionE(nnx.Module):
    """Mixed_7b/7c (8×8): 1×1 | 1×1→{1×3, 3×1} | 1×1→3×3→{1×3, 3×1} | pool→1×1.

    `max_pool=True` is the FID graph's last block (Mixed_7c), whose pool branch is a max pool.
    """

    def __init__(self, cin: int, *, max_pool: bool, rngs: nnx.Rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)                                               # (B, 8, 8, 320)
        b3 = self.branch3x3_1(x)                                             # (B, 8, 8, 384)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], -1)  # (B, 8, 8, 768)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))                     # (B, 8, 8, 384)
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], -1)  # (.., 768)
        pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3_tf(x)  # (B, 8, 8, cin)
        bp = self.branch_pool(pooled)                                        # (B, 8, 8, 192)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)                    # (B, 8, 8, 2048)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of NHWC x to (size, size), as `F.interpolate(bilinear, align_corners=False)`.

    Sample positions are half-pixel centred, src = (dst + ½)·(in/out) − ½, edge-clamped, without
    antialiasing (jax's default antialiasing would differ from pytorch-fid when downsampling).
    """
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=False)


def _tf1_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # TF's legacy scaler in float32: src = dst · (in/out), lower = floor(src),
    # upper = min(ceil(src), in − 1), lerp = src − lower (resize_bilinear_op.cc).
    src = np.arange(n_out, dtype=np.float32) * (np.float32(n_in) / np.float32(n_out))
    lower = np.floor(src)
    upper = np.minimum(np.ceil(src), n_in - 1)
    return lower.astype(np.int32), upper.astype(np.int32), (src - lower).astype(np.float32)


def resize_bilinear_tf1(x: jax.Array, size: int) -> jax.Array:
    """TF1's `resize_bilinear(align_corners=False, half_pixel_centers=False)` of NHWC float x to
    (size, size): the `ResizeBilinear` op of the FID graph (ADM's preprocessing).

    Sample position src = dst · in/out (no half-pixel offset, corners not aligned), neighbours
    floor(src) and min(ceil(src), in − 1), weights src − floor(src); rows are interpolated in x
    first, then in y, in float32, in TF's order of operations.
    """
    x = x.astype(jnp.float32)
    y0, y1, wy = _tf1_axis(x.shape[1], size)
    x0, x1, wx = _tf1_axis(x.shape[2], size)
    wx, wy = wx[None, None, :, None], wy[None, :, None, None]

    def along_x(rows: jax.Array) -> jax.Array:  # (B, size, W, C) → (B, size, size, C)
        left, right = rows[:, :, x0], rows[:, :, x1]
        return left + (right - left) * wx

    top, bottom = along_x(x[:, y0]), along_x(x[:, y1])                  # (B, size, size, C)
    return top + (bottom - top) * wy


def _check_mode(mode: str) -> None:
    if mode not in FID_MODES:
        raise ValueError(f"Unknown FID preprocessing mode {mode!r}; expected one of {FID_MODES}.")


def fid_input(x: jax.Array, mode: str) -> jax.Array:
    """Network input (B, 299, 299, 3) float32 of images x (B, H, W, 3) whose values are 8-bit
    levels k ∈ [0, 255] (any float or integer dtype):
        'adm'          resize_bilinear_tf1(k), then (· − 128)/128   (the TF graph's order)
        'pytorch_fid'  resize_bilinear(2k/255 − 1)
    (Resizing commutes with the affine maps up to float rounding: bilinear weights sum to 1.)
    Inputs already 299×299 are not resized.
    """
    _check_mode(mode)
    x = x.astype(jnp.float32)
    resize = x.shape[1:3] != (FID_IMAGE_SIZE, FID_IMAGE_SIZE)
    if mode == "adm":
        if resize:
            x = resize_bilinear_tf1(x, FID_IMAGE_SIZE)
        return (x - 128.0) * (1.0 / 128.0)
    x = x * np.float32(2.0 / 255.0) - np.float32(1.0)
    return resize_bilinear(x, FID_IMAGE_SIZE) if resize else x


_fid_input_jit = jax.jit(fid_input, static_argnames="mode")


class InceptionV3(nnx.Module):
    """The FID Inception-v3; see the module docstring for inputs and outputs."""

    def __init__(self, *, rngs: nnx.Rngs, num_classes: int = 1008):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, c7=128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, c7=160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, c7=160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, c7=192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)
        self.fc = nnx.Linear(2048, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"InceptionV3 expects NHWC images with 3 channels in [-1, 1], got shape {x.shape}"
                " (grayscale: repeat the channel, as preprocess_uint8 does)"
            )
        x = x.astype(jnp.float32)
        if x.shape[1:3] != (FID_IMAGE_SIZE, FID_IMAGE_SIZE):
            x = resize_bilinear(x, FID_IMAGE_SIZE)                           # (B, 299, 299, 3)
        x = self.Conv2d_1a_3x3(x)                                            # (B, 149, 149, 32)
        x = self.Conv2d_2a_3x3(x)                                            # (B, 147, 147, 32)
        x = self.Conv2d_2b_3x3(x)                                            # (B, 147, 147, 64)
        x = _max_pool_3x3(x, stride=2, pad=0)                                # (B, 73, 73, 64)
        x = self.Conv2d_3b_1x1(x)                                            # (B, 73, 73, 80)
        x = self.Conv2d_4a_3x3(x)                                            # (B, 71, 71, 192)
        x = _max_pool_3x3(x, stride=2, pad=0)                                # (B, 35, 35, 192)
        x = self.Mixed_5b(x)                                                 # (B, 35, 35, 256)
        x = self.Mixed_5c(x)                                                 # (B, 35, 35, 288)
        x = self.Mixed_5d(x)                                                 # (B, 35, 35, 288)
        x = self.Mixed_6a(x)                                                 # (B, 17, 17, 768)
        x = self.Mixed_6b(x)                                                 # (B, 17, 17, 768)
        x = self.Mixed_6c(x)                                                 # (B, 17, 17, 768)
        mixed_6 = self.Mixed_6d(x)                                           # (B, 17, 17, 768)
        x = self.Mixed_6e(mixed_6)                                           # (B, 17, 17, 768)
        x = self.Mixed_7a(x)                                                 # (B, 8, 8, 1280)
        x = self.Mixed_7b(x)                                                 # (B, 8, 8, 2048)
        x = self.Mixed_7c(x)                                                 # (B, 8, 8, 2048)
        pool3 = x.mean(axis=(1, 2))                                          # (B, 2048)
        # Dropout before fc is the identity at inference.
        logits_unbiased = pool3 @ self.fc.kernel[...]                        # (B, 1008)
        logits = logits_unbiased + self.fc.bias[...]                         # (B, 1008)
        return {"pool3": pool3, "logits": logits, "logits_unbiased": logits_unbiased,
                "mixed_6": mixed_6}


def spatial_features(mixed_6: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """ADM's sFID features: mixed_6/conv[..., :7] flattened in (H, W, C) order → (B, 17·17·7)."""
    if mixed_6.ndim != 4 or mixed_6.shape[-1] < NUM_SFID_CHANNELS:
        raise ValueError(f"expected mixed_6 activations (B, 17, 17, 768), got {mixed_6.shape}")
    return mixed_6[..., :NUM_SFID_CHANNELS].reshape(mixed_6.shape[0], -1)


def preprocess_uint8(images: np.ndarray, mode: str) -> jax.Array:
    """uint8 NHWC images (C = 1 or 3) → the network input (N, 299, 299, 3) float32 of FID
    preprocessing `mode` ∈ `FID_MODES` ('adm' or 'pytorch_fid'; see `fid_input`), on device.

    Grayscale is repeated to 3 channels. Jitted per input shape and mode.
    """
    _check_mode(mode)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 1|3), got {images.dtype} {images.shape}"
        )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return _fid_input_jit(images, mode=mode)


def abstract_inception() -> InceptionV3:
    """The model with shape-only (jax.ShapeDtypeStruct) variables, to be filled by `nnx.update`.

    Building the real model eagerly runs one random initializer per layer (~25 s on CPU); loading
    weights into the abstract model skips that entirely.
    """
    return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def random_inception(seed: int = 0) -> InceptionV3:
    """The FID Inception with random weights (tests; end-to-end runs without the weight file).

    Conv kernels ~ N(0, 2/fan_in) (He: activations keep their scale through the ReLUs), fc kernel
    ~ N(0, 1/fan_in), fc bias ~ N(0, 0.1²), BatchNorm identity (scale 1, bias 0, mean 0, var 1).
    Drawn with NumPy into the abstract model: ~1 s instead of ~25 s of eager JAX initializers.
    """
    model = abstract_inception()
    rng = np.random.default_rng(seed)
    filled = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape = var.get_value().shape
        if path[-1] == "kernel":
            gain = 1.0 if path[0] == "fc" else 2.0
            std = np.sqrt(gain / np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        elif path[-1] in ("scale", "var"):
            value = np.ones(shape, np.float32)
        elif path[0] == "fc":  # bias: nonzero, so logits and logits_unbiased differ
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        else:  # BatchNorm bias/mean
            value = np.zeros(shape, np.float32)
        filled.append((path, jnp.asarray(value)))
    nnx.update(model, nnx.from_flat_state(filled))
    return model


def make_inception_fn(model: InceptionV3) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """A jitted pure function images (B, H, W, 3) in [-1, 1] → the model's output dict.

    The parameters are closed over as jit arguments (not constants), so one compilation per input
    shape; callers should feed a fixed batch size (pad the last batch) to avoid recompiling.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state: nnx.State, x: jax.Array) -> dict[str, jax.Array]:
        return nnx.merge(graphdef, state)(x)

    return lambda x: apply(state, x)
