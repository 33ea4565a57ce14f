"""Synchronized timing: medians of device-synchronized calls, the same-run matmul peak
interleaved with the timed work, and the trainer's own train step set up and timed.

Conventions (docs/CONVENTIONS.md): training FLOPs = 3 × forward FLOPs; MFU = achieved FLOP/s ÷ the
peak FLOP/s of a large square matmul in the same dtype, measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks import cli_args
from benchmarks.memory import memory_stats
from vdm_jax.training import loop
from vdm_jax.training import state as st


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
    args: argparse.Namespace, dtype: str, batch: int, devices: Sequence[Any] | None = None,
    mesh_shape: tuple[int, int] = (-1, 1),
) -> dict[str, Any]:
    """The train step the trainer runs, built the trainer's way: `loop.set_up` (model, sharded
    state, optimizer, EMAs, mesh, data iterator; in a temporary run directory) on the synthetic
    dataset of the benchmark's shape, then `loop.step_function` (the jitted step `loop.train`
    compiles). --model at `dtype`, global `batch` over `devices` (default: all, as the trainer)
    on a (data, fsdp) = `mesh_shape` mesh; one batch from the trainer's iterator is kept."""
    cfg = cli_args.make_config(args, dtype, batch)
    cfg.mesh.data, cfg.mesh.fsdp = mesh_shape
    with tempfile.TemporaryDirectory() as workdir:
        setup = loop.set_up(cfg, workdir, None if devices is None else list(devices))
        setup.checkpointer.close()
    return {
        "config": cfg, "model": setup.model, "state": setup.state,
        "shardings": setup.shardings, "mesh": setup.mesh,
        "step_fn": loop.step_function(cfg, setup), "data": next(setup.data_iter),
    }


class CompiledStep:
    """setup's train step compiled ahead of time (compile_s = lower + compile) and run `warmup`
    untimed steps; then each .time(n) runs n more synchronized, timed steps (time_interleaved),
    so that several configurations can be timed in alternating rounds. Takes the state out of
    `setup` (each step donates it); keys for up to `max_steps` steps in all."""

    def __init__(self, setup: dict[str, Any], warmup: int, max_steps: int) -> None:
        state, self.data = setup.pop("state"), setup["data"]
        self.keys = [st.step_rng(state["rng"], i) for i in range(max_steps)]
        start = time.perf_counter()
        self.compiled = setup["step_fn"].lower(state, self.data, self.keys[0]).compile()
        self.compile_s = time.perf_counter() - start
        self.state, self.metrics, self.done = state, None, 0
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.round_medians: list[float] = []
        for _ in range(warmup):
            block(self.run())

    def run(self) -> Any:
        self.state, self.metrics = self.compiled(self.state, self.data, self.keys[self.done])
        self.done += 1
        return self.metrics

    def time(self, steps: int, peak: MatmulPeak | None = None, peak_runs: int = 10) -> None:
        walls, cpus = time_interleaved(lambda i: self.run(), steps, peak, peak_runs)
        self.walls += walls
        self.cpus += cpus
        self.round_medians.append(statistics.median(walls))

    def result(self) -> dict[str, Any]:
        """compile_s, memory (memory_stats), walls and cpus (seconds per timed step, all rounds),
        round_medians (seconds, one per .time call) and the last step's metrics."""
        return {"compile_s": self.compile_s, "memory": memory_stats(self.compiled),
                "walls": self.walls, "cpus": self.cpus, "round_medians": self.round_medians,
                "metrics": self.metrics}


def time_train_step(
    setup: dict[str, Any], args: argparse.Namespace, peak: MatmulPeak | None = None,
    peak_runs: int = 10,
) -> dict[str, Any]:
    """CompiledStep(setup, --warmup) timed for --steps steps, with `peak` matmuls between them
    (reset after the warm-up): its result()."""
    step = CompiledStep(setup, args.warmup, args.warmup + args.steps)
    if peak is not None:
        peak.reset()
    step.time(args.steps, peak, peak_runs)
    return step.result()
