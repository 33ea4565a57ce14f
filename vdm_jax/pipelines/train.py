"""Training as `launch/train.py` runs it: the config a run directory resumes with, the trainer with
its sample-grid hook, and the end-of-run evaluation — what crosses training, generation and
evaluation lives here, above all three.

    config, notes = resolve_config(workdir, config_path, overrides)
    summary = run(config, workdir)            # trains; sample grids; metrics at the end

`resolve_config`: on a fresh run directory the config is the module's with the overrides; on a
run directory that holds a run, the run's stored config is the base and the overrides given now
are applied on top where they may change (vdm_jax.config.resume_config), so a resumed run never
silently falls back to the module's defaults for settings it was started with. A run that never
reached its first checkpoint has nothing to protect: it may start again with other fixed keys (the
notes then hold a warning naming them).

End of run (`config.eval.at_end`): held-out bits/dim with its three terms and two classical
baselines on the same data (not for MeanFlow, which bounds no likelihood: reported n/a), then
`eval.num_samples` class-balanced samples from the EMA (`config.sample`'s spec) written as
`samples/final.npz`, with the digits metrics for the digits default; with `eval.num_steps` =
(k1, k2, …) one such batch per step count (`samples/final_<k>steps.npz`, e.g. MeanFlow's 1- and
2-NFE); all of it in `eval_results.json` (the batches under "samples"), each batch with its
settings beside it (`final.json`, as launch/sample.py writes). SIGTERM during the evaluation
(vdm_jax.rundir.sigterm_raises): training is saved already, the summary says
`stopped_in="evaluation"`, and a rerun evaluates; a finished run started again neither redraws
its final grid nor evaluates again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from vdm_jax import config as config_lib
from vdm_jax.checkpoints.restore import stored_config
from vdm_jax.data import dataset_info
from vdm_jax.data.adm_npz import save_samples
from vdm_jax.evaluation import likelihood
from vdm_jax.evaluation.digits import digits_metrics
from vdm_jax.generation.decode import output_shape
from vdm_jax.generation.generate import class_balanced_labels
from vdm_jax.generation.grids import grid_upscale, image_grid, save_grid
from vdm_jax.generation.images import make_image_sampler
from vdm_jax.io import disk_full_error, read_json, write_json
from vdm_jax.model import BPD_NOT_APPLICABLE, DataSpec, with_compute_dtype
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import Preempted, RunDir, sigterm_raises
from vdm_jax.sampling_spec import SamplingSpec
from vdm_jax.training import loop
from vdm_jax.training.loop import StepContext

__all__ = ["SampleGridHook", "distributed_settings", "evaluate_at_end",
           "format_results", "resolve_config", "run"]

GRID_SEED_OFFSET = 12345  # the grids' fixed noise: key(seed + offset), the same at every step
EVAL_SEED_OFFSET = 777


def resolve_config(workdir: str | Path, config_path: str | None,
                   overrides: Sequence[tuple[str, str]]) -> tuple[ConfigDict, list[str]]:
    """(config, notes for the user) of a run in `workdir`; see the module docstring."""
    rundir = RunDir(workdir)
    rundir.check_writable()
    if jax.process_index() == 0:  # a run in progress: say so, before reading its checkpoints
        rundir.check_unlocked()  # (process 0 takes the lock: others could see their own)
    stored = stored_config(rundir) if rundir.has_run() else None
    if stored is None:
        if not config_path:
            raise ValueError("--config=FILE is required to start a run (e.g. "
                             "--config=configs/digits_dit.py)")
        return config_lib.load(config_path, overrides), []
    checkpointed = rundir.checkpoints.is_dir() and any(
        p.name.isdigit() for p in rundir.checkpoints.iterdir())
    if not checkpointed:  # a run that never reached a checkpoint: nothing to protect
        if config_path:
            config = config_lib.load(config_path, overrides)
        else:
            config = config_lib.resume_config(stored, overrides, str(rundir.root),
                                              checkpointed=False)[0]
        old, new = config_lib.flat(stored), config_lib.flat(config.to_dict())
        fixed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}"
                 for k in config_lib.config_diff(stored, config.to_dict())
                 if not config_lib.is_safe_on_resume(k)]
        return config, [f"warning: the run in {rundir.root} never reached its first checkpoint; "
                        f"starting it again with other fixed keys: {'; '.join(fixed)}."] if fixed \
            else []
    config, changed = config_lib.resume_config(stored, overrides, str(rundir.root))
    notes = [f"Resuming the run in {rundir.root} with its stored config."]
    if changed:
        flat = config_lib.flat(config.to_dict())
        notes.append("Changed for this run: " + ", ".join(f"{k}={flat.get(k)!r}"
                                                          for k in changed) + ".")
    if config_path:
        try:
            from_file = config_lib.load(config_path, overrides).to_dict()
        except ValueError:
            from_file = None
        ignored = [] if from_file is None else [
            k for k in config_lib.config_diff(from_file, config.to_dict())]
        if ignored:
            notes.append(f"{config_path} differs from the stored config in {', '.join(ignored)}: "
                         "the stored values are kept (pass --config.<key>=<value> to change a "
                         "key that may change on resume).")
    return config, notes


def distributed_settings(workdir: str | Path, config_path: str | None,
                         overrides: Sequence[tuple[str, str]]) -> Mapping[str, Any]:
    """The `distributed` section of the run's config, read without JAX (jax.distributed must be
    initialized before anything touches a device): from `config_path` with the overrides, or,
    when it is omitted on a resume, from the run directory's config.json."""
    if config_path:
        return config_lib.load(config_path, overrides).distributed
    stored = read_json(RunDir(workdir).config_json)
    if not isinstance(stored, dict):
        return {}
    return config_lib.resume_config(stored, overrides, str(RunDir(workdir).root))[0].distributed


class SampleGridHook:
    """After every `config.sample.every` steps and at the end: `config.sample.num_images`
    samples from the chosen EMA with fixed noise, saved as `samples/step_<k>.png` and shown in
    TensorBoard (the same upscaled image)."""

    def __init__(self, config: ConfigDict, model: Any, mesh: Any, data: DataSpec):
        self.every = int(config.sample.every)
        self.spec = config_lib.sampling_spec(config).resolve_dtype(config.model.dtype)
        self.ema = config_lib.ema_choice(config, self.spec.ema)
        model = with_compute_dtype(model, config, data, self.spec.dtype)
        n = int(config.sample.num_images)
        sharding = mesh_lib.batch_sharding(mesh) if n % mesh.size == 0 else None
        self.images = make_image_sampler(model, n, self.spec, data, config.autoencoder.weights,
                                         sharding=sharding)
        self.labels = jnp.asarray(class_balanced_labels(n, model.num_classes))
        self.key = jax.random.key(int(config.seed) + GRID_SEED_OFFSET)
        self.cols = model.num_classes if model.num_classes and model.num_classes <= 16 else None
        self.upscale = grid_upscale(output_shape(data)[0])
        self.last: Path | None = None
        self.drawn = False
        self.calls = 0

    def __call__(self, ctx: StepContext) -> None:
        self.calls += 1
        if not ctx.final and not (self.every and ctx.step % self.every == 0):
            return
        path = ctx.rundir.sample_grid(ctx.step)
        if ctx.final and self.calls == 1 and path.is_file():
            self.last = path  # a finished run started again: its final grid is drawn already
            return
        params = ctx.state["params"] if self.ema is None else ctx.state["ema"][self.ema]
        first, self.drawn = not self.drawn, True
        if first:
            ctx.run_log(f"compiling the sampler of the sample grids ({self.spec.describe()}) …")
            t0 = time.perf_counter()
        images = self.images(params, self.labels, self.key)
        if first:
            ctx.run_log(f"compiled and drew the first grid in {time.perf_counter() - t0:.1f} s.")
        if jax.process_index() != 0:
            return
        self.last = save_grid(images, ctx.rundir.sample_grid(ctx.step), self.cols, self.upscale)
        ctx.writer.image(ctx.step, "samples", image_grid(images, self.cols, upscale=self.upscale))


def run(config: ConfigDict, workdir: str | Path, devices: list | None = None
        ) -> dict[str, Any]:
    """Train with sample grids; evaluate at the end when `config.eval.at_end` (and the run was
    not preempted). The summary gains 'sample_grid' and, after evaluation, 'results'."""
    spec = config_lib.sampling_spec(config)
    if spec.guidance_channels:  # before training, not at the first sample grid
        spec.check_channels(DataSpec.from_info(dataset_info(config.data)).image_shape[-1])
    grids: list[SampleGridHook] = []

    def grid_hook(ctx: StepContext) -> None:
        if not grids:  # built on first use: the model and mesh come from the trainer
            grids.append(SampleGridHook(ctx.config, ctx.model, ctx.mesh, ctx.data))
        grids[0](ctx)

    summary = loop.train(config, workdir, devices, hooks=[grid_hook])
    summary["sample_grid"] = grids[0].last if grids else None
    if (config.eval.at_end and not summary["preempted"]
            and summary["step"] >= config.train.num_steps):
        done = read_json(summary["rundir"].eval_results)
        if isinstance(done, dict) and done.get("step") == summary["step"]:
            summary["results"] = done  # evaluated already: a finished run started again
            return summary
        try:
            with sigterm_raises():
                summary["results"] = evaluate_at_end(summary, config)
        except Preempted as stop:  # training is saved; a rerun evaluates
            summary.update(preempted=True, signal=str(stop), stopped_in="evaluation")
        except Exception as e:
            full = disk_full_error(e, summary["rundir"].root, "writing the end-of-run evaluation",
                                   summary["step"], summary["step"])
            if full is None:
                raise
            raise full from None
    return summary


def evaluate_at_end(summary: Mapping[str, Any], config: ConfigDict) -> dict[str, Any]:
    """Held-out bits/dim, baselines and sample metrics of a finished run (config.eval), from the
    EMA of config.sample.ema; written to the run directory's eval_results.json."""
    rundir: RunDir = summary["rundir"]
    model, state, mesh = summary["model"], summary["state"], summary["mesh"]
    spec = config_lib.sampling_spec(config).resolve_dtype(config.model.dtype)
    ema = config_lib.ema_choice(config, spec.ema)
    params = state["params"] if ema is None else state["ema"][ema]
    results: dict[str, Any] = {"step": summary["step"], "ema": ema or "none",
                               "sampling": spec.to_dict()}
    if model.is_meanflow:
        results["bpd"] = results["baselines_bpd"] = None
        results["unavailable"] = {"bpd": BPD_NOT_APPLICABLE}
    else:
        results["bpd"] = likelihood.evaluate_bpd(
            model, params, config.data, batch_size=config.eval.batch_size, mesh=mesh,
            seed=config.seed, passes=config.eval.bpd_passes,
        )
        results["baselines_bpd"] = likelihood.pixel_baselines(config.data, model.num_levels)
    if config.eval.num_samples:
        steps = tuple(config.eval.get("num_steps", ())) or (spec.num_steps,)
        results["samples"] = [
            _final_samples(summary, config, params, spec.replace(num_steps=k),
                           "final" if len(steps) == 1 else f"final_{k}steps")
            for k in steps]
    grid = summary.get("sample_grid")
    results["sample_grid"] = str(grid) if grid else None
    if jax.process_index() == 0:
        write_json(rundir.eval_results, results)
    return results


def _final_samples(summary: Mapping[str, Any], config: ConfigDict, params: Any,
                   spec: SamplingSpec, name: str) -> dict[str, Any]:
    """`config.eval.num_samples` class-balanced samples of `spec` saved as samples/<name>.npz,
    with the digits metrics for the digits data: {"sampling", "samples_npz", "digits"}."""
    rundir, mesh = summary["rundir"], summary["mesh"]
    model = with_compute_dtype(summary["model"], config, summary["data"], spec.dtype)
    n = config.eval.num_samples
    out: dict[str, Any] = {"sampling": spec.to_dict()}
    batch = min(n, 500)
    batch -= batch % mesh.size if batch >= mesh.size else 0
    sharding = mesh_lib.batch_sharding(mesh) if batch % mesh.size == 0 else None
    draw = make_image_sampler(model, batch, spec, summary["data"], config.autoencoder.weights,
                              sharding=sharding)
    labels = class_balanced_labels(math.ceil(n / batch) * batch, model.num_classes)
    chunks = []
    for i in range(0, len(labels), batch):
        key = jax.random.fold_in(jax.random.key(config.seed + EVAL_SEED_OFFSET), i)
        chunks.append(draw(params, labels[i:i + batch], key))
    images, labels = np.concatenate(chunks)[:n], labels[:n]
    if jax.process_index() == 0:
        out["samples_npz"] = str(save_samples(
            rundir.sample_batch(name), images, labels if model.num_classes else None))
        # Beside the batch, as launch/sample.py writes: evaluate.py merges it into its results.
        write_json(RunDir.settings_of(out["samples_npz"]), {
            **spec.to_dict(), "ema": config_lib.ema_choice(config, spec.ema) or "none",
            "checkpoint_step": int(summary["step"]), "workdir": str(rundir.root),
            "num_samples": int(n), "batch_size": int(batch),
            "class_balanced": bool(model.num_classes), "num_classes": int(model.num_classes),
            "dataset": config.data.name, "num_levels": int(model.num_levels),
            "seed": int(config.seed) + EVAL_SEED_OFFSET, "written_by": "end-of-run evaluation "
            "(noise of the batch at offset i: fold_in(key(seed), i))",
        })
    if config.data.name == "digits":
        out["digits"] = digits_metrics(
            images, labels if model.num_classes else None, rundir.cache,
            data_dir=config.data.data_dir, seed=config.seed)
    return out


def format_results(results: Mapping[str, Any]) -> str:
    """The end-of-run figures as aligned text (what `make demo` prints)."""
    bpd, base = results["bpd"], results["baselines_bpd"]
    if bpd is None:
        rows = [("held-out bits/dim (−ELBO)", "n/a: " + results["unavailable"]["bpd"])]
    else:
        rows = [
            ("held-out bits/dim (−ELBO)", f"{bpd['total']:.4f}  (prior {bpd['prior']:.4f}, "
             f"reconstruction {bpd['reconstruction']:.4f}, diffusion {bpd['diffusion']:.4f}; "
             f"{bpd['num_examples']} test images)"),
            ("baseline: independent per-pixel categorical",
             f"{base['independent_categorical']:.4f}"),
            ("baseline: uniform over K levels", f"{base['uniform']:.4f}"),
        ]
    batches = results.get("samples", [])
    for b in batches:  # with several step counts, each row names its own
        k = b["sampling"]["num_steps"]
        tag = f", {k} step{'s' if k > 1 else ''}" if len(batches) > 1 else ""
        d = b.get("digits")
        if d and d.get("class_accuracy") is not None:
            rows.append((f"class accuracy of conditional samples{tag}",
                         f"{d['class_accuracy']:.4f}"))
        if d:
            rows.append((f"digits-FID (samples vs test{tag})", f"{d['digits_fid']:.4f}"))
    if batches and batches[0].get("digits"):  # the same N of real images for every batch
        rows.append(("digits-FID floor (real train vs test)",
                     f"{batches[0]['digits']['digits_fid_floor']:.4f}"))
    s = results["sampling"]
    steps = " / ".join(str(b["sampling"]["num_steps"]) for b in batches) or s["num_steps"]
    rows.append(("sampler", f"{s['sampler']}, {steps} steps, guidance "
                 f"{s['guidance_scale']:g}, {results['ema']}"))
    for b in batches:
        k = b["sampling"]["num_steps"]
        tag = f" ({k} step{'s' if k > 1 else ''})" if len(batches) > 1 else ""
        if b.get("samples_npz"):
            rows.append((f"samples{tag} (.npz)", b["samples_npz"]))
    if results.get("sample_grid"):
        rows.append(("sample grid (PNG)", results["sample_grid"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
