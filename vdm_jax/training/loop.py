"""The training loop: data → jitted sharded step → logs, hooks, checkpoints.

    summary = train(config, workdir, hooks=[...])

1. Prepare (nothing is written yet): validate the config, the mesh against the devices, the
   batch against the mesh, REPA's frozen encoder weights (loaded here, passed to every step as
   a non-trained input), the dataset and the run directory; build the model and a sharded
   train state; if the run directory holds a run, check that `config` may resume it
   (vdm_jax.config.SAFE_ON_RESUME) and restore its newest readable checkpoint (state and the
   data iterator's position). Any problem is a ValueError / FileNotFoundError naming it.
2. Compile, still writing nothing: the first batch is drawn and the train step compiled once,
   timed and reported ("compiling the train step … 12.3 s"), so a setting the backend cannot
   compile (float16 matmuls on CPU) leaves no run directory. Start: process 0 takes the run
   directory's lock (a second trainer gets one line naming the holder's pid, from `prepare`
   already, before it reads the run), removes what killed writers left behind (temporary files,
   unfinished orbax checkpoints), writes config.json and opens the logs (TensorBoard,
   metrics.jsonl, train.log, which gets the compile lines too).
3. Loop: each step's rng is fold_in(seed key, step), so a resumed run draws exactly the noise and
   batches of an uninterrupted one. On GPU/TPU the loss of step k is checked on the host while
   step k + 1 runs (no pipeline stall). On CPU it is checked before step k + 1 is dispatched:
   XLA:CPU gains nothing from the overlap, and a step queued behind a running one doubles the
   host memory and slows both (DiT-S/2, batch 32: 13–19 GB and 1.46× the benchmark's step time
   against 7.3 GB and its step time, benchmarks/trainer_speed.py). A non-finite loss or gradient
   stops the run naming the step, without saving, so the last good checkpoint stays the newest.
   Images/s exclude compilation and the hooks' time.
   After each step every hook is called with a `StepContext` (the pipelines layer adds sample
   grids and end-of-run evaluation this way; the trainer knows nothing of generation).
4. SIGTERM (preemption) at any time, or a first Ctrl-C once training runs: the current step
   finishes, is saved, and `train` returns with summary["preempted"] = True and the signal's
   name; a second Ctrl-C (or one while preparing or compiling) raises KeyboardInterrupt at once,
   without waiting for a save in flight (its temporary directory is removed at the next start).
5. A full disk (ENOSPC, EDQUOT, or EFBIG: a file-size limit) while saving a checkpoint or
   writing the logs: `DiskFullError`, one line naming the disk, the path, the step, the free space
   and the checkpoint a rerun resumes from; the last finalized checkpoint stays the newest and
   readable, and the unfinished one is removed at the next start.

Step numbering: step k is the k-th optimizer update (k = 1, 2, ...). It consumes the k-th batch
the run draws (counting from the start of training, across restarts), logs its metrics under
step k, leaves state["step"] == k, and checkpoint `k` holds the state after it. A resumed run
logs to `metrics.jsonl` (and TensorBoard) from the restored step + 1, having dropped the rows a
killed run logged after its last checkpoint: each step appears once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm import tqdm

from vdm_jax import config as config_lib
from vdm_jax.checkpoints.manager import Checkpointer, CheckpointWriteError, check_compatible
from vdm_jax.data import dataset_info, latents, train_iterator
from vdm_jax.io import read_json, remove_stale_temporaries, write_json
from vdm_jax.model import DataSpec, DiffusionModel, build, load_target_encoder_for
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import RunDir
from vdm_jax.training import state as state_lib
from vdm_jax.training.logs import MetricWriter, RunLog
from vdm_jax.training.step import frozen_shardings, jit_train_step

__all__ = ["DiskFullError", "NonFiniteLossError", "StepContext", "prepare", "step_function",
           "train"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf; the message names the step."""


class DiskFullError(OSError):
    """A checkpoint or log could not be written for lack of room (ENOSPC, EDQUOT, or EFBIG: a
    file-size limit); the message names the disk, the path, the step and the free space."""


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
    say: RunLog


Hook = Callable[[StepContext], None]


class _Interrupts:
    """Once training runs (`armed`), SIGTERM and a first SIGINT request a save-and-stop at the
    next step boundary and a second SIGINT raises KeyboardInterrupt at once (the caller does not
    wait for a save in flight). Before (while preparing data, restoring or compiling: nothing
    new to save), SIGINT raises KeyboardInterrupt at once and SIGTERM requests the stop."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (tests running train in a thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and (self.requested == "SIGINT" or not self.armed):
            raise KeyboardInterrupt  # abort now
        if self.requested is None:
            name = signal.Signals(signum).name
            again = " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else ""
            if jax.process_index() == 0:  # os.write: no lock a signal handler could deadlock on
                os.write(sys.stderr.fileno(), f"\n{name}: finishing the current step, saving it "
                         f"and stopping{again} …\n".encode())
            self.requested = name
        elif signum == signal.SIGINT:
            self.requested = "SIGINT"  # after SIGTERM, a Ctrl-C still may abort

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _host_metrics(metrics: Mapping[str, Any], num_bins: int) -> dict[str, float]:
    m = jax.device_get(metrics)
    out = {k: float(m[k]) for k in ("loss", "grad_norm", "lr", "repa_loss") if k in m}
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


def prepare(config: ConfigDict, workdir: str | Path, devices: list | None = None
            ) -> dict[str, Any]:
    """Everything the loop needs, validated, with the state restored if the run directory has
    one (step 1 of the module docstring). devices: the mesh's devices (default: all)."""
    config_lib.validate(config)
    rundir = RunDir(workdir)
    rundir.check_writable()
    if jax.process_index() == 0:  # the lock's holder-to-be: a second trainer stops here,
        rundir.check_unlocked()  # before reading the run (other processes could see ours)
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    config_lib.check_batch(config, mesh.size, mesh.shape["data"])
    frozen = load_target_encoder_for(config)  # REPA's frozen encoder: bad weights fail here
    info = dataset_info(config.data)
    repa = config.get("repa")
    if repa is not None and repa.enabled and repa.features == "stored" and not getattr(
            info, "repa_features", None):
        raise ValueError(f"repa.features='stored' needs a dataset that stores REPA features "
                         f"beside its examples, and data.name={config.data.name!r} does not; "
                         "use repa.features='online'")
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
    data_iter = train_iterator(
        config.data, global_batch_size=config.train.global_batch_size, seed=config.seed,
        mesh_sharding=mesh_lib.batch_sharding(mesh),
    )
    # Reads only (it writes from its first save): an existing run is checked to be ours first.
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
    if restored is not None:
        state, data_state = restored
        if data_state is not None:  # None: an imported checkpoint, no data position yet
            data_iter.set_state(data_state)
    if frozen is not None:
        frozen = jax.device_put(frozen, frozen_shardings(frozen, mesh))
    return dict(mesh=mesh, info=info, data=data, tx=tx, lr_schedule=lr_schedule, model=model,
                state=state, shardings=shardings, data_iter=data_iter, checkpointer=checkpointer,
                restored=restored is not None, rundir=rundir, frozen=frozen)


def step_function(config: ConfigDict, env: Mapping[str, Any]) -> Any:
    """The jitted train step the loop runs for `config` and `prepare`'s `env` (not yet compiled;
    benchmarks/train_step.py times this same function)."""
    return jit_train_step(
        env["model"], env["tx"], env["lr_schedule"], tuple(config.optim.ema_decays),
        config.train.micro_batches, env["shardings"], env["mesh"], config.train.num_t_bins,
        frozen=env["frozen"],
    )


def _remove_leftovers(rundir: RunDir) -> None:
    """What killed writers left: temporary files and unfinished orbax checkpoints (called under
    the run directory's lock, so no writer is active)."""
    for directory in (rundir.root, rundir.samples, rundir.eval_dir):
        remove_stale_temporaries(directory)
    if rundir.checkpoints.is_dir():
        for p in rundir.checkpoints.iterdir():
            if ".orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def _mount_point(path: Path) -> Path:
    node = path.absolute()
    while not node.exists() and node.parent != node:
        node = node.parent
    while not os.path.ismount(node) and node.parent != node:
        node = node.parent
    return node


def _storage_errno(error: BaseException) -> int | None:
    """ENOSPC / EDQUOT / EFBIG when `error` (or an error it was raised from) is a write refused
    for lack of room, else None. orbax's TensorStore writes report the OS error in the text."""
    texts = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
             errno.EFBIG: "File too large"}
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in texts:
            return e.errno
        for code, text in texts.items():
            if text in str(e):
                return code
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(error: BaseException, rundir: RunDir, what: str, step: int,
                    resumes_from: int | None) -> DiskFullError | None:
    """A DiskFullError (one line: the disk, the path, the step, the free space, what to do) when
    `error` is a write refused for lack of room while `what` at `step`, else None."""
    code = _storage_errno(error)
    if code is None:
        return None
    path = getattr(error, "path", None) or getattr(error, "filename", None) or rundir.root
    mount = _mount_point(Path(path))
    try:
        free = f"{shutil.disk_usage(mount).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    resume = (f"the run resumes from its newest complete checkpoint, step {resumes_from}"
              if resumes_from is not None else "no checkpoint was completed: the run starts over")
    if code == errno.EFBIG:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        limit = (f"this process may write files of at most {soft} bytes (ulimit -f)"
                 if soft != resource.RLIM_INFINITY else "the file system refuses files this large")
        message = (f"file too large while {what} at step {step}: {path}: {limit}; the disk "
                   f"mounted at {mount} has {free}. Raise the limit and rerun: {resume}.")
    else:
        kind = "disk quota exceeded" if code == errno.EDQUOT else "disk full"
        message = (f"{kind} while {what} at step {step}: {path} (disk mounted at {mount}, {free})."
                   f" Free space on that disk and rerun: {resume}.")
    full = DiskFullError(message)
    full.errno = code
    return full


def train(config: ConfigDict, workdir: str | Path, devices: list | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train `config` in `workdir` (see the module docstring) on `devices` (default: all),
    calling each of `hooks` after every step. Returns a summary dict: the final step, the last
    logged metrics, whether it was preempted (and by which signal), and the final state, model,
    mesh, data spec and dataset info.
    """
    with _Interrupts() as interrupts:  # from the start: SIGTERM while compiling is a preemption
        env = prepare(config, workdir, devices)
        rundir: RunDir = env["rundir"]
        checkpointer: Checkpointer = env["checkpointer"]
        is_main = jax.process_index() == 0
        lock = rundir.lock() if is_main else contextlib.nullcontext()
        progress = {"step": int(jax.device_get(env["state"]["step"])), "what": "starting"}
        try:
            # Before anything is written: a setting the backend cannot compile leaves no workdir.
            first = _compile_first_step(config, env)
            with lock:
                if is_main:
                    _remove_leftovers(rundir)
                summary = _train(config, env, interrupts, hooks, progress, first)
        except KeyboardInterrupt:
            raise  # a second Ctrl-C: abort at once, without waiting for a save in flight
        except BaseException as e:
            try:
                checkpointer.close()
            except Exception as closing:  # never mask the error that ended the run
                log.warning("while closing the checkpoints: %s", closing)
            if isinstance(e, Exception) and not isinstance(e, DiskFullError):
                if isinstance(e, CheckpointWriteError):
                    step, what = e.step, "saving the checkpoint"
                else:
                    step, what = progress["step"], progress["what"]
                resumes = next(iter(checkpointer.finalized_steps()), None)
                if (full := disk_full_error(e, rundir, what, step, resumes)) is not None:
                    raise full from None
            raise
        checkpointer.close()
        return summary


def _compile_first_step(config: ConfigDict, env: dict[str, Any]) -> dict[str, Any]:
    """The compiled train step, the first batch it will consume and the data iterator's state
    before that batch was drawn (what a save before the first step must store), and the
    messages said meanwhile (on stderr; _train copies them into train.log)."""
    state, data_iter = env["state"], env["data_iter"]
    step = int(jax.device_get(state["step"]))
    first: dict[str, Any] = {"step_fn": step_function(config, env), "batch": None,
                             "data_state": data_iter.get_state(), "said": []}
    if step >= config.train.num_steps:
        return first
    say = RunLog(None, jax.process_index() == 0)
    first["batch"] = batch = next(data_iter)
    extra = () if env["frozen"] is None else (env["frozen"],)
    first["said"].append(f"compiling the train step ({env['model'].image_shape} images, batch "
                         f"{config.train.global_batch_size} over {env['mesh'].size} devices) …")
    say(first["said"][-1])
    t0 = time.perf_counter()
    first["step_fn"] = first["step_fn"].lower(
        state, batch, state_lib.step_rng(state["rng"], step), *extra).compile()
    first["said"].append(f"compiled in {time.perf_counter() - t0:.1f} s.")
    say(first["said"][-1])
    return first


def _train(config: ConfigDict, env: dict[str, Any], interrupts: _Interrupts,
           hooks: Sequence[Hook], progress: dict[str, Any], first: dict[str, Any]
           ) -> dict[str, Any]:
    """The loop (steps 2-4 of the module docstring); `progress` tells the caller the step and
    what was being done, for the message of an error (a full disk)."""
    mesh, model, state, data_iter = env["mesh"], env["model"], env["state"], env["data_iter"]
    checkpointer: Checkpointer = env["checkpointer"]
    rundir: RunDir = env["rundir"]
    data_spec = env["data"].to_dict()
    is_main = jax.process_index() == 0
    if is_main:
        write_json(rundir.config_json, config.to_dict())
    say = RunLog(rundir.train_log, is_main)
    start = int(jax.device_get(state["step"]))
    writer = MetricWriter(rundir.tensorboard, rundir.metrics_jsonl, is_main, start_step=start)
    last_saved = start if env["restored"] else None
    num_steps = config.train.num_steps
    summary: dict[str, Any] = {"start_step": start, "preempted": False, "signal": None}
    last_logged: dict[str, float] = {}
    try:
        if env["restored"]:
            say(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}.")
        frozen = env["frozen"]
        extra = () if frozen is None else (frozen,)  # REPA's target encoder: a fixed input
        step = start
        step_fn, batch = first["step_fn"], first["batch"]
        for message in first["said"]:
            say.record(message)
        progress["what"] = "training"
        interrupts.armed = True
        pending: tuple[int, Any] | None = None  # (step, device metrics) checked one step late
        one_step_in_flight = mesh.devices.flat[0].platform == "cpu"  # see the module docstring
        # images/s count from here (after compiling), without the hooks' time (they sample).
        t_last, steps_since = time.perf_counter(), 0
        # disable=None: no bar when stderr is not a terminal (no carriage returns in a log file)
        bar = tqdm(total=num_steps, initial=start, disable=None if is_main else True, desc="train",
                   unit="step", dynamic_ncols=True)

        def flush_pending() -> None:
            nonlocal pending, last_logged, t_last, steps_since
            if pending is None:
                return
            k, dev_metrics = pending
            pending = None
            m = _host_metrics(dev_metrics, config.train.num_t_bins)
            _check_finite(m, k, last_saved, checkpointer.directory)
            if k % config.train.log_every == 0 or k == num_steps:
                now = time.perf_counter()
                m["images_per_sec"] = steps_since * config.train.global_batch_size / (now - t_last)
                t_last, steps_since = now, 0
                writer.scalars(k, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}")
                last_logged = m

        def save(k: int) -> None:
            nonlocal last_saved
            # A first batch drawn but not yet trained on (SIGTERM while compiling) is not
            # consumed: store the iterator's position before it, or the resume skips it.
            position = first["data_state"] if batch is not None else data_iter.get_state()
            checkpointer.save(state, position, config, data_spec)
            last_saved = k

        def call_hooks(k: int, final: bool) -> None:
            nonlocal t_last
            t0 = time.perf_counter()
            context = StepContext(k, final, state, model, env["data"], mesh, config, rundir,
                                  writer, say)
            for hook in hooks:
                hook(context)
            t_last += time.perf_counter() - t0

        try:
            while step < num_steps and not interrupts.requested:
                if batch is None:
                    batch = next(data_iter)
                if one_step_in_flight:
                    flush_pending()
                state, metrics = step_fn(state, batch, state_lib.step_rng(state["rng"], step),
                                         *extra)
                batch = None
                flush_pending()  # the previous step's (GPU/TPU: ready while this step runs)
                step += 1
                progress["step"] = step
                steps_since += 1
                pending = (step, metrics)
                bar.update(1)
                if step % config.train.checkpoint_every == 0 or step == num_steps:
                    flush_pending()  # never checkpoint a non-finite state
                    save(step)
                if hooks and step != num_steps:
                    call_hooks(step, final=False)
            if interrupts.requested and step < num_steps:  # preemption: save where we are
                if last_saved != step:
                    flush_pending()
                    save(step)
                checkpointer.wait()
                say(f"{interrupts.requested}: saved step {step}, stopping.")
                summary.update(preempted=True, signal=interrupts.requested)
            flush_pending()
            progress["what"] = "finishing"
            checkpointer.wait()
            interrupts.armed = False  # all saved: a Ctrl-C from here on aborts at once
        finally:
            bar.close()
        if not summary["preempted"] and hooks:
            progress["what"] = "running the end-of-run hooks"
            call_hooks(step, final=True)
    except KeyboardInterrupt:  # a second Ctrl-C: no waiting for a save in flight
        writer.close(quiet=True)
        say.close()
        raise
    except BaseException as e:
        if not isinstance(e, CheckpointWriteError):  # let a pending save finish (not masking e)
            try:
                checkpointer.wait()
            except Exception as failed:  # reported, unless it repeats e's full disk
                same = _storage_errno(failed) is not None and _storage_errno(e) is not None
                log.log(logging.INFO if same else logging.WARNING,
                        "an asynchronous checkpoint did not finish: %s", failed)
        writer.close(quiet=True)
        say.close()
        raise
    writer.close()
    say.close()
    summary.update(step=int(jax.device_get(state["step"])), metrics=last_logged, state=state,
                   model=model, mesh=mesh, data=env["data"], info=env["info"], rundir=rundir)
    return summary
