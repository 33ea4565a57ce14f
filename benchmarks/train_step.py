"""Training-step throughput and MFU of the trainer's own train step, with the trainer's defaults.

    .venv/bin/python -m benchmarks.train_step --model=DiT-S/2 --batch=32 --dtype=float32 \
        --out results/train_step.json

--scan_layers=false,true (and --remat=none,full, ...) add rows of the same step with the blocks
scanned over stacked layers (model.scan_layers) and under each remat policy (model.remat), from
the same run; --rounds=R then times every configuration again, in turn, R − 1 more times, so
that their ratio is measured under the same load (the row's step time pools all rounds;
round_median_ms lists each round's median). For each (batch, dtype, scan_layers, remat)
configuration: the host is set up as launch/train.py sets it up (vdm_jax.parallel.host: malloc
retention, XLA flags, on a CPU host one virtual device per core);
the run is prepared the trainer's way (`loop.set_up`: the default config with --model, the
synthetic dataset of the given shape, AdamW with grad clipping, one EMA, the config's mesh over
all devices) and `loop.step_function`, the jitted step `loop.train` runs, is compiled ahead of
time (compile time = lower + compile); --warmup untimed steps, then --steps
device-synchronized steps on one batch from the trainer's iterator, and the median:

    step time          median seconds per optimizer step (after compilation)
    images/s           batch / step time
    peak memory        compiled memory analysis of the step, per device (argument, output,
                       alias, temp; None where the backend reports none)
    MFU                3 × forward FLOPs per image (model_cost, FLOPs = 2·MACs) × batch
                       ÷ step time ÷ peak, the peak being an n×n matmul (--peak_size, FLOPs =
                       2n³) in the same dtype on every device at once (timing.MatmulPeak),
                       median of the --peak_runs runs interleaved between each configuration's
                       timed steps (one peak per dtype, shared by its configurations), so
                       both see the same load on a shared host

--devices=N uses the first N devices (on a CPU host: N virtual devices sharing its cores);
--host_malloc=default measures glibc's malloc defaults. Without them the figures are the
trainer's (benchmarks/trainer_speed.py checks that launch/train.py runs at this speed).
One markdown table row per configuration is printed and everything goes to --out as JSON.
The step includes everything the trainer runs: label dropout, noise sampling, loss, backward,
clip, AdamW and the EMA update; only the network's matmuls count as FLOPs.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from typing import Any

import jax

from benchmarks import cli_args, host, report, timing
from vdm_jax.nn.blocks import REMAT_POLICIES

COLUMNS = [
    ("model", "model"), ("batch", "batch"), ("dtype", "dtype"), ("scan", "scan_layers"),
    ("remat", "remat"), ("devices", "devices"),
    ("step ms", "step_ms"), ("images/s", "images_per_s"), ("compile s", "compile_s"),
    ("peak MiB", "peak_mib"), ("TFLOP/s", "achieved_tflops"), ("peak TFLOP/s", "peak_tflops"),
    ("MFU %", "mfu_pct"),
]


def make_row(
    args: argparse.Namespace, batch: int, dtype: str, peak: timing.MatmulPeak | None,
    timed_run: dict[str, Any], load_before: float | None,
) -> dict[str, Any]:
    """The table row of one (batch, dtype, scan_layers, remat) configuration from its timed run
    (timing.CompiledStep.result(): every timed step of every round)."""
    stats = timing.summarize(timed_run["walls"])
    memory = timed_run["memory"]
    devices = selected_devices(args)

    cost = cli_args.forward_cost(args)
    train_flops = 3.0 * cost["flops"] * batch
    achieved = train_flops / stats["median_s"]
    row: dict[str, Any] = {
        "model": cli_args.model_label(args.model),
        "input_size": args.input_size, "in_channels": args.in_channels,
        "num_classes": args.num_classes, "learn_sigma": bool(args.learn_sigma),
        "batch": batch, "dtype": dtype, "devices": len(devices),
        "scan_layers": bool(args.scan_layers), "remat": args.remat,
        "params": cost["params"], "forward_macs_per_image": cost["macs"],
        "forward_flops_per_image": cost["flops"], "train_flops_per_step": train_flops,
        "step_ms": 1e3 * stats["median_s"], "step_time": stats, "step_walls_s": timed_run["walls"],
        "round_median_ms": [1e3 * m for m in timed_run["round_medians"]],
        "step_cpu_s": statistics.median(timed_run["cpus"]),
        "images_per_s": batch / stats["median_s"],
        "compile_s": timed_run["compile_s"], "memory": memory,
        "peak_mib": memory["peak_bytes"] / 2**20 if memory else None,
        "achieved_tflops": achieved / 1e12,
        "final_loss": float(timed_run["metrics"]["loss"]),
        "load_avg_before": load_before, "load_avg_after": report.load_avg(),
    }
    if peak is not None:
        p = peak.summary()
        peak_total = p["flops_per_s"]  # all the devices together
        row["matmul_peak"] = p
        row["peak_tflops"] = peak_total / 1e12
        row["mfu"] = achieved / peak_total
        row["mfu_pct"] = 100.0 * row["mfu"]
        if jax.default_backend() == "cpu" and p["flops_per_cpu_s"]:
            # Diagnostic on a shared host: FLOPs per CPU-second of the step over those of the
            # matmul (insensitive to how many cores other processes took; not the MFU).
            row["cpu_time_efficiency"] = (train_flops / row["step_cpu_s"]) / p["flops_per_cpu_s"]
    return row


def selected_devices(args: argparse.Namespace) -> list[Any]:
    """All devices (the trainer's default) or the first --devices."""
    return jax.devices() if args.devices is None else jax.devices()[: args.devices]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli_args.add_model_args(parser, batch="32", steps=20)
    parser.add_argument("--peak_runs", type=int, default=10,
                        help="peak matmuls, interleaved between the timed steps")
    parser.add_argument("--devices", type=int, default=None,
                        help="data-parallel devices (default: the trainer's, all; on a CPU host "
                             "N virtual ones sharing its cores; the peak is measured on all of "
                             "them at once)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every configuration --steps steps per round, in turn, for "
                             "this many rounds (compare configurations side by side)")
    parser.add_argument("--scan_layers", type=cli_args.str_list, default=["false"],
                        help="model.scan_layers value(s), comma-separated: false, true")
    parser.add_argument("--remat", type=cli_args.str_list, default=["none"],
                        help=f"model.remat policy(ies), comma-separated, of {REMAT_POLICIES}")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    bad = [v for v in args.scan_layers if v not in ("false", "true")]
    bad += [v for v in args.remat if v not in REMAT_POLICIES]
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if bad:
        parser.error(f"--scan_layers takes false/true and --remat one of {REMAT_POLICIES}; "
                     f"got {bad}")
    host.setup_host(args, cpu_devices=args.devices)  # before JAX starts
    cli_args.check_dtypes(args.dtype)
    if args.devices is not None and args.devices > jax.device_count():
        parser.error(f"--devices={args.devices}, but only {jax.device_count()} are available")
    devices = selected_devices(args)

    runs = []  # (row args, batch, dtype, peak, CompiledStep, load before)
    for dtype in args.dtype:
        peak = (timing.MatmulPeak(cli_args.DTYPES[dtype], args.peak_size, devices=devices)
                if args.peak_size else None)
        for batch, scan, remat in itertools.product(args.batch, args.scan_layers, args.remat):
            row_args = argparse.Namespace(**{**vars(args), "scan_layers": scan == "true",
                                             "remat": remat})
            load = report.load_avg()
            step = timing.CompiledStep(timing.train_step_setup(row_args, dtype, batch, devices),
                                       args.warmup, args.warmup + args.rounds * args.steps)
            step.time(args.steps, peak, args.peak_runs)
            runs.append((row_args, batch, dtype, peak, step, load))
    # Further rounds time every configuration again, in turn, so that all of them see the same
    # (shared host's) load; each row pools its steps of all rounds.
    for _ in range(args.rounds - 1):
        for _, _, _, peak, step, _ in runs:
            step.time(args.steps, peak, args.peak_runs)
    rows = [make_row(a, batch, dtype, peak, step.result(), load)
            for a, batch, dtype, peak, step, load in runs]
    return report.finish("train_step", __file__, argv, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
