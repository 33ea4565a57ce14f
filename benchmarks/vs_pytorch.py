"""vdm_jax against the PyTorch DiT a user would pick, side by side on the same host: training step
and DDIM sampling, in alternating processes pinned to the same cores.

    .venv/bin/python -m benchmarks.vs_pytorch --rounds=3 --out results/vs_pytorch.json
    # torch from another environment (it is never a vdm_jax dependency):
    .venv/bin/python -m benchmarks.vs_pytorch --torch_python=/work/refenv/bin/python

The same model on both sides: DiT-S/2 (--model, a registry DiT) on 32×32×4 latents with 1000
classes, float32; training: AdamW (lr 1e-4, no weight decay), gradients clipped at global norm 1
(the trainer's default), EMA 0.9999, ε-MSE with labels dropped 10% (benchmarks/torch_dit.py is
the PyTorch side, written from the paper; tests/test_benchmarks.py checks that it computes
vdm_jax's DiT function on the same weights); sampling: DDIM (η = 0), --num_steps steps, with
and without classifier-free guidance (--guidance; w ≠ 1 doubles the batch of every forward pass).

vdm_jax runs as the trainer and launch/sample.py run it: host settings from
vdm_jax.parallel.host (malloc retention, XLA flags, one CPU device unless VDM_CPU_DEVICES says
otherwise), the trainer's step (`loop.set_up` + `loop.step_function`,
benchmarks.timing.train_step_setup) and the sampler's program (`make_generate_fn`, batch
sharded over all devices).

Each measurement is a fresh process (`--worker`), pinned with the CPU affinity of --cpus (default:
the first --threads cores) to the same cores on both sides: torch.set_num_threads(--threads),
and XLA sizes its thread pool from the affinity. The two sides never run at once; their order
alternates every round (jax, torch / torch, jax), so a change of the host's load hits both.
A process compiles (JAX) or builds (torch), runs --warmup untimed training steps, then times
--steps training steps, or --sample_runs whole sampling runs (the first run of a process,
allocations included, is timed: a 50-step run amortizes them). Reported: each side's median
over all rounds, the ratio torch ÷ vdm_jax (> 1: vdm_jax is faster), the per-round ratios and
their spread, the load average around every measurement, and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import report

TASKS = ("train", "sample")
WORKER_ARGS = ("model", "input_size", "in_channels", "num_classes", "batch", "sample_batch",
               "num_steps", "steps", "warmup", "sample_runs", "grad_clip")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-S/2",
                   help="a DiT of the registry (DiT-S/2, …) or a JSON DiT spec")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--in_channels", type=int, default=4)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--sample_batch", type=int, default=32, help="sampling batch")
    p.add_argument("--num_steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", default="1,4", help="guidance scales (1 = none), comma-separated")
    p.add_argument("--tasks", default="train,sample", help=f"of {TASKS}, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps per process")
    p.add_argument("--sample_runs", type=int, default=1, help="timed sampling runs per process")
    p.add_argument("--threads", type=int, default=None,
                   help="cores (and torch threads) per process (default: all usable)")
    p.add_argument("--cpus", default=None,
                   help="CPU ids to pin both sides to, e.g. '0,1' (default: the first --threads)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="both sides (0: none)")
    p.add_argument("--torch_python", default=sys.executable,
                   help="the Python with torch (e.g. /work/refenv/bin/python)")
    p.add_argument("--sides", default="jax,torch", help="which sides to run (tests: one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--worker", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _model(text: str) -> str | dict[str, Any]:
    """--model: a registry name or a JSON spec (benchmarks.cli_args.parse_model's forms)."""
    return json.loads(text) if text.strip().startswith("{") else text


def _dit_spec(model: str) -> dict[str, Any]:
    """The registry spec of --model, as torch_dit.DiT keyword arguments."""
    from vdm_jax.nn.registry import resolve_spec

    spec = resolve_spec(_model(model))
    if spec.get("family") != "dit":
        raise SystemExit(f"--model={model}: the PyTorch side implements DiT only")
    keys = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio")
    return {k: spec[k] for k in keys if k in spec}


# ------------------------------------------------------------------------------------ workers


def jax_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time vdm_jax's train step or sampling run in this process (trainer's host settings)."""
    from benchmarks import host

    args.host_malloc = None
    host.setup_host(args)  # before JAX starts: the trainer's settings
    import jax

    from benchmarks import cli_args, timing

    ns = argparse.Namespace(model=_model(args.model), input_size=args.input_size,
                            in_channels=args.in_channels, num_classes=args.num_classes,
                            learn_sigma=False, warmup=args.warmup, steps=args.steps,
                            grad_clip=args.grad_clip)
    if args.task == "train":
        run = timing.time_train_step(timing.train_step_setup(ns, "float32", args.batch), ns)
        walls, cpus, compile_s = run["walls"], run["cpus"], run["compile_s"]
    else:
        walls, cpus, compile_s = _jax_sampling(args, ns, cli_args, timing)
    return {"walls": walls, "cpus": cpus, "compile_s": compile_s,
            "version": f"jax {jax.__version__}", "devices": jax.device_count(),
            "backend": jax.default_backend(), "host_settings": args.host}


def _jax_sampling(args, ns, cli_args, timing) -> tuple[list[float], list[float], float]:
    import jax
    import jax.numpy as jnp

    from vdm_jax import model as dm
    from vdm_jax.generation.generate import make_generate_fn
    from vdm_jax.parallel import mesh as mesh_lib
    from vdm_jax.sampling_spec import SamplingSpec

    cfg = cli_args.make_config(ns, "float32", args.sample_batch)
    model, params = dm.build(cfg, cli_args.data_spec(ns), 0)
    mesh = mesh_lib.make_mesh()  # launch/sample.py: every device, the batch split over them
    sharding = mesh_lib.batch_sharding(mesh) if args.sample_batch % mesh.size == 0 else None
    params = jax.device_put(params, mesh_lib.replicated(mesh))
    spec = SamplingSpec(sampler="ddim", num_steps=args.num_steps, guidance_scale=args.scale)
    fn = make_generate_fn(model, args.sample_batch, spec, sharding=sharding)
    labels = jnp.arange(args.sample_batch, dtype=jnp.int32) % max(args.num_classes, 1)
    start = time.perf_counter()
    compiled = fn.lower(params, labels, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    walls, cpus = timing.time_interleaved(
        lambda i: compiled(params, labels, jax.random.key(i)), args.sample_runs, None)
    return walls, cpus, compile_s


def torch_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time the PyTorch DiT's train step or sampling run in this process."""
    from benchmarks import torch_dit

    spec = json.loads(os.environ["VS_PYTORCH_SPEC"])
    train = args.task == "train"
    out = torch_dit.run(
        args.task, spec, batch=args.batch if train else args.sample_batch,
        input_size=args.input_size, in_channels=args.in_channels, num_classes=args.num_classes,
        steps=args.steps if train else args.sample_runs, warmup=args.warmup if train else 0,
        threads=args.threads, num_steps=args.num_steps, guidance=args.scale,
        grad_clip=args.grad_clip)
    out["version"] = f"torch {out.pop('torch_version')}"
    return out


# ------------------------------------------------------------------------------ orchestration


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def run_worker(side: str, task: str, scale: float, args: argparse.Namespace, cpus: list[int],
               argv: list[str]) -> dict[str, Any]:
    """One measurement in a fresh process pinned to `cpus`; its JSON result."""
    python = args.torch_python if side == "torch" else sys.executable
    cmd = [python, "-m", "benchmarks.vs_pytorch", *argv, f"--worker={side}", f"--task={task}",
           f"--scale={scale}", f"--threads={len(cpus)}"]
    env = dict(os.environ, VS_PYTORCH_SPEC=json.dumps(_dit_spec(args.model)),
               OMP_NUM_THREADS=str(len(cpus)), MKL_NUM_THREADS=str(len(cpus)))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    before = report.load_avg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if proc.returncode:
        raise SystemExit(f"{side} {task} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(load_before=before, load_after=report.load_avg(),
                  process_s=round(time.perf_counter() - start, 1))
    return result


def measurements(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(task, guidance scale) pairs to measure."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"--tasks {bad}: expected some of {TASKS}")
    scales = [float(w) for w in args.guidance.split(",") if w.strip()]
    return [(t, 1.0) for t in tasks if t == "train"] + [
        ("sample", w) for t in tasks if t == "sample" for w in scales]


def summarize(task: str, scale: float, batch: int, rounds: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """Medians over all rounds, the ratio torch ÷ vdm_jax and its per-round spread."""
    row: dict[str, Any] = {"task": task if task == "train" else "sample DDIM",
                           "guidance": scale, "batch": batch}
    for side in ("jax", "torch"):
        times = [t for r in rounds if side in r for t in r[side]["walls"]]
        row[f"{side}_s"] = statistics.median(times) if times else None
        row[f"{side}_all_s"] = [float(f"{t:.4g}") for t in times]  # 4 significant digits
    if row["jax_s"] and row["torch_s"]:
        row["ratio"] = row["torch_s"] / row["jax_s"]
        per_round = [statistics.median(r["torch"]["walls"]) / statistics.median(r["jax"]["walls"])
                     for r in rounds if "jax" in r and "torch" in r]
        row["round_ratios"] = [round(x, 3) for x in per_round]
        row["ratio_min"], row["ratio_max"] = min(per_round), max(per_round)
    loads = [r[s]["load_before"][0] for r in rounds for s in ("jax", "torch")
             if s in r and r[s]["load_before"]]
    row["load_1min"] = f"{min(loads):.1f}–{max(loads):.1f}" if loads else None
    return row


COLUMNS = [("task", "task"), ("guidance", "guidance"), ("batch", "batch"),
           ("vdm_jax s", "jax_s"), ("PyTorch s", "torch_s"), ("PyTorch ÷ vdm_jax", "ratio"),
           ("per-round ratios", "round_ratios"), ("load (1 min)", "load_1min")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        result = (jax_worker if args.worker == "jax" else torch_worker)(args)
        print(json.dumps(result, default=float))
        return result
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else usable_cpus()[: args.threads or len(usable_cpus())])
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    forward = [f"--{k}={getattr(args, k)}" for k in WORKER_ARGS]
    rows, raw = [], []
    for task, scale in measurements(args):
        rounds = []
        for i in range(args.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            rounds.append({side: run_worker(side, task, scale, args, cpus, forward)
                           for side in order})
        batch = args.batch if task == "train" else args.sample_batch
        rows.append(summarize(task, scale, batch, rounds))
        raw.append({"task": task, "guidance": scale, "rounds": rounds})
        report.print_table(rows[-1:], COLUMNS)
    versions = sorted({r[s]["version"] for m in raw for r in m["rounds"] for s in r})
    # (the load average is the one at the end; each measurement has its own before and after)
    environment = {**report.host_environment(__file__, argv), "cpus_pinned": cpus,
                   "threads": len(cpus), "versions": versions}
    result = {"benchmark": "vs_pytorch", "environment": environment,
              "settings": {k: v for k, v in vars(args).items()
                           if k not in ("worker", "task", "scale")},
              "results": rows, "raw": raw}
    print()
    report.print_table(rows, COLUMNS)
    report.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
