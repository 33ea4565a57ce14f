"""The training loop: data → jitted sharded step → logs, sample grids, checkpoints.

    train(config, workdir)

1. Validate the config and the mesh against the devices before anything is written.
2. Build the model and a sharded train state; resume from the newest readable checkpoint in
   `workdir/checkpoints` (train state and the data iterator's position), refusing a workdir that
   holds another configuration's run.
3. Loop: each step's rng is fold_in(seed key, step), so a resumed run draws exactly the noise and
   batches of an uninterrupted one. The loss of step k is checked on the host while step k + 1
   runs (no pipeline stall); a non-finite loss or gradient stops the run naming the step, without
   saving, so the last good checkpoint stays the newest.
4. Only process 0 writes logs (TensorBoard event files and `metrics.jsonl`) and sample grids;
   every process takes part in checkpointing (orbax coordinates the hosts).
5. SIGTERM (preemption) at any time finishes the current step, saves it, and returns normally.

Step numbering: step k is the k-th optimizer update (k = 1, 2, ...). It consumes the k-th batch
the run draws (counting from the start of training, across restarts), logs its metrics under
step k, leaves state["step"] == k, and checkpoint `k` holds the state after it. So a NaN in the
k-th batch stops the run with "... at step k", and the newest checkpoint is the last one before k.
A resumed run appends to `metrics.jsonl` from the restored step + 1: steps a killed run logged
after its last checkpoint appear twice (with the same losses: the rerun is exact).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from vdm_jax import config as config_lib
from vdm_jax import model as diffusion_model
from vdm_jax.checkpoints.manager import Checkpointer, check_identity
from vdm_jax.data import dataset_info, train_iterator
from vdm_jax.evaluation.evaluate import unit_to_uint8
from vdm_jax.generation import generate
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import step as ts

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf; the message names the step."""


class _Preemption:
    """Records SIGTERM so the loop can save and stop at a step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler (tests calling train in a thread)
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class MetricWriter:
    """TensorBoard event files + JSON lines in the workdir; a no-op on processes other than 0."""

    def __init__(self, workdir: Path, active: bool):
        self.active = active
        if not active:
            return
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))
        self.jsonl = open(workdir / "metrics.jsonl", "a")  # closed in close()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        if self.active:
            self.tb.add_image(name, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.active:
            self.tb.close()
            self.jsonl.close()


def _host_metrics(metrics: Mapping[str, Any], num_bins: int) -> dict[str, float]:
    m = jax.device_get(metrics)
    out = {k: float(m[k]) for k in ("loss", "grad_norm", "lr")}
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


def prepare(config: ConfigDict, workdir: str | Path, devices: list | None = None
            ) -> dict[str, Any]:
    """Everything the loop needs, validated, with the state restored if the workdir has one.
    devices: the mesh's devices (default: all devices of all processes)."""
    config_lib.validate(config)
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    config_lib.check_batch(config, mesh.size, mesh.shape["data"])
    info = dataset_info(config.data)
    tx, lr_schedule = ts.make_optimizer(config.optim, config.train.num_steps)
    decays = tuple(config.optim.ema_decays)
    model, state, shardings = ts.create_state(
        lambda: diffusion_model.build(config, info, config.seed), tx, decays, config.seed, mesh
    )
    workdir = Path(workdir)
    data_iter = train_iterator(
        config.data, global_batch_size=config.train.global_batch_size, seed=config.seed,
        mesh_sharding=mesh_lib.batch_sharding(mesh),
    )
    # Reads only (it writes from its first save): an existing run is checked to be ours first.
    checkpointer = Checkpointer(
        workdir / "checkpoints", config.train.keep_checkpoints, config.train.keep_period,
        config.train.async_checkpoints,
    )
    try:
        restored = checkpointer.restore_latest(state, config)
        if restored is None:  # a run killed before its first checkpoint still owns the workdir
            _check_workdir_config(workdir, config)
    except BaseException:
        checkpointer.close()
        raise
    if restored is not None:
        state, data_state = restored
        data_iter.set_state(data_state)
    return dict(mesh=mesh, info=info, tx=tx, lr_schedule=lr_schedule, model=model, state=state,
                shardings=shardings, data_iter=data_iter, checkpointer=checkpointer,
                restored=restored is not None)


def _check_workdir_config(workdir: Path, config: ConfigDict) -> None:
    """Refuse a workdir whose config.json (written at every start) is another configuration's."""
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # unreadable: no run to protect
        log.warning("ignoring unreadable %s (%s)", path, e)
        return
    check_identity(saved, config, f"{workdir} holds a run of another configuration "
                                  f"(its config.json, no checkpoint yet)")


def _write_config(workdir: Path, config: ConfigDict) -> None:
    """config.json via a temporary file and os.replace: a kill never leaves it half-written."""
    tmp = workdir / f"config.json.{os.getpid()}.tmp"
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, workdir / "config.json")


def _sample_grid(config, model, state, mesh, step, workdir, writer, generate_fn) -> Path | None:
    """Sample config.sample.num_images from the EMA with fixed noise; save a PNG grid."""
    ema = config_lib.ema_choice(config, config.sample.ema)
    params = state["params"] if ema is None else state["ema"][ema]
    labels = generate.class_balanced_labels(config.sample.num_images, model.num_classes)
    images = generate_fn(params, jnp.asarray(labels), jax.random.key(config.seed + 12345))
    images = unit_to_uint8(mesh_lib.to_host(images), model.num_levels)
    if jax.process_index() != 0:
        return None
    cols = model.num_classes if model.num_classes and model.num_classes <= 16 else None
    path = generate.save_grid(images, workdir / "samples" / f"step_{step:08d}.png", cols,
                              upscale=max(1, 64 // model.image_shape[0]))
    writer.image(step, "samples", generate.image_grid(images, cols))
    return path


def train(config: ConfigDict, workdir: str | Path, devices: list | None = None
          ) -> dict[str, Any]:
    """Train `config` in `workdir` (see the module docstring) on `devices` (default: all).
    Returns a summary dict with the final step, the last logged metrics, the last sample grid
    path, whether it was preempted, and the final state, model, mesh and dataset info.
    """
    workdir = Path(workdir)
    with _Preemption() as preemption:  # from the start: SIGTERM while compiling is a preemption
        return _train(config, workdir, devices, preemption)


def _train(config: ConfigDict, workdir: Path, devices: list | None, preemption: _Preemption
           ) -> dict[str, Any]:
    env = prepare(config, workdir, devices)
    mesh, model, state, data_iter = env["mesh"], env["model"], env["state"], env["data_iter"]
    checkpointer = env["checkpointer"]
    is_main = jax.process_index() == 0
    try:
        if is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            _write_config(workdir, config)
        writer = MetricWriter(workdir, is_main)
    except BaseException:
        checkpointer.close()
        raise
    decays = tuple(config.optim.ema_decays)
    step_fn = ts.jit_train_step(
        model, env["tx"], env["lr_schedule"], decays, config.train.micro_batches,
        env["shardings"], mesh, config.train.num_t_bins,
    )
    s = config.sample
    generate_fn = generate.make_generate_fn(
        model, s.num_images, sampler=s.sampler, num_steps=s.num_steps,
        guidance_scale=s.guidance_scale,
        guidance_interval=tuple(s.guidance_interval) if s.guidance_interval else None,
        sharding=mesh_lib.batch_sharding(mesh) if s.num_images % mesh.size == 0 else None,
    )
    start = int(jax.device_get(state["step"]))
    last_saved = start if env["restored"] else None
    if env["restored"] and is_main:
        tqdm.write(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}.",
                   file=sys.stderr)
    num_steps = config.train.num_steps
    summary: dict[str, Any] = {"start_step": start, "preempted": False, "sample_grid": None}
    last_logged: dict[str, float] = {}
    pending: tuple[int, Any] | None = None  # (step, device metrics) checked one step late
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(total=num_steps, initial=start, disable=not is_main, desc="train", unit="step",
               dynamic_ncols=True)

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

    try:
        step = start
        while step < num_steps and not preemption.requested:
            batch = next(data_iter)
            state, metrics = step_fn(state, batch, ts.step_rng(state["rng"], step))
            flush_pending()  # the previous step's metrics: ready while this step runs
            step += 1
            steps_since += 1
            pending = (step, metrics)
            bar.update(1)
            if step % config.train.checkpoint_every == 0 or step == num_steps:
                flush_pending()  # never checkpoint a non-finite state
                checkpointer.save(state, data_iter.get_state(), config)
                last_saved = step
            if s.every and step % s.every == 0 and step < num_steps:
                summary["sample_grid"] = _sample_grid(
                    config, model, state, mesh, step, workdir, writer, generate_fn)
        if preemption.requested and step < num_steps:  # SIGTERM: save where we are, stop
            if last_saved != step:
                flush_pending()
                checkpointer.save(state, data_iter.get_state(), config)
                last_saved = step
            log.warning("SIGTERM: saved step %d, stopping.", step)
            summary["preempted"] = True
        flush_pending()
        checkpointer.wait()
        if not summary["preempted"]:
            summary["sample_grid"] = _sample_grid(
                config, model, state, mesh, step, workdir, writer, generate_fn)
    finally:
        bar.close()
        try:
            checkpointer.wait()
        finally:
            checkpointer.close()
            writer.close()
    summary.update(step=int(jax.device_get(state["step"])), metrics=last_logged, state=state,
                   model=model, mesh=mesh, info=env["info"])
    return summary


def evaluate_at_end(summary: Mapping[str, Any], config: ConfigDict, workdir: str | Path
                    ) -> dict[str, Any]:
    """Held-out bits/dim, baselines and sample metrics of a finished run (config.eval).

    Uses the EMA chosen by config.sample.ema. Writes `workdir/eval_results.json` and, with
    eval.num_samples > 0, the class-balanced samples as an ADM `.npz` (`samples/final.npz`).
    """
    from vdm_jax.evaluation import likelihood
    from vdm_jax.evaluation.evaluate import digits_metrics, write_json_atomic
    from vdm_jax.evaluation.reference import save_samples

    workdir = Path(workdir)
    model, state, mesh = summary["model"], summary["state"], summary["mesh"]
    ema = config_lib.ema_choice(config, config.sample.ema)
    params = state["params"] if ema is None else state["ema"][ema]
    s = config.sample
    results: dict[str, Any] = {
        "step": summary["step"], "ema": ema or "none", "sampler": s.sampler,
        "sampler_steps": s.num_steps, "guidance_scale": s.guidance_scale,
        "guidance_interval": s.guidance_interval,
    }
    results["bpd"] = likelihood.evaluate_bpd(
        model, params, config.data, batch_size=config.eval.batch_size, mesh=mesh,
        seed=config.seed, passes=config.eval.bpd_passes,
    )
    results["baselines_bpd"] = likelihood.pixel_baselines(config.data, model.num_levels)
    n = config.eval.num_samples
    if n:
        batch = min(n, 500)
        batch -= batch % mesh.size if batch >= mesh.size else 0
        fn = generate.make_generate_fn(
            model, batch, sampler=s.sampler, num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            guidance_interval=tuple(s.guidance_interval) if s.guidance_interval else None,
        )
        labels = generate.class_balanced_labels(math.ceil(n / batch) * batch, model.num_classes)
        chunks = []
        for i in range(0, len(labels), batch):
            key = jax.random.fold_in(jax.random.key(config.seed + 777), i)
            chunks.append(unit_to_uint8(mesh_lib.to_host(fn(params, labels[i:i + batch], key)),
                                        model.num_levels))
        images, labels = np.concatenate(chunks)[:n], labels[:n]
        if jax.process_index() == 0:
            results["samples_npz"] = str(save_samples(
                workdir / "samples" / "final.npz", images,
                labels if model.num_classes else None))
        if config.data.name == "digits":
            results["digits"] = digits_metrics(
                images, labels if model.num_classes else None, workdir,
                data_dir=config.data.data_dir, seed=config.seed)
    results["sample_grid"] = str(summary["sample_grid"]) if summary["sample_grid"] else None
    if jax.process_index() == 0:
        write_json_atomic(workdir / "eval_results.json", results)
    return results


def format_results(results: Mapping[str, Any]) -> str:
    """The end-of-run figures as aligned text (what `make demo` prints)."""
    bpd, base = results["bpd"], results["baselines_bpd"]
    rows = [
        ("held-out bits/dim (−ELBO)", f"{bpd['total']:.4f}  (prior {bpd['prior']:.4f}, "
         f"reconstruction {bpd['reconstruction']:.4f}, diffusion {bpd['diffusion']:.4f}; "
         f"{bpd['num_examples']} test images)"),
        ("baseline: independent per-pixel categorical", f"{base['independent_categorical']:.4f}"),
        ("baseline: uniform over K levels", f"{base['uniform']:.4f}"),
    ]
    if "digits" in results:
        d = results["digits"]
        if d.get("class_accuracy") is not None:
            rows.append(("class accuracy of conditional samples", f"{d['class_accuracy']:.4f}"))
        rows.append(("digits-FID (samples vs test)", f"{d['digits_fid']:.4f}"))
        rows.append(("digits-FID floor (real train vs test)", f"{d['digits_fid_floor']:.4f}"))
    rows.append(("sampler", f"{results['sampler']}, {results['sampler_steps']} steps, guidance "
                 f"{results['guidance_scale']}, {results['ema']}"))
    if results.get("samples_npz"):
        rows.append(("samples (.npz)", results["samples_npz"]))
    if results.get("sample_grid"):
        rows.append(("sample grid (PNG)", results["sample_grid"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
