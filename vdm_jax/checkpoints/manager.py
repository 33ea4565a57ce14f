"""Checkpoints with orbax `CheckpointManager`: atomic, asynchronous, topology-independent.

A checkpoint `workdir/checkpoints/<step>/` holds the items
    params     float32 master parameters            (StandardSave, sharded arrays)
    ema        {ema_<decay>: parameters}             (restorable alone, for inference)
    opt_state  optax state                          (μ, ν sharded like the parameters)
    meta       {"step", "rng"}
    data       {"iterator": grain iterator state (JSON string)}
    config     the run's config as JSON (what built the model; checked on every restore)
    data_spec  image shape, classes and levels of the data (vdm_jax.model.DataSpec): with the
               config, all that is needed to rebuild the model without the dataset
orbax writes each checkpoint into a temporary directory and renames it when every item is
written, so a kill mid-write leaves only an unfinished temporary directory that is ignored (and
cleaned up when the next run first saves); the latest finalized checkpoint is never touched.
Old checkpoints are retired by an atomic rename into `checkpoints/.deleting/` before their files
are removed, so a kill mid-deletion cannot leave a half-deleted checkpoint among the steps either.
Arrays are restored onto whatever mesh the abstract target names, so a checkpoint saved on 8
devices restores on 1 or 2.

A checkpoint that fails to restore (truncated or deleted files) is skipped with a warning naming
it, falling back to the previous one; when the run then saves, the unreadable ones are moved to
`checkpoints/unreadable/` (their step numbers will be written again). Once a save is finalized,
`<step>/vdm_manifest.json` records the size of each of its files, so a truncated or deleted file
is reported by name before orbax reads anything (a failed orbax read is caught too, but prints
pages of TensorStore errors).

A run may resume with another config only where `vdm_jax.config.SAFE_ON_RESUME` allows; other
differences are refused (CheckpointMismatchError naming them), and so is data of another shape or
class count than the checkpoint's `data_spec` (an image folder that gained a class): the
checkpoint is never read as if it were damaged. EMAs added to optim.ema_decays start from the
restored parameters; EMAs dropped from it are not restored.

A failed write of an asynchronous save surfaces at the next `save` or `wait` as
CheckpointWriteError naming the step of that save (the cause chained); the checkpoint it was
writing stays a temporary directory, ignored and removed at the next start.

Reading never writes: a `Checkpointer` only creates, cleans or deletes anything once `save` is
first called, so sampling or evaluating from a workdir, or refusing a workdir of another
configuration, leaves it as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vdm_jax import config as config_lib
from vdm_jax.io import write_json

State = dict[str, Any]
ARRAY_ITEMS = ("params", "ema", "opt_state", "meta")
ITEMS = (*ARRAY_ITEMS, "data", "config", "data_spec")
TRASH_DIR = ".deleting"  # retired checkpoints, renamed here atomically, then removed
UNREADABLE_DIR = "unreadable"  # checkpoints that failed to restore, set aside for inspection
MANIFEST = "vdm_manifest.json"  # {"files": {relative path: size}} of a finalized checkpoint


def _file_sizes(root: Path) -> dict[str, int]:
    """{path relative to root: size in bytes} of every file under root but the manifest
    (`os.walk`: a checkpoint holds dozens of files, and pathlib's rglob costs ~60 ms here)."""
    sizes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if MANIFEST not in name:
                path = os.path.join(folder, name)
                sizes[os.path.relpath(path, root)] = os.stat(path).st_size
    return dict(sorted(sizes.items()))


class DamagedCheckpointError(OSError):
    """A checkpoint's files differ from its manifest (names the file)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint or workdir written by another configuration."""


class CheckpointWriteError(OSError):
    """Writing checkpoint `step` failed (in the background, for an asynchronous save); the
    underlying error is its __cause__. `path`: the checkpoints directory."""

    def __init__(self, step: int, path: Path, cause: BaseException):
        super().__init__(f"writing the checkpoint of step {step} in {path} failed: "
                         f"{type(cause).__name__}: {cause}")
        self.step, self.path = step, path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def check_compatible(saved: Mapping[str, Any], config: Mapping[str, Any], what: str) -> None:
    """Raise CheckpointMismatchError (`what`: where `saved` comes from) listing the keys in which
    `config` differs from the run's stored config and which may not change when a run resumes
    (vdm_jax.config.SAFE_ON_RESUME), and how to proceed."""
    saved, now = _jsonable(saved), _jsonable(config)
    fixed = [k for k in config_lib.config_diff(saved, now) if not config_lib.is_safe_on_resume(k)]
    if fixed:
        old, new = config_lib.flat(saved), config_lib.flat(now)
        raise CheckpointMismatchError(
            f"{what}: " + "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}"
                                    for k in fixed)
            + ". Refusing to mix runs: these keys are fixed for a run. Rerun with the run's "
            "config to resume it, or use a new --workdir to start another run.")


def check_same_data(saved: Mapping[str, Any] | None, now: Mapping[str, Any],
                    config: Mapping[str, Any], where: str) -> None:
    """CheckpointMismatchError naming what differs when the data a run was trained on (its
    stored DataSpec record `saved`; None for checkpoints without one) and the data `config`
    reads now (`now`) differ in image shape, class count or levels."""
    if saved is None:
        return
    saved, now = _jsonable(saved), _jsonable(now)
    differ = [k for k in ("image_shape", "num_classes", "num_levels") if saved.get(k) != now.get(k)]
    if differ:
        data = config["data"]
        source = (f"data.image_folder={data['image_folder']!r}"
                  if data.get("image_folder") else f"data.name={data['name']!r}")
        raise CheckpointMismatchError(
            f"{where} was trained on other data than {source} gives now: "
            + "; ".join(f"{k} {saved.get(k)} in the run, {now.get(k)} now" for k in differ)
            + ". The dataset changed since the run started (e.g. an image folder gained or lost "
            "a class): restore it as it was to resume this run, or use a new --workdir to start "
            "another run.")


def _save_replicated_arrays_from_one_replica() -> None:
    """Turn off orbax's replica-parallel saving (on by default except on GPUs) in a one-process
    job. It splits each replicated array into one slice per replica so that different hosts
    write different slices; in one process the slices all go to the same writer, and each
    distinct slice shape is an eagerly compiled XLA program (120 for a 1-block DiT on 8 CPU
    devices: 5 s before the first checkpoint is written). Multi-host jobs keep the default."""
    if jax.process_count() == 1:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
            override=True)


class Checkpointer:
    """The run's CheckpointManager: save / restore the train state, data state and config.

    keep: the latest `keep` checkpoints are kept, plus every `keep_period` steps (if set).
    Until the first `save`, the directory is only read (see the module docstring).
    """

    def __init__(
        self,
        directory: str | Path,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        self._keep, self._keep_period, self._async = keep, keep_period, async_save
        self.unreadable: list[int] = []  # steps the last restore_latest skipped
        self.in_flight: int | None = None  # the step of the asynchronous save not yet finished
        self._writing = False
        self.manager = self._manager(writing=False)

    def _manager(self, writing: bool) -> ocp.CheckpointManager:
        # A reader neither creates the directory nor removes temporary directories: those may
        # belong to a run that is writing right now.
        if writing:
            _save_replicated_arrays_from_one_replica()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep,
            keep_period=self._keep_period,
            enable_async_checkpointing=self._async and writing,
            cleanup_tmp_directories=writing,
            create=writing,
            todelete_subdir=TRASH_DIR if writing else None,
        )
        return ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEMS)

    def _start_writing(self) -> None:
        """Before the first save: set aside unreadable checkpoints (their steps are about to be
        saved again, and orbax refuses an existing step), empty the trash, open a writer."""
        self.manager.close()
        if jax.process_index() == 0:
            for step in self.unreadable:
                self._set_aside(step)
            self._empty_trash()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("vdm_jax checkpoint writer")
        self.manager = self._manager(writing=True)
        self._writing = True

    def _set_aside(self, step: int) -> None:
        src = self.directory / str(step)
        if not src.is_dir():
            return
        dst = self.directory / UNREADABLE_DIR / str(step)
        if dst.exists():
            dst = dst.with_name(f"{step}-{time.time_ns()}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        logging.warning("moved unreadable checkpoint %s to %s", src, dst)

    def _empty_trash(self) -> None:
        trash = self.directory / TRASH_DIR
        if trash.is_dir():
            for child in trash.iterdir():  # one by one: orbax may be renaming into it
                shutil.rmtree(child, ignore_errors=True)

    # ------------------------------------------------------------------------------- save
    def save(self, state: State, data_state: bytes | str | None, config: Mapping[str, Any],
             data_spec: Mapping[str, Any], force: bool = True) -> bool:
        """Start an asynchronous save of `state` at its step (returns at once)."""
        if not self._writing:
            self._start_writing()
        step = int(jax.device_get(state["step"]))
        if isinstance(data_state, bytes):
            data_state = data_state.decode()
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            ema=ocp.args.StandardSave(state["ema"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}),
            data=ocp.args.JsonSave({"iterator": data_state}),
            config=ocp.args.JsonSave(_jsonable(config)),
            data_spec=ocp.args.JsonSave(_jsonable(data_spec)),
        )
        self._finish_in_flight()  # a failure of the previous save is reported as that save's
        self.in_flight = step
        try:
            started = self.manager.save(step, args=args, force=force)
        except Exception as e:
            raise CheckpointWriteError(step, self.directory, e) from e
        if not self._async:
            self.in_flight = None
        # The previous save is finalized: record what it wrote.
        self._write_manifests(below=step)
        return started

    def _finish_in_flight(self) -> None:
        step, self.in_flight = self.in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if step is None:
                raise
            raise CheckpointWriteError(step, self.directory, e) from e

    def wait(self) -> None:
        """Block until every asynchronous save has been finalized; remove retired checkpoints.
        CheckpointWriteError (naming the step) when a save failed."""
        self._finish_in_flight()
        if self._writing and jax.process_index() == 0:
            self._empty_trash()
        self._write_manifests()

    def finalized_steps(self) -> list[int]:
        """Steps of the finalized checkpoints on disk, newest first (a listing, no orbax)."""
        if not self.directory.is_dir():
            return []
        return sorted((int(p.name) for p in self.directory.iterdir() if p.name.isdigit()),
                      reverse=True)

    def _write_manifests(self, below: int | None = None) -> None:
        """A manifest in each finalized checkpoint (steps < `below`) that lacks one."""
        if not self._writing or jax.process_index() != 0 or not self.directory.is_dir():
            return
        for step_dir in self.directory.iterdir():
            if (not step_dir.name.isdigit() or (below is not None and int(step_dir.name) >= below)
                    or (step_dir / MANIFEST).exists()):
                continue
            try:
                write_json(step_dir / MANIFEST, {"files": _file_sizes(step_dir)}, indent=0)
            except OSError as e:  # e.g. retired meanwhile: the manifest is only a diagnostic
                full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # reported by a save
                logging.log(logging.INFO if full else logging.WARNING,
                            "no manifest for checkpoint %s: %s", step_dir, e)

    def verify(self, step: int) -> None:
        """Raise DamagedCheckpointError naming a file of checkpoint `step` that is missing or has
        another size than when it was saved (no-op for a checkpoint without a manifest)."""
        step_dir = self.directory / str(step)
        try:
            files = json.loads((step_dir / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError):
            return  # no (readable) manifest: orbax's read is the check
        for name, size in files.items():
            path = step_dir / name
            if not path.is_file():
                raise DamagedCheckpointError(f"{name} is missing")
            if path.stat().st_size != size:
                raise DamagedCheckpointError(
                    f"{name} is {path.stat().st_size} bytes, {size} when saved")

    def close(self) -> None:
        """Finish pending writes and close; the trash folder goes too once it is empty."""
        self.manager.close()
        if self._writing and jax.process_index() == 0:
            with contextlib.suppress(OSError):  # not empty (a removal failed): kept
                (self.directory / TRASH_DIR).rmdir()

    # ---------------------------------------------------------------------------- restore
    def steps(self) -> list[int]:
        """Finalized checkpoint steps, newest first."""
        self.manager.reload()  # other processes (or a killed run) may have written since
        return sorted(self.manager.all_steps(), reverse=True)

    def saved_config(self, step: int) -> dict[str, Any]:
        args = ocp.args.Composite(config=ocp.args.JsonRestore())
        return self.manager.restore(step, args=args)["config"]

    def saved_data_spec(self, step: int) -> dict[str, Any] | None:
        """The DataSpec record of checkpoint `step` (None for checkpoints written before it was
        recorded)."""
        if not (self.directory / str(step) / "data_spec").exists():
            return None
        args = ocp.args.Composite(data_spec=ocp.args.JsonRestore())
        return self.manager.restore(step, args=args)["data_spec"]

    def restore_latest(self, target: State, config: Mapping[str, Any],
                       data_spec: Mapping[str, Any] | None = None) -> tuple[State, str] | None:
        """The newest readable checkpoint as (state, data_iterator_state) onto the shardings of
        `target` (a state of the structure `config` gives, concrete or abstract), or None if
        there is none.

        Checkpoints that fail to read are skipped with a warning and listed in
        `self.unreadable`; a config that may not resume this run, or data of another shape or
        class count than the checkpoint's `data_spec` (an image folder that gained a class), is
        an error (CheckpointMismatchError), never a reason to skip. EMAs of `target` that the
        checkpoint lacks start from its parameters; EMAs it has that `target` lacks are dropped.
        """
        abstract = _abstract(target)
        skipped = []
        self.unreadable = []
        for step in self.steps():
            try:
                self.verify(step)
                saved = self.saved_config(step)
            except Exception as e:  # unreadable config item: treat as a damaged checkpoint
                skipped.append((step, e))
                self._warn_skip(step, e)
                continue
            check_compatible(saved, config, f"{self.directory.parent} holds a run of another "
                                            f"configuration (checkpoint step {step})")
            if data_spec is not None:
                try:
                    saved_spec = self.saved_data_spec(step)
                except Exception as e:  # unreadable item: treat as a damaged checkpoint
                    skipped.append((step, e))
                    self._warn_skip(step, e)
                    continue
                check_same_data(saved_spec, data_spec, config,
                                f"{self.directory.parent} (checkpoint step {step})")
            saved_emas = [config_lib.ema_name(d) for d in saved["optim"]["ema_decays"]]
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardRestore(abstract["params"]),
                        ema=ocp.args.StandardRestore(
                            {name: abstract["params"] for name in saved_emas}),
                        opt_state=ocp.args.StandardRestore(abstract["opt_state"]),
                        meta=ocp.args.StandardRestore(
                            {"step": abstract["step"], "rng": abstract["rng"]}
                        ),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # any read failure means: try the previous one
                skipped.append((step, e))
                self._warn_skip(step, e)
                continue
            self.unreadable = [s for s, _ in skipped]
            ema = {}
            for name in abstract["ema"]:
                if name in restored["ema"]:
                    ema[name] = restored["ema"][name]
                else:
                    logging.warning("EMA %s is new in this config: it starts from the parameters "
                                    "of step %d", name, step)
                    ema[name] = jax.tree.map(jnp.copy, restored["params"])
            state = {
                "step": restored["meta"]["step"],
                "params": restored["params"],
                "ema": ema,
                "opt_state": restored["opt_state"],
                "rng": restored["meta"]["rng"],
            }
            return state, restored["data"]["iterator"]
        if skipped:
            raise FileNotFoundError(
                f"No readable checkpoint in {self.directory}: "
                + "; ".join(f"step {s}: {type(e).__name__}" for s, e in skipped)
                + f". Move {self.directory.parent} away (or use a new --workdir) to start fresh."
            )
        return None

    def restore_params(
        self, target_params: Any, ema: str | None, ema_names: list[str], step: int | None = None
    ) -> tuple[Any, int]:
        """Parameters alone, for inference: the EMA named `ema` (one of `ema_names`, all the EMAs
        the checkpoint holds, e.g. ['ema_0p9999']) or the raw parameters (ema=None), from `step`
        or else the newest readable checkpoint. Returns (params, step)."""
        if ema is not None and ema not in ema_names:
            raise ValueError(f"No EMA {ema!r} in this run; it has {ema_names}.")
        abstract = _abstract(target_params)
        if ema is None:
            args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        else:
            args = ocp.args.Composite(
                ema=ocp.args.StandardRestore({name: abstract for name in ema_names})
            )
        for s in [step] if step is not None else self.steps():
            try:
                self.verify(s)
                restored = self.manager.restore(s, args=args)
            except Exception as e:  # any read failure: try the previous one
                if step is not None:
                    raise FileNotFoundError(
                        f"Checkpoint {self.directory / str(s)} is unreadable: {e}"
                    ) from None
                self._warn_skip(s, e)
                continue
            return (restored["params"] if ema is None else restored["ema"][ema]), s
        raise FileNotFoundError(f"No readable checkpoint in {self.directory}.")

    def _warn_skip(self, step: int, error: Exception) -> None:
        reason = (str(error) if isinstance(error, DamagedCheckpointError)
                  else f"{type(error).__name__}: {str(error)[:200]}")
        logging.warning("skipping unreadable checkpoint %s (%s)", self.directory / str(step),
                        reason)

