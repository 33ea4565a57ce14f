"""Released DiT / SiT checkpoints as run directories, and back: what launch/import_checkpoint.py
runs.

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
from vdm_jax.importers.common import file_sha256, save_state_dict
from vdm_jax.importers.dit import CONVENTIONS, FORMATS, export_dit, import_dit
from vdm_jax.importers.sd_vae import describe_weights
from vdm_jax.io import write_json
from vdm_jax.model import DataSpec, build
from vdm_jax.nn.blocks import stack_layers
from vdm_jax.rundir import RunDir
from vdm_jax.training import state as state_lib

__all__ = ["export_run", "import_run"]


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
    if not config.autoencoder.weights:
        raise ValueError("--config.autoencoder.weights=PATH is required: the released models "
                         "are latent models, decoded by the SD-VAE (stabilityai/sd-vae-ft-ema)")
    imported = import_dit(checkpoint, format=format, weights=weights, num_heads=num_heads)
    data = _data_spec(imported, config.autoencoder.weights)
    with config.unlocked():
        config.model.spec = dict(imported.spec)
        config.model.learn_sigma = imported.learn_sigma
        config.model.prediction = imported.prediction
        config.diffusion.schedule = imported.schedule
        config.data.kind = "latents"
        config.data.image_size = data.pixel_shape[0]
        if not config.sample.get("dtype"):  # sample as the source's code did (unless overridden)
            config.sample.dtype = CONVENTIONS[format].sample_dtype
        if not imported.null_class_trained:
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
        "emas": [ema_name(d) for d in decays], "null_class_trained": imported.null_class_trained,
        "pos_embed_max_abs_diff": imported.pos_embed_max_abs_diff,
        "train_args": imported.train_args,
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
    state_dict = export_dit(spec, params, format=format, input_size=h, null_class=null_class)
    return save_state_dict(out, state_dict)
