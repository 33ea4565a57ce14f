"""The training loop: data → jitted sharded step → logs, hooks, checkpoints.

    summary = train(config, workdir, hooks=[...])

1. Set up (vdm_jax.training.setup: `set_up` → a `RunSetup`; nothing is written yet): validate
   the config, the mesh against the devices, the batch against the mesh, the loss terms' inputs
   (a frozen encoder's weights: loaded here, passed to every step as a non-trained input) and
   what the terms need of the dataset, the dataset and the run directory; build the model and a
   sharded train state; if the run directory holds a run, check that `config` may resume it
   (vdm_jax.config.SAFE_ON_RESUME) and restore its newest readable checkpoint (state and the
   data iterator's position). Any problem is a ValueError / FileNotFoundError naming it.
2. Compile, still writing nothing (`_Loop.compile`): the first batch is drawn and the train
   step compiled once, timed and reported ("compiling the train step … 12.3 s"), so a setting
   the backend cannot compile (float16 matmuls on CPU) leaves no run directory. Start
   (`_Loop.open_logs`): process 0 takes the run directory's lock (a second trainer gets one line
   naming the holder's pid, from `set_up` already, before it reads the run), removes what killed
   writers left behind (temporary files, unfinished orbax checkpoints), writes config.json and
   opens the logs (TensorBoard, metrics.jsonl, train.log, which gets the compile lines too).
3. Loop (`_Loop.run_steps`): each step's rng is fold_in(seed key, step), so a resumed run draws
   exactly the noise and batches of an uninterrupted one. On GPU/TPU the loss of step k is checked
   on the host while step k + 1 runs (no pipeline stall). On CPU it is checked before step k + 1
   is dispatched: XLA:CPU gains nothing from the overlap, and a step queued behind a running one
   holds a second step's host memory and slows both (the README's trainer-speed table). A
   non-finite loss or gradient stops the run naming the step, without saving, so the last good
   checkpoint stays the newest. Images/s exclude compilation and the hooks' time.
   After each step every hook is called with a `StepContext` (the pipelines layer adds sample
   grids and end-of-run evaluation this way; the trainer knows nothing of generation).
4. SIGTERM (preemption) at any time, or a first Ctrl-C once training runs
   (vdm_jax.rundir.PreemptionSignals): the current step finishes, is saved, and `train` returns
   with summary["preempted"] = True and the signal's name (a SIGTERM while compiling saves step
   0 with the data iterator's position before the first batch, which no step consumed yet, so
   the resumed run is exact); a second Ctrl-C (or one while
   setting up or compiling) raises KeyboardInterrupt at once, without waiting for a save in flight
   (its temporary directory is removed at the next start).
5. A full disk (ENOSPC, EDQUOT, or EFBIG: a file-size limit) while saving a checkpoint or
   writing the logs: `DiskFullError` (vdm_jax.io.disk_full_error), one line naming the disk, the
   path, the step, the free space and the checkpoint a rerun resumes from; the last finalized
   checkpoint stays the newest and readable, and the unfinished one is removed at the next start.

Step numbering: step k is the k-th optimizer update (k = 1, 2, ...). It consumes the k-th batch
the run draws (counting from the start of training, across restarts), logs its metrics under
step k, leaves state["step"] == k, and checkpoint `k` holds the state after it. A resumed run
logs to `metrics.jsonl` (and TensorBoard) from the restored step + 1, having dropped the rows a
killed run logged after its last checkpoint: each step appears once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm import tqdm

from vdm_jax.checkpoints.manager import Checkpointer, CheckpointWriteError
from vdm_jax.io import (
    DiskFullError,
    disk_full_error,
    remove_stale_temporaries,
    storage_errno,
    write_json,
)
from vdm_jax.model import DataSpec, DiffusionModel
from vdm_jax.rundir import PreemptionSignals, RunDir
from vdm_jax.training import state as state_lib
from vdm_jax.training.logs import MetricWriter, RunLog
from vdm_jax.training.setup import RunSetup, set_up
from vdm_jax.training.step import config_train_step

__all__ = ["DiskFullError", "NonFiniteLossError", "RunSetup", "StepContext", "set_up",
           "step_function", "train"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf; the message names the step."""


@dataclasses.dataclass
class StepContext:
    """What a hook sees after step `step` (`final`: the last step of this call to `train`)."""

    step: int
    final: bool
    state: Any
    model: DiffusionModel
    data: DataSpec
    mesh: Mesh
    config: ConfigDict
    rundir: RunDir
    writer: MetricWriter
    run_log: RunLog


Hook = Callable[[StepContext], None]


def _host_metrics(metrics: Mapping[str, Any], num_bins: int) -> dict[str, float]:
    m = jax.device_get(metrics)
    first = ("loss", "grad_norm", "lr")  # then the loss terms' metrics
    out = {k: float(m[k]) for k in first}
    out.update({k: float(v) for k, v in m.items() if k not in (*first, "bin_sum", "bin_count")})
    for i in range(num_bins):
        if m["bin_count"][i] > 0:
            out[f"loss_t_bin/{i / num_bins:.1f}-{(i + 1) / num_bins:.1f}"] = float(
                m["bin_sum"][i] / m["bin_count"][i]
            )
    return out


def _check_finite(metrics: Mapping[str, float], step: int, last_saved: int | None,
                  ckpt_dir: Path) -> None:
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(metrics[k])]
    if bad:
        kept = (f"the newest checkpoint, step {last_saved} in {ckpt_dir}, is intact; a rerun "
                "resumes there and meets the same batch and noise again"
                if last_saved is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"Non-finite {' and '.join(bad)} at step {step} "
            f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}). Training stopped "
            f"without saving: {kept}. Lower optim.lr, check the data for NaNs, or use "
            "model.dtype='float32'."
        )


def step_function(config: ConfigDict, setup: RunSetup) -> Any:
    """The jitted train step the loop runs for `config` and `set_up`'s `setup` (not yet
    compiled; benchmarks/train_step.py times this same function)."""
    return config_train_step(config, setup.model, setup.tx, setup.lr_schedule, setup.shardings,
                             setup.mesh, setup.term_inputs)


def _remove_leftovers(rundir: RunDir) -> None:
    """What killed writers left: temporary files and unfinished orbax checkpoints (called under
    the run directory's lock, so no writer is active)."""
    for directory in (rundir.root, rundir.samples, rundir.eval_dir):
        remove_stale_temporaries(directory)
    if rundir.checkpoints.is_dir():
        for p in rundir.checkpoints.iterdir():
            if ".orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------ train


def train(config: ConfigDict, workdir: str | Path, devices: list | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train `config` in `workdir` (see the module docstring) on `devices` (default: all),
    calling each of `hooks` after every step. Returns a summary dict: the final step, the last
    logged metrics, whether it was preempted (and by which signal), and the final state, model,
    mesh, data spec and dataset info.
    """
    # From the start: SIGTERM while compiling is a preemption.
    with PreemptionSignals(announce=lambda: jax.process_index() == 0) as signals:
        setup = set_up(config, workdir, devices)
        loop = _Loop(config, setup, signals, hooks)
        lock = setup.rundir.lock() if loop.is_main else contextlib.nullcontext()
        try:
            # Before anything is written: a setting the backend cannot compile leaves no workdir.
            loop.compile()
            with lock:
                if loop.is_main:
                    _remove_leftovers(setup.rundir)
                summary = loop.run()
        except KeyboardInterrupt:
            raise  # a second Ctrl-C: abort at once, without waiting for a save in flight
        except BaseException as e:
            _close_after_error(setup.checkpointer)
            if isinstance(e, Exception) and not isinstance(e, DiskFullError):
                full = _disk_full(e, setup, loop)
                if full is not None:
                    raise full from None
            raise
        setup.checkpointer.close()
        return summary


def _close_after_error(checkpointer: Checkpointer) -> None:
    try:
        checkpointer.close()
    except Exception as closing:  # never mask the error that ended the run
        log.warning("while closing the checkpoints: %s", closing)


def _disk_full(error: Exception, setup: RunSetup, loop: _Loop) -> DiskFullError | None:
    """A DiskFullError naming what the loop was doing when `error` is a write refused for lack
    of room, else None."""
    if isinstance(error, CheckpointWriteError):
        step, what = error.step, "saving the checkpoint"
    else:
        step, what = loop.step, loop.doing
    resumes = next(iter(setup.checkpointer.finalized_steps()), None)
    return disk_full_error(error, setup.rundir.root, what, step, resumes)


class _Loop:
    """Steps 2–4 of the module docstring over a `RunSetup`. Its fields are what moves between
    steps: `step` (the last step taken), `doing` (for the message of an error), the compiled
    step and the batch drawn for it but not yet consumed (with the data iterator's position
    before it), the metrics of the step not yet checked (`pending`), the last logged ones, the
    last saved step and the images/s clock."""

    def __init__(self, config: ConfigDict, setup: RunSetup, signals: PreemptionSignals,
                 hooks: Sequence[Hook]):
        self.config, self.setup, self.signals, self.hooks = config, setup, signals, hooks
        self.state = setup.state
        self.step = int(jax.device_get(setup.state["step"]))
        self.start = self.step
        self.doing = "starting"
        self.last_saved: int | None = self.step if setup.restored else None
        self.pending: tuple[int, Any] | None = None  # (step, device metrics) checked one late
        self.last_logged: dict[str, float] = {}
        self.preempted_by: str | None = None
        self.is_main = jax.process_index() == 0
        # The loss terms' inputs: a fixed extra argument of every step, when there are any.
        self.step_inputs = (setup.term_inputs,) if setup.term_inputs else ()
        self.step_fn: Any = None
        self.batch: Any = None  # drawn by `compile`, consumed by the first step
        self.batch_position: Any = None  # the data iterator's state before `batch`
        self.run_log = RunLog(None, self.is_main)  # held back until `open_logs`
        self.writer: MetricWriter | None = None
        self.bar: tqdm | None = None
        self.clock, self.steps_since = time.perf_counter(), 0

    # --------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Steps 2–4; the logs are closed on every way out."""
        self.open_logs()
        try:
            self.train_steps()
            if self.preempted_by is None and self.hooks:
                self.doing = "running the end-of-run hooks"
                self.call_hooks(final=True)
        except KeyboardInterrupt:  # a second Ctrl-C: no waiting for a save in flight
            self.close_logs(quiet=True)
            raise
        except BaseException as e:
            if not isinstance(e, CheckpointWriteError):  # a pending save finishes (e not masked)
                self.wait_for_saves_after(e)
            self.close_logs(quiet=True)
            raise
        self.close_logs()
        return self.summary()

    def open_logs(self) -> None:
        """config.json, train.log, metrics.jsonl and TensorBoard (step 2)."""
        rundir = self.setup.rundir
        if self.is_main:
            write_json(rundir.config_json, self.config.to_dict())
        self.run_log.open(rundir.train_log)  # with what `compile` said
        # Rows a killed run logged after its last checkpoint go: the replayed steps log once.
        self.writer = MetricWriter(rundir.tensorboard, rundir.metrics_jsonl, self.is_main,
                                   start_step=self.start)

    def close_logs(self, quiet: bool = False) -> None:
        """quiet: another error is on its way (MetricWriter.close)."""
        if self.writer is not None:
            self.writer.close(quiet=quiet)
        self.run_log.close()

    def train_steps(self) -> None:
        """Compile, run the steps until num_steps or a signal, save where a signal stopped."""
        num_steps = self.config.train.num_steps
        self.doing = "training"
        self.signals.armed = True
        # disable=None: no bar when stderr is not a terminal (no carriage returns in a log file)
        self.bar = tqdm(total=num_steps, initial=self.start,
                        disable=None if self.is_main else True, desc="train", unit="step",
                        dynamic_ncols=True)
        try:
            self.run_steps()
            if self.signals.requested and self.step < num_steps:
                self.save_on_signal()
            self.check_pending()
            self.doing = "finishing"
            self.setup.checkpointer.wait()
            self.signals.armed = False  # all saved: a Ctrl-C from here on aborts at once
        finally:
            self.bar.close()

    def compile(self) -> None:
        """Draw the first batch and compile the train step ahead of time on it (step 2), writing
        nothing: the messages wait for `open_logs`. Nothing left to train: no batch, and the
        step stays uncompiled."""
        if self.setup.restored:
            self.run_log(f"Resuming from the checkpoint at step {self.start} in "
                         f"{self.setup.checkpointer.directory}.")
        self.step_fn = step_function(self.config, self.setup)
        if self.step >= self.config.train.num_steps:
            return
        self.batch_position = self.setup.data_iter.get_state()
        self.batch = next(self.setup.data_iter)
        self.run_log(f"compiling the train step ({self.setup.model.image_shape} images, batch "
                     f"{self.config.train.global_batch_size} over {self.setup.mesh.size} "
                     "devices) …")
        t0 = time.perf_counter()
        self.step_fn = self.step_fn.lower(self.state, self.batch, self.rng(),
                                          *self.step_inputs).compile()
        self.run_log(f"compiled in {time.perf_counter() - t0:.1f} s.")

    def rng(self) -> jax.Array:
        """The key of the next step: fold_in(seed key, step)."""
        return state_lib.step_rng(self.state["rng"], self.step)

    def run_steps(self) -> None:
        """Step 3 of the module docstring, until num_steps or a signal."""
        train = self.config.train
        # On CPU step k is checked before step k + 1 is dispatched (the module docstring).
        one_step_in_flight = self.setup.mesh.devices.flat[0].platform == "cpu"
        self.clock, self.steps_since = time.perf_counter(), 0  # images/s: after compiling
        while self.step < train.num_steps and not self.signals.requested:
            if self.batch is None:
                self.batch = next(self.setup.data_iter)
            if one_step_in_flight:
                self.check_pending()
            self.state, metrics = self.step_fn(self.state, self.batch, self.rng(),
                                               *self.step_inputs)
            self.batch = None
            self.check_pending()  # the previous step's (GPU/TPU: ready while this step runs)
            self.step += 1
            self.steps_since += 1
            self.pending = (self.step, metrics)
            self.bar.update(1)
            if self.step % train.checkpoint_every == 0 or self.step == train.num_steps:
                self.check_pending()  # never checkpoint a non-finite state
                self.save()
            if self.hooks and self.step != train.num_steps:
                self.call_hooks(final=False)

    def check_pending(self) -> None:
        """Read the pending step's metrics on the host: stop on a non-finite loss, log them."""
        if self.pending is None:
            return
        (k, device_metrics), self.pending = self.pending, None
        train = self.config.train
        m = _host_metrics(device_metrics, train.num_t_bins)
        _check_finite(m, k, self.last_saved, self.setup.checkpointer.directory)
        if k % train.log_every == 0 or k == train.num_steps:
            now = time.perf_counter()
            m["images_per_sec"] = self.steps_since * train.global_batch_size / (now - self.clock)
            self.clock, self.steps_since = now, 0
            self.writer.scalars(k, m)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}")
            self.last_logged = m

    def save(self) -> None:
        # A batch drawn but not yet trained on (SIGTERM while compiling) is not consumed: store
        # the iterator's position before it, or the resumed run would skip it.
        position = (self.batch_position if self.batch is not None
                    else self.setup.data_iter.get_state())
        self.setup.checkpointer.save(self.state, position, self.config,
                                     self.setup.data.to_dict())
        self.last_saved = self.step

    def save_on_signal(self) -> None:
        """Preemption: save where we are, wait for it, say so."""
        if self.last_saved != self.step:
            self.check_pending()
            self.save()
        self.setup.checkpointer.wait()
        self.run_log(f"{self.signals.requested}: saved step {self.step}, stopping.")
        self.preempted_by = self.signals.requested

    def call_hooks(self, final: bool) -> None:
        """Every hook on this step; their time does not count in images/s."""
        t0 = time.perf_counter()
        s = self.setup
        context = StepContext(self.step, final, self.state, s.model, s.data, s.mesh,
                              self.config, s.rundir, self.writer, self.run_log)
        for hook in self.hooks:
            hook(context)
        self.clock += time.perf_counter() - t0

    def wait_for_saves_after(self, error: BaseException) -> None:
        """Let an asynchronous save in flight finish after `error`, reporting (not raising) its
        own failure unless it repeats the full disk of `error`."""
        try:
            self.setup.checkpointer.wait()
        except Exception as failed:
            same = storage_errno(failed) is not None and storage_errno(error) is not None
            log.log(logging.INFO if same else logging.WARNING,
                    "an asynchronous checkpoint did not finish: %s", failed)

    def summary(self) -> dict[str, Any]:
        s = self.setup
        return {"start_step": self.start, "preempted": self.preempted_by is not None,
                "signal": self.preempted_by, "step": int(jax.device_get(self.state["step"])),
                "metrics": self.last_logged, "state": self.state, "model": s.model,
                "mesh": s.mesh, "data": s.data, "info": s.info, "rundir": s.rundir}
