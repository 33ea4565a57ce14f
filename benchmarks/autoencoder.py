"""Encode and decode throughput of the SD-VAE (AutoencoderKL kl-f8, 83,653,863 parameters), the
Flax NNX model of vdm_jax against diffusers' PyTorch AutoencoderKL, measured side by side.

    python -m benchmarks.autoencoder --batch 2 --torch_python /path/to/python-with-torch \\
        --out autoencoder.json

JAX: `random_autoencoder` (random weights; speed does not depend on them) jitted on all
devices (--devices to limit), the batch sharded over them, parameters replicated; per compute
dtype one `encode` (images (B, S, S, 3) → posterior moments) and one `decode` (latents
(B, S/8, S/8, 4) → images). PyTorch: diffusers' AutoencoderKL with the same config and its own
random init, under torch.inference_mode(), on the CPU with torch's default thread count, in a
subprocess of --torch_python (default: this interpreter when it has torch and diffusers, else
$VDM_JAX_TORCH_PYTHON; "none" skips it), given --torch_timeout seconds per dtype (PyTorch's
bfloat16 convolutions are very slow on CPUs without native bfloat16 instructions). JAX and
PyTorch alternate per dtype, so each table row's pair is measured close together in time; the
load average before each pair is recorded (the figures mean little on a busy machine).

Timing: `--warmup` untimed calls (the first one compiles), then `--runs` calls, each waited
for (block_until_ready / a synchronous torch call); the median is reported as images/s =
batch / median seconds. Ratio = JAX images/s ÷ PyTorch images/s (> 1: JAX faster).

Prints one markdown row per dtype and writes --out (JSON: command, date, host CPU and cores,
versions, every timing). This file imports only the standard library and benchmarks.report
(itself standard library at the top) at the top, so that the PyTorch worker (`--torch_worker`)
runs in an environment without JAX.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import report

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              norm_num_groups=32)
TORCH_TAG = "TORCH_RESULT "
COLUMNS = ("dtype", "devices", "batch", "size", "JAX encode img/s", "PyTorch encode img/s",
           "encode ratio", "JAX decode img/s", "PyTorch decode img/s", "decode ratio")


# ---------------------------------------------------------------------------------- timing


def timed(call: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int,
          runs: int) -> dict[str, Any]:
    """Seconds of `runs` synchronized calls after `warmup` untimed ones (the first is timed
    separately: compilation for JAX)."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        sync(call())
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "times_s": times, "median_s": statistics.median(times)}


def host() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = report.load_avg()
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_1_5_15": load}


# ------------------------------------------------------------------------------------ JAX


def bench_jax(dtype_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vdm_jax.nn.autoencoders.sd_vae import AutoencoderConfig, random_autoencoder

    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    if args.batch % len(devices):
        raise ValueError(f"--batch {args.batch} is not divisible by the {len(devices)} devices")
    config = AutoencoderConfig(**args.config)
    mesh = Mesh(np.array(devices), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    model = random_autoencoder(config, dtype=jnp.dtype(dtype_name), seed=0)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    rng = np.random.default_rng(0)
    s, f = args.size, config.downsampling_factor
    images = jax.device_put(rng.uniform(-1, 1, (args.batch, s, s, 3)).astype(np.float32), batch)
    latents = jax.device_put(
        rng.standard_normal((args.batch, s // f, s // f, config.latent_channels))
        .astype(np.float32), batch)
    encode = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x))
    decode = jax.jit(lambda st, z: nnx.merge(graphdef, st).decode(z))
    sync = jax.block_until_ready
    return {
        "framework": "jax", "dtype": dtype_name, "devices": len(devices),
        "device_kind": devices[0].device_kind, "batch": args.batch, "size": s,
        "encode": timed(lambda: encode(state, images), sync, warmup=args.warmup, runs=args.runs),
        "decode": timed(lambda: decode(state, latents), sync, warmup=args.warmup, runs=args.runs),
    }


# -------------------------------------------------------------------------------- PyTorch


def torch_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in the --torch_python interpreter: diffusers' AutoencoderKL, one dtype."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    levels = len(args.config["block_out_channels"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtypes[0]]
    model = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                          up_block_types=("UpDecoderBlock2D",) * levels,
                          sample_size=args.size, **args.config).eval()
    # torch.nn.Module.to: diffusers' ModelMixin.to refuses a plain bfloat16 cast of a model built
    # in memory (it asks for from_pretrained's torch_dtype); every weight is cast, as JAX's is.
    torch.nn.Module.to(model, dtype)
    f = 2 ** (levels - 1)
    images = (torch.rand(args.batch, 3, args.size, args.size) * 2 - 1).to(dtype)
    latents = torch.randn(args.batch, args.config["latent_channels"], args.size // f,
                          args.size // f).to(dtype)
    with torch.inference_mode():
        enc = timed(lambda: model.encode(images).latent_dist.mean, lambda _: None,
                    warmup=args.warmup, runs=args.runs)
        dec = timed(lambda: model.decode(latents).sample, lambda _: None, warmup=args.warmup,
                    runs=args.runs)
    return {"framework": "torch", "dtype": args.dtypes[0], "threads": torch.get_num_threads(),
            "batch": args.batch, "size": args.size, "encode": enc, "decode": dec,
            "torch_version": torch.__version__, "diffusers_version": diffusers.__version__}


def torch_python(choice: str) -> str | None:
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    import importlib.util

    if importlib.util.find_spec("torch") and importlib.util.find_spec("diffusers"):
        return sys.executable
    return os.environ.get("VDM_JAX_TORCH_PYTHON") or None


def bench_torch(python: str, dtype_name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--torch_worker", "--dtypes", dtype_name,
           "--batch", str(args.batch), "--size", str(args.size), "--warmup", str(args.warmup),
           "--runs", str(args.runs), "--config", json.dumps(args.config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                              timeout=args.torch_timeout)
    except subprocess.TimeoutExpired:
        return {"framework": "torch", "dtype": dtype_name,
                "error": [f"did not finish within --torch_timeout {args.torch_timeout} s"]}
    for line in proc.stdout.splitlines():
        if line.startswith(TORCH_TAG):
            return json.loads(line[len(TORCH_TAG):])
    return {"framework": "torch", "dtype": dtype_name,
            "error": [f"exit status {proc.returncode}",
                      *(proc.stderr or proc.stdout).strip().splitlines()[-5:]]}


# ----------------------------------------------------------------------------------- main


def ips(result: dict[str, Any] | None, what: str) -> float | None:
    if not result or what not in result:
        return None
    return result["batch"] / result[what]["median_s"]


def row(jax_result: dict[str, Any], torch_result: dict[str, Any] | None) -> str:
    cells = [jax_result["dtype"], str(jax_result["devices"]), str(jax_result["batch"]),
             f"{jax_result['size']}²"]
    for what in ("encode", "decode"):
        j, t = ips(jax_result, what), ips(torch_result, what)
        cells += [f"{j:.3g}", f"{t:.3g}" if t else "—", f"{j / t:.2f}×" if t else "—"]
    return "| " + " | ".join(cells) + " |"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="images per call (default 2)")
    p.add_argument("--size", type=int, default=256, help="image side S (default 256)")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="comma-separated compute dtypes (default float32,bfloat16)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--runs", type=int, default=3, help="timed calls, median reported")
    p.add_argument("--devices", type=int, default=0, help="JAX devices to use (0: all)")
    p.add_argument("--torch_python", default="auto",
                   help="python with torch+diffusers for the PyTorch side; auto | none | path")
    p.add_argument("--torch_timeout", type=float, default=900,
                   help="seconds allowed to each PyTorch worker (one dtype; default 900)")
    p.add_argument("--config", type=json.loads, default=SD_VAE,
                   help="AutoencoderConfig fields as JSON (default: the SD-VAE)")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in args.dtypes if d not in ("float32", "bfloat16")]
    if bad or args.warmup < 1 or args.runs < 1 or args.batch < 1:
        p.error(f"need dtypes in float32/bfloat16 (got {bad}), --warmup ≥ 1, --runs ≥ 1, "
                "--batch ≥ 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.torch_worker:
        print(TORCH_TAG + json.dumps(torch_worker(args)), flush=True)
        return {}
    import jax

    python = torch_python(args.torch_python)
    print(f"SD-VAE encode/decode, {args.size}² images, batch {args.batch}, median of "
          f"{args.runs} runs after {args.warmup} warm-up; {host()['cpu_model']}, "
          f"{host()['usable_cores']} cores; JAX {jax.__version__} on {jax.default_backend()}; "
          f"PyTorch via {python or '(none)'}", flush=True)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    rows = []
    for dtype_name in args.dtypes:
        load = report.load_avg()  # shared machines
        j = bench_jax(dtype_name, args)
        t = bench_torch(python, dtype_name, args) if python else None
        if t and "error" in t:
            print(f"PyTorch {dtype_name} failed: {' / '.join(t['error'])}", file=sys.stderr)
        rows.append({"jax": j, "torch": t, "load_avg_1_5_15_before": load,
                     "encode_ratio": (ips(j, "encode") / ips(t, "encode")) if ips(t, "encode")
                     else None,
                     "decode_ratio": (ips(j, "decode") / ips(t, "decode")) if ips(t, "decode")
                     else None})
        print(row(j, t), flush=True)
    torch_done = next((r["torch"] for r in rows if r["torch"] and "error" not in r["torch"]), {})
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m",
                                                     "benchmarks.autoencoder", *(argv or
                                                                                 sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": host(), "jax_version": jax.__version__, "backend": jax.default_backend(),
        "torch_python": python, "torch_version": torch_done.get("torch_version"),
        "diffusers_version": torch_done.get("diffusers_version"),
        "config": args.config, "results": rows,
    }
    report.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
