"""Training-step throughput and MFU of the real train step (vdm_jax.training.step).

    .venv/bin/python -m benchmarks.train_step --model=DiT-S/2 --batch=32 --dtype=float32 \
        --out results/train_step.json

For each (batch, dtype) configuration: builds the model and the FSDP train state
(`create_state`, AdamW with grad clipping, one EMA) on a one-device mesh (or --devices N, pure
data parallelism), compiles `jit_train_step` ahead of time (compile time = lower + compile), runs
--warmup untimed steps, then times --steps device-synchronized steps on one fixed synthetic batch
and reports the median:

    step time          median seconds per optimizer step (after compilation)
    images/s           batch / step time
    peak memory        compiled memory analysis of the step, per device (argument, output,
                       alias, temp; None where the backend reports none)
    MFU                3 × forward FLOPs per image (model_cost, FLOPs = 2·MACs) × batch
                       ÷ step time ÷ peak, the peak being an n×n matmul (--peak_size, FLOPs =
                       2n³) in the same dtype on every device at once (timing.MatmulPeak),
                       median of --peak_runs runs interleaved between the timed steps (so both
                       see the same load on a shared host)

On a CPU host, --devices=N splits the batch over N virtual devices (pure data parallelism, the
same sharded step the trainer runs with XLA_FLAGS=--xla_force_host_platform_device_count=N):
XLA:CPU runs one program's ops largely one after another, each spread over the cores, and one
device per core keeps every core busy through the small and memory-bound ops as well.

On a CPU host, --host_malloc=retain (the default) keeps freed memory in the process, so XLA's
per-step temporary buffers are not page-faulted in afresh every step (benchmarks/
retain_host_memory; --host_malloc=default measures glibc's defaults).
One markdown table row per configuration is printed and everything goes to --out as JSON.
The step includes everything the trainer runs: label dropout, noise sampling, loss, backward,
clip, AdamW and the EMA update; only the network's matmuls count as FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import jax

from benchmarks import cli_args, host, report, timing
from vdm_jax.parallel import mesh as mesh_lib

COLUMNS = [
    ("model", "model"), ("batch", "batch"), ("dtype", "dtype"), ("devices", "devices"),
    ("step ms", "step_ms"), ("images/s", "images_per_s"), ("compile s", "compile_s"),
    ("peak MiB", "peak_mib"), ("TFLOP/s", "achieved_tflops"), ("peak TFLOP/s", "peak_tflops"),
    ("MFU %", "mfu_pct"),
]


def run_config(
    args: argparse.Namespace, batch: int, dtype: str, peak: timing.MatmulPeak | None
) -> dict[str, Any]:
    """Compile, warm up and time the train step of one (batch, dtype) configuration."""
    load_before = report.load_avg()
    devices = jax.devices()[: args.devices]
    mesh = mesh_lib.make_mesh(data=len(devices), fsdp=1, devices=devices)
    timed_run = timing.time_train_step(timing.train_step_setup(args, dtype, batch, mesh), args,
                                    peak, args.peak_runs)
    stats = timing.summarize(timed_run["walls"])
    memory = timed_run["memory"]

    cost = cli_args.forward_cost(args)
    train_flops = 3.0 * cost["flops"] * batch
    achieved = train_flops / stats["median_s"]
    row: dict[str, Any] = {
        "model": cli_args.model_label(args.model),
        "input_size": args.input_size, "in_channels": args.in_channels,
        "num_classes": args.num_classes, "learn_sigma": bool(args.learn_sigma),
        "batch": batch, "dtype": dtype, "devices": len(devices),
        "params": cost["params"], "forward_macs_per_image": cost["macs"],
        "forward_flops_per_image": cost["flops"], "train_flops_per_step": train_flops,
        "step_ms": 1e3 * stats["median_s"], "step_time": stats,
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli_args.add_model_args(parser, batch="32", steps=20)
    parser.add_argument("--peak_runs", type=int, default=10,
                        help="peak matmuls, interleaved between the timed steps")
    parser.add_argument("--devices", type=int, default=1,
                        help="data-parallel devices (on a CPU host: virtual ones sharing its "
                             "cores; the peak is measured on all of them at once)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    host.setup_host(args)
    cli_args.check_dtypes(args.dtype)
    host.ensure_host_devices(args.devices)  # virtual CPU devices (GPU/TPU ignore it)
    if args.devices > jax.device_count():
        parser.error(f"--devices={args.devices}, but only {jax.device_count()} are available")
    devices = jax.devices()[: args.devices]

    rows = []
    for dtype in args.dtype:
        peak = (timing.MatmulPeak(cli_args.DTYPES[dtype], args.peak_size, devices=devices)
                if args.peak_size else None)
        for batch in args.batch:
            rows.append(run_config(args, batch, dtype, peak))
            report.print_table(rows[-1:], COLUMNS)
    result = {"benchmark": "train_step", "environment": report.environment(__file__, argv, args),
              "results": rows}
    print()
    report.print_table(rows, COLUMNS)
    report.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
