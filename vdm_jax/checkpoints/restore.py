"""Restore a trained model for sampling and evaluation from its run directory alone: the config
and DataSpec stored in the checkpoint rebuild the `DiffusionModel` (no dataset is opened), and
only the requested parameters (an EMA by default) are read, onto any mesh (sharded like
training, FSDP over the mesh's 'fsdp' axis).

    restored = load_for_inference("workdirs/digits_dit")          # newest readable checkpoint
    model, params = restored.model, restored.params
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from vdm_jax import config as config_lib
from vdm_jax.checkpoints.manager import Checkpointer
from vdm_jax.data import dataset_info
from vdm_jax.io import read_json
from vdm_jax.model import DataSpec, DiffusionModel, build_abstract
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import RunDir

__all__ = ["Restored", "load_for_inference", "stored_config"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A model ready to sample: static `model`, its `params`, the run's `config`, the checkpoint
    `step`, which parameters were loaded (`ema`: e.g. 'ema_0p9999', or None for the raw ones),
    the `data` spec, the `mesh` the parameters live on and the run directory."""

    model: DiffusionModel
    params: Any
    config: ConfigDict
    step: int
    ema: str | None
    data: DataSpec
    mesh: Mesh
    rundir: RunDir


def load_for_inference(
    workdir: str | os.PathLike, *, ema: str = "", step: int | None = None,
    mesh: Mesh | None = None,
) -> Restored:
    """Parameters of the run in `workdir` for inference.

    ema: '' = the run's first EMA, 'none' = raw parameters, or a decay such as '0.9999'.
    step: a checkpoint step, or None for the newest readable one. mesh: default all devices,
    data-parallel. Raises FileNotFoundError when `workdir` has no checkpoint.
    """
    rundir = RunDir(workdir)
    ckpt_dir = rundir.checkpoints
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(
            f"No checkpoints in {ckpt_dir}: train first (launch/train.py --workdir={workdir})."
        )
    checkpointer = Checkpointer(ckpt_dir, async_save=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise FileNotFoundError(f"No finalized checkpoint in {ckpt_dir}.")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"No checkpoint at step {step} in {ckpt_dir}; have {steps}.")
        at = step if step is not None else steps[0]
        config = ConfigDict(checkpointer.saved_config(at))
        record = checkpointer.saved_data_spec(at)
        if record is not None:
            data = DataSpec.from_dict(record)
        else:  # written before checkpoints recorded it: ask the dataset
            info = dataset_info(config.data)
            data = DataSpec.from_info(info)
        mesh = mesh or mesh_lib.make_mesh(-1, 1)
        model, abstract = build_abstract(config, data)
        shardings = mesh_lib.param_shardings(model.param_specs, abstract, mesh)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        choice = config_lib.ema_choice(config, ema)
        names = [config_lib.ema_name(d) for d in config.optim.ema_decays]
        params, restored_step = checkpointer.restore_params(target, choice, names, step)
    finally:
        checkpointer.close()
    return Restored(model, params, config, restored_step, choice, data, mesh, rundir)


def stored_config(rundir: RunDir) -> dict[str, Any] | None:
    """The config of the run in `rundir`: its newest readable checkpoint's, else its
    config.json (a run killed before its first checkpoint), else None."""
    if rundir.checkpoints.is_dir():
        checkpointer = Checkpointer(rundir.checkpoints, async_save=False)
        try:
            for step in checkpointer.steps():
                try:
                    return checkpointer.saved_config(step)
                except Exception as e:  # unreadable: the restore reports it; try the previous
                    log.warning("cannot read the config of checkpoint %d: %s", step, e)
        finally:
            checkpointer.close()
    saved = read_json(rundir.config_json)
    return saved if isinstance(saved, dict) else None
