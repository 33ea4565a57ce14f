"""Large sample batches from a trained run, resumable: what launch/sample.py does.

    restored = load_for_inference("workdirs/digits_dit")
    spec = SamplingSpec(sampler="ddpm", num_steps=250, guidance_scale=1.5)
    result = generate_samples(restored, spec, num_samples=50_000, batch_size=500)

The N samples are drawn in C = ⌈N / B⌉ chunks of B = batch_size. Chunk i draws the class labels
y[iB : (i + 1)B] of the fixed class-balanced list y_j = j mod K (`class_balanced_labels`; no
labels for unconditional models) with rng fold_in(key(seed), i), so every chunk, and the result,
is a function of (checkpoint, settings, seed, B) alone: a job killed at any point and rerun with
the same settings writes exactly the same N samples as an uninterrupted one.

Each finished chunk is written atomically (`vdm_jax.io`) to
DIR/NAME.chunks/chunk_%06d.npz (uint8 images (B, H, W, C), labels (B,), the NFE of its sampling
call: measured by an adaptive solver, settings' nfe_per_chunk), next to a manifest of
the settings; a rerun recomputes only the missing chunks (chunks of other settings are discarded).
At the end the first N samples become the ADM batch DIR/NAME.npz (`arr_0` uint8 NHWC, `arr_1`
labels of conditional models), their settings DIR/NAME.json (`RunDir.settings_of`, with the
sampling compute dtype: the spec's, or the run's model.dtype; merged into
the results by launch/evaluate.py), a PNG grid DIR/NAME.png of the first ≤ 100, and the chunk
directory is removed. Rerunning a finished job with the same settings does nothing. The default
NAME (`default_name`) carries the spec (sampler, steps, guidance, EMA, seed and a hash of every
field), the checkpoint step, N and B, so runs of other settings never share a file; an explicit
--out that holds a finished batch of other settings is refused, never overwritten.

AutoGuidance (spec.guidance 'auto'): `guide` is a second restored run (`check_guide_run`: same
DataSpec, so the same latent space, and a model of the same prediction); its run directory, step
and EMA are part of the settings and of the default NAME.

Multi-host: every process runs every chunk (the global batch, sharded over all devices when B is
a multiple of their number), the output is gathered to the hosts, and only process 0 reads or
writes files; the list of missing chunks is process 0's, broadcast to the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from vdm_jax.data.adm_npz import save_samples
from vdm_jax.generation.decode import output_shape
from vdm_jax.generation.generate import check_guide, class_balanced_labels
from vdm_jax.generation.grids import grid_upscale, save_grid
from vdm_jax.generation.images import make_image_sampler
from vdm_jax.io import read_json, write_json, write_npz
from vdm_jax.model import with_compute_dtype
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import RunDir
from vdm_jax.sampling_spec import SamplingSpec

__all__ = ["SamplingResult", "check_guide_run", "default_name", "generate_samples",
           "guide_record", "sample_settings"]

log = logging.getLogger(__name__)

GRID_IMAGES = 100
_CHUNK_RE = re.compile(r"chunk_(\d{6})\.npz")
# Settings that do not change any sample: a job may resume with other values of these (a longer
# or shorter N reuses the chunks, since chunk i does not depend on N).
# nfe_per_chunk is a measurement, recorded when the batch is finished.
_NOT_IN_MANIFEST = ("num_samples", "num_devices", "num_processes", "workdir", "nfe_per_chunk")


@dataclasses.dataclass(frozen=True)
class SamplingResult:
    """Paths of the ADM sample batch, its PNG grid and settings JSON, and the settings."""

    npz: Path
    grid: Path
    settings_json: Path
    settings: dict[str, Any]


def default_name(spec: SamplingSpec, step: int, num_samples: int, batch_size: int,
                 guide: dict[str, Any] | None = None) -> str:
    """samples/<NAME>.npz of a run: every setting of `spec`, the checkpoint step, N and the
    chunk size B (chunk i draws B images from fold_in(key(seed), i): B changes the samples),
    and with AutoGuidance a hash of the guide's record (`guide_record`)."""
    name = f"{spec.slug()}_step{step}_n{num_samples}_b{batch_size}"
    if guide is not None:
        name += "_guide" + hashlib.sha1(json.dumps(guide, sort_keys=True).encode()).hexdigest()[:8]
    return name


def guide_record(guide: Restored) -> dict[str, Any]:
    """What identifies an AutoGuidance guide: its run directory, checkpoint step and EMA."""
    return {"workdir": str(guide.rundir.root), "step": int(guide.step),
            "ema": guide.ema or "none"}


def check_guide_run(restored: Restored, guide: Restored) -> None:
    """ValueError naming what differs when run `guide` cannot guide run `restored`: another
    DataSpec (data shape, classes, levels, latent space: the autoencoder and latent scaling), or
    another prediction / noise path (generation.generate.check_guide)."""
    ours, theirs = restored.data.to_dict(), guide.data.to_dict()
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"the guide run {guide.rundir.root} was trained on other data than "
                         f"{restored.rundir.root}: its data spec differs in {', '.join(differ)} "
                         "(AutoGuidance needs the same data and latent space)")
    try:
        check_guide(restored.model, guide.model)
    except ValueError as e:
        raise ValueError(f"the guide run {guide.rundir.root}: {e}") from None


def _chunk_path(directory: Path, i: int) -> Path:
    return directory / f"chunk_{i:06d}.npz"


def sample_settings(
    restored: Restored, spec: SamplingSpec, *, num_samples: int, batch_size: int,
) -> dict[str, Any]:
    """The JSON-ready record of everything that produced a sample batch; validates the counts
    (ValueError naming the bad one)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model = restored.model
    return {
        **spec.to_dict(),
        "ema": restored.ema or "none",  # the EMA actually loaded
        # Guidance runs conditional and null batches as one 2B pass per evaluation.
        "nfe_batch_multiplier": 2 if spec.guided(model.num_classes) else 1,
        "checkpoint_step": int(restored.step),
        "workdir": str(restored.rundir.root),
        "num_samples": int(num_samples),
        "batch_size": int(batch_size),
        "class_balanced": bool(model.num_classes),
        "num_classes": int(model.num_classes),
        "dataset": restored.config.data.name,
        "image_shape": list(output_shape(restored.data)),
        "latent_shape": list(model.image_shape) if restored.data.is_latent else None,
        "num_levels": int(model.num_levels),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }


def _manifest(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine the samples, as they read back from JSON."""
    return json.loads(json.dumps({k: v for k, v in settings.items()
                                  if k not in _NOT_IN_MANIFEST}))


def _finished_state(npz: Path, settings: dict[str, Any]) -> str:
    """'same' when npz is a finished batch of these settings, 'other' when it is a finished batch
    of other settings (or an .npz without our settings file), 'none' when there is none."""
    if not npz.exists():
        return "none"
    done = read_json(RunDir.settings_of(npz))
    if (isinstance(done, dict) and done.get("num_samples") == settings["num_samples"]
            and _manifest(done) == _manifest(settings)):
        return "same"
    return "other"


def _prepare_chunk_dir(directory: Path, settings: dict[str, Any], num_chunks: int) -> np.ndarray:
    """Process 0: (num_chunks,) bool, True where chunk i is still missing. Discards the chunks of
    other settings and temporary files of killed writers."""
    manifest = _manifest(settings)
    manifest_path = directory / "manifest.json"
    if directory.is_dir() and read_json(manifest_path) != manifest:
        log.warning("%s holds chunks of other settings: discarding them.", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json(manifest_path, manifest)
    missing = np.ones((num_chunks,), bool)
    for f in directory.iterdir():
        m = _CHUNK_RE.fullmatch(f.name)
        if m and int(m.group(1)) < num_chunks:
            missing[int(m.group(1))] = False
        elif f.name.endswith(".tmp"):
            f.unlink()
    return missing


def _read_chunk(path: Path, batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, NFE of the chunk's sampling call)."""
    try:
        with np.load(path) as npz:
            images, labels, nfe = npz["images"], npz["labels"], int(npz["nfe"])
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ValueError(f"chunk {path} is unreadable ({type(e).__name__}): delete it and rerun "
                         "to redraw it") from None
    if len(images) != batch_size or len(labels) != batch_size:
        raise ValueError(f"chunk {path} holds {len(images)} samples, expected {batch_size}: "
                         f"delete {path.parent} and rerun")
    return images, labels, nfe


def generate_samples(
    restored: Restored,
    spec: SamplingSpec,
    *,
    num_samples: int,
    batch_size: int,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    guide: Restored | None = None,
) -> SamplingResult:
    """Draws `num_samples` images from `restored` with `spec` into the ADM batch `out` (default
    RunDir.samples/<default_name>.npz), in resumable chunks of `batch_size` (module docstring).
    Returns the paths and settings. Bad values raise ValueError before anything is written.
    """
    # The compute dtype: the spec's, or the run's model.dtype (recorded in the settings and name).
    spec = spec.resolve_dtype(restored.config.model.dtype)
    if (isinstance(num_samples, int) and isinstance(batch_size, int)
            and 0 < num_samples < batch_size):  # never draw more than asked (N, rounded up
        # to a multiple of the devices): the chunk is the batch actually drawn
        batch_size = min(batch_size, -(-num_samples // restored.mesh.size) * restored.mesh.size)
    settings = sample_settings(restored, spec, num_samples=num_samples, batch_size=batch_size)
    auto = spec.guidance == "auto" and spec.guided(restored.model.num_classes)
    if auto:
        if guide is None:
            raise ValueError("guidance 'auto' (AutoGuidance) needs a guide run: --guide_workdir")
        check_guide_run(restored, guide)
        settings["guide"] = guide_record(guide)
        settings["nfe_batch_multiplier"] = 2  # the guide runs beside the model
    npz = (Path(out).expanduser() if out is not None else
           restored.rundir.sample_batch(default_name(spec, restored.step, num_samples,
                                                     batch_size, settings.get("guide"))))
    if npz.suffix != ".npz":
        raise ValueError(f"the sample batch must be a .npz file, got {npz}")
    model = with_compute_dtype(restored.model, restored.config, restored.data, spec.dtype)
    mesh = restored.mesh
    if batch_size % mesh.size and jax.process_count() > 1:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {mesh.size} devices "
                         "on more than one host")
    sharding = mesh_lib.batch_sharding(mesh) if batch_size % mesh.size == 0 else None
    images_of = make_image_sampler(model, batch_size, spec, restored.data,
                                   _autoencoder_weights(restored.config), sharding=sharding,
                                   guide=guide.model if auto else None)
    params = (restored.params, guide.params) if auto else restored.params
    num_chunks = math.ceil(num_samples / batch_size)
    all_labels = class_balanced_labels(num_chunks * batch_size, model.num_classes)
    key = jax.random.key(spec.seed)
    # Tracing checks the sampler options before any file exists.
    jax.eval_shape(images_of.generate, params, all_labels[:batch_size], key)

    is_main = jax.process_index() == 0
    result = SamplingResult(npz, RunDir.grid_of(npz), RunDir.settings_of(npz), settings)
    directory = RunDir.chunks_of(npz)
    # (missing chunks..., finished): process 0's view of the files, shared with every process.
    state = np.zeros((num_chunks + 1,), bool)
    if is_main:
        found = _finished_state(npz, settings)
        if found == "other":
            raise ValueError(
                f"{npz} already holds samples of other settings (see {RunDir.settings_of(npz)}): "
                "choose another --out, or delete it to draw these")
        if found == "same":
            state[-1] = True
        else:
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

    bar = tqdm(total=num_chunks * batch_size, initial=(num_chunks - len(todo)) * batch_size,
               disable=None if is_main and progress else True,  # None: off unless a terminal
               desc="sample", unit="img", dynamic_ncols=True)
    # (chunk i, (its images, its NFE)): fetched after dispatching chunk i + 1.
    pending: tuple[int, tuple[jax.Array, jax.Array]] | None = None
    try:
        for i in [*todo, None]:
            if i is not None:
                labels = all_labels[i * batch_size:(i + 1) * batch_size]
                images = images_of.draw(params, labels, jax.random.fold_in(key, i))
            if pending is not None:
                j, (dev_images, nfe) = pending
                host = images_of.fetch(dev_images)
                if is_main:
                    write_npz(_chunk_path(directory, j), {
                        "images": host, "nfe": np.asarray(mesh_lib.to_host(nfe)),
                        "labels": all_labels[j * batch_size:(j + 1) * batch_size]})
                bar.update(batch_size)
            pending = (i, images) if i is not None else None
    finally:
        bar.close()

    if is_main:
        chunks = [_read_chunk(_chunk_path(directory, i), batch_size) for i in range(num_chunks)]
        images = np.concatenate([c[0] for c in chunks])[:num_samples]
        nfes = [c[2] for c in chunks]
        # What the sampler cost: fixed for the step samplers, measured per chunk (one ODE solve
        # of B samples) for an adaptive one.
        settings["nfe_per_chunk"] = {"mean": float(np.mean(nfes)), "min": int(min(nfes)),
                                     "max": int(max(nfes))}
        labels = np.concatenate([c[1] for c in chunks])[:num_samples]
        save_samples(npz, images, labels if model.num_classes else None)
        cols = model.num_classes if model.num_classes and model.num_classes <= 16 else None
        save_grid(images[:GRID_IMAGES], result.grid, cols,
                  upscale=grid_upscale(output_shape(restored.data)[0]))
        write_json(result.settings_json, settings)  # last: marks the batch as finished
        shutil.rmtree(directory)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vdm_jax.generate_samples")
    return result


def _autoencoder_weights(config: Any) -> str | None:
    """autoencoder.weights of a run's config (absent in configs of pixel runs)."""
    section = config.get("autoencoder") if hasattr(config, "get") else None
    return section.get("weights") if section else None
