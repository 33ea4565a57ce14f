"""pytorch-fid state dict → Flax FID Inception: every tensor mapped, clear errors, weight paths."""

import importlib.util
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from vdm_jax.importers import inception as ci

# Independent spec of torchvision's Inception-v3 (the module pytorch-fid patches), as
# (name, in, out, kernel) per BasicConv2d; the state dict stores conv weights as (O, I, kh, kw).


def _a(cin, pool):
    return [("branch1x1", cin, 64, (1, 1)), ("branch5x5_1", cin, 48, (1, 1)),
            ("branch5x5_2", 48, 64, (5, 5)), ("branch3x3dbl_1", cin, 64, (1, 1)),
            ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3)),
            ("branch_pool", cin, pool, (1, 1))]


def _b(cin):
    return [("branch3x3", cin, 384, (3, 3)), ("branch3x3dbl_1", cin, 64, (1, 1)),
            ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))]


def _c(cin, c7):
    return [("branch1x1", cin, 192, (1, 1)), ("branch7x7_1", cin, c7, (1, 1)),
            ("branch7x7_2", c7, c7, (1, 7)), ("branch7x7_3", c7, 192, (7, 1)),
            ("branch7x7dbl_1", cin, c7, (1, 1)), ("branch7x7dbl_2", c7, c7, (7, 1)),
            ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)),
            ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", cin, 192, (1, 1))]


def _d(cin):
    return [("branch3x3_1", cin, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)),
            ("branch7x7x3_1", cin, 192, (1, 1)), ("branch7x7x3_2", 192, 192, (1, 7)),
            ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, (3, 3))]


def _e(cin):
    return [("branch1x1", cin, 320, (1, 1)), ("branch3x3_1", cin, 384, (1, 1)),
            ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)),
            ("branch3x3dbl_1", cin, 448, (1, 1)), ("branch3x3dbl_2", 448, 384, (3, 3)),
            ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
            ("branch_pool", cin, 192, (1, 1))]


def _convs():
    out = [("Conv2d_1a_3x3", 3, 32, (3, 3)), ("Conv2d_2a_3x3", 32, 32, (3, 3)),
           ("Conv2d_2b_3x3", 32, 64, (3, 3)), ("Conv2d_3b_1x1", 64, 80, (1, 1)),
           ("Conv2d_4a_3x3", 80, 192, (3, 3))]
    blocks = [("Mixed_5b", _a(192, 32)), ("Mixed_5c", _a(256, 64)), ("Mixed_5d", _a(288, 64)),
              ("Mixed_6a", _b(288)), ("Mixed_6b", _c(768, 128)), ("Mixed_6c", _c(768, 160)),
              ("Mixed_6d", _c(768, 160)), ("Mixed_6e", _c(768, 192)), ("Mixed_7a", _d(768)),
              ("Mixed_7b", _e(1280)), ("Mixed_7c", _e(2048))]
    for block, convs in blocks:
        out += [(f"{block}.{n}", i, o, k) for n, i, o, k in convs]
    return out


def _random_pt_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for name, cin, cout, (kh, kw) in _convs():
        sd[f"{name}.conv.weight"] = rng.standard_normal((cout, cin, kh, kw), dtype=np.float32)
        for leaf in ("weight", "bias", "running_mean"):
            sd[f"{name}.bn.{leaf}"] = rng.standard_normal(cout, dtype=np.float32)
        sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 2, cout).astype(np.float32)
        sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
    sd["fc.weight"] = rng.standard_normal((1008, 2048), dtype=np.float32)
    sd["fc.bias"] = rng.standard_normal(1008, dtype=np.float32)
    return sd


@pytest.fixture(scope="module")
def state_dict():
    return _random_pt_state_dict()


@pytest.fixture(scope="module")
def loaded(state_dict):
    return ci.load_pt_state_dict(None, state_dict)


def test_spec_is_the_94_conv_inception():
    assert len(_convs()) == 94


def test_every_tensor_is_mapped(state_dict, loaded):
    for name, *_ in _convs():
        m = loaded
        for part in name.split("."):
            m = getattr(m, part)
        np.testing.assert_array_equal(
            np.asarray(m.conv.kernel[...]), state_dict[f"{name}.conv.weight"].transpose(2, 3, 1, 0)
        )
        for flax_leaf, pt_leaf in [("scale", "weight"), ("bias", "bias"),
                                   ("mean", "running_mean"), ("var", "running_var")]:
            np.testing.assert_array_equal(
                np.asarray(getattr(m.bn, flax_leaf)[...]), state_dict[f"{name}.bn.{pt_leaf}"]
            )
    np.testing.assert_array_equal(np.asarray(loaded.fc.kernel[...]), state_dict["fc.weight"].T)
    np.testing.assert_array_equal(np.asarray(loaded.fc.bias[...]), state_dict["fc.bias"])


def test_converted_conv_computes_the_pytorch_layer(state_dict, loaded):
    # relu(BN(conv2d(x))) in PyTorch semantics (cross-correlation, OIHW, padding (0, 3)) written in
    # NumPy, against the converted Flax layer: checks the kernel orientation, padding and ε = 1e-3.
    name = "Mixed_6b.branch7x7_2"  # 1×7 kernel, padding (0, 3), 128 → 128 channels
    w = state_dict[f"{name}.conv.weight"].astype(np.float64)
    g, b, mu, var = (state_dict[f"{name}.bn.{k}"].astype(np.float64)
                     for k in ("weight", "bias", "running_mean", "running_var"))
    x = np.random.default_rng(1).standard_normal((1, 5, 6, 128)).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (3, 3), (0, 0)))
    conv = sum(np.einsum("bhwi,oi->bhwo", xp[:, :, dx : dx + 6], w[:, :, 0, dx]) for dx in range(7))
    want = np.maximum((conv - mu) / np.sqrt(var + 1e-3) * g + b, 0.0)
    got = np.asarray(loaded.Mixed_6b.branch7x7_2(x))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_missing_tensor_is_named(state_dict):
    sd = dict(state_dict)
    del sd["Mixed_6d.branch1x1.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing tensors \(1\)[\s\S]*"
                                         r"Mixed_6d\.branch1x1\.bn\.running_var"):
        ci.load_pt_state_dict(None, sd)


def test_misshaped_tensor_is_named(state_dict):
    sd = dict(state_dict)
    sd["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"misshaped[\s\S]*Mixed_7c\.branch_pool\.conv\.weight: "
                                         r"got \(192, 2048, 3, 3\), expected \(192, 2048, 1, 1\)"):
        ci.load_pt_state_dict(None, sd)


def test_unexpected_tensor_is_named(state_dict):
    sd = dict(state_dict)
    sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    with pytest.raises(ValueError, match=r"unexpected tensors \(1\)[\s\S]*AuxLogits\.fc\.weight"):
        ci.load_pt_state_dict(None, sd)


def test_npz_round_trip(loaded, tmp_path):
    path = ci.save_inception_npz(loaded, tmp_path / "inception.npz")
    again = ci.load_inception(path)
    np.testing.assert_array_equal(np.asarray(again.Mixed_7a.branch7x7x3_3.conv.kernel[...]),
                                  np.asarray(loaded.Mixed_7a.branch7x7x3_3.conv.kernel[...]))
    np.testing.assert_array_equal(np.asarray(again.fc.bias[...]), np.asarray(loaded.fc.bias[...]))
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "fc/bias"}
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match=r"missing tensors \(1\)[\s\S]*fc/bias"):
        ci.load_inception(tmp_path / "broken.npz")


def test_cli_converts_via_the_pth_reader(state_dict, tmp_path, monkeypatch):
    # torch is not a dependency: stand in for the .pth reader, run the real CLI and converter.
    pth = tmp_path / ci.PTH_FILENAME
    pth.write_bytes(b"stand-in")
    monkeypatch.setattr(ci, "read_pt_state_dict", lambda p: state_dict if Path(p) == pth else {})
    out = tmp_path / "out.npz"
    script = Path(__file__).parents[1] / "launch" / "convert_inception.py"
    monkeypatch.setattr(sys, "argv", ["convert_inception.py", "--pth", str(pth), "--out", str(out)])
    with pytest.raises(SystemExit) as exited:  # absl's app.run exits, as every launch script
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code in (0, None)
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["fc/kernel"], state_dict["fc.weight"].T)
        assert len(npz.files) == 94 * 5 + 2


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_pth_without_torch_says_how_to_proceed(tmp_path):
    pth = tmp_path / ci.PTH_FILENAME
    pth.write_bytes(b"not read")
    with pytest.raises(ImportError, match="pip install torch"):
        ci.load_inception(pth)


def test_weights_path_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(ci.INCEPTION_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth[\s\S]*"
                                                 r"VDM_JAX_INCEPTION_WEIGHTS"):
        ci.inception_weights_path(None)
    with pytest.raises(FileNotFoundError, match=r"--inception_weights points to .*nope\.npz"):
        ci.inception_weights_path(str(tmp_path / "nope.npz"))
    weights = tmp_path / "w.npz"
    weights.write_bytes(b"")
    monkeypatch.setenv(ci.INCEPTION_ENV_VAR, str(weights))
    assert ci.inception_weights_path(None) == weights
    flag = tmp_path / "flag.npz"
    flag.write_bytes(b"")
    assert ci.inception_weights_path(str(flag)) == flag  # the flag takes precedence
    monkeypatch.setenv(ci.INCEPTION_ENV_VAR, str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match=r"\$VDM_JAX_INCEPTION_WEIGHTS points to"):
        ci.inception_weights_path(None)


def test_unknown_weight_format(tmp_path):
    with pytest.raises(ValueError, match="unknown Inception weight format"):
        ci.load_inception(tmp_path / "weights.ckpt")
