"""Shared test setup: 8 virtual CPU devices for sharding tests and a shared compilation cache (set
before JAX initializes), and a session-wide latent dataset made from real photos by a tiny random
SD-VAE-shaped autoencoder."""

import fcntl
import functools
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from vdm_jax.parallel import host

# Compilation dominates the tests' tiny programs, so the suite compiles cheaply: XLA's backend
# optimizations (LLVM) off, and XLA:CPU's older elemental emitters instead of its MLIR fusion
# emitters (a 1-block DiT train step compiles in 1.5 s instead of 5.8 s). Results agree with
# users' programs to float rounding; tests compare like with like. Subprocesses the tests start
# get the same flags (`xla_flags`).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process or subprocess: `devices` virtual CPU devices, fast compiles."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# With libtpu installed (the test extra, for the ahead-of-time TPU compiles of test_compile.py):
# xdist workers and the launch scripts the tests start load it side by side, silently.
os.environ.update(host.tpu_settings())
# One persistent XLA compilation cache for the session, inherited by the xdist workers and every
# subprocess a test starts (the launch scripts): tests build the same tiny models again and
# again, and eager ops compile one program each (~0.1 s apiece on this CPU). Every program is
# cached however fast it compiled; results are those of a fresh compilation.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"vdm_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# No size cap: with one, JAX takes a global file lock and scans the whole cache on every write
# (seconds per write once it holds thousands of programs). A reader that meets an entry being
# written fails to read it, warns and compiles afresh.

PHOTO_CROPS = 6  # crops per photo and split: 2 classes × 6 train + 2 × 2 eval images
PIXELS = 32  # ImageFolder crop size of the latent tests; the tiny VAE halves it (f = 2)


def write_photo_folder(root: Path, per_class: int = PHOTO_CROPS, eval_per_class: int = 2) -> Path:
    """An ImageFolder cut from the two photos that ship with scikit-learn (china, flower): class =
    photo, images = 96×128 crops at fixed offsets (train/ and val/), JPEG."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    for photo, path in zip(photos.images, photos.filenames, strict=True):
        name = Path(path).stem
        offsets = [(30 * i % 320, 40 * i % 500) for i in range(per_class + eval_per_class)]
        for i, (top, left) in enumerate(offsets):
            split = "train" if i < per_class else "val"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo[top:top + 96, left:left + 128]).save(folder / f"{i:02d}.jpg")
    return root


def make_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A random 2-level AutoencoderKL (f = 2, 4 latent channels) saved as a diffusers folder."""
    from vdm_jax.importers.sd_vae import save_autoencoder
    from vdm_jax.nn.autoencoders.sd_vae import AutoencoderConfig, random_autoencoder

    cfg = AutoencoderConfig(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32)
    return save_autoencoder(random_autoencoder(cfg, seed=seed), folder)


@pytest.fixture(scope="session")
def latent_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"images": ImageFolder root, "vae": tiny VAE folder, "latents": its latent dataset (chunks
    of 4), "data_dir": tfds cache}, made once per session and worker (a file lock keeps xdist
    workers from building it twice)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "latent_setup"
    root.mkdir(exist_ok=True)
    paths = {"images": root / "photos", "vae": root / "vae", "latents": root / "latents",
             "data_dir": root / "tfds"}
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            from vdm_jax import config as config_lib
            from vdm_jax.pipelines.encode_latents import encode_latents

            write_photo_folder(paths["images"])
            make_tiny_vae(paths["vae"])
            config = photo_config(paths)
            encode_latents(config, paths["latents"], chunk_size=4, batch_size=8, progress=False)
            config_lib.validate(photo_config(paths, latents=True))
            (root / "done").touch()
    return paths


def encode_latents_killed(config, out: Path, chunks: int = 2, leave_temporary: bool = False):
    """encode_latents of `config` into `out` (chunks of 4, as latent_setup's), killed
    (KeyboardInterrupt) once `chunks` chunks are written; with `leave_temporary` the kill leaves
    a temporary file, as one mid-write does."""
    from vdm_jax.pipelines import encode_latents as encode_lib

    real, written = encode_lib._write_chunk, []

    def dying(path, moments, labels):
        if len(written) == chunks:
            if leave_temporary:
                (path.parent / f".{path.name}.killed.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        real(path, moments, labels)
        written.append(path)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(encode_lib, "_write_chunk", dying)
        with pytest.raises(KeyboardInterrupt):
            encode_lib.encode_latents(config, out, chunk_size=4, batch_size=8, progress=False)


def assert_same_latents(out: Path, reference: Path) -> None:
    """The latent dataset `out` is `reference`: the same chunk files, byte for byte, and the same
    metadata but for where the autoencoder's weights lay (its path and weights file)."""
    import json

    files = sorted(p.relative_to(reference) for p in reference.rglob("*.array_record"))
    assert files == sorted(p.relative_to(out) for p in out.rglob("*.array_record"))
    for rel in files:
        assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel

    def meta(root: Path) -> dict:
        m = json.loads((root / "metadata.json").read_text())
        return {**m, "autoencoder": {k: v for k, v in m["autoencoder"].items()
                                     if k not in ("path", "weights_file")}}

    assert meta(out) == meta(reference)


def photo_config(paths: dict[str, Path], latents: bool = False):
    """A tiny class-conditional DiT config on the photo ImageFolder (pixels, or its latents)."""
    from vdm_jax import config as config_lib

    c = config_lib.default_config()
    c.data.name = "image_folder"
    c.data.image_folder = str(paths["images"])
    c.data.data_dir = str(paths["data_dir"])
    c.data.image_size = PIXELS
    c.autoencoder.weights = str(paths["vae"])
    if latents:
        c.data.kind = "latents"
        c.data.latent_dir = str(paths["latents"])
        c.data.random_flip = True
    c.model.spec = dict(family="dit", depth=1, hidden_size=32, num_heads=2, patch_size=2)
    c.optim.ema_decays = (0.9,)
    c.train.num_steps = 2
    c.train.global_batch_size = 8
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.sample.num_images = 8
    c.sample.num_steps = 2
    c.eval.at_end = False
    return c


@pytest.fixture(scope="session")
def digits_classifier_cache(tmp_path_factory, worker_id) -> Path:
    """One directory for the digits metric classifier, shared by the session's xdist workers:
    the classifier is trained once per session, not once per test (its file name hashes the
    data, seed and recipe, and it is written atomically, so concurrent writers agree)."""
    root = tmp_path_factory.getbasetemp()
    path = (root if worker_id == "master" else root.parent) / "digits_classifier_cache"
    path.mkdir(exist_ok=True)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]] | None:
    """{relative path: (size, mtime_ns)} of everything under `root`, directories included; None
    when it is absent: equal before and after a command that wrote nothing there."""
    root = Path(root)
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def error_line(stderr: str) -> str:
    """The one `error: ...` line of a refused command's stderr (bad input, a stopped run): no
    traceback, exactly one such line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def rel_err(a, b) -> float:
    """max |a − b| / max |b| in float64: a parity test's error relative to the output's scale."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@functools.cache
def _perturb():
    """The jitted perturbation of `randomize` (JAX is imported here, after the settings above)."""
    import jax

    @jax.jit
    def perturb(state, key, scale):
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(key, len(leaves))
        leaves = [p + scale * jax.random.normal(k, p.shape)
                  for k, p in zip(keys, leaves, strict=True)]
        return jax.tree.unflatten(treedef, leaves)

    return perturb


def randomize(module, seed: int = 1, scale: float = 0.05) -> None:
    """Every parameter of the NNX `module` (the zero-initialized ones included) plus
    scale · N(0, 1) noise drawn from key(seed), in place, so that outputs are nonzero."""
    import jax
    from flax import nnx

    nnx.update(module, _perturb()(nnx.state(module, nnx.Param), jax.random.key(seed), scale))
