"""Released DiT / SiT / RAE (DiT^DH) checkpoints as run directories, and back: what
launch/import_checkpoint.py runs.

    import_run(checkpoint, config, workdir, format="dit")   # → a run directory at step 0
    export_run(workdir, out, format="dit")                  # → an official-layout state dict

An imported run is an ordinary run directory: its config (the ImageNet recipe of the format with
the network the file holds, vdm_jax.importers.dit's time map and sign convention, the sampling
precision of the source's code (sample.dtype = float32, whatever model.dtype), and the SD-VAE
of `autoencoder.weights` that decodes its latents), its DataSpec (latent shape, classes, the
autoencoder's SHA-256 and latent scaling), and a checkpoint at step 0 whose parameters AND EMA
are the file's weights (released files are EMA weights), with a fresh optimizer state — so
`launch/sample.py` and `launch/evaluate.py` use it like any other run, and `launch/train.py`
can fine-tune it. `import.json` beside it records the source file, its SHA-256, the format, the
weights taken, whether the label table had a null class, and the pos_embed check.

RAE's stage-2 models (format 'rae_dit', vdm_jax.importers.rae_dit) are latent models of RAE's
representation autoencoder, not of the SD-VAE: their run's DataSpec is that of the latent
dataset `config.data.latent_dir` (made by launch/encode_latents.py with that autoencoder), which
must hold latents of the network's shape and classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from vdm_jax.checkpoints.manager import Checkpointer
from vdm_jax.checkpoints.restore import load_for_inference
from vdm_jax.config import ema_name
from vdm_jax.data import dataset_info
from vdm_jax.importers.common import file_sha256, save_state_dict
from vdm_jax.importers.dit import CONVENTIONS as DIT_CONVENTIONS
from vdm_jax.importers.dit import FORMATS as DIT_FORMATS
from vdm_jax.importers.dit import export_dit, import_dit
from vdm_jax.importers.rae_dit import export_rae_dit, import_rae_dit
from vdm_jax.importers.sd_vae import describe_weights
from vdm_jax.io import write_json
from vdm_jax.model import DataSpec, build
from vdm_jax.nn.blocks import stack_layers
from vdm_jax.rundir import RunDir
from vdm_jax.training import state as state_lib

__all__ = ["FORMATS", "export_run", "import_run"]

FORMATS = (*DIT_FORMATS, "rae_dit")


def _latent_data_spec(imported: Any, config: ConfigDict) -> DataSpec:
    """The DataSpec of the latent dataset config.data.latent_dir, checked against the network."""
    if config.data.kind != "latents" or not config.data.latent_dir:
        raise ValueError("--format=rae_dit needs the RAE latent dataset the model samples in: "
                         "--config.data.latent_dir=DIR (launch/encode_latents.py)")
    data = DataSpec.from_info(dataset_info(config.data))
    side, c = imported.input_size, imported.in_channels
    if tuple(data.image_shape) != (side, side, c) or data.num_classes != imported.num_classes:
        raise ValueError(f"the checkpoint's network takes {side}×{side}×{c} latents of "
                         f"{imported.num_classes} classes, but {config.data.latent_dir} holds "
                         f"{'×'.join(map(str, data.image_shape))} of {data.num_classes}")
    return data


def _data_spec(imported: Any, weights: str) -> DataSpec:
    autoencoder = describe_weights(weights)
    vae = autoencoder["config"]
    f = 2 ** (len(vae["block_out_channels"]) - 1)
    if int(vae["latent_channels"]) != imported.in_channels:
        raise ValueError(f"the checkpoint's network takes {imported.in_channels} input channels "
                         f"but the autoencoder {weights} makes {vae['latent_channels']}-channel "
                         "latents: give the autoencoder the model was trained with")
    c, side = imported.in_channels, imported.input_size
    return DataSpec(
        image_shape=(side, side, c), num_classes=imported.num_classes, num_levels=256,
        pixel_shape=(side * f, side * f, int(vae["out_channels"])),
        latent_shift=(float(vae.get("shift_factor") or 0.0),) * c,
        latent_scale=(float(vae["scaling_factor"]),) * c, autoencoder=autoencoder)


def import_run(checkpoint: str | os.PathLike, config: ConfigDict, workdir: str | os.PathLike,
               *, format: str, weights: str = "ema", num_heads: int | None = None) -> RunDir:
    """Turn `checkpoint` into a run directory `workdir` (module docstring). `config` is the
    format's recipe (configs/imagenet_dit.py or imagenet_sit.py, with the user's overrides);
    its model and diffusion keys are set from the file. Refuses a workdir that holds a run."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}")
    rundir = RunDir(workdir)
    if rundir.has_run():
        raise ValueError(f"{rundir.root} already holds a run: import into a new --workdir")
    rundir.check_writable()
    if format == "rae_dit":
        imported = import_rae_dit(checkpoint, weights=weights)
        data = _latent_data_spec(imported, config)
    elif not config.autoencoder.weights:
        raise ValueError("--config.autoencoder.weights=PATH is required: the released models "
                         "are latent models, decoded by the SD-VAE (stabilityai/sd-vae-ft-ema)")
    else:
        imported = import_dit(checkpoint, format=format, weights=weights, num_heads=num_heads)
        data = _data_spec(imported, config.autoencoder.weights)
    with config.unlocked():
        config.model.spec = dict(imported.spec)
        config.model.learn_sigma = getattr(imported, "learn_sigma", False)
        config.model.prediction = imported.prediction
        config.diffusion.schedule = imported.schedule
        config.data.kind = "latents"
        if data.pixel_shape:
            config.data.image_size = data.pixel_shape[0]
        if not config.sample.get("dtype"):  # sample as the source's code did (unless overridden)
            # float32: DiT's and SiT's sample.py (conventions table) and RAE's released sampler
            config.sample.dtype = (DIT_CONVENTIONS[format].sample_dtype if format in DIT_FORMATS
                                   else "float32")
        if not getattr(imported, "null_class_trained", True):
            config.sample.guidance_scale = 1.0  # the null row is untrained: no guidance
    params_holder: dict[str, Any] = {}

    def built() -> Any:
        model, params = build(config, data, config.seed)
        params_holder["model"] = model
        return params

    abstract = jax.eval_shape(built)
    # The importer writes the official per-block layout; a scanned network stacks it.
    params = {"denoiser": stack_layers(imported.params) if config.model.scan_layers
              else imported.params}
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    want = jax.tree.map(lambda a: tuple(a.shape), abstract)
    if got != want:
        raise ValueError("the imported parameters do not fit the network the config builds "
                         "(another model section in the overrides?)")
    tx, _ = state_lib.make_optimizer(config.optim, config.train.num_steps)
    decays = tuple(config.optim.ema_decays)
    state = state_lib.init_state(jax.tree.map(np.asarray, params), tx, decays,
                                 jax.random.key(config.seed))
    rundir.create()
    checkpointer = Checkpointer(rundir.checkpoints, async_save=False)
    try:
        checkpointer.save(state, None, config, data.to_dict())
        checkpointer.wait()
    finally:
        checkpointer.close()
    write_json(rundir.config_json, config.to_dict())
    write_json(rundir.root / "import.json", {
        "checkpoint": str(Path(checkpoint).expanduser().resolve()),
        "sha256": file_sha256(Path(checkpoint).expanduser()),
        "format": format, "weights": imported.weights,
        "emas": [ema_name(d) for d in decays],
        "null_class_trained": getattr(imported, "null_class_trained", True),
        "pos_embed_max_abs_diff": imported.pos_embed_max_abs_diff,
        "train_args": getattr(imported, "train_args", None),
    })
    return rundir


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, *, format: str,
               ema: str = "", null_class: bool = True) -> Path:
    """Write the run's parameters (its first EMA by default) as an official `format` state dict
    (`.safetensors`, or `.pt` with torch) that DiT's / SiT's PyTorch code loads."""
    restored = load_for_inference(workdir, ema=ema)
    model_cfg = restored.config.model
    spec = model_cfg.spec.to_dict() if hasattr(model_cfg.spec, "to_dict") else model_cfg.spec
    h, w, _ = restored.model.image_shape
    if h != w:
        raise ValueError(f"the official code runs square inputs only; this model takes {h}×{w}")
    params = jax.tree.map(np.asarray, jax.device_get(restored.params["denoiser"]))
    if format == "rae_dit":
        state_dict = export_rae_dit(spec, params, input_size=h)
    else:
        state_dict = export_dit(spec, params, format=format, input_size=h, null_class=null_class)
    return save_state_dict(out, state_dict)
