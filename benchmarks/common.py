"""Shared helpers of the benchmarks in this folder: arguments, model setup, synchronized timing,
the same-run matmul peak, compiled memory analysis, environment record, table and JSON output.

Not a benchmark itself. Conventions (see CONVENTIONS.md): forward cost in MACs and FLOPs = 2·MACs
(from `vdm_jax.nn.model_cost`); training FLOPs = 3 × forward FLOPs; MFU = achieved FLOP/s ÷
the peak FLOP/s of a large square matmul in the same dtype, measured in the same process.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.data import DatasetInfo
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.registry import resolve_spec
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import step as ts

DTYPES = dm.DTYPES


# ---------------------------------------------------------------------------------- devices


def ensure_host_devices(n: int) -> None:
    """Ask XLA for n virtual CPU devices. Takes effect only if JAX's backends are not yet
    initialized (call before anything touches jax.devices()); harmless on GPU/TPU."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def retain_host_memory() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS: one malloc
    arena, no mmap for large blocks, no trimming (mallopt M_ARENA_MAX=1, M_MMAP_MAX=0,
    M_TRIM_THRESHOLD=-1; the same as MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<large> in the environment). XLA:CPU allocates a step's temporary
    buffers (GBs for a DiT train step) afresh on every call; by default glibc maps them with
    mmap and unmaps them after, so each step page-faults them in again (seconds of kernel time
    per DiT-S/2 step). Call before JAX starts its threads. Returns False where it cannot apply
    (not glibc). The process keeps its peak memory; numerics are unaffected."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc malloc.h
    ok = mallopt(m_arena_max, 1) and mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, -1)
    return bool(ok)


# ---------------------------------------------------------------------------------- arguments


def parse_model(text: str) -> str | dict[str, Any]:
    """--model: a registry name ("DiT-S/2") or a JSON spec dict ('{"family": "dit", ...}')."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--model is not valid JSON: {e}") from None
        resolve_spec(spec)  # validates, with a message naming the bad key
        return spec
    resolve_spec(text)
    return text


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_model_args(parser: argparse.ArgumentParser, *, batch: str, steps: int) -> None:
    """The arguments every benchmark shares. --batch and --dtype take comma-separated lists
    (one configuration per combination)."""
    parser.add_argument("--model", type=parse_model, default="DiT-S/2",
                        help='registry name or JSON spec, e.g. \'{"family": "dit", "depth": 1, '
                             '"hidden_size": 64, "num_heads": 4, "patch_size": 2}\'')
    parser.add_argument("--input_size", type=int, default=32, help="H = W of the inputs")
    parser.add_argument("--in_channels", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=1000, help="0 = unconditional")
    parser.add_argument("--learn_sigma", action="store_true", help="DiT's variance head")
    parser.add_argument("--batch", type=int_list, default=int_list(batch),
                        help="global batch size(s), comma-separated")
    parser.add_argument("--dtype", type=str_list, default=["float32"],
                        help=f"compute dtype(s), comma-separated, of {sorted(DTYPES)}")
    parser.add_argument("--steps", type=int, default=steps, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    parser.add_argument("--peak_size", type=int, default=2048,
                        help="n of the n×n matmul that measures the peak (0: skip)")
    parser.add_argument("--host_malloc", choices=("retain", "default"), default="retain",
                        help="'retain': keep freed host memory in the process (see "
                             "retain_host_memory; it saves XLA:CPU's per-step page faults); "
                             "'default': glibc's defaults")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def setup_host(args: argparse.Namespace) -> None:
    """Apply --host_malloc (call first in main, before JAX creates its threads)."""
    args.host_malloc_applied = args.host_malloc == "retain" and retain_host_memory()


def check_dtypes(dtypes: Sequence[str]) -> None:
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"--dtype {bad} not in {sorted(DTYPES)}")


def model_label(model: str | Mapping[str, Any]) -> str:
    return model if isinstance(model, str) else json.dumps(model, sort_keys=True)


def make_config(args: argparse.Namespace, dtype: str, batch: int) -> Any:
    """A training config (default_config) for --model/--learn_sigma at `dtype` and `batch`."""
    cfg = config_lib.default_config()
    if isinstance(args.model, str):
        cfg.model.name = args.model
    else:
        cfg.model.name = ""
        cfg.model.spec = dict(args.model)
    cfg.model.learn_sigma = bool(args.learn_sigma)
    cfg.model.dtype = dtype
    cfg.diffusion.class_conditional = args.num_classes > 0
    cfg.train.global_batch_size = batch
    return cfg


def dataset_info(args: argparse.Namespace) -> DatasetInfo:
    """Synthetic data of shape (input_size, input_size, in_channels), 8-bit levels."""
    return DatasetInfo(
        image_shape=(args.input_size, args.input_size, args.in_channels),
        num_classes=max(args.num_classes, 1), num_levels=256, num_train=0, num_test=0,
    )


def forward_cost(args: argparse.Namespace) -> dict[str, float]:
    """model_cost of one image (params, MACs, FLOPs = 2·MACs)."""
    return model_cost(
        args.model, input_size=args.input_size, in_channels=args.in_channels,
        num_classes=args.num_classes, learn_sigma=bool(args.learn_sigma),
    )


def synthetic_batch(args: argparse.Namespace, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, args.input_size, args.input_size, args.in_channels)
    return {
        "image": rng.uniform(-1, 1, shape).astype(np.float32),
        "label": rng.integers(0, max(args.num_classes, 1), (batch,)).astype(np.int32),
    }


# ---------------------------------------------------------------------------------- timing


def block(tree: Any) -> Any:
    """Wait for every array in `tree` (device-synchronized timing)."""
    return jax.block_until_ready(tree)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds), the result waited for."""
    start = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - start


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median (the reported figure), min, max and interquartile range of per-call seconds."""
    ts = sorted(times)
    q = np.quantile(ts, [0.25, 0.75]) if len(ts) > 1 else (ts[0], ts[0])
    return {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1],
            "iqr_s": float(q[1] - q[0]), "count": len(ts)}


class MatmulPeak:
    """Peak FLOP/s of the devices a benchmark uses: one n×n @ n×n matmul in `dtype` on each of
    them at once (a (N, n, n) batch sharded over a 1-D mesh; FLOPs = N·2n³), each call
    synchronized. Measuring all N together is what makes the figure right both for N real
    accelerators (N × one device's peak) and for N virtual devices of one CPU host, which
    share its cores (about one device's peak). `measure(k)` adds k timings; call it between the
    timed runs of a benchmark (interleaved) so the peak sees the same conditions, e.g. the same
    load on a shared host."""

    def __init__(self, dtype: Any, n: int = 2048, warmup_s: float = 1.0,
                 devices: Sequence[Any] | None = None):
        devices = list(devices or jax.devices()[:1])
        self.dtype, self.n, self.num_devices = jnp.dtype(dtype), n, len(devices)
        sharding = NamedSharding(jax.make_mesh((len(devices),), ("d",), devices=devices),
                                 PartitionSpec("d"))
        ka, kb = jax.random.split(jax.random.key(0))
        shape = (len(devices), n, n)
        self.a = jax.device_put(jax.random.normal(ka, shape, jnp.float32).astype(dtype), sharding)
        self.b = jax.device_put(jax.random.normal(kb, shape, jnp.float32).astype(dtype), sharding)
        self.fn = jax.jit(jnp.matmul, out_shardings=sharding).lower(self.a, self.b).compile()
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.measure(0, warmup_s)

    def reset(self) -> None:
        self.times, self.cpu_times = [], []

    def measure(self, k: int = 1, warmup_s: float = 1.0) -> None:
        """Time k matmuls after untimed ones for at least `warmup_s` seconds: right after other
        work (a train step freeing gigabytes) the first few calls on CPU run up to 2× slower
        until memory and threads settle, and the peak is the sustained rate."""
        start = time.perf_counter()
        while True:
            block(self.fn(self.a, self.b))
            if time.perf_counter() - start >= warmup_s:
                break
        for _ in range(k):
            cpu = time.process_time()
            _, seconds = timed(lambda: self.fn(self.a, self.b))
            self.times.append(seconds)
            self.cpu_times.append(time.process_time() - cpu)

    def summary(self) -> dict[str, Any]:
        flops = 2.0 * self.n**3 * self.num_devices
        stats = summarize(self.times)
        cpu = statistics.median(self.cpu_times)
        return {"dtype": self.dtype.name, "size": self.n, "devices": self.num_devices,
                "flops": flops,
                "flops_per_s": flops / stats["median_s"], "time": stats,
                "flops_per_cpu_s": flops / cpu if cpu > 0 else None}


def time_interleaved(
    run: Callable[[int], Any], steps: int, peak: MatmulPeak | None, min_peak_runs: int = 10
) -> tuple[list[float], list[float]]:
    """Call run(i) for i < steps, each synchronized and timed (wall and process CPU seconds),
    with peak matmuls interleaved: ~1 s untimed, then ceil(min_peak_runs / steps) timed ones
    after each run."""
    per_step = -(-min_peak_runs // max(steps, 1))
    walls, cpus = [], []
    for i in range(steps):
        cpu = time.process_time()
        _, seconds = timed(lambda i=i: run(i))
        walls.append(seconds)
        cpus.append(time.process_time() - cpu)
        if peak is not None:
            peak.measure(per_step)
    return walls, cpus


def train_step_setup(
    args: argparse.Namespace, dtype: str, batch: int, mesh: Any
) -> dict[str, Any]:
    """The train step the trainer runs, for --model at `dtype` and global `batch` on `mesh`:
    the model, sharded state and shardings (`create_state`: AdamW from `make_optimizer`, the
    config's EMAs), the jitted step and a synthetic batch on the mesh."""
    cfg = make_config(args, dtype, batch)
    info = dataset_info(args)
    tx, lr = ts.make_optimizer(cfg.optim, 1000)
    ema = tuple(cfg.optim.ema_decays)
    model, state, shardings = ts.create_state(lambda: dm.build(cfg, info, 0), tx, ema, 0, mesh)
    return {
        "model": model, "state": state, "shardings": shardings, "mesh": mesh,
        "step_fn": ts.jit_train_step(model, tx, lr, ema, 1, shardings, mesh),
        "data": jax.device_put(synthetic_batch(args, batch), mesh_lib.batch_sharding(mesh)),
    }


def time_train_step(
    setup: dict[str, Any], args: argparse.Namespace, peak: MatmulPeak | None = None,
    peak_runs: int = 10,
) -> dict[str, Any]:
    """Compile setup's step ahead of time (compile_s = lower + compile), run --warmup steps,
    then time --steps synchronized steps (time_interleaved, with `peak` matmuls between them).
    Takes the state out of `setup` (each step donates it). Returns compile_s, memory
    (memory_stats), walls and cpus (seconds per step) and the last step's metrics."""
    state, data = setup.pop("state"), setup["data"]
    keys = [ts.step_rng(state["rng"], i) for i in range(args.warmup + args.steps)]
    start = time.perf_counter()
    compiled = setup["step_fn"].lower(state, data, keys[0]).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run(i: int) -> Any:
        holder["state"], holder["metrics"] = compiled(holder["state"], data, keys[i])
        return holder["metrics"]

    for i in range(args.warmup):
        block(run(i))
    if peak is not None:
        peak.reset()
    walls, cpus = time_interleaved(lambda i: run(args.warmup + i), args.steps, peak, peak_runs)
    return {"compile_s": compile_s, "memory": memory_stats(compiled), "walls": walls,
            "cpus": cpus, "metrics": holder["metrics"]}


# ---------------------------------------------------------------------------------- memory


def memory_stats(compiled: Any) -> dict[str, int] | None:
    """Per-device sizes from `compiled.memory_analysis()` (None where the backend has none):
    argument, output, alias (outputs reusing donated inputs), temp, and peak_bytes =
    argument + output − alias + temp, everything XLA's buffer assignment holds at once at most.
    reported_peak_bytes is the backend's own peak figure where it gives one (0 otherwise)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends raise instead of returning None
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_in_bytes", 0) or 0)
           for k in ("argument_size", "output_size", "alias_size", "temp_size",
                     "generated_code_size")}
    out["peak_bytes"] = (out["argument_size"] + out["output_size"] - out["alias_size"]
                         + out["temp_size"])
    out["reported_peak_bytes"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return out


def shard_bytes(tree: Any) -> dict[str, int]:
    """Bytes of `tree`'s arrays held by each device: {device id: bytes} over addressable shards."""
    per: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device.id)
            per[key] = per.get(key, 0) + int(shard.data.nbytes)
    return per


def tree_bytes(tree: Any) -> int:
    """Logical (unsharded) bytes of every array in `tree`."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------------------- report


def load_avg() -> list[float] | None:
    """The host's 1/5/15-minute load averages (how contended a CPU timing was)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(
    script: str, argv: Sequence[str], args: argparse.Namespace | None = None
) -> dict[str, Any]:
    """What a figure needs next to it: command, device, JAX version, host, date, load, flags."""
    dev = jax.devices()[0]
    load = load_avg()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": load,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "host_malloc_retain": bool(getattr(args, "host_malloc_applied", False)),
        "command": " ".join([f"benchmarks/{os.path.basename(script)}", *argv]),
    }


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """A markdown table: columns = [(header, key)], values formatted compactly."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    print("| " + " | ".join(h for h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(k)) for _, k in columns) + " |")


def write_json(path: str | None, result: Mapping[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
        f.write("\n")
