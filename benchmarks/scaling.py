"""FSDP scaling: per-device memory of parameters + optimizer state, and step time, on 1, 2, 4, 8
devices (virtual CPU devices on a CPU host, the real ones on GPU/TPU).

    .venv/bin/python -m benchmarks.scaling --model=DiT-S/2 --batch=32 --devices=1,2,4,8 \
        --out results/scaling.json

For each device count N: a pure-FSDP mesh (data = 1, fsdp = N) over the first N devices, the
train state from `create_state` (parameters, AdamW state and one EMA sharded by the models'
logical axes, `training.mesh.FSDP_RULES`), and the jitted train step at a fixed global --batch
(strong scaling). Reported per device:

    param_opt_bytes            parameters + optimizer state held by the device, summed over the
                               arrays' addressable shards (the largest over devices)
    param_opt_bytes_compiled   argument size of a compiled program taking exactly (parameters,
                               optimizer state) with their shardings (compiled memory analysis)
    ema_bytes                  the EMA copies, likewise
    step memory                the train step's compiled memory analysis (argument, temp, peak)
    step time                  median of --steps synchronized steps after --warmup

and the FSDP check: param_opt_bytes(N) ≤ 1.1 × param_opt_bytes(1) / N. Virtual CPU devices share
the host's cores, so their step times show overheads, not speed-ups.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax

from benchmarks import cli_args, host, memory, report, timing

FSDP_TOLERANCE = 1.1
COLUMNS = [
    ("model", "model"), ("devices", "devices"), ("batch", "batch"), ("dtype", "dtype"),
    ("param+opt MiB/dev", "param_opt_mib"), ("× N / 1-dev", "param_opt_ratio"),
    ("compiled MiB/dev", "param_opt_compiled_mib"), ("step peak MiB/dev", "step_peak_mib"),
    ("step ms", "step_ms"), ("images/s", "images_per_s"), ("FSDP ok", "fsdp_ok"),
]


def per_device_bytes(tree: Any) -> int:
    """Bytes of `tree` on the most loaded device (addressable shards)."""
    per = memory.shard_bytes(tree)
    return max(per.values()) if per else 0


def compiled_argument_bytes(tree: Any, shardings: Any) -> int | None:
    """Per-device argument size of a compiled program that takes `tree` with `shardings`."""
    fn = jax.jit(lambda x: jax.tree.map(lambda a: a.sum(), x), in_shardings=(shardings,))
    stats = memory.memory_stats(fn.lower(tree).compile())
    return stats["argument_size"] if stats else None


def fsdp_state(args: argparse.Namespace, n: int, dtype: str, batch: int) -> dict[str, Any]:
    """timing.train_step_setup on a pure-FSDP (1, n) mesh over the first n devices."""
    return timing.train_step_setup(args, dtype, batch, jax.devices()[:n], (1, n))


def state_memory(s: dict[str, Any]) -> dict[str, Any]:
    """Per-device bytes of parameters + optimizer state (shards and compiled) and of the EMAs."""
    state, sh = s["state"], s["shardings"]
    sub = {"params": state["params"], "opt_state": state["opt_state"]}
    sub_sh = {"params": sh["params"], "opt_state": sh["opt_state"]}
    return {
        "param_opt_bytes": per_device_bytes(sub),
        "param_opt_bytes_compiled": compiled_argument_bytes(sub, sub_sh),
        "param_opt_bytes_total": memory.tree_bytes(sub),
        "ema_bytes": per_device_bytes(state["ema"]),
    }


def run_config(args: argparse.Namespace, n: int, dtype: str, batch: int) -> dict[str, Any]:
    s = fsdp_state(args, n, dtype, batch)
    row: dict[str, Any] = {
        "model": cli_args.model_label(args.model), "devices": n, "batch": batch, "dtype": dtype,
        "input_size": args.input_size, "in_channels": args.in_channels,
        **state_memory(s),
    }
    timed_run = timing.time_train_step(s, args)
    stats = timing.summarize(timed_run["walls"])
    row.update(compile_s=timed_run["compile_s"], step_memory=timed_run["memory"],
               step_ms=1e3 * stats["median_s"], step_time=stats,
               images_per_s=batch / stats["median_s"], load_avg_after=report.load_avg())
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """param_opt_ratio = bytes(N) · N / bytes(1) (1.0 = perfect sharding) and the 1.1 check,
    against the 1-device row of the same dtype/batch (or the total bytes when N = 1 is absent)."""
    for r in rows:
        base = next((b["param_opt_bytes"] for b in rows if b["devices"] == 1
                     and b["dtype"] == r["dtype"] and b["batch"] == r["batch"]),
                    r["param_opt_bytes_total"])
        r["param_opt_ratio"] = r["param_opt_bytes"] * r["devices"] / base
        r["fsdp_ok"] = r["param_opt_bytes"] <= FSDP_TOLERANCE * base / r["devices"]
        r["param_opt_mib"] = r["param_opt_bytes"] / 2**20
        c = r["param_opt_bytes_compiled"]
        r["param_opt_compiled_mib"] = c / 2**20 if c is not None else None
        m = r.get("step_memory")
        r["step_peak_mib"] = m["peak_bytes"] / 2**20 if m else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli_args.add_model_args(parser, batch="32", steps=5)
    parser.add_argument("--devices", type=cli_args.int_list, default=[1, 2, 4, 8],
                        help="device counts, comma-separated")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # Virtual devices on a CPU host (only if JAX has not started yet; GPU/TPU ignore it).
    host.setup_host(args, cpu_devices=max(args.devices))
    cli_args.check_dtypes(args.dtype)
    available = jax.device_count()
    counts = [n for n in args.devices if n <= available]
    if len(counts) < len(args.devices):
        print(f"Skipping device counts above the {available} available: "
              f"{[n for n in args.devices if n > available]}")
    rows = []
    for dtype in args.dtype:
        for batch in args.batch:
            for n in counts:
                if batch % n:
                    raise SystemExit(f"--batch {batch} is not divisible by {n} devices")
                rows.append(run_config(args, n, dtype, batch))
    add_ratios(rows)
    return report.finish("scaling", __file__, argv, args, rows, COLUMNS,
                         fsdp_tolerance=FSDP_TOLERANCE)


if __name__ == "__main__":
    main()
