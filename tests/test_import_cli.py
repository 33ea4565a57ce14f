"""launch/import_checkpoint.py: an official DiT checkpoint (the tiny fixture of
tests/make_dit_fixture.py) becomes a run directory that launch/sample.py samples with DiT's own
settings (respaced DDPM, learned variance, guidance of the first 3 channels), decoded by the
autoencoder; exporting it gives back the official file bit for bit; bad input is one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import error_line, make_tiny_vae, xla_flags
from safetensors.numpy import load_file

from vdm_jax.checkpoints.restore import load_for_inference
from vdm_jax.config import sampling_spec
from vdm_jax.data.adm_npz import load_samples
from vdm_jax.importers.dit import import_dit
from vdm_jax.model import with_compute_dtype
from vdm_jax.nn.blocks import stack_layers, unstack_layers

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dit" / "official_weights.safetensors"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "XLA_FLAGS": xla_flags(1)}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=600)


def _import(workdir: Path, vae: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=dit",
                f"--checkpoint={FIXTURE}", f"--workdir={workdir}",
                f"--config.autoencoder.weights={vae}", "--num_heads=4", *extra)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("import")
    vae = make_tiny_vae(root / "vae")
    proc = _import(root / "run", vae)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"run": root / "run", "vae": vae, "root": root}


def test_imported_run_holds_the_file_and_samples_as_dit(imported):
    restored = load_for_inference(imported["run"])
    expected = import_dit(FIXTURE, format="dit", num_heads=4).params
    # The ImageNet recipe scans over layers: the run holds the blocks stacked.
    held = unstack_layers(jax.device_get(restored.params["denoiser"]))
    for a, b in zip(jax.tree.leaves(held), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    spec = restored.config.model.spec
    assert (spec.time_scale, spec.time_shift) == (1000.0, -1.0) and restored.model.learn_sigma
    assert restored.data.pixel_shape == (16, 16, 3)  # 8×8 latents of an f = 2 autoencoder
    out = imported["root"] / "s.npz"
    proc = _run(str(ROOT / "launch" / "sample.py"), f"--workdir={imported['run']}",
                "--num_samples=4", "--batch_size=4", "--steps=4", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch = load_samples(out)
    assert batch.images.shape == (4, 16, 16, 3) and batch.images.dtype == np.uint8
    settings = (imported["root"] / "s.json").read_text()
    for fragment in ('"variance": "learned"', '"spacing": "ddpm_respaced"',
                     '"guidance_channels": 3', '"guidance_scale": 1.5', '"dtype": "float32"'):
        assert fragment in settings, fragment


def test_imported_run_samples_in_the_sources_float32(imported):
    """The ImageNet recipe trains in bfloat16, but an imported DiT samples as DiT's sample.py
    does, in float32 (sample.dtype, set by the import): the network it samples with matches the
    official one to 1e-5 relative at every step of the fixture; its bfloat16 model does not."""
    restored = load_for_inference(imported["run"])
    config = restored.config
    assert config.model.dtype == "bfloat16" and config.sample.dtype == "float32"
    spec = sampling_spec(config).resolve_dtype(config.model.dtype)
    assert spec.dtype == "float32" and "_f32_" in spec.slug()
    ref = np.load(FIXTURE.parent / "reference_dit.npz")
    x = jnp.asarray(ref["x"].transpose(0, 2, 3, 1))
    t = jnp.asarray((ref["step"] + 1) / 1000.0, jnp.float32)  # DiT's index k is our level k + 1
    y = jnp.asarray(ref["y"], jnp.int32)

    def worst(model):
        out = np.asarray(model.network(restored.params, x, t, y)).transpose(0, 3, 1, 2)
        return max(float(np.max(np.abs(o - r)) / np.max(np.abs(r)))
                   for o, r in zip(out, ref["out"], strict=True))

    sampled = with_compute_dtype(restored.model, config, restored.data, spec.dtype)
    assert worst(sampled) <= 1e-5
    assert worst(restored.model) > 1e-3  # the training dtype: the difference the issue measured


def test_export_gives_back_the_official_file(imported, tmp_path):
    out = tmp_path / "exported.safetensors"
    proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=dit",
                f"--workdir={imported['run']}", f"--export={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    original, exported = load_file(str(FIXTURE)), load_file(str(out))
    assert sorted(original) == sorted(exported)
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)


@pytest.mark.parametrize("case", ["missing_checkpoint", "workdir_has_a_run", "no_autoencoder"])
def test_bad_input_exits_2(case, imported, tmp_path):
    workdir = tmp_path / "run"
    if case == "missing_checkpoint":
        proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=dit",
                    f"--checkpoint={tmp_path / 'absent.pt'}", f"--workdir={workdir}",
                    "--num_heads=4", f"--config.autoencoder.weights={imported['vae']}")
        expected = r"absent\.pt"
    elif case == "workdir_has_a_run":
        workdir = imported["run"]
        proc = _import(workdir, imported["vae"])
        expected = r"already holds a run"
    else:
        proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=dit",
                    f"--checkpoint={FIXTURE}", f"--workdir={workdir}", "--num_heads=4")
        expected = r"autoencoder\.weights"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(expected, error_line(proc.stderr)), proc.stderr[-2000:]
    if case != "workdir_has_a_run":
        assert not workdir.exists()


def test_rae_dit_imports_into_a_latent_run_and_exports_back(latent_setup, tmp_path):
    """--format=rae_dit: a DiT^DH state dict in RAE's layout (exported from a random network of
    the latent dataset's shape) becomes a run of that latent dataset whose network is the file's,
    and --export gives the file back; a dataset of another shape is refused in one line."""
    from flax import nnx

    from vdm_jax.config import default_config
    from vdm_jax.data import dataset_info
    from vdm_jax.importers.common import save_state_dict
    from vdm_jax.importers.rae_dit import export_rae_dit
    from vdm_jax.model import DataSpec
    from vdm_jax.nn.registry import build_model

    c = default_config()
    c.data.name, c.data.kind = "image_folder", "latents"
    c.data.image_folder = str(latent_setup["images"])
    c.data.data_dir = str(latent_setup["data_dir"])
    c.data.latent_dir = str(latent_setup["latents"])
    data = DataSpec.from_info(dataset_info(c.data))
    h, _, ch = data.image_shape
    spec = dict(family="dit_dh", depth=1, hidden_size=16, num_heads=1, patch_size=1,
                head_depth=1, head_hidden_size=24, head_num_heads=2)
    net = build_model(spec, input_size=h, in_channels=ch, num_classes=data.num_classes,
                      rngs=nnx.Rngs(3))
    official = export_rae_dit(spec, nnx.to_pure_dict(nnx.state(net)), input_size=h)
    ckpt = save_state_dict(tmp_path / "stage2_model.safetensors", official)
    common = (f"--checkpoint={ckpt}", f"--config.data.image_folder={latent_setup['images']}",
              f"--config.data.data_dir={latent_setup['data_dir']}",
              "--config.data.name=image_folder",
              f"--config.autoencoder.weights={latent_setup['vae']}",
              f"--config.data.image_size={data.pixel_shape[0]}")
    proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=rae_dit",
                f"--workdir={tmp_path / 'run'}",
                f"--config.data.latent_dir={latent_setup['latents']}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = load_for_inference(tmp_path / "run")
    assert restored.model.network_family == "dit_dh" and restored.model.prediction == "flow"
    assert restored.model.time_shift == pytest.approx((h * h * ch / 4096) ** 0.5)  # 'dimension'
    assert restored.config.model.scan_layers  # configs/imagenet_rae.py scans its blocks
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.device_get(restored.params["denoiser"]),
                 stack_layers(nnx.to_pure_dict(nnx.state(net))))
    out = tmp_path / "back.safetensors"
    proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=rae_dit",
                f"--workdir={tmp_path / 'run'}", f"--export={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    back = load_file(out)
    assert set(back) == set(official)
    assert all(np.array_equal(back[k], official[k]) for k in official)
    proc = _run(str(ROOT / "launch" / "import_checkpoint.py"), "--format=rae_dit",
                f"--workdir={tmp_path / 'run2'}", *common)  # no latent dataset
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:")
    assert "latent_dir" in proc.stderr and not (tmp_path / "run2").exists()
