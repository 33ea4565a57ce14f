"""Sampling throughput: images/s and NFE of DDIM, Heun and DPM-Solver++(2M), with and without
classifier-free guidance, through the real generation path (vdm_jax.generation.generate).

    .venv/bin/python -m benchmarks.sampling --model=DiT-S/2 --batch=32 --dtype=float32 \
        --samplers=ddim,heun,dpm_solver_2m --num_steps=10,25,50,250 --guidance=1,4 \
        --out results/sampling.json

For each (dtype, batch, sampler, num_steps, guidance) configuration: `make_generate_fn` is
compiled ONCE ahead of time (compile time reported), run --warmup times untimed, then
--steps times device-synchronized; the median gives images/s = batch / seconds. NFE is the
sampler's count of model evaluations (`samplers.nfe`: N, 2N − 1 for Heun; for the adaptive
'dopri5' the count each timed run made, returned by the program: the median, and
`nfe_per_run`); with guidance
(scale ≠ 1) every evaluation is one forward pass of 2B (conditional + null batch), so the
forward passes per image are NFE × 2. TFLOP/s = forward FLOPs (model_cost) × passes × batch ÷
seconds, and MFU divides by the peak of an n×n matmul in the same dtype (--peak_size),
interleaved with the timed runs (--peak_runs per configuration). The parameters are a fresh random
initialization (the cost of a forward pass does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import cli_args, host, memory, report, timing
from vdm_jax import model as dm
from vdm_jax.core import samplers
from vdm_jax.generation.generate import make_generate_fn
from vdm_jax.sampling_spec import SamplingSpec

COLUMNS = [
    ("model", "model"), ("batch", "batch"), ("dtype", "dtype"), ("sampler", "sampler"),
    ("steps", "num_steps"), ("guidance", "guidance_scale"), ("NFE", "nfe"),
    ("fwd/img", "forward_passes_per_image"), ("s/batch", "seconds_per_batch"),
    ("images/s", "images_per_s"), ("compile s", "compile_s"), ("MFU %", "mfu_pct"),
]


def run_config(
    args: argparse.Namespace, model: dm.DiffusionModel, params: Any, batch: int, dtype: str,
    sampler: str, num_steps: int, guidance: float, peak: timing.MatmulPeak | None,
) -> dict[str, Any]:
    """Compile once, warm up, and time one sampling configuration."""
    spec = SamplingSpec(sampler=sampler, num_steps=num_steps, guidance_scale=guidance)
    fn = make_generate_fn(model, batch, spec, return_nfe=True)
    labels = jnp.arange(batch, dtype=jnp.int32) % max(args.num_classes, 1)
    rng = jax.random.key(0)
    start = time.perf_counter()
    compiled = fn.lower(params, labels, rng).compile()
    compile_s = time.perf_counter() - start
    for i in range(args.warmup):
        timing.block(compiled(params, labels, jax.random.fold_in(rng, i)))
    if peak is not None:
        peak.reset()
    keys = [jax.random.fold_in(rng, args.warmup + i) for i in range(args.steps)]
    outputs = []  # (images, NFE) of each timed run

    def run(i: int) -> Any:
        outputs.append(compiled(params, labels, keys[i]))
        return outputs[-1]

    times, _ = timing.time_interleaved(run, args.steps, peak, args.peak_runs)
    stats = timing.summarize(times)

    guided = spec.guided(model.num_classes)
    # The evaluations each run made: the fixed count, or what an adaptive solver ('dopri5')
    # chose for that run's noise; FLOPs and the NFE column take their median.
    nfe_per_run = [int(count) for _, count in outputs]
    nfe = statistics.median(nfe_per_run)
    passes = nfe * (2 if guided else 1)
    flops = cli_args.forward_cost(args)["flops"] * passes * batch
    achieved = flops / stats["median_s"]
    row: dict[str, Any] = {
        "model": cli_args.model_label(args.model), "input_size": args.input_size,
        "in_channels": args.in_channels, "num_classes": args.num_classes,
        "batch": batch, "dtype": dtype, "sampler": sampler, "num_steps": num_steps,
        "guidance_scale": guidance, "guided": guided, "nfe": nfe, "nfe_per_run": nfe_per_run,
        "forward_passes_per_image": passes, "seconds_per_batch": stats["median_s"],
        "time": stats, "images_per_s": batch / stats["median_s"], "compile_s": compile_s,
        "memory": memory.memory_stats(compiled), "achieved_tflops": achieved / 1e12,
    }
    if peak is not None:
        p = peak.summary()
        row["matmul_peak"] = p
        row["mfu"] = achieved / p["flops_per_s"]
        row["mfu_pct"] = 100.0 * row["mfu"]
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli_args.add_model_args(parser, batch="32", steps=3)
    parser.add_argument("--samplers", type=cli_args.str_list,
                        default=["ddim", "heun", "dpm_solver_2m"],
                        help=f"comma-separated, of {samplers.SAMPLERS}")
    parser.add_argument("--num_steps", type=cli_args.int_list, default=[10, 25, 50, 250],
                        help="sampling steps, comma-separated")
    parser.add_argument("--guidance", type=cli_args.float_list, default=[1.0, 4.0],
                        help="classifier-free guidance scales (1 = no guidance)")
    parser.add_argument("--peak_runs", type=int, default=3,
                        help="peak matmuls per configuration, interleaved with the timed runs")
    parser.set_defaults(warmup=1)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    host.setup_host(args)
    cli_args.check_dtypes(args.dtype)
    for s in args.samplers:
        samplers.nfe(s, 1)  # validates the name

    rows = []
    for dtype in args.dtype:
        peak = timing.MatmulPeak(cli_args.DTYPES[dtype], args.peak_size) if args.peak_size else None
        cfg = cli_args.make_config(args, dtype, max(args.batch))
        model, params = dm.build(cfg, cli_args.data_spec(args), 0)
        for batch in args.batch:
            for sampler in args.samplers:
                for n in args.num_steps:
                    for w in args.guidance:
                        rows.append(run_config(args, model, params, batch, dtype, sampler, n,
                                               w, peak))
                        report.print_table(rows[-1:], COLUMNS)
    return report.finish("sampling", __file__, argv, args, rows, COLUMNS)


if __name__ == "__main__":
    main()
