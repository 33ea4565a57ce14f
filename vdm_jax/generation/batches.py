"""Large sample batches from a trained run, resumable: what launch/sample.py does.

    restored = load_for_inference("workdirs/digits_dit")
    out = generate_samples(restored, "workdirs/digits_dit/samples/x.npz", num_samples=50_000,
                           batch_size=500, sampler="ddpm", num_steps=250, guidance_scale=1.5)

The N samples are drawn in C = ⌈N / B⌉ chunks of B = batch_size. Chunk i draws the class labels
y[iB : (i + 1)B] of the fixed class-balanced list y_j = j mod K (`class_balanced_labels`; no
labels for unconditional models) with rng fold_in(key(seed), i), so every chunk, and the result,
is a function of (checkpoint, settings, seed, B) alone: a job killed at any point and rerun with
the same settings writes exactly the same N samples as an uninterrupted one.

Each finished chunk is written atomically (temporary file + os.replace) to
DIR/NAME.chunks/chunk_%06d.npz (uint8 images (B, H, W, C), labels (B,)), next to a manifest of
the settings; a rerun recomputes only the missing chunks (chunks of other settings are discarded).
At the end the first N samples become the ADM batch DIR/NAME.npz (`arr_0` uint8 NHWC, `arr_1`
labels of conditional models), their settings DIR/NAME.json (`settings_path`, merged into the
results by launch/evaluate.py), a PNG grid DIR/NAME.png of the first ≤ 100, and the chunk
directory is removed. Rerunning a finished job with the same settings does nothing.

Multi-host: every process runs every chunk (the global batch, sharded over all devices when B is
a multiple of their number), the output is gathered to the hosts, and only process 0 reads or
writes files; the list of missing chunks is process 0's, broadcast to the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vdm_jax.checkpoints.restore import Restored
from vdm_jax.core import samplers
from vdm_jax.evaluation.evaluate import settings_path, unit_to_uint8, write_json_atomic
from vdm_jax.evaluation.reference import save_samples
from vdm_jax.generation.generate import class_balanced_labels, make_generate_fn, save_grid
from vdm_jax.parallel import mesh as mesh_lib

__all__ = ["SamplingResult", "chunk_dir", "generate_samples", "sample_settings"]

log = logging.getLogger(__name__)

GRID_IMAGES = 100
_CHUNK_RE = re.compile(r"chunk_(\d{6})\.npz")
# Settings that do not change any sample: a job may resume with other values of these (a longer
# or shorter N reuses the chunks, since chunk i does not depend on N).
_NOT_IN_MANIFEST = ("num_samples", "nfe", "num_devices", "num_processes")


@dataclasses.dataclass(frozen=True)
class SamplingResult:
    """Paths of the ADM sample batch, its PNG grid and settings JSON, and the settings."""

    npz: Path
    grid: Path
    settings_json: Path
    settings: dict[str, Any]


def chunk_dir(npz_path: str | os.PathLike) -> Path:
    """Where the chunks of DIR/NAME.npz live while it is generated: DIR/NAME.chunks."""
    return Path(npz_path).with_suffix(".chunks")


def _chunk_path(directory: Path, i: int) -> Path:
    return directory / f"chunk_{i:06d}.npz"


def sample_settings(
    restored: Restored,
    *,
    num_samples: int,
    batch_size: int,
    sampler: str,
    num_steps: int,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    **sampler_options: Any,
) -> dict[str, Any]:
    """The JSON-ready record of everything that produced a sample batch; validates the values
    (ValueError naming the bad one)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_steps < 1:
        raise ValueError(f"the number of sampler steps must be positive, got {num_steps}")
    nfe = samplers.nfe(sampler, num_steps)  # ValueError naming the samplers for an unknown one
    if guidance_interval is not None:
        lo, hi = (float(v) for v in guidance_interval)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"guidance interval must satisfy 0 <= lo < hi <= 1, got {lo},{hi}")
        guidance_interval = (lo, hi)
    model = restored.model
    guided = bool(model.num_classes) and guidance_scale != 1.0
    return {
        "sampler": sampler,
        "steps": int(num_steps),
        # Guidance runs conditional and null batches as one 2B pass per evaluation.
        "nfe": nfe,
        "nfe_batch_multiplier": 2 if guided else 1,
        "sampler_options": dict(sorted(sampler_options.items())),
        "guidance_scale": float(guidance_scale),
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "ema": restored.ema or "none",
        "checkpoint_step": int(restored.step),
        "workdir": str(Path(workdir).resolve()) if workdir is not None else None,
        "num_samples": int(num_samples),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "class_balanced": bool(model.num_classes),
        "num_classes": int(model.num_classes),
        "dataset": restored.config.data.name,
        "image_shape": list(model.image_shape),
        "num_levels": int(model.num_levels),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }


def _manifest(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _NOT_IN_MANIFEST}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _already_done(npz: Path, settings: dict[str, Any]) -> bool:
    """A finished batch of these settings: the JSON (written after the .npz) matches."""
    done = _read_json(settings_path(npz))
    return (npz.is_file() and isinstance(done, dict)
            and done.get("num_samples") == settings["num_samples"]
            and _manifest(done) == json.loads(json.dumps(_manifest(settings))))


def _prepare_chunk_dir(directory: Path, settings: dict[str, Any], num_chunks: int) -> np.ndarray:
    """Process 0: (num_chunks,) bool, True where chunk i is still missing. Discards the chunks of
    other settings and temporary files of killed writers."""
    manifest = json.loads(json.dumps(_manifest(settings)))  # as it reads back from JSON
    manifest_path = directory / "manifest.json"
    if directory.is_dir() and _read_json(manifest_path) != manifest:
        log.warning("%s holds chunks of other settings: discarding them.", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json_atomic(manifest_path, manifest)
    missing = np.ones((num_chunks,), bool)
    for f in directory.iterdir():
        m = _CHUNK_RE.fullmatch(f.name)
        if m and int(m.group(1)) < num_chunks:
            missing[int(m.group(1))] = False
        elif f.name.endswith(".tmp"):
            f.unlink()
    return missing


def _write_chunk(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images=images, labels=labels)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_chunk(path: Path, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        images, labels = npz["images"], npz["labels"]
    if len(images) != batch_size or len(labels) != batch_size:
        raise ValueError(f"chunk {path} holds {len(images)} samples, expected {batch_size}: "
                         f"delete {path.parent} and rerun")
    return images, labels


def generate_samples(
    restored: Restored,
    out: str | os.PathLike,
    *,
    num_samples: int,
    batch_size: int,
    sampler: str,
    num_steps: int,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
    **sampler_options: Any,
) -> SamplingResult:
    """Draws `num_samples` images from `restored` into the ADM batch `out` (DIR/NAME.npz), in
    resumable chunks of `batch_size` (module docstring). Returns the paths and settings.

    sampler, num_steps and sampler_options (eta, variance, spacing, shift, t_min, t_max,
    lower_order_final) go to `samplers.sample`; guidance_scale and guidance_interval = (t_lo,
    t_hi) to classifier-free guidance (conditional models only). `workdir` is recorded in the
    settings. Bad values raise ValueError before anything is written.
    """
    npz = Path(out)
    if npz.suffix != ".npz":
        raise ValueError(f"the sample batch must be a .npz file, got {npz}")
    settings = sample_settings(
        restored, num_samples=num_samples, batch_size=batch_size, sampler=sampler,
        num_steps=num_steps, guidance_scale=guidance_scale, guidance_interval=guidance_interval,
        seed=seed, workdir=workdir, **sampler_options,
    )
    model, mesh = restored.model, restored.mesh
    if batch_size % mesh.size and jax.process_count() > 1:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {mesh.size} devices "
                         "on more than one host")
    sharding = mesh_lib.batch_sharding(mesh) if batch_size % mesh.size == 0 else None
    interval = settings["guidance_interval"]
    fn = make_generate_fn(
        model, batch_size, sampler=sampler, num_steps=num_steps, guidance_scale=guidance_scale,
        guidance_interval=tuple(interval) if interval else None, sharding=sharding,
        **sampler_options,
    )
    num_chunks = math.ceil(num_samples / batch_size)
    all_labels = class_balanced_labels(num_chunks * batch_size, model.num_classes)
    key = jax.random.key(seed)
    # Tracing checks the sampler options (eta, variance, spacing, ...) before any file exists.
    jax.eval_shape(fn, restored.params, all_labels[:batch_size], key)

    is_main = jax.process_index() == 0
    result = SamplingResult(npz, npz.with_suffix(".png"), settings_path(npz), settings)
    directory = chunk_dir(npz)
    # (missing chunks..., finished): process 0's view of the files, shared with every process.
    state = np.zeros((num_chunks + 1,), bool)
    if is_main:
        if _already_done(npz, settings):
            state[-1] = True
        else:
            settings_path(npz).unlink(missing_ok=True)  # never leave settings of other samples
            state[:-1] = _prepare_chunk_dir(directory, settings, num_chunks)
    if jax.process_count() > 1:
        state = np.asarray(multihost_utils.broadcast_one_to_all(state))
    if state[-1]:
        if is_main:
            print(f"{npz} already holds these samples: nothing to do.", flush=True)
        return result
    missing = state[:-1]
    todo = [int(i) for i in np.flatnonzero(missing)]
    if is_main and len(todo) < num_chunks:
        print(f"resuming: {num_chunks - len(todo)} of {num_chunks} chunks already in {directory}",
              flush=True)

    def fetch(images: jax.Array) -> np.ndarray:
        if jax.process_count() > 1:  # the global batch, on every host
            images = multihost_utils.process_allgather(images, tiled=True)
        return unit_to_uint8(np.asarray(jax.device_get(images)), model.num_levels)

    bar = tqdm(total=num_chunks * batch_size, initial=(num_chunks - len(todo)) * batch_size,
               disable=not (is_main and progress), desc="sample", unit="img", dynamic_ncols=True)
    pending: tuple[int, jax.Array] | None = None  # fetch chunk i after dispatching chunk i + 1
    try:
        for i in [*todo, None]:
            if i is not None:
                labels = all_labels[i * batch_size:(i + 1) * batch_size]
                images = fn(restored.params, labels, jax.random.fold_in(key, i))
            if pending is not None:
                j, dev_images = pending
                host = fetch(dev_images)
                if is_main:
                    _write_chunk(_chunk_path(directory, j), host,
                                 all_labels[j * batch_size:(j + 1) * batch_size])
                bar.update(batch_size)
            pending = (i, images) if i is not None else None
    finally:
        bar.close()

    if is_main:
        chunks = [_read_chunk(_chunk_path(directory, i), batch_size) for i in range(num_chunks)]
        images = np.concatenate([c[0] for c in chunks])[:num_samples]
        labels = np.concatenate([c[1] for c in chunks])[:num_samples]
        save_samples(npz, images, labels if model.num_classes else None)
        cols = model.num_classes if model.num_classes and model.num_classes <= 16 else None
        save_grid(images[:GRID_IMAGES], result.grid, cols,
                  upscale=max(1, 64 // model.image_shape[0]))
        write_json_atomic(result.settings_json, settings)  # last: marks the batch as finished
        shutil.rmtree(directory)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vdm_jax.generate_samples")
    return result
