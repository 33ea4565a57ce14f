"""Step 1 of the training loop (vdm_jax.training.loop): `set_up` validates everything a run needs
and returns it as a `RunSetup`; nothing is written yet."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from vdm_jax import config as config_lib
from vdm_jax.checkpoints.manager import Checkpointer, check_compatible
from vdm_jax.data import dataset_info, latents, train_iterator
from vdm_jax.io import read_json
from vdm_jax.model import DataSpec, DiffusionModel, build, check_data, load_term_inputs
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import RunDir
from vdm_jax.training import state as state_lib
from vdm_jax.training.step import term_input_shardings

__all__ = ["RunSetup", "set_up"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunSetup:
    """What `set_up` returns: everything the loop needs, validated (step 1 of the module
    docstring). `state` is the restored or fresh train state (sharded as `shardings`), `restored`
    whether it came from a checkpoint, `term_inputs` the loss terms' non-trained inputs
    {name: pytree}, placed on the mesh ({} when no term needs any)."""

    rundir: RunDir
    mesh: Mesh
    info: Any  # vdm_jax.data.DatasetInfo
    data: DataSpec
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    model: DiffusionModel
    state: Any
    shardings: Any
    data_iter: Any
    checkpointer: Checkpointer
    restored: bool
    term_inputs: dict[str, Any]

def set_up(config: ConfigDict, workdir: str | Path, devices: list | None = None) -> RunSetup:
    """Everything the loop needs, validated, with the state restored if the run directory has
    one (step 1 of the module docstring). devices: the mesh's devices (default: all)."""
    config_lib.validate(config)
    rundir = RunDir(workdir)
    rundir.check_writable()
    if jax.process_index() == 0:  # the lock's holder-to-be: a second trainer stops here,
        rundir.check_unlocked()  # before reading the run (other processes could see ours)
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    config_lib.check_batch(config, mesh.size, mesh.shape["data"])
    term_inputs = load_term_inputs(config)  # frozen networks' weights: bad files fail here
    info = dataset_info(config.data)
    check_data(config, info)
    if config.eval.at_end and info.num_test == 0:
        raise ValueError(f"eval.at_end needs an evaluation split, and data.name="
                         f"{config.data.name!r} has none here; add one (an ImageFolder's 'val' or "
                         "'test' folder) or set --config.eval.at_end=false")
    if info.autoencoder is not None:  # latents: the config's autoencoder must have made them
        latents.check_matches({"autoencoder": info.autoencoder,
                               "crop": {"image_size": info.pixel_shape[0]}},
                              weights=config.autoencoder.weights,
                              image_size=config.data.image_size,
                              where=f"latent dataset {config.data.latent_dir}")
    data = DataSpec.from_info(info)
    tx, lr_schedule = state_lib.make_optimizer(config.optim, config.train.num_steps)
    decays = tuple(config.optim.ema_decays)
    model, state, shardings = state_lib.create_state(
        lambda: build(config, data, config.seed), tx, decays, config.seed, mesh
    )
    if model.time_shift != 1.0 and jax.process_index() == 0:
        print(f"time shift: α = {model.time_shift:.4f} (diffusion.time_shift="
              f"{config.diffusion.time_shift!r}, data {'×'.join(map(str, data.image_shape))}); "
              "training times and the sampling grid are α t / (1 + (α − 1) t)",
              file=sys.stderr, flush=True)
    data_iter = train_iterator(
        config.data, global_batch_size=config.train.global_batch_size, seed=config.seed,
        mesh_sharding=mesh_lib.batch_sharding(mesh),
    )
    checkpointer, restored = _restore(config, rundir, state, data)
    if restored is not None:
        state, data_state = restored
        if data_state is not None:  # None: an imported checkpoint, no data position yet
            data_iter.set_state(data_state)
    if term_inputs:
        term_inputs = jax.device_put(term_inputs, term_input_shardings(model, term_inputs, mesh))
    return RunSetup(rundir=rundir, mesh=mesh, info=info, data=data, tx=tx,
                    lr_schedule=lr_schedule, model=model, state=state, shardings=shardings,
                    data_iter=data_iter, checkpointer=checkpointer,
                    restored=restored is not None, term_inputs=term_inputs)


def _restore(config: ConfigDict, rundir: RunDir, state: Any, data: DataSpec
             ) -> tuple[Checkpointer, tuple[Any, Any] | None]:
    """The run directory's checkpointer and its newest readable (state, data position), or None
    for a fresh run. Reads only (it writes from its first save): an existing run is checked to be
    ours first."""
    checkpointer = Checkpointer(
        rundir.checkpoints, config.train.keep_checkpoints, config.train.keep_period,
        config.train.async_checkpoints,
    )
    try:
        restored = checkpointer.restore_latest(state, config, data.to_dict())
        if restored is None and rundir.config_json.is_file():
            # A run that never reached its first checkpoint: nothing to protect, but say so.
            saved = read_json(rundir.config_json)
            if isinstance(saved, dict):
                try:
                    check_compatible(saved, config, f"{rundir.root} held a run of another "
                                     "configuration (its config.json, no checkpoint)")
                except ValueError as e:
                    log.warning("%s; starting it again with this config.", e)
    except BaseException:
        checkpointer.close()
        raise
    return checkpointer, restored
