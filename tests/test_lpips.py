"""LPIPS-VGG (vdm_jax.nn.encoders.lpips) against the `lpips` package.

tests/fixtures/lpips/ (tests/make_lpips_fixture.py, lpips 0.1.4, torch 2.13.0) holds the
package's linear heads (vgg.pth and the same tensors as .safetensors) and its LPIPS(net='vgg')
distances, computed in float64, on fixed image pairs with random VGG16 weights that
tests/lpips_weights.py draws from a seed here as it did there. The port in float32 must match to
≤ 1e-5 relative, with the backbone in torchvision's layout and in the package's whole-model one.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from lpips_weights import random_vgg16_state
from safetensors.numpy import load_file, save_file

from vdm_jax.importers.common import WeightMismatchError
from vdm_jax.importers.lpips import load_lpips, vgg16_feature_indices

FIXTURE = Path(__file__).parent / "fixtures" / "lpips"
PARITY = 1e-5



@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "outputs.npz"))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    state = random_vgg16_state(0)
    state["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # ignored, as in the release
    save_file(state, str(path))
    return path


def images(u8):
    return jnp.asarray((u8.astype(np.float32) + 0.5) / 128.0 - 1.0)


def test_matches_lpips_package(vgg_file, ref):
    model = load_lpips(vgg_file, FIXTURE / "vgg.safetensors")
    d = np.asarray(model(images(ref["x_u8"]), images(ref["y_u8"])))
    assert d.shape == (2,)
    assert rel_err(d, ref["distance"]) <= PARITY
    assert np.allclose(np.asarray(model(images(ref["x_u8"]), images(ref["x_u8"]))), 0.0)


def test_torch_files(vgg_file, ref, tmp_path):
    """torchvision's .pth layout and the package's own vgg.pth heads."""
    torch = pytest.importorskip("torch")
    pth = tmp_path / "vgg16.pth"
    torch.save({k: torch.from_numpy(v) for k, v in load_file(str(vgg_file)).items()}, pth)
    model = load_lpips(pth, FIXTURE / "vgg.pth")
    d = np.asarray(model(images(ref["x_u8"]), images(ref["y_u8"])))
    assert rel_err(d, ref["distance"]) <= PARITY


def test_whole_lpips_state_dict(vgg_file, ref, tmp_path):
    """LPIPS(net='vgg').state_dict() names: net.slice{s}.{i}.*, lin{l}.model.1.weight."""
    state = {}
    for k, v in load_file(str(vgg_file)).items():
        if k.startswith("features."):
            i = int(k.split(".")[1])
            s = next(s for s, j in vgg16_feature_indices() if j == i)
            state[f"net.slice{s}.{i}.{k.split('.')[2]}"] = v
    state.update(load_file(str(FIXTURE / "vgg.safetensors")))
    state["scaling_layer.shift"] = np.zeros((1, 3, 1, 1), np.float32)
    save_file(state, str(tmp_path / "lpips.safetensors"))
    model = load_lpips(tmp_path / "lpips.safetensors")
    d = np.asarray(model(images(ref["x_u8"]), images(ref["y_u8"])))
    assert rel_err(d, ref["distance"]) <= PARITY


def test_bad_input(vgg_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16-397923af"):
        load_lpips(tmp_path / "missing.pth", FIXTURE / "vgg.safetensors")
    with pytest.raises(WeightMismatchError, match=r"missing tensors \(5\)"):
        load_lpips(vgg_file)  # no heads
    sd_vae = FIXTURE.parent / "sd_vae" / "ldm.safetensors"
    with pytest.raises(WeightMismatchError, match="unexpected tensors"):
        load_lpips(sd_vae, FIXTURE / "vgg.safetensors")
