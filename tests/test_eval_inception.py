"""FID Inception-v3: output shapes, resize and pooling semantics of pytorch-fid, ADM's TF
preprocessing (against TensorFlow's kernel), sFID features."""

from pathlib import Path

import jax
import numpy as np
import pytest

from vdm_jax.nn.encoders import inception as inc


@pytest.fixture(scope="module")
def model():
    return inc.random_inception(seed=0)


def test_forward_shapes_and_spatial_features(model):
    fn = inc.make_inception_fn(model)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    out = jax.device_get(fn(x))
    assert out["pool3"].shape == (2, 2048)
    assert out["logits"].shape == (2, 1008)
    assert out["logits_unbiased"].shape == (2, 1008)
    assert out["mixed_6"].shape == (2, 17, 17, 768)
    assert all(np.isfinite(v).all() for v in out.values())
    # logits = pool3 · W + b, logits_unbiased the same without b.
    w, b = np.asarray(model.fc.kernel[...]), np.asarray(model.fc.bias[...])
    np.testing.assert_allclose(out["logits_unbiased"], out["pool3"] @ w, rtol=1e-4, atol=1e-4)
    assert np.abs(b).max() > 0.01  # random_inception draws a nonzero bias
    diff = out["logits"] - out["logits_unbiased"]
    np.testing.assert_allclose(diff, np.broadcast_to(b, (2, 1008)), atol=1e-5)
    # Different images give different features (the net is not degenerate at random init).
    assert np.abs(out["pool3"][0] - out["pool3"][1]).max() > 1e-3
    sp = inc.spatial_features(out["mixed_6"])
    assert sp.shape == (2, 17 * 17 * 7) == (2, 2023)
    np.testing.assert_array_equal(sp[1].reshape(17, 17, 7), out["mixed_6"][1, :, :, :7])


def test_mixed_6_leads_with_branch1x1(model):
    # ADM's sFID layer `mixed_6/conv` is Mixed_6d's 1×1 branch; it is the first 192 channels of
    # the block output, so mixed_6[..., :7] are exactly ADM's spatial features.
    x = np.random.default_rng(1).standard_normal((1, 17, 17, 768)).astype(np.float32)
    block = model.Mixed_6d
    np.testing.assert_allclose(block(x)[..., :192], block.branch1x1(x), rtol=1e-6, atol=1e-6)


def _torch_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's bilinear, align_corners=False (half-pixel, edge clamp), for one HWC image."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(img.shape[0], out_h)
    x0, x1, wx = axis(img.shape[1], out_w)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


@pytest.mark.parametrize("size_in,size_out", [(8, 19), (32, 299), (23, 10)])
def test_resize_matches_pytorch_bilinear(size_in, size_out):
    img = np.random.default_rng(2).standard_normal((1, size_in, size_in, 3)).astype(np.float32)
    got = np.asarray(inc.resize_bilinear(img, size_out))[0]
    np.testing.assert_allclose(got, _torch_bilinear(img[0], size_out, size_out), atol=1e-5)


def test_tf_average_pool_excludes_padding():
    x = np.random.default_rng(3).standard_normal((1, 5, 6, 2)).astype(np.float32)
    got = np.asarray(inc._avg_pool_3x3_tf(x))
    xp = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones(x.shape[1:3]), 1)
    want = np.zeros_like(x[0])
    for i in range(5):
        for j in range(6):
            want[i, j] = xp[i : i + 3, j : j + 3].sum((0, 1)) / ones[i : i + 3, j : j + 3].sum()
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "block,cin,pool",
    [("Mixed_5b", 192, "avg"), ("Mixed_6e", 768, "avg"), ("Mixed_7b", 1280, "avg"),
     ("Mixed_7c", 2048, "max")],
)
def test_pool_branch_of_each_block_type(model, block, cin, pool):
    # The pool branch is the last output channels: count_include_pad=False average pooling in
    # the A, C and first E blocks, 3×3/1 max pooling in the last E block (pytorch-fid's patches).
    m = getattr(model, block)
    x = np.random.default_rng(4).standard_normal((1, 5, 5, cin)).astype(np.float32)
    n = m.branch_pool.conv.kernel.shape[-1]
    pooled = inc._max_pool_3x3(x, 1, 1) if pool == "max" else inc._avg_pool_3x3_tf(x)
    other = inc._avg_pool_3x3_tf(x) if pool == "max" else inc._max_pool_3x3(x, 1, 1)
    out = np.asarray(m(x)[..., -n:])
    np.testing.assert_allclose(out, m.branch_pool(pooled), rtol=1e-5, atol=1e-5)
    assert np.abs(out - np.asarray(m.branch_pool(other))).max() > 1e-2


def test_max_pool_pads_with_minus_infinity():
    x = -np.abs(np.random.default_rng(5).standard_normal((1, 4, 4, 1))).astype(np.float32)
    xp = np.pad(x[0, :, :, 0], 1, constant_values=-np.inf)
    want = np.array([[xp[i : i + 3, j : j + 3].max() for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(np.asarray(inc._max_pool_3x3(x, 1, 1))[0, :, :, 0], want)


ADM_FIXTURE = Path(__file__).parent / "fixtures" / "adm_resize" / "adm_resize.npz"


@pytest.mark.parametrize("name", ["sq64", "r37x50", "strip5x256", "strip256x5"])
def test_adm_preprocessing_matches_tensorflow(name):
    """preprocess_uint8(·, 'adm') = TF's resize_bilinear(align_corners=False,
    half_pixel_centers=False) to 299² of the 0–255 floats, then (· − 128)/128
    (tests/make_adm_resize_fixture.py; stored rows and columns incl. the clamped edge)."""
    ref = np.load(ADM_FIXTURE)
    idx = ref["index"]
    got = np.asarray(inc.preprocess_uint8(ref[f"images_{name}"], "adm"))[0]
    assert got.shape == (299, 299, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[idx], ref[f"rows_{name}"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:, idx], ref[f"cols_{name}"], rtol=0, atol=1e-5)


def test_the_two_modes_differ_at_256():
    """At 256 → 299 the legacy TF resize (no half-pixel offset) and pytorch-fid's half-pixel one
    sample different positions: on uniform noise the network inputs differ by up to ≈ 0.26."""
    img = np.random.default_rng(6).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    adm = np.asarray(inc.preprocess_uint8(img, "adm"))
    pt = np.asarray(inc.preprocess_uint8(img, "pytorch_fid"))
    assert np.abs(adm - pt).max() > 0.1


def test_preprocess_uint8():
    """Constant images: resizing keeps the constant, so the input is the mode's affine map of
    k, 2k/255 − 1 (pytorch-fid) or (k − 128)/128 (ADM), exactly; grayscale → 3 channels."""
    levels = np.array([0, 128, 255], np.uint8)
    imgs = np.broadcast_to(levels[:, None, None, None], (3, 7, 5, 1))
    k = levels.astype(np.float64)
    for mode, want in [("pytorch_fid", 2 * k / 255 - 1), ("adm", (k - 128) / 128)]:
        x = np.asarray(inc.preprocess_uint8(imgs, mode))
        assert x.shape == (3, 299, 299, 3) and x.dtype == np.float32
        np.testing.assert_allclose(x, np.broadcast_to(want[:, None, None, None], x.shape),
                                   atol=1e-6)
    assert set(inc.FID_MODES) == {"adm", "pytorch_fid"}
    with pytest.raises(ValueError, match="uint8"):
        inc.preprocess_uint8(imgs.astype(np.float32), "adm")
    with pytest.raises(ValueError, match="mode"):
        inc.preprocess_uint8(imgs, "clean_fid")


def test_pytorch_fid_mode_is_the_resize_of_the_scaled_image():
    """'pytorch_fid' = PyTorch's bilinear of 2k/255 − 1 (the parity above), at 299² already."""
    img = np.random.default_rng(7).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    got = np.asarray(inc.preprocess_uint8(img, "pytorch_fid"))
    scaled = img.astype(np.float32) * np.float32(2 / 255) - 1
    for i in range(2):
        np.testing.assert_allclose(got[i], _torch_bilinear(scaled[i], 299, 299), atol=1e-5)


def test_wrong_channel_count_is_a_clear_error(model):
    with pytest.raises(ValueError, match="3 channels"):
        model(np.zeros((1, 32, 32, 1), np.float32))
