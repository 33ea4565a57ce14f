"""The RAE discriminator (frozen DINO + spectrally normalized heads), DiffAug and the GAN losses
against the official code (bytetriper/RAE src/disc/, a4d18c4).

tests/fixtures/dino_disc/ (tests/make_dino_disc_fixture.py, torch 2.13.0) holds a tiny random
DinoDisc (width 32, 3 blocks, 2 heads, patch 8, key depths (0, 2), ks 9) and its logits in eval
mode and after one train-mode call (one power iteration), and DiffAug's output on fixed draws;
references in float64, the port in float32, ≤ 1e-5 relative.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from flax import nnx

from vdm_jax.core.gan import diffaug, diffaug_apply, hinge_d_loss, vanilla_g_loss
from vdm_jax.importers.common import WeightMismatchError
from vdm_jax.importers.dino_disc import load_dino_discriminator
from vdm_jax.nn.encoders.dino_disc import DinoDiscConfig, bilinear_matrix

FIXTURE = Path(__file__).parent / "fixtures" / "dino_disc"
PARITY = 1e-5



@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "outputs.npz"))


def load():
    return load_dino_discriminator(FIXTURE / "dino.safetensors", FIXTURE / "heads.safetensors",
                                   num_heads=2, config=DinoDiscConfig(key_depths=(0, 2)))


def images(ref):
    return jnp.asarray((ref["images_u8"].astype(np.float32) + 0.5) / 128.0 - 1.0)


def test_eval_logits(ref):
    model = load()
    assert model.cfg.depth == 3 and model.cfg.kernel_size == 9 and len(model.heads) == 3
    logits = np.asarray(model(images(ref)))
    assert logits.shape == (2, 3 * 28 * 28)
    assert rel_err(logits, ref["logits_eval"]) <= PARITY


def test_train_mode_power_iteration(ref):
    """update=True: one power iteration per spectral conv, stored, then the logits."""
    model = load()
    logits = np.asarray(model(images(ref), update=True))
    assert rel_err(logits, ref["logits_train"]) <= PARITY
    where = {"block": "0.0", "residual": "1.fn.0", "out": "2"}
    for j, head in enumerate(model.heads):
        for part, key in where.items():
            conv = head.out if part == "out" else getattr(head, part).conv
            expected = ref[f"u_after_{j}.{key}.weight_u"]
            np.testing.assert_allclose(np.asarray(conv.u.get_value()), expected, atol=1e-5)


def test_gradients_reach_images_and_heads(ref):
    """The generator's adversarial gradient flows through the frozen DINO to the images."""
    model = load()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
        return vanilla_g_loss(nnx.merge(graphdef, params, rest)(x))

    gp, gx = jax.grad(loss, argnums=(0, 1))(params, images(ref)[:1])
    assert float(jnp.abs(gx).max()) > 0
    assert float(jnp.abs(gp["heads"][0]["out"]["kernel"].get_value()).max()) > 0


def test_bilinear_matrix_rows():
    m = bilinear_matrix(64, 224)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(bilinear_matrix(8, 8), np.eye(8))


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_diffaug_matches_official(ref, ratio):
    out = diffaug_apply(jnp.asarray(ref["aug_x"]), jnp.asarray(ref["aug_apply"]),
                        jnp.asarray(ref["aug_r"]), cutout=ratio)
    assert rel_err(out, ref[f"aug_out_cut{int(ratio * 100)}"]) <= PARITY


def test_diffaug_draws_and_identity(ref):
    x = jnp.asarray(ref["aug_x"])
    np.testing.assert_array_equal(diffaug(jax.random.key(0), x, prob=0.0), x)
    a, b = diffaug(jax.random.key(1), x), diffaug(jax.random.key(2), x)
    assert a.shape == x.shape and float(jnp.abs(a - b).max()) > 0


def test_gan_losses_closed_form():
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
    # relu(1 − real) = (0, .5, 2); relu(1 + fake) = (0, 1, 2)
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 3.0 / 3))
    assert float(vanilla_g_loss(fake)) == pytest.approx(1.0 / 3)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="dino_deitsmall8_pretrain"):
        load_dino_discriminator(tmp_path / "missing.pth")
    lpips_heads = FIXTURE.parent / "lpips" / "vgg.safetensors"
    with pytest.raises(ValueError, match="does not hold a DINO ViT"):
        load_dino_discriminator(lpips_heads)
    with pytest.raises(ValueError, match="no DinoDisc heads"):
        load_dino_discriminator(FIXTURE / "dino.safetensors", lpips_heads, num_heads=2)
    with pytest.raises(WeightMismatchError):
        load_dino_discriminator(FIXTURE / "dino.safetensors", FIXTURE / "heads.safetensors",
                                num_heads=2)  # default key depths: 2 heads, the file has 3
