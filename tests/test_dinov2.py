"""DINOv2 (vdm_jax.nn.encoders.dinov2 + vdm_jax.importers.dinov2) against the reference
implementations, through the fixture of tests/make_dinov2_fixture.py (tiny random models saved
in the Hugging Face and torch-hub layouts; outputs of transformers 5.24 and of the
facebookresearch/dinov2 hub code; PyTorch's bicubic resampling; full-size parameter counts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from vdm_jax.importers.common import WeightMismatchError
from vdm_jax.importers.dinov2 import dinov2_config_from_hf, load_dinov2
from vdm_jax.nn.encoders.dinov2 import (
    SIZES,
    DinoV2,
    DinoV2Config,
    abstract_dinov2,
    preprocess,
    resample_matrix,
)

FIX = Path(__file__).parent / "fixtures" / "dinov2"
NAMES = ("dinov2", "dinov2_reg", "dinov2_swiglu")
PARTS = ("cls", "reg", "patch")
OUT_KEYS = {"cls": "x_norm_clstoken", "reg": "x_norm_regtokens", "patch": "x_norm_patchtokens"}
TOL = 1e-5  # relative: max |a − b| / max |b|, float32

# One compilation per (architecture, resampling, input shape); eager dispatch is slower here.
features = nnx.jit(lambda model, x: model(x))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if b.size == 0:
        assert a.shape == b.shape
        return 0.0
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIX / "outputs.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def hf_models():
    return {name: load_dinov2(FIX / f"hf_{name}") for name in NAMES}


def check(out: dict, ref: dict, prefix: str) -> list[float]:
    errs = []
    for part in PARTS:
        got, want = np.asarray(out[OUT_KEYS[part]]), ref[f"{prefix}_{part}"]
        assert got.shape == want.shape, (part, got.shape, want.shape)
        errs.append(rel(got, want))
    assert max(errs) <= TOL, (prefix, errs)
    return errs


# ------------------------------------------------------------------------------------------------
# Parity with transformers and with the torch-hub code
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, grid", [(n, g) for n in NAMES for g in ("square", "interp")] + [("dinov2", "crop")]
)
def test_hf_layout_matches_transformers(hf_models, ref, name, grid):
    """HF folder → NNX; pretraining grid, resampled 3×6 grid, and a 45×87 input (cropped)."""
    check(features(hf_models[name], jnp.asarray(ref[f"img_{grid}"])), ref, f"hf_{name}_{grid}")


@pytest.mark.parametrize("grid", ["square", "interp"])
@pytest.mark.parametrize("name", NAMES)
def test_hub_resampling_matches_hub_code(ref, name, grid):
    """The torch hub's own position-embedding resampling (offset 0.1 without registers,
    antialiased with registers), with the weights read from the HF folder (no torch)."""
    model = load_dinov2(FIX / f"hf_{name}", interpolation="hub")
    check(features(model, jnp.asarray(ref[f"img_{grid}"])), ref, f"hub_{name}_{grid}")


@pytest.mark.parametrize("name", NAMES)
def test_hub_layout_matches_both_references(ref, name):
    """torch-hub .pth → NNX: the hub's outputs by default, transformers' with its resampling."""
    pytest.importorskip("torch")
    hub = load_dinov2(FIX / f"hub_{name}.pth", num_heads=2)
    as_hf = load_dinov2(FIX / f"hub_{name}.pth", num_heads=2, interpolation="transformers")
    for grid in ("square", "interp"):
        x = jnp.asarray(ref[f"img_{grid}"])
        check(features(hub, x), ref, f"hub_{name}_{grid}")
        check(features(as_hf, x), ref, f"hf_{name}_{grid}")


def test_layouts_give_identical_parameters():
    pytest.importorskip("torch")
    for name in NAMES:
        a = nnx.state(load_dinov2(FIX / f"hf_{name}"))
        b = nnx.state(load_dinov2(FIX / f"hub_{name}.pth", num_heads=2))
        for (pa, va), (pb, vb) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b), strict=True):
            assert pa == pb
            np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def test_intermediate_layer_and_mask_token(hf_models, ref):
    model = hf_models["dinov2"]
    x, masks = jnp.asarray(ref["img_square"]), jnp.asarray(ref["mask"])
    out = nnx.jit(lambda m, x: m(x, layers=(0,)))(model, x)
    assert rel(out["layers"][0], ref["hf_dinov2_square_layer0"]) <= TOL
    masked = nnx.jit(lambda m, x, k: m(x, masks=k))(model, x, masks)
    assert rel(masked["x_norm_patchtokens"], ref["hf_dinov2_mask_patch"]) <= TOL
    # the mask changes the output (the test would otherwise not see the mask token)
    assert rel(out["x_norm_patchtokens"], ref["hf_dinov2_mask_patch"]) > 1e-2


def test_bfloat16_compute_close_to_float32_reference(ref):
    model = load_dinov2(FIX / "hf_dinov2_reg", dtype=jnp.bfloat16)
    out = features(model, jnp.asarray(ref["img_interp"]))
    assert out["x_norm_patchtokens"].dtype == jnp.float32
    assert rel(out["x_norm_patchtokens"], ref["hf_dinov2_reg_interp_patch"]) < 3e-2


# ------------------------------------------------------------------------------------------------
# Resampling, preprocessing, configs, parameter counts
# ------------------------------------------------------------------------------------------------


RESAMPLE = {  # case → (antialias, scale factors or None) as generated
    "s4_to_3x6": (False, None),
    "s4_to_3x6_aa": (True, None),
    "s4_to_3x6_offset": (False, (3.1 / 4, 6.1 / 4)),
    "s37_to_16": (False, None),
    "s37_to_16_aa": (True, None),
    "s37_to_16_offset": (False, (16.1 / 37, 16.1 / 37)),
    "s37_to_40x64_aa": (True, None),
}


@pytest.mark.parametrize("case", sorted(RESAMPLE))
def test_resample_matrix_matches_torch_interpolate(case):
    with np.load(FIX / "resample.npz") as z:
        x, want = z[case + "_in"].astype(np.float64), z[case + "_out"]
    antialias, scale = RESAMPLE[case]
    (_, h, w, _), (_, oh, ow, _) = x.shape, want.shape
    sh, sw = scale or (None, None)
    rh = resample_matrix(h, oh, antialias=antialias, scale_factor=sh)
    rw = resample_matrix(w, ow, antialias=antialias, scale_factor=sw)
    got = np.einsum("oh,bhwc,pw->bopc", rh, x, rw)
    assert rel(got, want) <= TOL  # PyTorch computes positions and weights in float32


def test_resample_rules_differ_from_jax_image_resize():
    """PyTorch's non-antialiased bicubic (a = −0.75, clamped) is not jax.image.resize's
    (a = −0.5, renormalized): the reason for resample_matrix."""
    with np.load(FIX / "resample.npz") as z:
        x, want = z["s37_to_16_in"], z["s37_to_16_out"]
    jax_resized = jax.image.resize(x, want.shape, "cubic", antialias=False)
    assert rel(jax_resized, want) > 1e-3


@pytest.mark.parametrize("case", ["repa_down", "repa_up"])
def test_preprocess_matches_repa(case):
    with np.load(FIX / "resample.npz") as z:
        x, want = z[case + "_in"], z[case + "_out"]
    got = preprocess(jnp.asarray(x), 28)
    assert got.shape == want.shape and rel(got, want) <= 1e-5


def test_param_counts_match_transformers():
    counts = json.loads((FIX / "param_counts.json").read_text())["counts"]
    assert len(counts) == 2 * len(SIZES)
    for size in SIZES:
        for regs in (0, 4):
            model = abstract_dinov2(DinoV2Config.for_size(size, registers=regs))
            n = sum(v.size for v in jax.tree.leaves(nnx.state(model)))
            assert n == counts[f"{size}_reg{regs}"], (size, regs, n)


def test_abstract_model_equals_eval_shape_of_the_model():
    """abstract_dinov2's shortcut (shell + cloned abstract blocks) builds the same module."""
    cfg = DinoV2Config(hidden_size=16, num_layers=3, num_heads=2, image_size=56, swiglu=True,
                       num_registers=4)
    fast = nnx.split(abstract_dinov2(cfg, dtype=jnp.bfloat16))
    full = nnx.split(nnx.eval_shape(lambda: DinoV2(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))))
    assert fast[0] == full[0]
    shapes = lambda s: jax.tree.map(lambda v: (v.shape, v.dtype), s)
    assert shapes(fast[1]) == shapes(full[1])


def test_configs_from_files_and_names():
    for name, regs in (("dinov2", 0), ("dinov2_reg", 4)):
        hf = json.loads((FIX / f"hf_{name}" / "config.json").read_text())
        cfg = dinov2_config_from_hf(hf)
        assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (16, 2, 2)
        assert (cfg.num_registers, cfg.pos_grid, cfg.patch_size) == (regs, 4, 14)
        assert cfg.pos_antialias == bool(regs) and cfg.pos_offset == 0.0
        assert load_dinov2(FIX / f"hf_{name}").cfg == cfg
    swiglu = dinov2_config_from_hf(json.loads((FIX / "hf_dinov2_swiglu/config.json")
                                              .read_text()))
    assert swiglu.swiglu and swiglu.ffn_hidden == 48  # ⌈⌊64·2/3⌋ / 8⌉·8
    hub = DinoV2Config.for_size("vitg14", interpolation="hub")
    assert (hub.pos_antialias, hub.pos_offset, hub.pos_grid) == (False, 0.1, 37)
    assert DinoV2Config.for_size("vitb14", registers=4, interpolation="repa").pos_antialias


# ------------------------------------------------------------------------------------------------
# Bad input: one clear ValueError / FileNotFoundError
# ------------------------------------------------------------------------------------------------


def test_missing_path_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dinov2(tmp_path / "nope.pth")
    assert "dinov2_vitb14_pretrain.pth" in str(e.value) and "facebook/dinov2-base" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        load_dinov2(tmp_path / "nope", size="vitl14", registers=4)
    msg = str(e.value)
    assert "dinov2_vitl14_reg4_pretrain.pth" in msg and "dinov2-with-registers-large" in msg
    with pytest.raises(FileNotFoundError, match=r"without model\.safetensors"):
        load_dinov2(tmp_path)


def test_wrong_size_or_registers_requested():
    with pytest.raises(ValueError, match=r"D=16, 2 blocks\) without registers, but ViT-B/14"):
        load_dinov2(FIX / "hf_dinov2", size="vitb14")
    with pytest.raises(ValueError, match="with 4 registers was requested"):
        load_dinov2(FIX / "hf_dinov2", registers=4)
    with pytest.raises(ValueError, match="unknown DINOv2 size"):
        load_dinov2(FIX / "hf_dinov2", size="vitx14")


def test_another_models_weights(tmp_path):
    f = tmp_path / "dit.safetensors"
    save_file({"x_embedder.weight": np.zeros((4, 4), np.float32)}, str(f))
    with pytest.raises(ValueError, match="does not hold DINOv2 weights") as e:
        load_dinov2(f)
    assert "x_embedder.weight" in str(e.value)


def test_corrupt_file(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(FIX / "hf_dinov2", d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"not a readable \.safetensors file"):
        load_dinov2(d)
    (d / "model.safetensors").write_bytes((FIX / "hf_dinov2/model.safetensors").read_bytes())
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        load_dinov2(d)


def test_missing_misshaped_unexpected_tensors_in_one_message(tmp_path):
    sd = load_file(str(FIX / "hf_dinov2/model.safetensors"))
    del sd["encoder.layer.1.mlp.fc2.bias"]
    sd["layernorm.weight"] = np.ones(17, np.float32)
    sd["classifier.weight"] = np.ones((3, 16), np.float32)
    d = tmp_path / "hf"
    d.mkdir()
    shutil.copy(FIX / "hf_dinov2/config.json", d / "config.json")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(WeightMismatchError) as e:
        load_dinov2(d)
    msg = str(e.value)
    assert "missing tensors (1)" in msg and "encoder.layer.1.mlp.fc2.bias" in msg
    assert "misshaped tensors (1)" in msg and "layernorm.weight: got (17,), expected (16,)" in msg
    assert "unexpected tensors (1)" in msg and "classifier.weight" in msg


def test_config_json_of_another_model(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(FIX / "hf_dinov2", d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 768}))
    with pytest.raises(ValueError, match="mixes two models"):
        load_dinov2(d)


def test_hub_file_with_missing_qkv_listed_once(tmp_path):
    torch = pytest.importorskip("torch")
    sd = torch.load(FIX / "hub_dinov2.pth", weights_only=True)
    del sd["blocks.0.attn.qkv.weight"]
    torch.save(sd, tmp_path / "hub.pth")
    with pytest.raises(WeightMismatchError, match=r"missing tensors \(1\)"):
        load_dinov2(tmp_path / "hub.pth", num_heads=2)
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_dinov2(tmp_path / "bad.pth")
