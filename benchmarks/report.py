"""What a benchmark prints and records: the environment beside every figure (command, device,
versions, host, date, load), markdown rows, and the JSON results file.

Only the standard library is imported at the top (JAX and vdm_jax.io inside the functions that
use them), so that the processes that only run others (vs_pytorch, trainer_speed) and the
PyTorch workers of vs_pytorch and autoencoder use it without JAX."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any


def load_avg() -> list[float] | None:
    """The host's 1/5/15-minute load averages (how contended a CPU timing was)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def host_environment(script: str, argv: Sequence[str]) -> dict[str, Any]:
    """What any figure needs next to it, without JAX (for the processes that only run others):
    date, host, platform, processor, cores, Python, load, and the command
    `python -m benchmarks.<script> argv…`."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1_5_15": load_avg(),
        "command": " ".join(
            [f"python -m benchmarks.{os.path.splitext(os.path.basename(script))[0]}", *argv]),
    }


def environment(
    script: str, argv: Sequence[str], args: argparse.Namespace | None = None
) -> dict[str, Any]:
    """What a figure needs next to it: host_environment, and the device, JAX version and flags."""
    import jax

    return {
        **host_environment(script, argv),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "host_malloc_retain": bool(getattr(args, "host_malloc_applied", False)),
        "host_settings": getattr(args, "host", None),  # vdm_jax.parallel.host.configure()
    }


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """A markdown table: columns = [(header, key)], values formatted compactly (a list as its
    items, comma-separated); each row flushed as it is printed."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        if isinstance(v, list):
            return ", ".join(fmt(x) for x in v)
        return str(v)

    print("| " + " | ".join(h for h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(k)) for _, k in columns) + " |", flush=True)


def write_json(path: str | None, result: Mapping[str, Any]) -> None:
    """The results as JSON at `path` (atomically; nothing when no --out was given)."""
    if path:
        from vdm_jax.io import write_json as write_json_file

        write_json_file(path, result)


def finish(
    benchmark: str,
    script: str,
    argv: Sequence[str],
    args: argparse.Namespace,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    results: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """The end of a benchmark's main: the table of `rows` under a blank line, and the result

        {"benchmark": benchmark, "environment": environment(script, argv, args), **fields,
         "results": rows (or `results`, where the table shows them another way)}

    written to args.out (when given) and returned."""
    result = {"benchmark": benchmark, "environment": environment(script, argv, args), **fields,
              "results": list(rows) if results is None else results}
    print()
    print_table(rows, columns)
    write_json(args.out, result)
    return result
